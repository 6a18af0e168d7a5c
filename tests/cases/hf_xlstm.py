"""Conformance case and independent float64 reference: transformers xLSTM (mLSTM blocks:
matrix memory with exponential input gates, sigmoid forget gates and their max-stabiliser,
per-head LayerNorm, sigmoid output gate, SwiGLU feed-forward, soft-capped gates and
logits; separate or fused projections, with and without biases, 1 to 4 heads).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): the mLSTM cell as its stabilised recurrence one time step at a
time (``m[t] = max(log f[t] + m[t-1], i[t])`` from ``m = 0``, memory and
normaliser state), the rules as ``detach`` calls: the gates and the normaliser constant,
the uniform rule as the mean of the three read-outs with two of ``q``, ``k``, ``v``
detached, the CP-style rule with ``q`` and ``k`` detached.

:func:`tiny_xlstm` builds the tiny models (also for other tests and toy tasks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import gate, linear, rms, silu
from torch import Tensor
from transformers import xLSTMConfig, xLSTMForCausalLM
from transformers.initialization import no_init_weights

from cases import (
    ArchitectureCase,
    Rule,
    add_noise,
    perturbation,
    random_embeddings,
    set_noise,
    tiny_lm,
    tiny_model,
)

SHAPE = dict(vocab_size=32, ffn_round_up_to_multiple_of=8, use_cache=False)
CONFIGS = {
    "single-2heads": dict(
        hidden_size=16, num_hidden_layers=2, num_heads=2, chunk_size=4,
        output_logit_soft_cap=2.0, norm_reduction_force_float32=False,
    ),
    "fused-4heads-bias": dict(
        hidden_size=24, num_hidden_layers=2, num_heads=4, chunk_size=2, v_dim_factor=0.5,
        weight_mode="fused", use_bias=True, gate_soft_cap=2.0, output_logit_soft_cap=3.0,
        norm_reduction_force_float32=False,
    ),
    "single-1head-recurrent": dict(
        hidden_size=8, num_hidden_layers=3, num_heads=1, chunk_size=16, qk_dim_factor=1.0,
        v_dim_factor=2.0, output_logit_soft_cap=5.0, norm_reduction_force_float32=False,
    ),
}  # fmt: skip
LENGTH = 9


def _forget_bias(parameter: Tensor) -> None:
    parameter.copy_(2.0 + torch.randn_like(parameter))


def tiny_xlstm(config: str, seed: int, zero_biases: bool, **fields: object) -> xLSTMForCausalLM:
    """A tiny float64 xLSTM language model of configuration ``config`` (a key of
    :data:`CONFIGS`, ``fields`` overriding its fields), its parameters perturbed: random
    gate weights and biases (forget biases around 2; transformers starts them at zero
    weights, which would make the gates constant), noisy norm weights, other weights
    doubled, biases zeroed (``zero_biases``, the gate biases kept) or random."""
    gates = Rule(("*gate_preact.weight",), set_noise(0.3))
    forget = Rule(("*.fgate_preact.bias",), _forget_bias)
    input_gates = Rule(("*igate_preact.bias", "*ifgate_preact.bias"), set_noise(1.0))
    norms = Rule(("*norm_*.weight",), add_noise(0.3))
    perturb = perturbation(
        zero_biases,
        gates,
        forget,
        input_gates,
        norms,
        kept_biases=("*gate_preact.bias",),
        weights=2.0,
    )
    settings = {**SHAPE, **CONFIGS[config], **fields}
    if settings.get("weight_mode") != "fused":
        return tiny_lm(xLSTMForCausalLM, xLSTMConfig, settings, seed, perturb)
    return tiny_model(lambda: _fused_model(xLSTMConfig(**settings)), seed, perturb)


def _fused_model(config: xLSTMConfig) -> xLSTMForCausalLM:
    """A model with fused projections: transformers 5.25's initialisation fails for them
    (it subtracts gate biases of different sizes), so it is skipped and every parameter
    set here: ``N(0, 2 / (5 fan_in))`` weights, zero biases, unit norm weights."""
    with no_init_weights():
        model = xLSTMForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.fill_(0.0 if name.endswith("bias") else 1.0)
            elif name.endswith("bias"):
                parameter.zero_()
            else:
                parameter.normal_(0.0, (2.0 / (5.0 * parameter.shape[-1])) ** 0.5)
    return model


def _heads(x: Tensor, heads: int) -> Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _read_out(q: Tensor, k: Tensor, v: Tensor, log_i: Tensor, log_f: Tensor) -> Tensor:
    """``q[t]^T C[t]`` of every head, step by step: ``q``, ``k``, ``v``
    ``(batch, heads, length, d)``, gates ``(batch, heads, length)``."""
    d = q.shape[-1]
    memory = torch.zeros(*q.shape[:2], d, v.shape[-1], dtype=q.dtype)
    m = torch.zeros(q.shape[:2], dtype=q.dtype)
    rows = []
    for t in range(q.shape[2]):
        m_new = torch.maximum(log_f[..., t] + m, log_i[..., t])
        forget = torch.exp(log_f[..., t] + m - m_new)[..., None, None]
        write = torch.exp(log_i[..., t] - m_new)[..., None, None]
        memory = forget * memory + write * torch.einsum("bhi,bhj->bhij", k[:, :, t], v[:, :, t])
        rows.append(torch.einsum("bhi,bhij->bhj", q[:, :, t] / d**0.5, memory))
        m = m_new
    return torch.stack(rows, 2)


def _stabilisers(log_i: Tensor, log_f: Tensor) -> Tensor:
    m, rows = torch.zeros_like(log_i[..., 0]), []
    for t in range(log_i.shape[-1]):
        m = torch.maximum(log_f[..., t] + m, log_i[..., t])
        rows.append(m)
    return torch.stack(rows, -1)


def reference_cell(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, config, rule):
    """The mLSTM cell: ``q``, ``k``, ``v`` ``(batch, heads, length, d)``, gate
    pre-activations ``i``, ``f`` ``(batch, heads, length)``; ``rule`` the ``attention``
    setting."""
    if rule is not False:
        i, f = i.detach(), f.detach()
    cap = config.gate_soft_cap
    log_i, log_f = cap * torch.tanh(i / cap), F.logsigmoid(cap * torch.tanh(f / cap))
    ones = torch.ones_like(v[..., :1])
    qn = _read_out(q, k, ones, log_i, log_f)[..., 0]
    denominator = torch.maximum(qn.abs(), torch.exp(-_stabilisers(log_i, log_f))) + config.eps
    if rule is not False:
        denominator = denominator.detach()
    if rule == "cp_lrp":
        numerator = _read_out(q.detach(), k.detach(), v, log_i, log_f)
    elif rule:
        qd, kd, vd = q.detach(), k.detach(), v.detach()
        numerator = (
            _read_out(q, kd, vd, log_i, log_f)
            + _read_out(qd, k, vd, log_i, log_f)
            + _read_out(qd, kd, v, log_i, log_f)
        ) / 3.0
    else:
        numerator = _read_out(q, k, v, log_i, log_f)
    return numerator / denominator[..., None]


def _sigmoid(x: Tensor, rule: bool) -> Tensor:
    """``sigmoid(x) = x * (sigmoid(x) / x)``, the ratio constant under the identity rule."""
    ratio = torch.sigmoid(x) / x
    return x * (ratio.detach() if rule else ratio)


def _layer_norm(x: Tensor, rule: bool, eps: float) -> Tensor:
    centred = x - x.mean(-1, keepdim=True)
    scale = 1.0 / torch.sqrt((centred * centred).mean(-1, keepdim=True) + eps)
    return centred * (scale.detach() if rule else scale)


def _norm(norm, x: Tensor, rules) -> Tensor:
    out = rms(x, norm.weight, norm.eps, rules.norm)
    return out if norm.bias is None else out + norm.bias


def reference_layer(layer, x: Tensor, rules) -> Tensor:
    config = layer.config
    heads = config.num_heads
    if config.weight_mode == "single":
        q, k, v = linear(x, layer.q), linear(x, layer.k), linear(x, layer.v)
        o = linear(x, layer.ogate_preact)
        i, f = linear(x, layer.igate_preact), linear(x, layer.fgate_preact)
    else:
        qk, vd = layer.qk_dim, layer.v_dim
        projected = linear(x, layer.qkv_opreact)
        q, k = projected[..., :qk], projected[..., qk : 2 * qk]
        v, o = projected[..., 2 * qk : 2 * qk + vd], projected[..., 2 * qk + vd :]
        gates = linear(x, layer.ifgate_preact)
        i, f = gates[..., :heads], gates[..., heads:]
    q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    norm = layer.multihead_norm
    cell = reference_cell(q, k, v, i.transpose(1, 2), f.transpose(1, 2), config, rules.attention)
    normed = _layer_norm(cell.transpose(1, 2), rules.norm, norm.eps).flatten(-2)
    normed = normed * norm.weight
    if norm.bias is not None:
        normed = normed + norm.bias
    return linear(gate(_sigmoid(o, rules.activation), normed, rules.gate), layer.out_proj)


def reference_ffn(ffn, x: Tensor, rules) -> Tensor:
    if ffn.config.weight_mode == "single":
        up_gate, up = linear(x, ffn.proj_up_gate), linear(x, ffn.proj_up)
    else:
        both = linear(x, ffn.proj_up_gate_z)
        up_gate, up = both[..., : ffn.up_proj_dim], both[..., ffn.up_proj_dim :]
    return linear(gate(silu(up_gate, rules.activation), up, rules.gate), ffn.proj_down)


def reference_logits(model: xLSTMForCausalLM, embeds: Tensor, rules) -> Tensor:
    hidden = embeds
    for block in model.backbone.blocks:
        hidden = hidden + reference_layer(
            block.mlstm_layer, _norm(block.norm_mlstm, hidden, rules), rules
        )
        hidden = hidden + reference_ffn(block.ffn, _norm(block.norm_ffn, hidden, rules), rules)
    logits = linear(_norm(model.backbone.out_norm, hidden, rules), model.lm_head)
    cap = model.config.output_logit_soft_cap
    ratio = torch.tanh(logits / cap) / (logits / cap)  # the identity rule on c tanh(x / c)
    return logits * (ratio.detach() if rules.activation else ratio)


def own_logits(model: xLSTMForCausalLM, embeds: Tensor) -> Tensor:
    """The model's own soft-capped logits (transformers casts them to float32)."""
    return model(inputs_embeds=embeds, use_cache=False).logits.double()


ADAPTER = "transformers xLSTM"
CASE = ArchitectureCase(
    name="hf_xlstm",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=tiny_xlstm,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (4, 7)]),
    reference=reference_logits,
    own_output=own_logits,
    layer="backbone.blocks.0.mlstm_layer.out_proj",
    num_layers=lambda model: model.config.num_hidden_layers,
    rule_kinds=("norm", "activation", "gate", "attention"),
    conserving="mamba_lrp",
)

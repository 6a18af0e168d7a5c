"""Conformance case and independent float64 reference: transformers Jamba (Mamba and
attention layers, gated MLPs and mixtures of experts; eager and SDPA attention, grouped-
and multi-query heads).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): a loop over time steps for the scans, over query positions for
the causal attention, over tokens and their top-k experts for the mixtures; it applies
the rules as ``detach`` calls, reading the switches of the ``rules`` object it is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import (
    activation,
    causal_conv,
    gate,
    gated_mlp,
    half_product,
    linear,
    rms,
    silu,
    softmax_attention,
)
from torch import Tensor
from transformers import JambaConfig, JambaForCausalLM

from cases import (
    ArchitectureCase,
    Rule,
    add_noise,
    lm_logits,
    perturbation,
    random_embeddings,
    set_noise,
    time_steps,
    times,
    tiny_lm,
)

CONFIGS = {
    "attention-moe-eager": dict(
        hidden_size=16, intermediate_size=24, num_hidden_layers=4, vocab_size=32,
        mamba_d_state=4, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=2,
        attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=0,
        num_experts=4, num_experts_per_tok=2, num_attention_heads=4, num_key_value_heads=2,
        attn_implementation="eager",
    ),
    "attention-moe-mqa-biased-sdpa": dict(
        hidden_size=12, intermediate_size=20, num_hidden_layers=3, vocab_size=24,
        mamba_d_state=3, mamba_d_conv=3, mamba_expand=1, mamba_dt_rank=3,
        mamba_proj_bias=True, attn_layer_period=3, attn_layer_offset=1,
        expert_layer_period=1, expert_layer_offset=0, num_experts=3, num_experts_per_tok=2,
        num_attention_heads=3, num_key_value_heads=1, attn_implementation="sdpa",
    ),
}  # fmt: skip
LENGTH = 8


def build_model(config: str, seed: int, zero_biases: bool) -> JambaForCausalLM:
    perturb = perturbation(
        zero_biases,
        Rule(("*.D",), set_noise(0.1)),  # a small skip: the scan dominates the mixer output
        Rule(("*A_log",), add_noise(0.3)),
        Rule(("*dt_proj.bias",), time_steps),
        # initializer_range 0.02 would make them negligible
        Rule(("*x_proj.weight", "*in_proj.weight", "*experts.down_proj"), times(10.0)),
        # peaked attention and routing: the softmax matters
        Rule(("*q_proj.weight", "*k_proj.weight", "*router.weight"), times(40.0)),
        Rule(("*experts.gate_up_proj",), times(20.0)),
        weights=None,
    )
    return tiny_lm(
        JambaForCausalLM, JambaConfig, CONFIGS[config], seed, perturb, eager_experts=True
    )


def reference_mamba(mixer, u: Tensor, rules) -> Tensor:
    inner, state, rank = mixer.intermediate_size, mixer.ssm_state_size, mixer.time_step_rank
    projected = linear(u, mixer.in_proj)
    x, z = projected[..., :inner], projected[..., inner:]
    x = silu(causal_conv(x, mixer.conv1d), rules.silu)
    coefficients = x @ mixer.x_proj.weight.T
    eps = mixer.dt_layernorm.variance_epsilon
    time_step = rms(coefficients[..., :rank], mixer.dt_layernorm.weight, eps, rules.norm)
    B = rms(coefficients[..., rank : rank + state], mixer.b_layernorm.weight, eps, rules.norm)
    C = rms(coefficients[..., rank + state :], mixer.c_layernorm.weight, eps, rules.norm)
    dt = F.softplus(linear(time_step, mixer.dt_proj))
    if rules.ssm:
        dt, B, C = dt.detach(), B.detach(), C.detach()
    A = -torch.exp(mixer.A_log)
    h = x.new_zeros(x.shape[0], inner, state)
    outputs = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None]
        outputs.append((h * C[:, t, None]).sum(-1) + mixer.D * x[:, t])
    y = torch.stack(outputs, dim=1)
    return linear(gate(y, silu(z, rules.silu), rules.gate), mixer.out_proj)


def reference_attention(attention, x: Tensor, rules) -> Tensor:
    heads, kv_heads = attention.config.num_attention_heads, attention.config.num_key_value_heads
    q = linear(x, attention.q_proj).unflatten(-1, (heads, -1)).transpose(1, 2)
    k = linear(x, attention.k_proj).unflatten(-1, (kv_heads, -1)).transpose(1, 2)
    v = linear(x, attention.v_proj).unflatten(-1, (kv_heads, -1)).transpose(1, 2)
    out = softmax_attention(q, k, v, q.shape[-1] ** -0.5, None, rules.attention)
    return linear(out, attention.o_proj)


def reference_moe(moe, x: Tensor, rules) -> Tensor:
    """Token by token: the softmax of the router logits, the top-k experts by sorting,
    each expert a gated MLP, their outputs weighted by the (unnormalised) probabilities."""
    flat = x.reshape(-1, x.shape[-1])
    inner = moe.experts.intermediate_dim
    rows = []
    for u in flat:
        logits = moe.router.weight @ u
        probabilities = torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()
        chosen = torch.argsort(probabilities.detach(), descending=True)[: moe.router.top_k]
        total = torch.zeros_like(u)
        for e in chosen.tolist():
            weight = probabilities[e].detach() if rules.router else probabilities[e]
            gate_up = moe.experts.gate_up_proj[e]
            output = gated_mlp(
                u[None], gate_up[:inner], gate_up[inner:], moe.experts.down_proj[e], "silu", rules
            )[0]
            total = total + weight * output
        rows.append(total)
    return torch.stack(rows).reshape(x.shape)


def reference_logits(model: JambaForCausalLM, embeds: Tensor, rules) -> Tensor:
    hidden = embeds
    for layer in model.model.layers:
        norm = layer.input_layernorm
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        if hasattr(layer, "mamba"):
            hidden = hidden + reference_mamba(layer.mamba, normed, rules)
        else:
            hidden = hidden + reference_attention(layer.self_attn, normed, rules)
        norm, ff = layer.pre_ff_layernorm, layer.feed_forward
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        if hasattr(ff, "router"):
            hidden = hidden + reference_moe(ff, normed, rules)
        else:
            activated = activation(linear(normed, ff.gate_proj), "silu", rules.activation)
            hidden = hidden + linear(half_product(activated, linear(normed, ff.up_proj),
                                                  rules.gate), ff.down_proj)  # fmt: skip
    final = model.model.final_layernorm
    return linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)


ADAPTER = "transformers Jamba"
CASE = ArchitectureCase(
    name="hf_jamba",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (2, 7)]),
    reference=reference_logits,
    own_output=lm_logits,
    layer="model.layers.0.mamba.out_proj",
    num_layers=lambda model: len(model.model.layers),
    rule_kinds=("norm", "silu", "ssm", "gate", "activation", "attention", "router"),
    padding=True,
    conserving="cp_lrp",
    eager_attention=("attention-moe-eager",),
)

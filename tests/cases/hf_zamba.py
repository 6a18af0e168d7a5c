"""Conformance case and independent float64 reference: transformers Zamba (multi-head
Mamba-1 layers; shared attention blocks on the hidden states concatenated with the input
embeddings, before some Mamba layers; eager and SDPA attention, grouped- and multi-query
heads; tied embeddings).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): the input projection de-interleaved into scan and gate channels,
each Mamba head with its own ``dt``, ``B``, ``C`` projections and a loop over time steps,
the shared block at every hybrid depth (its attention one query position at a time), and
the rules as ``detach`` calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import causal_conv, gate, gated_mlp, linear, rms, silu, softmax_attention
from torch import Tensor
from transformers import ZambaConfig, ZambaForCausalLM

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
    "gqa-eager": dict(
        hidden_size=16, intermediate_size=24, vocab_size=32, num_attention_heads=4,
        num_key_value_heads=2, n_mamba_heads=2, mamba_d_state=4, mamba_d_conv=4,
        mamba_dt_rank=2, layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
        attn_implementation="eager",
    ),
    "mqa-biased-sdpa": dict(
        hidden_size=12, intermediate_size=20, vocab_size=24, num_attention_heads=3,
        num_key_value_heads=1, n_mamba_heads=3, mamba_d_state=3, mamba_d_conv=3,
        mamba_dt_rank=3, mamba_proj_bias=True, hidden_act="silu",
        layers_block_type=["hybrid", "mamba", "hybrid"], attn_implementation="sdpa",
    ),
}  # fmt: skip
LENGTH = 8


def build_model(config: str, seed: int, zero_biases: bool) -> ZambaForCausalLM:
    perturb = perturbation(
        zero_biases,
        Rule(("*.D",), set_noise(0.1)),  # a small skip: the scan dominates the mixer output
        Rule(("*A_log",), add_noise(0.3)),
        Rule(("*dt_proj_bias",), time_steps),
        # initializer_range 0.02 would make them negligible
        Rule(("*x_proj_weight", "*in_proj.weight", "*linear.weight"), times(10.0)),
        Rule(("*q_proj.weight", "*k_proj.weight"), times(40.0)),  # peaked attention
    )
    fields = {"num_hidden_layers": len(CONFIGS[config]["layers_block_type"]), **CONFIGS[config]}
    return tiny_lm(ZambaForCausalLM, ZambaConfig, fields, seed, perturb)


def reference_mixer(mixer, u: Tensor, rules) -> Tensor:
    """Multi-head Mamba-1: head ``h`` owns channels ``h * head_dim ...``, its own ``dt``,
    ``B``, ``C`` projections, ``A``, ``D``."""
    heads, width = mixer.n_mamba_heads, mixer.mamba_head_dim
    rank, state = mixer.time_step_rank, mixer.ssm_state_size
    projected = linear(u, mixer.in_proj)
    x = silu(causal_conv(projected[..., 0::2], mixer.conv1d), rules.silu)
    z = projected[..., 1::2]
    outputs = []
    for head in range(heads):
        xh = x[..., head * width : (head + 1) * width]
        coefficients = xh @ mixer.x_proj_weight[head].T
        dt = coefficients[..., :rank] @ mixer.dt_proj_weight[head].T + mixer.dt_proj_bias[head]
        dt = F.softplus(dt)
        B, C = coefficients[..., rank : rank + state], coefficients[..., rank + state :]
        if rules.ssm:
            dt, B, C = dt.detach(), B.detach(), C.detach()
        A = -torch.exp(mixer.A_log[head])
        h = xh.new_zeros(xh.shape[0], width, state)
        steps = []
        for t in range(xh.shape[1]):
            drive = (dt[:, t] * xh[:, t])[..., None] * B[:, t, None]
            h = torch.exp(dt[:, t, :, None] * A) * h + drive
            steps.append((h * C[:, t, None]).sum(-1) + mixer.D[head] * xh[:, t])
        outputs.append(torch.stack(steps, dim=1))
    y = torch.cat(outputs, dim=-1)
    return linear(gate(y, silu(z, rules.silu), rules.gate), mixer.out_proj)


def reference_attention(attention, x: Tensor, rules) -> Tensor:
    heads, kv_heads = attention.config.num_attention_heads, attention.config.num_key_value_heads
    q = linear(x, attention.q_proj).unflatten(-1, (heads, -1)).transpose(1, 2)
    k = linear(x, attention.k_proj).unflatten(-1, (kv_heads, -1)).transpose(1, 2)
    v = linear(x, attention.v_proj).unflatten(-1, (kv_heads, -1)).transpose(1, 2)
    scaling = (q.shape[-1] / 2) ** -0.5  # Zamba's attention scale
    return linear(softmax_attention(q, k, v, scaling, None, rules.attention), attention.o_proj)


def reference_shared(block, hidden: Tensor, embeds: Tensor, rules, function: str) -> Tensor:
    """The shared block: ``mlp(norm(attn(norm([hidden, embeds]))))``."""
    norm = block.input_layernorm
    joined = rms(torch.cat([hidden, embeds], -1), norm.weight, norm.variance_epsilon, rules.norm)
    attended = reference_attention(block.self_attn, joined, rules)
    norm, mlp = block.pre_ff_layernorm, block.feed_forward
    normed = rms(attended, norm.weight, norm.variance_epsilon, rules.norm)
    weights = (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
    return gated_mlp(normed, *weights, function, rules)


def reference_logits(model: ZambaForCausalLM, embeds: Tensor, rules) -> Tensor:
    function = model.config.hidden_act
    hidden = embeds
    for layer in model.model.layers:
        mamba_layer, mixed = layer, hidden
        if hasattr(layer, "shared_transf"):
            shared = reference_shared(layer.shared_transf, hidden, embeds, rules, function)
            mamba_layer, mixed = layer.mamba_decoder, hidden + linear(shared, layer.linear)
        norm = mamba_layer.input_layernorm
        normed = rms(mixed, norm.weight, norm.variance_epsilon, rules.norm)
        hidden = hidden + reference_mixer(mamba_layer.mamba, normed, rules)
    final = model.model.final_layernorm
    return linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)


def rollout_layers(model: ZambaForCausalLM) -> int:
    """Mamba layers, plus the shared block of every hybrid layer."""
    return sum(2 if hasattr(layer, "shared_transf") else 1 for layer in model.model.layers)


ADAPTER = "transformers Zamba"
CASE = ArchitectureCase(
    name="hf_zamba",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (2, 7)]),
    reference=reference_logits,
    own_output=lm_logits,
    layer="model.layers.1.shared_transf.self_attn.o_proj",
    num_layers=rollout_layers,
    rule_kinds=("norm", "silu", "ssm", "gate", "activation", "attention"),
    padding=True,
    conserving="cp_lrp",
    eager_attention=("gqa-eager",),
)

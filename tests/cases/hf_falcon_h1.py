"""Conformance case and independent float64 reference: transformers Falcon-H1 (a Mamba-2
mixer and softmax attention in parallel in every layer, gated MLPs, muP multipliers;
gated norm before the gate or a plain gate; eager and SDPA attention, grouped- and
multi-query heads).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): the mixer's input times ``ssm_in_multiplier`` and its projection
times the five ``ssm_multipliers`` (one per section ``z``, ``x``, ``B``, ``C``, ``dt``),
the scan as a loop over time steps, causal attention one query position at a time (keys
times ``key_multiplier``, the rotary embedding pair by pair with the model's own float32
position table), the branch and MLP multipliers, logits times ``lm_head_multiplier``; the
rules as ``detach`` calls.

``embedding_multiplier`` stays 1 here: transformers applies it to looked-up token
embeddings only, not to ``inputs_embeds``, so the suite's token-id check (which explains
``inputs_embeds = embedding(ids)``) would not describe the same model; the multiplier is
checked in ``tests/test_hybrids.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import (
    activation,
    causal_conv,
    gate,
    half_product,
    linear,
    rms,
    rope,
    rope_table,
    silu,
    softmax_attention,
)
from torch import Tensor
from transformers import FalconH1Config, FalconH1ForCausalLM

from cases import ArchitectureCase, Rule, perturbation, random_embeddings, times, tiny_lm
from cases.hf_mamba2 import sequential_ssd

MUP = dict(
    lm_head_multiplier=0.5, mlp_multipliers=[1.5, 0.7], key_multiplier=0.8,
    attention_in_multiplier=1.3, attention_out_multiplier=0.6, ssm_in_multiplier=1.2,
    ssm_out_multiplier=0.7, ssm_multipliers=[0.9, 1.2, 0.8, 1.1, 1.4],
)  # fmt: skip
CONFIGS = {
    "gqa-gated-norm-eager": dict(
        hidden_size=16, intermediate_size=24, num_hidden_layers=2, vocab_size=32,
        num_attention_heads=4, num_key_value_heads=2, mamba_d_ssm=24, mamba_n_heads=4,
        mamba_n_groups=1, mamba_d_state=4, mamba_chunk_size=4, mamba_d_conv=4,
        mamba_rms_norm=True, mamba_norm_before_gate=True, **MUP,
        attn_implementation="eager",
    ),
    "mqa-groups-gate-biased-sdpa": dict(
        hidden_size=12, intermediate_size=20, num_hidden_layers=2, vocab_size=24,
        num_attention_heads=3, num_key_value_heads=1, mamba_n_heads=4, mamba_n_groups=2,
        mamba_d_state=5, mamba_chunk_size=3, mamba_d_conv=3, mamba_expand=2,
        mamba_proj_bias=True, projectors_bias=True, attention_bias=True, mlp_bias=True,
        time_step_limit=(0.0, 0.5), **MUP, attn_implementation="sdpa",
    ),
}  # fmt: skip
LENGTH = 10  # not a multiple of either chunk size


def build_model(config: str, seed: int, zero_biases: bool) -> FalconH1ForCausalLM:
    peaked = Rule(("*q_proj.weight", "*k_proj.weight"), times(40.0))  # the softmax matters
    perturb = perturbation(zero_biases, peaked)
    return tiny_lm(FalconH1ForCausalLM, FalconH1Config, CONFIGS[config], seed, perturb)


def reference_mixer(mixer, u: Tensor, config, rules) -> Tensor:
    inner, groups, state = mixer.intermediate_size, mixer.n_groups, mixer.ssm_state_size
    heads, head_dim = mixer.num_heads, mixer.head_dim
    batch, length, _ = u.shape
    sections = [inner, inner, groups * state, groups * state, heads]
    multipliers = torch.cat([  # rounded to float32, as transformers stores them (a buffer)
        torch.full((size,), factor, dtype=torch.float32).to(u.dtype)
        for size, factor in zip(sections, config.ssm_multipliers, strict=True)
    ])  # fmt: skip
    projected = linear(u * config.ssm_in_multiplier, mixer.in_proj) * multipliers
    z, xBC, dt_raw = projected.split([inner, inner + 2 * groups * state, heads], dim=-1)
    xBC = silu(causal_conv(xBC, mixer.conv1d), rules.silu)
    x, B, C = xBC.split([inner, groups * state, groups * state], dim=-1)
    B, C = B.reshape(batch, length, groups, state), C.reshape(batch, length, groups, state)
    low, high = config.time_step_limit
    dt = torch.clamp(F.softplus(dt_raw + mixer.dt_bias), low, high)
    if rules.ssm:
        dt, B, C = dt.detach(), B.detach(), C.detach()
    x_heads = x.reshape(batch, length, heads, head_dim)
    y = sequential_ssd(x_heads, dt, -torch.exp(mixer.A_log), B, C)
    y = (y + mixer.D[:, None] * x_heads).reshape(batch, length, inner)
    gate_values = silu(z, rules.silu)
    if not config.mamba_rms_norm:
        return linear(gate(y, gate_values, rules.gate), mixer.out_proj)
    norm = mixer.norm

    def normed(values: Tensor) -> Tensor:
        grouped = values.reshape(batch, length, groups, inner // groups)
        out = rms(grouped, None, norm.variance_epsilon, rules.norm).reshape(values.shape)
        return out * norm.weight

    if config.mamba_norm_before_gate:
        out = gate(normed(y), gate_values, rules.gate)
    else:
        out = normed(gate(y, gate_values, rules.gate))
    return linear(out, mixer.out_proj)


def _heads(x: Tensor, heads: int) -> Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def reference_attention(attention, x: Tensor, table, config, rules) -> Tensor:
    q = rope(_heads(linear(x, attention.q_proj), config.num_attention_heads), *table)
    keys = linear(x, attention.k_proj) * config.key_multiplier
    k = rope(_heads(keys, config.num_key_value_heads), *table)
    v = _heads(linear(x, attention.v_proj), config.num_key_value_heads)
    out = softmax_attention(q, k, v, q.shape[-1] ** -0.5, None, rules.attention)
    return linear(out, attention.o_proj)


def reference_mlp(mlp, x: Tensor, config, rules) -> Tensor:
    gate_multiplier, down_multiplier = config.mlp_multipliers
    gated = activation(linear(x, mlp.gate_proj) * gate_multiplier, "silu", rules.activation)
    product = half_product(linear(x, mlp.up_proj), gated, rules.gate)
    return linear(product, mlp.down_proj) * down_multiplier


def reference_logits(model: FalconH1ForCausalLM, embeds: Tensor, rules) -> Tensor:
    config = model.config
    table = rope_table(model.model.rotary_emb, embeds.shape[1])
    hidden = embeds  # inputs_embeds are used as given (no embedding_multiplier)
    for layer in model.model.layers:
        norm = layer.input_layernorm
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        mixed = reference_mixer(layer.mamba, normed, config, rules) * config.ssm_out_multiplier
        attention_input = normed * config.attention_in_multiplier
        attended = reference_attention(layer.self_attn, attention_input, table, config, rules)
        hidden = hidden + (mixed + attended * config.attention_out_multiplier)
        norm = layer.pre_ff_layernorm
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        hidden = hidden + reference_mlp(layer.feed_forward, normed, config, rules)
    final = model.model.final_layernorm
    logits = linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)
    return logits * config.lm_head_multiplier


def model_logits(model: FalconH1ForCausalLM, embeds: Tensor, **kwargs) -> Tensor:
    """The model's own forward (its logits keep the dtype of the computation)."""
    return model(inputs_embeds=embeds, use_cache=False, **kwargs).logits


ADAPTER = "transformers Falcon-H1"
CASE = ArchitectureCase(
    name="hf_falcon_h1",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (4, 7)]),
    reference=reference_logits,
    own_output=model_logits,
    layer="model.layers.0.self_attn.o_proj",
    num_layers=lambda model: len(model.model.layers),
    rule_kinds=("norm", "silu", "ssm", "gate", "activation", "attention"),
    padding=True,
    conserving="cp_lrp",
    eager_attention=("gqa-gated-norm-eager",),
    padding_rtol=1e-5,
)

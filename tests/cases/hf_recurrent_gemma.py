"""Conformance case and independent float64 reference: transformers RecurrentGemma
(recurrent blocks with the RG-LRU, local sliding-window attention with a partial rotary
embedding and grouped or multi-query heads, GeGLU MLPs, RMSNorm with ``1 + w``, the
embedding normaliser and soft-capped logits; eager and SDPA attention).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): the convolution tap by tap (``helpers.causal_conv``), the RG-LRU
as its recurrence one time step at a time (gates per head from the block-diagonal
weights), attention one query position at a time inside the window, the rotary embedding
pair by pair (the model's own float32 position table), and the rules as ``detach`` calls.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from helpers import causal_conv, half_product, linear, rms, rope, rope_table, softmax_attention
from torch import Tensor
from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

from cases import (
    ArchitectureCase,
    Rule,
    add_noise,
    perturbation,
    random_embeddings,
    times,
    tiny_lm,
)

SHAPE = dict(vocab_size=32, tie_word_embeddings=False, logits_soft_cap=2.0)
CONFIGS = {
    "gqa-window-eager": dict(
        hidden_size=16, lru_width=16, intermediate_size=24, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2,
        block_types=["recurrent", "attention", "recurrent"], attention_window_size=4,
        conv1d_width=3, attn_implementation="eager",
    ),
    "mqa-window-sdpa": dict(
        hidden_size=12, lru_width=18, intermediate_size=20, num_hidden_layers=4,
        num_attention_heads=3, num_key_value_heads=1,
        block_types=["attention", "recurrent"], attention_window_size=5, conv1d_width=4,
        attention_bias=True, attn_implementation="sdpa",
        rope_parameters=dict(rope_type="default", rope_theta=100.0, partial_rotary_factor=0.5),
    ),
}  # fmt: skip
LENGTH = 9


def build_model(config: str, seed: int, zero_biases: bool) -> RecurrentGemmaForCausalLM:
    # the softmax matters; weights scaled by 2 (not 5): transformers computes its norms and
    # the recurrence in float32, whose rounding the larger scale amplifies past 1e-6
    peaked = Rule(("*q_proj.weight", "*k_proj.weight"), times(4.0))
    decays = Rule(("*recurrent_param",), add_noise(1.0))
    return tiny_lm(
        RecurrentGemmaForCausalLM,
        RecurrentGemmaConfig,
        {**SHAPE, **CONFIGS[config]},
        seed,
        perturbation(zero_biases, peaked, decays, weights=2.0),
    )


def _heads(x: Tensor, heads: int) -> Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _norm(norm, x: Tensor, rules) -> Tensor:
    return rms(x, 1.0 + norm.weight, norm.eps, rules.norm)


def _gelu_tanh(x: Tensor, rule: bool) -> Tensor:
    """``x * Phi~(x)`` with the tanh approximation ``Phi~``, constant under the rule."""
    phi = 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    return x * (phi.detach() if rule else phi)


def reference_rglru(lru, x: Tensor, rules) -> Tensor:
    """``h[t] = a[t] h[t-1] + sqrt(1 - a[t]^2) i[t] x[t]`` step by step (the normaliser is 1
    at the first position), ``a``, the normaliser and the gates constant under the SSM rule."""
    heads = lru.input_gate_weight.shape[0]
    source = x.detach() if rules.ssm else x
    blocks = source.unflatten(-1, (heads, -1))
    gate_i = torch.zeros_like(blocks)
    gate_r = torch.zeros_like(blocks)
    for h in range(heads):
        gate_i[:, :, h] = torch.sigmoid(
            blocks[:, :, h] @ lru.input_gate_weight[h] + lru.input_gate_bias[h]
        )
        gate_r[:, :, h] = torch.sigmoid(
            blocks[:, :, h] @ lru.recurrent_gate_weight[h] + lru.recurrent_gate_bias[h]
        )
    gate_i, gate_r = gate_i.flatten(-2), gate_r.flatten(-2)
    rate = 8.0 * F.softplus(lru.recurrent_param)
    if rules.ssm:
        rate = rate.detach()
    state = torch.zeros_like(x[:, 0])
    outputs = []
    for t in range(x.shape[1]):
        a = torch.exp(-rate * gate_r[:, t])
        normaliser = torch.ones_like(a) if t == 0 else torch.sqrt(1.0 - a * a)
        state = a * state + normaliser * gate_i[:, t] * x[:, t]
        outputs.append(state)
    return torch.stack(outputs, 1)


def reference_recurrent(block, x: Tensor, rules) -> Tensor:
    y = _gelu_tanh(linear(x, block.linear_y), rules.activation)
    mixed = reference_rglru(
        block.rg_lru, causal_conv(linear(x, block.linear_x), block.conv_1d), rules
    )
    return linear(half_product(mixed, y, rules.gate), block.linear_out)


def reference_attention(attention, x: Tensor, table, rules) -> Tensor:
    config = attention.config
    q = _heads(linear(x, attention.q_proj), config.num_attention_heads)
    k = _heads(linear(x, attention.k_proj), config.num_key_value_heads)
    v = _heads(linear(x, attention.v_proj), config.num_key_value_heads)
    q, k = rope(q, *table), rope(k, *table)
    window = config.attention_window_size
    out = softmax_attention(q, k, v, attention.head_dim**-0.5, window, rules.attention)
    return linear(out, attention.o_proj)


def reference_mlp(mlp, x: Tensor, rules) -> Tensor:
    activated = _gelu_tanh(linear(x, mlp.gate_proj), rules.activation)
    return linear(half_product(activated, linear(x, mlp.up_proj), rules.gate), mlp.down_proj)


def reference_logits(model: RecurrentGemmaForCausalLM, embeds: Tensor, rules) -> Tensor:
    hidden = embeds * model.model.normalizer
    table = None
    for layer in model.model.layers:
        normed = _norm(layer.temporal_pre_norm, hidden, rules)
        block = layer.temporal_block
        if hasattr(block, "rg_lru"):
            hidden = hidden + reference_recurrent(block, normed, rules)
        else:
            table = table or rope_table(block.rotary_emb, embeds.shape[1])
            hidden = hidden + reference_attention(block, normed, table, rules)
        hidden = hidden + reference_mlp(
            layer.mlp_block, _norm(layer.channel_pre_norm, hidden, rules), rules
        )
    logits = linear(_norm(model.model.final_norm, hidden, rules), model.lm_head)
    cap = model.config.logits_soft_cap
    ratio = torch.tanh(logits / cap) / (logits / cap)  # the identity rule on c tanh(x / c)
    return logits * (ratio.detach() if rules.activation else ratio)


def own_logits(model: RecurrentGemmaForCausalLM, embeds: Tensor) -> Tensor:
    """The language model's own soft-capped logits."""
    return model(inputs_embeds=embeds, use_cache=False).logits


ADAPTER = "transformers RecurrentGemma"
CASE = ArchitectureCase(
    name="hf_recurrent_gemma",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (4, 7)]),
    reference=reference_logits,
    own_output=own_logits,
    layer="model.layers.0.temporal_block.linear_out",
    num_layers=lambda model: model.config.num_hidden_layers,
    rule_kinds=("norm", "activation", "gate", "attention", "ssm"),
    conserving="cp_lrp",
    eager_attention=("gqa-window-eager",),
)

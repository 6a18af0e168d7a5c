"""Conformance case and independent float64 reference: transformers Bamba (Mamba-2 and
attention layers with gated MLPs; partial rotary embedding; eager and SDPA attention).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): the Mamba-2 mixer of the Mamba-2 case (a loop over time steps),
causal attention one query position at a time with the rotary embedding applied pair by
pair to the rotated channels (the model's own float32 position table), and the rules as
``detach`` calls.
"""

from __future__ import annotations

from helpers import (
    activation,
    half_product,
    linear,
    rms,
    rope,
    rope_table,
    softmax_attention,
)
from torch import Tensor
from transformers import BambaConfig, BambaForCausalLM

from cases import ArchitectureCase, Rule, lm_logits, perturbation, random_embeddings, times, tiny_lm
from cases.hf_mamba2 import reference_mixer

CONFIGS = {
    "gqa-eager": dict(
        hidden_size=16, intermediate_size=24, num_hidden_layers=3, vocab_size=32,
        num_attention_heads=4, num_key_value_heads=2, attn_layer_indices=[1],
        mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=4,
        mamba_chunk_size=4, mamba_d_conv=4, mamba_expand=2, attn_implementation="eager",
    ),
    "groups-mqa-biased-sdpa": dict(
        hidden_size=12, intermediate_size=20, num_hidden_layers=3, vocab_size=24,
        num_attention_heads=3, num_key_value_heads=1, attn_layer_indices=[1, 2],
        mamba_n_heads=4, mamba_d_head=6, mamba_n_groups=2, mamba_d_state=5,
        mamba_chunk_size=3, mamba_d_conv=3, mamba_expand=2, mamba_proj_bias=True,
        attention_bias=True, mlp_bias=True,
        rope_parameters=dict(rope_type="default", rope_theta=100.0, partial_rotary_factor=0.5),
        attn_implementation="sdpa",
    ),
}  # fmt: skip
LENGTH = 10  # not a multiple of either chunk size


def build_model(config: str, seed: int, zero_biases: bool) -> BambaForCausalLM:
    peaked = Rule(("*q_proj.weight", "*k_proj.weight"), times(40.0))  # the softmax matters
    perturb = perturbation(zero_biases, peaked)
    return tiny_lm(BambaForCausalLM, BambaConfig, CONFIGS[config], seed, perturb)


def _heads(x: Tensor, heads: int) -> Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def reference_attention(attention, x: Tensor, table, rules) -> Tensor:
    config = attention.config
    q = rope(_heads(linear(x, attention.q_proj), config.num_attention_heads), *table)
    k = rope(_heads(linear(x, attention.k_proj), config.num_key_value_heads), *table)
    v = _heads(linear(x, attention.v_proj), config.num_key_value_heads)
    out = softmax_attention(q, k, v, q.shape[-1] ** -0.5, None, rules.attention)
    return linear(out, attention.o_proj)


def reference_logits(model: BambaForCausalLM, embeds: Tensor, rules) -> Tensor:
    hidden = embeds
    table = rope_table(model.model.rotary_emb, embeds.shape[1])
    for layer in model.model.layers:
        norm = layer.input_layernorm
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        if layer.block_type == "linear_attention":
            hidden = hidden + reference_mixer(layer.mamba, normed, rules)
        else:
            hidden = hidden + reference_attention(layer.self_attn, normed, table, rules)
        norm, mlp = layer.pre_ff_layernorm, layer.feed_forward
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        activated = activation(linear(normed, mlp.gate_proj), "silu", rules.activation)
        product = half_product(activated, linear(normed, mlp.up_proj), rules.gate)
        hidden = hidden + linear(product, mlp.down_proj)
    final = model.model.final_layernorm
    return linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)


ADAPTER = "transformers Bamba"
CASE = ArchitectureCase(
    name="hf_bamba",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (4, 7)]),
    reference=reference_logits,
    own_output=lm_logits,
    layer="model.layers.0.mamba.out_proj",
    num_layers=lambda model: len(model.model.layers),
    rule_kinds=("norm", "silu", "ssm", "gate", "activation", "attention"),
    padding=True,
    conserving="cp_lrp",
    eager_attention=("gqa-eager",),
    padding_rtol=1e-6,
)

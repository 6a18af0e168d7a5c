"""Conformance case and independent float64 reference: transformers Llama and Mistral.

The reference re-implements the language models from their parameters with plain tensor
ops (no captum_mamba code): the rotary embedding pair by pair (with the model's own
position table, which transformers computes in float32), causal
softmax attention one query position at a time with Mistral's sliding window as an
explicit key range (not transformers' mask), grouped key/value heads by index, the rules
as ``detach`` calls. Configurations cover eager and SDPA attention, grouped-, multi-head
and multi-query attention, a sliding window shorter than the sequence, biases, GELU and
tied embeddings.
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
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

from cases import ArchitectureCase, Rule, lm_logits, perturbation, random_embeddings, times, tiny_lm

SHAPE = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=2, vocab_size=32)
CONFIGS = {
    "llama-gqa-eager": (LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=2), "eager"),
    "llama-mha-biased-gelu-tied-sdpa": (
        LlamaConfig,
        dict(
            num_attention_heads=2, num_key_value_heads=2, attention_bias=True, mlp_bias=True,
            hidden_act="gelu", tie_word_embeddings=True, rope_theta=500.0,
        ),
        "sdpa",
    ),
    "mistral-window-mqa-sdpa": (
        MistralConfig, dict(num_attention_heads=4, num_key_value_heads=1, sliding_window=3), "sdpa"
    ),
    "mistral-window-eager": (
        MistralConfig, dict(num_attention_heads=2, num_key_value_heads=1, sliding_window=4), "eager"
    ),
}  # fmt: skip
MODELS = {LlamaConfig: LlamaForCausalLM, MistralConfig: MistralForCausalLM}
LENGTH = 8


def build_model(config: str, seed: int, zero_biases: bool) -> nn.Module:
    config_class, fields, implementation = CONFIGS[config]
    perturb = perturbation(zero_biases, Rule(("*q_proj.weight", "*k_proj.weight"), times(15.0)))
    fields = {**SHAPE, **fields, "attn_implementation": implementation}
    return tiny_lm(MODELS[config_class], config_class, fields, seed, perturb)


def _split(x: Tensor, heads: int) -> Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def reference_attention(attention, x: Tensor, table: tuple[Tensor, Tensor], rules) -> Tensor:
    config = attention.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    q = _split(linear(x, attention.q_proj), heads)
    k = _split(linear(x, attention.k_proj), kv_heads)
    v = _split(linear(x, attention.v_proj), kv_heads)
    head_dim = q.shape[-1]
    q, k = rope(q, *table), rope(k, *table)
    window = getattr(config, "sliding_window", None)
    out = softmax_attention(q, k, v, head_dim**-0.5, window, rules.attention)
    return linear(out, attention.o_proj)


def reference_mlp(mlp, x: Tensor, rules) -> Tensor:
    function = "gelu" if mlp.config.hidden_act == "gelu" else "silu"
    activated = activation(linear(x, mlp.gate_proj), function, rules.activation)
    return linear(half_product(activated, linear(x, mlp.up_proj), rules.gate), mlp.down_proj)


def reference_logits(model: nn.Module, embeds: Tensor, rules) -> Tensor:
    hidden = embeds
    table = rope_table(model.model.rotary_emb, embeds.shape[1])
    for layer in model.model.layers:
        norm = layer.input_layernorm
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        hidden = hidden + reference_attention(layer.self_attn, normed, table, rules)
        norm = layer.post_attention_layernorm
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        hidden = hidden + reference_mlp(layer.mlp, normed, rules)
    final = model.model.norm
    return linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)


ADAPTER = "transformers Llama and Mistral"
CASE = ArchitectureCase(
    name="hf_llama",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (2, 7)]),
    reference=reference_logits,
    own_output=lm_logits,
    layer="model.layers.0.self_attn.o_proj",
    num_layers=lambda model: len(model.model.layers),
    rule_kinds=("norm", "activation", "gate", "attention"),
    padding=True,
    conserving="cp_lrp",
    eager_attention=("llama-gqa-eager", "mistral-window-eager"),
    padding_rtol=1e-6,
)

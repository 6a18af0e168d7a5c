"""Conformance case and independent float64 reference: transformers GraniteMoeHybrid
(Granite-4.0: Mamba-2 and attention layers, mixtures of gated experts plus a shared
expert, muP multipliers; with and without rotary embedding; eager and SDPA attention).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): input embeddings times ``embedding_multiplier``, the Mamba-2 mixer
of the Mamba-2 case, causal attention one query position at a time (scaled by
``attention_multiplier``, rotary embedding pair by pair with the model's own float32
position table), the mixture token by token (top-k logits by sorting, their softmax as
weights), residual branches times ``residual_multiplier``, logits divided by
``logits_scaling``; the rules as ``detach`` calls.
"""

from __future__ import annotations

import torch
from helpers import (
    activation,
    gated_mlp,
    half_product,
    linear,
    rms,
    rope,
    rope_table,
    softmax_attention,
)
from torch import Tensor
from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM

from cases import ArchitectureCase, Rule, perturbation, random_embeddings, set_noise, tiny_lm
from cases.hf_mamba2 import reference_mixer

MUP = dict(
    embedding_multiplier=3.0, logits_scaling=2.0, residual_multiplier=0.5, attention_multiplier=0.3
)
CONFIGS = {
    "rope-gqa-eager": dict(
        layer_types=["mamba", "attention", "mamba"], position_embedding_type="rope",
        hidden_size=16, intermediate_size=12, shared_intermediate_size=10, vocab_size=32,
        num_attention_heads=4, num_key_value_heads=2, mamba_n_heads=4, mamba_d_head=8,
        mamba_n_groups=1, mamba_d_state=4, mamba_chunk_size=4, mamba_d_conv=4,
        mamba_expand=2, num_local_experts=4, num_experts_per_tok=2, **MUP,
        attn_implementation="eager",
    ),
    "nope-mqa-biased-sdpa": dict(
        layer_types=["mamba", "attention"], hidden_size=12, intermediate_size=10,
        shared_intermediate_size=8, vocab_size=24, num_attention_heads=3,
        num_key_value_heads=1, mamba_n_heads=4, mamba_d_head=6, mamba_n_groups=2,
        mamba_d_state=5, mamba_chunk_size=3, mamba_d_conv=3, mamba_expand=2,
        mamba_proj_bias=True, attention_bias=True, num_local_experts=3,
        num_experts_per_tok=2, **MUP, attn_implementation="sdpa",
    ),
}  # fmt: skip
LENGTH = 10


def build_model(config: str, seed: int, zero_biases: bool) -> GraniteMoeHybridForCausalLM:
    perturb = perturbation(
        zero_biases,
        Rule(("*q_proj.weight", "*k_proj.weight", "*router.weight"), set_noise(2.0)),  # peaked
        Rule(("*experts.gate_up_proj", "*experts.down_proj"), set_noise(0.5)),
    )
    fields = {"num_hidden_layers": len(CONFIGS[config]["layer_types"]), **CONFIGS[config]}
    model_class, config_class = GraniteMoeHybridForCausalLM, GraniteMoeHybridConfig
    return tiny_lm(model_class, config_class, fields, seed, perturb, eager_experts=True)


def _heads(x: Tensor, heads: int) -> Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def reference_attention(attention, x: Tensor, table, rules) -> Tensor:
    config = attention.config
    q = _heads(linear(x, attention.q_proj), config.num_attention_heads)
    k = _heads(linear(x, attention.k_proj), config.num_key_value_heads)
    v = _heads(linear(x, attention.v_proj), config.num_key_value_heads)
    if table is not None:
        q, k = rope(q, *table), rope(k, *table)
    out = softmax_attention(q, k, v, config.attention_multiplier, None, rules.attention)
    return linear(out, attention.o_proj)


def reference_moe(moe, x: Tensor, rules) -> Tensor:
    """Token by token: the top-k logits by sorting, their softmax as expert weights, each
    expert a gated MLP."""
    inner = moe.experts.intermediate_dim
    flat = x.reshape(-1, x.shape[-1])
    rows = []
    for u in flat:
        logits = moe.router.weight @ u
        chosen = torch.argsort(logits.detach(), descending=True)[: moe.router.top_k].tolist()
        top = torch.stack([logits[e] for e in chosen])
        weights = torch.exp(top - top.max()) / torch.exp(top - top.max()).sum()
        if rules.router:
            weights = weights.detach()
        total = 0
        for weight, e in zip(weights, chosen, strict=True):
            gate_up = moe.experts.gate_up_proj[e]
            down = moe.experts.down_proj[e]
            output = gated_mlp(u[None], gate_up[:inner], gate_up[inner:], down, "silu", rules)
            total = total + weight * output[0]
        rows.append(total)
    return torch.stack(rows).reshape(x.shape)


def reference_shared(mlp, x: Tensor, rules) -> Tensor:
    gate, up = linear(x, mlp.input_linear).chunk(2, dim=-1)
    product = half_product(activation(gate, "silu", rules.activation), up, rules.gate)
    return linear(product, mlp.output_linear)


def reference_logits(model: GraniteMoeHybridForCausalLM, embeds: Tensor, rules) -> Tensor:
    config = model.config
    hidden = embeds * config.embedding_multiplier
    rotary = model.model.rotary_emb
    table = None if rotary is None else rope_table(rotary, embeds.shape[1])
    for layer in model.model.layers:
        norm = layer.input_layernorm
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        if layer.mamba is not None:
            mixed = reference_mixer(layer.mamba, normed, rules)
        else:
            mixed = reference_attention(layer.self_attn, normed, table, rules)
        hidden = hidden + config.residual_multiplier * mixed
        norm = layer.post_attention_layernorm
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        moe = reference_moe(layer.block_sparse_moe, normed, rules)
        feed_forward = moe + reference_shared(layer.shared_mlp, normed, rules)
        hidden = hidden + config.residual_multiplier * feed_forward
    final = model.model.norm
    logits = linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)
    return logits / config.logits_scaling


def model_logits(model: GraniteMoeHybridForCausalLM, embeds: Tensor, **kwargs) -> Tensor:
    """The model's own forward (its logits keep the dtype of the computation)."""
    return model(inputs_embeds=embeds, use_cache=False, **kwargs).logits


ADAPTER = "transformers GraniteMoeHybrid"
CASE = ArchitectureCase(
    name="hf_granitemoehybrid",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (4, 7)]),
    reference=reference_logits,
    own_output=model_logits,
    layer="model.layers.0.mamba.out_proj",
    num_layers=lambda model: len(model.model.layers),
    rule_kinds=("norm", "silu", "ssm", "gate", "activation", "attention", "router"),
    padding=True,
    conserving="cp_lrp",
    eager_attention=("rope-gqa-eager",),
    padding_rtol=1e-6,
)

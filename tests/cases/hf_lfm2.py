"""Conformance case and independent float64 reference: transformers LFM2 and LFM2-MoE
(gated short convolutions and attention layers with per-head query/key norms, gated MLPs
or mixtures of experts with a sigmoid router, expert bias, normalised or not; eager and
SDPA attention, grouped and multi-query heads).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): the short convolution tap by tap over time
(``helpers.causal_conv``) between its two products, causal attention one query position
at a time with the rotary embedding pair by pair (the model's own float32 position
table), the experts token by token, and the rules as ``detach`` calls.
"""

from __future__ import annotations

import torch
from helpers import (
    activation,
    causal_conv,
    half_product,
    linear,
    rms,
    rope,
    rope_table,
    softmax_attention,
)
from torch import Tensor
from transformers import Lfm2Config, Lfm2ForCausalLM, Lfm2MoeConfig, Lfm2MoeForCausalLM

from cases import (
    ArchitectureCase,
    Rule,
    lm_logits,
    perturbation,
    random_embeddings,
    set_noise,
    times,
    tiny_lm,
)

SHAPE = dict(vocab_size=32, block_auto_adjust_ff_dim=False, tie_word_embeddings=False)
CONFIGS = {
    "gqa-eager": dict(
        hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, full_attn_idxs=[1], conv_L_cache=3,
        attn_implementation="eager",
    ),
    "mqa-conv-biased-sdpa": dict(
        hidden_size=12, intermediate_size=20, num_hidden_layers=4, num_attention_heads=3,
        num_key_value_heads=1, full_attn_idxs=[1, 3], conv_L_cache=4, conv_bias=True,
        rope_parameters=dict(rope_type="default", rope_theta=100.0),
        attn_implementation="sdpa",
    ),
    "moe-expert-bias-eager": dict(
        hidden_size=16, intermediate_size=24, moe_intermediate_size=10, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2,
        layer_types=["conv", "full_attention", "conv", "full_attention"], num_dense_layers=1,
        num_experts=5, num_experts_per_tok=2, use_expert_bias=True, routed_scaling_factor=1.7,
        attn_implementation="eager",
    ),
    "moe-mqa-unnormalised-sdpa": dict(
        hidden_size=12, intermediate_size=20, moe_intermediate_size=8, num_hidden_layers=3,
        num_attention_heads=3, num_key_value_heads=1,
        layer_types=["full_attention", "conv", "conv"], num_dense_layers=0,
        num_experts=4, num_experts_per_tok=3, use_expert_bias=False,
        norm_topk_prob=False, conv_L_cache=2, attn_implementation="sdpa",
    ),
}  # fmt: skip
LENGTH = 9


def build_model(config: str, seed: int, zero_biases: bool) -> Lfm2ForCausalLM:
    peaked = Rule(("*q_proj.weight", "*k_proj.weight"), times(10.0))  # the softmax matters
    perturb = perturbation(zero_biases, peaked)
    fields = {**SHAPE, **CONFIGS[config]}
    if config.startswith("moe"):
        del fields["block_auto_adjust_ff_dim"]
        bias = Rule(("*expert_bias",), set_noise(0.3))  # a buffer: chooses other experts
        experts = Rule(("*gate_up_proj", "*down_proj"), times(5.0))
        return tiny_lm(
            Lfm2MoeForCausalLM,
            Lfm2MoeConfig,
            fields,
            seed,
            perturbation(zero_biases, peaked, experts),
            perturbation(zero_biases, bias),
            eager_experts=True,
        )
    return tiny_lm(Lfm2ForCausalLM, Lfm2Config, fields, seed, perturb)


def _heads(x: Tensor, heads: int) -> Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def reference_short_conv(module, x: Tensor, rules) -> Tensor:
    B, C, u = linear(x, module.in_proj).chunk(3, dim=-1)
    mixed = causal_conv(half_product(B, u, rules.gate), module.conv)
    return linear(half_product(C, mixed, rules.gate), module.out_proj)


def reference_attention(attention, x: Tensor, table, rules) -> Tensor:
    config = attention.config
    qn, kn = attention.q_layernorm, attention.k_layernorm
    q = _heads(linear(x, attention.q_proj), config.num_attention_heads)
    k = _heads(linear(x, attention.k_proj), config.num_key_value_heads)
    q = rope(rms(q, qn.weight, qn.variance_epsilon, rules.norm), *table)
    k = rope(rms(k, kn.weight, kn.variance_epsilon, rules.norm), *table)
    v = _heads(linear(x, attention.v_proj), config.num_key_value_heads)
    out = softmax_attention(q, k, v, q.shape[-1] ** -0.5, None, rules.attention)
    return linear(out, attention.out_proj)


def reference_experts(moe, x: Tensor, rules) -> Tensor:
    """Each token through its top-k experts one at a time, weighted by the router's
    weights (constants under the router rule)."""
    router, experts = moe.gate, moe.experts
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        scores = torch.sigmoid(router.weight @ flat[t])
        choice = scores + moe.expert_bias if router.use_expert_bias else scores
        index = torch.topk(choice, router.top_k).indices
        weights = scores[index]
        if router.norm_topk_prob:
            weights = weights / (weights.sum() + 1e-6)
        weights = weights * router.routed_scaling_factor
        if rules.router:
            weights = weights.detach()
        for weight, e in zip(weights, index.tolist(), strict=True):
            gate, up = (experts.gate_up_proj[e] @ flat[t]).chunk(2)
            product = half_product(activation(gate, "silu", rules.activation), up, rules.gate)
            out[t] = out[t] + weight * (experts.down_proj[e] @ product)
    return out.reshape(x.shape)


def reference_mlp(mlp, x: Tensor, rules) -> Tensor:
    if hasattr(mlp, "experts"):
        return reference_experts(mlp, x, rules)
    activated = activation(linear(x, mlp.w1), "silu", rules.activation)
    return linear(half_product(activated, linear(x, mlp.w3), rules.gate), mlp.w2)


def reference_logits(model: Lfm2ForCausalLM, embeds: Tensor, rules) -> Tensor:
    hidden = embeds
    rotary = getattr(model.model, "rotary_emb", None) or model.model.pos_emb  # LFM2-MoE
    table = rope_table(rotary, embeds.shape[1])
    for layer in model.model.layers:
        norm = layer.operator_norm
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        if layer.is_attention_layer:
            hidden = hidden + reference_attention(layer.self_attn, normed, table, rules)
        else:
            hidden = hidden + reference_short_conv(layer.conv, normed, rules)
        norm = layer.ffn_norm
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        hidden = hidden + reference_mlp(layer.feed_forward, normed, rules)
    final = model.model.embedding_norm
    return linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)


ADAPTER = "transformers LFM2 and LFM2-MoE"
CASE = ArchitectureCase(
    name="hf_lfm2",
    adapter=ADAPTER,
    configs=tuple(c for c in CONFIGS if not c.startswith("moe")),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (4, 7)]),
    reference=reference_logits,
    own_output=lm_logits,
    layer="model.layers.0.conv.out_proj",
    # the baselines record the attention layers; a short convolution is not a recorded
    # operation (rollout passes its layers as the identity)
    num_layers=lambda model: sum(layer.is_attention_layer for layer in model.model.layers),
    rule_kinds=("norm", "activation", "gate", "attention"),
    padding=True,
    conserving="cp_lrp",
    eager_attention=("gqa-eager",),
    padding_rtol=1e-6,
)

"""Conformance case and independent float64 reference: transformers Kimi-Linear (Kimi Delta
Attention with one decay per key channel, multi-head latent attention with a full-rank or
low-rank query projection, mixtures of experts with the group-limited sigmoid router and
shared experts, dense gated MLPs; eager and SDPA attention).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): the convolution tap by tap, the gated delta rule one time step at
a time on the state matrix with a decay per key channel (``helpers.delta_loop``), the
latent attention one query position at a time, the router token by token, and the rules
as ``detach`` calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import (
    causal_conv,
    delta_loop,
    gated_mlp,
    half_product,
    l2_normalised,
    linear,
    rms,
    sigmoid,
    silu,
    softmax_attention,
)
from torch import Tensor
from transformers import KimiLinearConfig, KimiLinearForCausalLM

from cases import (
    ArchitectureCase,
    Rule,
    add_noise,
    lm_logits,
    perturbation,
    random_embeddings,
    tiny_model,
)

SHAPE = dict(vocab_size=32, tie_word_embeddings=False, initializer_range=0.2, pad_token_id=0,
             bos_token_id=None, eos_token_id=None)  # fmt: skip
CONFIGS = {
    "grouped-router-eager": dict(
        hidden_size=16, intermediate_size=24, moe_intermediate_size=8, num_hidden_layers=3,
        num_attention_heads=2, num_key_value_heads=2, kv_lora_rank=6, q_lora_rank=None,
        qk_rope_head_dim=2, v_head_dim=4, qk_nope_head_dim=3, num_experts=4,
        num_experts_per_token=2, num_expert_group=2, topk_group=1, linear_head_dim=4,
        linear_num_heads=2, linear_conv_kernel_dim=3,
        layer_types=["linear_attention", "full_attention", "linear_attention"],
        mlp_layer_types=["dense", "sparse", "sparse"], attn_implementation="eager",
    ),
    "low-rank-sdpa": dict(
        hidden_size=12, intermediate_size=20, moe_intermediate_size=6, num_hidden_layers=3,
        num_attention_heads=3, num_key_value_heads=3, kv_lora_rank=5, q_lora_rank=7,
        qk_rope_head_dim=2, v_head_dim=3, qk_nope_head_dim=2, num_experts=3,
        num_experts_per_token=2, num_expert_group=1, topk_group=1, moe_renormalize=False,
        routed_scaling_factor=1.5, linear_head_dim=5, linear_num_heads=3,
        linear_conv_kernel_dim=4, num_shared_experts=2,
        layer_types=["linear_attention", "linear_attention", "full_attention"],
        mlp_layer_types=["sparse", "dense", "sparse"], attn_implementation="sdpa",
    ),
}  # fmt: skip
LENGTH = 9


def tiny_config(name: str = "grouped-router-eager", **changes) -> KimiLinearConfig:
    """A tiny Kimi-Linear configuration of this case (``changes`` override its fields),
    for toy tasks and benchmarks that need one built offline."""
    fields = {**SHAPE, **CONFIGS[name], **changes}
    implementation = fields.pop("attn_implementation", None)
    config = KimiLinearConfig(**fields)
    if implementation is not None:
        config._attn_implementation = implementation
    config._experts_implementation = "eager"  # grouped_mm has no float64
    return config


def build_model(config: str, seed: int, zero_biases: bool) -> KimiLinearForCausalLM:
    decays = Rule(("*A_log",), add_noise(0.5))
    time_steps = Rule(("*dt_bias",), add_noise(0.5))
    corrections = Rule(("*e_score_correction_bias",), add_noise(0.1))
    perturb = perturbation(zero_biases, decays, time_steps, weights=None)
    return tiny_model(
        lambda: KimiLinearForCausalLM(tiny_config(config)),
        seed,
        perturb,
        lambda name, buffer: corrections.change(buffer) if "correction" in name else None,
    )


def reference_kda(net, x: Tensor, rules) -> Tensor:
    heads, dk = net.num_heads, net.head_dim
    batch, length, _ = x.shape
    mixed = torch.cat([linear(x, net.q_proj), linear(x, net.k_proj), linear(x, net.v_proj)], -1)
    mixed = silu(causal_conv(mixed, net.conv1d), rules.silu)
    q, k, v = (
        t.view(batch, length, heads, dk).transpose(1, 2) for t in mixed.split(heads * dk, -1)
    )
    q = l2_normalised(q, rules.norm) * dk**-0.5
    k = l2_normalised(k, rules.norm)
    beta = sigmoid(linear(x, net.b_proj), rules.activation).transpose(1, 2)
    forget = net.forget_gate
    raw = linear(linear(x, forget.f_a_proj), forget.f_b_proj) + forget.dt_bias
    rate = torch.exp(forget.A_log).view(heads, 1)
    decay = torch.exp(-rate * F.softplus(raw.view(batch, length, heads, dk))).transpose(1, 2)
    out = delta_loop(q, k, v, beta, decay, rules.attention).transpose(1, 2)
    normed = rms(out, net.o_norm.weight, net.o_norm.variance_epsilon, rules.norm)
    gate = linear(linear(x, net.g_a_proj), net.g_b_proj).view(out.shape)
    gated = half_product(normed, sigmoid(gate, rules.activation), rules.gate)
    return linear(gated.flatten(2), net.o_proj)


def reference_mla(attention, x: Tensor, rules) -> Tensor:
    batch, length, _ = x.shape
    if attention.q_lora_rank is None:
        q = linear(x, attention.q_proj)
    else:
        norm = attention.q_a_layernorm
        q = rms(linear(x, attention.q_a_proj), norm.weight, norm.variance_epsilon, rules.norm)
        q = linear(q, attention.q_b_proj)
    q = q.view(batch, length, -1, attention.qk_head_dim).transpose(1, 2)
    heads = q.shape[1]
    compressed = linear(x, attention.kv_a_proj_with_mqa)
    latent, shared = (
        compressed[..., : attention.kv_lora_rank],
        compressed[..., attention.kv_lora_rank :],
    )
    norm = attention.kv_a_layernorm
    kv = linear(rms(latent, norm.weight, norm.variance_epsilon, rules.norm), attention.kv_b_proj)
    kv = kv.view(batch, length, heads, -1).transpose(1, 2)
    nope = attention.qk_nope_head_dim
    k = torch.cat([kv[..., :nope], shared[:, None].expand(-1, heads, -1, -1)], -1)
    out = softmax_attention(q, k, kv[..., nope:], attention.scaling, None, rules.attention)
    return linear(out, attention.o_proj)


def _mlp(mlp, x: Tensor, rules) -> Tensor:
    weights = (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
    return gated_mlp(x, *weights, "silu", rules)


def reference_moe(moe, x: Tensor, rules) -> Tensor:
    """Token by token: sigmoid scores, the groups by the sum of their two best corrected
    scores, the top-k corrected scores inside the kept groups, their (renormalised,
    scaled) scores as weights; plus the shared experts."""
    router, inner = moe.gate, moe.experts.intermediate_dim
    size = router.num_experts // router.num_group
    rows = []
    for u in x.reshape(-1, x.shape[-1]):
        scores = 1.0 / (1.0 + torch.exp(-(router.weight @ u)))
        choice = (scores + router.e_score_correction_bias).detach()
        groups = [sorted(choice[g * size : (g + 1) * size].tolist(), reverse=True)
                  for g in range(router.num_group)]  # fmt: skip
        ranked = sorted(range(router.num_group), key=lambda g: -(groups[g][0] + groups[g][1]))
        allowed = [e for g in ranked[: router.topk_group] for e in range(g * size, (g + 1) * size)]
        chosen = sorted(allowed, key=lambda e: -float(choice[e]))[: router.top_k]
        weights = scores[chosen]
        if router.norm_topk_prob:
            weights = weights / (weights.sum() + 1e-20)
        weights = weights * router.routed_scaling_factor
        if rules.router:
            weights = weights.detach()
        total = torch.zeros_like(u)
        for weight, e in zip(weights, chosen, strict=True):
            gate_up = moe.experts.gate_up_proj[e]
            total = (
                total
                + weight
                * gated_mlp(
                    u[None],
                    gate_up[:inner],
                    gate_up[inner:],
                    moe.experts.down_proj[e],
                    "silu",
                    rules,
                )[0]
            )
        rows.append(total)
    return torch.stack(rows).reshape(x.shape) + _mlp(moe.shared_experts, x, rules)


def reference_logits(model: KimiLinearForCausalLM, embeds: Tensor, rules) -> Tensor:
    hidden = embeds
    for layer in model.model.layers:
        norm = layer.input_layernorm
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        if layer.block_type == "linear_attention":
            hidden = hidden + reference_kda(layer.self_attn, normed, rules)
        else:
            hidden = hidden + reference_mla(layer.self_attn, normed, rules)
        norm, mlp = layer.post_attention_layernorm, layer.mlp
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        if hasattr(mlp, "experts"):
            hidden = hidden + reference_moe(mlp, normed, rules)
        else:
            hidden = hidden + _mlp(mlp, normed, rules)
    final = model.model.norm
    return linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)


ADAPTER = "transformers Kimi-Linear"
CASE = ArchitectureCase(
    name="hf_kimi_linear",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (4, 7)]),
    reference=reference_logits,
    own_output=lm_logits,
    layer="model.layers.0.self_attn.o_proj",
    num_layers=lambda model: model.config.num_hidden_layers,
    rule_kinds=("norm", "silu", "gate", "activation", "attention", "router"),
    conserving="cp_lrp",
)

"""Conformance case and independent float64 reference: transformers Qwen3-Next (Gated
DeltaNet layers with grouped value heads, gated softmax attention with normalised queries
and keys, a partial rotary embedding and grouped key/value heads, mixtures of experts
with a gated shared expert, dense gated MLPs; eager and SDPA attention).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): the projections split as the checkpoints lay them out (per key
head: query, key, the values and gates of its value heads), the convolution tap by tap,
the gated delta rule one time step at a time on the state matrix (decay, erase, write,
read), attention one query position at a time, the router token by token, and the rules
as ``detach`` calls: the decays, step sizes and erasures constant; AttnLRP's uniform rule
as the half rule on each write ``k (beta v)^T`` and each read ``S^T q``; CP-LRP's constant
keys and queries.
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
    rope,
    rope_table,
    sigmoid,
    silu,
)
from helpers import softmax_attention as softmax_attention_loop
from torch import Tensor
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

from cases import (
    ArchitectureCase,
    Rule,
    add_noise,
    lm_logits,
    perturbation,
    random_embeddings,
    tiny_model,
)

SHAPE = dict(vocab_size=32, tie_word_embeddings=False, initializer_range=0.2, rms_norm_eps=1e-6)
CONFIGS = {
    "grouped-moe-eager": dict(
        hidden_size=16, intermediate_size=24, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, linear_conv_kernel_dim=3, linear_key_head_dim=4,
        linear_value_head_dim=6, linear_num_key_heads=2, linear_num_value_heads=4,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
        shared_expert_intermediate_size=10, mlp_only_layers=[1],
        layer_types=["linear_attention", "full_attention", "linear_attention", "full_attention"],
        attn_implementation="eager",
    ),
    "mha-dense-sdpa": dict(
        hidden_size=12, intermediate_size=20, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2, head_dim=6, linear_conv_kernel_dim=4, linear_key_head_dim=5,
        linear_value_head_dim=3, linear_num_key_heads=3, linear_num_value_heads=3,
        num_experts=3, num_experts_per_tok=1, moe_intermediate_size=6, norm_topk_prob=False,
        shared_expert_intermediate_size=8, decoder_sparse_step=2, attention_bias=True,
        layer_types=["linear_attention", "linear_attention", "full_attention"],
        rope_parameters=dict(rope_type="default", rope_theta=100.0, partial_rotary_factor=0.5),
        attn_implementation="sdpa",
    ),
}  # fmt: skip
LENGTH = 9


def tiny_config(name: str = "grouped-moe-eager", **changes) -> Qwen3NextConfig:
    """A tiny Qwen3-Next configuration of this case (``changes`` override its fields), for
    toy tasks and benchmarks that need one built offline."""
    fields = {**SHAPE, **CONFIGS[name], **changes}
    implementation = fields.pop("attn_implementation", None)
    config = Qwen3NextConfig(**fields)
    if implementation is not None:
        config._attn_implementation = implementation
    config._experts_implementation = "eager"  # grouped_mm has no float64
    return config


def build_model(config: str, seed: int, zero_biases: bool) -> Qwen3NextForCausalLM:
    decays = Rule(("*A_log",), add_noise(0.5))
    time_steps = Rule(("*dt_bias",), add_noise(0.5))
    perturb = perturbation(zero_biases, decays, time_steps, weights=None)
    return tiny_model(lambda: Qwen3NextForCausalLM(tiny_config(config)), seed, perturb)


def reference_delta_net(net, x: Tensor, rules) -> Tensor:
    nk, nv, dk, dv = net.num_k_heads, net.num_v_heads, net.head_k_dim, net.head_v_dim
    group = nv // nk
    batch, length, _ = x.shape
    qkvz = linear(x, net.in_proj_qkvz).view(batch, length, nk, -1)
    q, k, v, z = qkvz.split([dk, dk, group * dv, group * dv], -1)
    ba = linear(x, net.in_proj_ba).view(batch, length, nk, 2 * group)
    b, a = ba[..., :group].reshape(batch, length, nv), ba[..., group:].reshape(batch, length, nv)
    mixed = torch.cat([q.flatten(2), k.flatten(2), v.flatten(2)], -1)
    mixed = silu(causal_conv(mixed, net.conv1d), rules.silu)
    q, k, v = mixed.split([nk * dk, nk * dk, nv * dv], -1)
    heads = lambda t, n: t.view(batch, length, n, -1).transpose(1, 2)  # noqa: E731
    q = heads(q, nk).repeat_interleave(group, 1)
    k = heads(k, nk).repeat_interleave(group, 1)
    q = l2_normalised(q, rules.norm) * dk**-0.5
    k = l2_normalised(k, rules.norm)
    beta = sigmoid(b, rules.activation).transpose(1, 2)
    decay = torch.exp(-torch.exp(net.A_log) * F.softplus(a + net.dt_bias)).transpose(1, 2)
    out = delta_loop(q, k, heads(v, nv), beta, decay, rules.attention).transpose(1, 2)
    normed = rms(out, net.norm.weight, net.norm.variance_epsilon, rules.norm)
    gated = half_product(normed, silu(z.reshape(out.shape), rules.silu), rules.gate)
    return linear(gated.flatten(2), net.out_proj)


def reference_attention(attention, x: Tensor, table, rules) -> Tensor:
    hd = attention.head_dim
    batch, length, _ = x.shape
    qg = linear(x, attention.q_proj).view(batch, length, -1, 2 * hd)
    q, gate = qg[..., :hd], qg[..., hd:]
    k = linear(x, attention.k_proj).view(batch, length, -1, hd)
    v = linear(x, attention.v_proj).view(batch, length, -1, hd).transpose(1, 2)
    q = rms(q, 1.0 + attention.q_norm.weight, attention.q_norm.eps, rules.norm).transpose(1, 2)
    k = rms(k, 1.0 + attention.k_norm.weight, attention.k_norm.eps, rules.norm).transpose(1, 2)
    q, k = rope(q, *table), rope(k, *table)
    out = softmax_attention_loop(q, k, v, hd**-0.5, None, rules.attention)
    gated = half_product(out, sigmoid(gate.reshape(out.shape), rules.activation), rules.gate)
    return linear(gated, attention.o_proj)


def reference_moe(moe, x: Tensor, rules) -> Tensor:
    """Token by token: the router's softmax, the top-k by sorting (renormalised with
    ``norm_topk_prob``), gated-MLP experts, plus the gated shared expert."""
    flat = x.reshape(-1, x.shape[-1])
    inner = moe.experts.intermediate_dim
    router = moe.gate
    shared = moe.shared_expert
    rows = []
    for u in flat:
        logits = router.weight @ u
        probabilities = torch.exp(logits - logits.max()) / torch.exp(logits - logits.max()).sum()
        chosen = torch.argsort(probabilities.detach(), descending=True)[: router.top_k].tolist()
        weights = probabilities[chosen]
        if router.norm_topk_prob:
            weights = weights / weights.sum()
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
        common = gated_mlp(
            u[None], shared.gate_proj.weight, shared.up_proj.weight, shared.down_proj.weight,
            "silu", rules,
        )[0]  # fmt: skip
        weight = sigmoid(moe.shared_expert_gate.weight @ u, rules.activation)
        rows.append(total + half_product(common, weight, rules.gate))
    return torch.stack(rows).reshape(x.shape)


def reference_logits(model: Qwen3NextForCausalLM, embeds: Tensor, rules) -> Tensor:
    hidden = embeds
    table = rope_table(model.model.rotary_emb, embeds.shape[1])
    for layer in model.model.layers:
        norm = layer.input_layernorm
        normed = rms(hidden, 1.0 + norm.weight, norm.eps, rules.norm)
        if layer.block_type == "linear_attention":
            hidden = hidden + reference_delta_net(layer.linear_attn, normed, rules)
        else:
            hidden = hidden + reference_attention(layer.self_attn, normed, table, rules)
        norm, mlp = layer.post_attention_layernorm, layer.mlp
        normed = rms(hidden, 1.0 + norm.weight, norm.eps, rules.norm)
        if hasattr(mlp, "experts"):
            hidden = hidden + reference_moe(mlp, normed, rules)
        else:
            hidden = hidden + gated_mlp(
                normed, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, "silu",
                rules,
            )  # fmt: skip
    final = model.model.norm
    return linear(rms(hidden, 1.0 + final.weight, final.eps, rules.norm), model.lm_head)


ADAPTER = "transformers Qwen3-Next"
CASE = ArchitectureCase(
    name="hf_qwen3_next",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (4, 7)]),
    reference=reference_logits,
    own_output=lm_logits,
    layer="model.layers.0.linear_attn.out_proj",
    num_layers=lambda model: model.config.num_hidden_layers,
    rule_kinds=("norm", "silu", "gate", "activation", "attention", "router"),
    conserving="cp_lrp",
    eager_attention=(),
)

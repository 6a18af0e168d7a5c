"""Conformance case and independent float64 reference: transformers Nemotron-H (Mamba-2,
attention, squared-ReLU MLP and mixture-of-experts blocks; eager and SDPA attention).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): the Mamba-2 mixer of the Mamba-2 case (a loop over time steps),
causal attention one query position at a time, the squared ReLU as ``relu * relu`` with
the uniform rule, and the mixture of experts token by token: sigmoid scores, the best
groups of the bias-corrected scores, the top-k experts among them by sorting, normalised
and scaled weights, experts between the latent projections, plus the shared expert.
"""

from __future__ import annotations

import torch
from helpers import activation, linear, rms, softmax_attention
from torch import Tensor, nn
from transformers import NemotronHConfig, NemotronHForCausalLM

from cases import (
    ArchitectureCase,
    Rule,
    lm_logits,
    perturbation,
    random_embeddings,
    set_noise,
    tiny_lm,
)
from cases.hf_mamba2 import reference_mixer

CONFIGS = {
    "groups-eager": dict(
        layers_block_type=["linear_attention", "moe", "full_attention", "mlp"],
        hidden_size=16, intermediate_size=24, vocab_size=32, num_attention_heads=4,
        num_key_value_heads=2, head_dim=4, mamba_num_heads=4, mamba_head_dim=8, n_groups=1,
        ssm_state_size=4, chunk_size=4, conv_kernel=4, n_routed_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=12, moe_shared_expert_intermediate_size=10,
        n_group=2, topk_group=1, routed_scaling_factor=1.5, attn_implementation="eager",
    ),
    "latent-mqa-biased-sdpa": dict(
        layers_block_type=["linear_attention", "full_attention", "moe"],
        hidden_size=12, intermediate_size=20, vocab_size=24, num_attention_heads=2,
        num_key_value_heads=1, head_dim=6, mamba_num_heads=4, mamba_head_dim=6, n_groups=2,
        ssm_state_size=5, chunk_size=3, conv_kernel=3, use_bias=True, mlp_bias=True,
        n_routed_experts=3, num_experts_per_tok=2, moe_intermediate_size=10,
        moe_shared_expert_intermediate_size=8, moe_latent_size=8, norm_topk_prob=False,
        attn_implementation="sdpa",
    ),
}  # fmt: skip
LENGTH = 10


def perturb_buffer(name: str, buffer: Tensor) -> None:
    if name.endswith("e_score_correction_bias"):
        buffer.copy_(0.2 * torch.randn_like(buffer))


def build_model(config: str, seed: int, zero_biases: bool) -> NemotronHForCausalLM:
    perturb = perturbation(
        zero_biases,
        Rule(("*q_proj.weight", "*k_proj.weight", "*gate.weight"), set_noise(2.0)),  # peaked
        Rule(("*experts.up_proj", "*experts.down_proj"), set_noise(0.5)),
    )
    model_class, config_class = NemotronHForCausalLM, NemotronHConfig
    return tiny_lm(
        model_class,
        config_class,
        CONFIGS[config],
        seed,
        perturb,
        perturb_buffer,
        eager_experts=True,
    )


def reference_attention(attention, x: Tensor, rules) -> Tensor:
    heads, kv_heads = attention.config.num_attention_heads, attention.config.num_key_value_heads
    q = linear(x, attention.q_proj).unflatten(-1, (heads, -1)).transpose(1, 2)
    k = linear(x, attention.k_proj).unflatten(-1, (kv_heads, -1)).transpose(1, 2)
    v = linear(x, attention.v_proj).unflatten(-1, (kv_heads, -1)).transpose(1, 2)
    out = softmax_attention(q, k, v, q.shape[-1] ** -0.5, None, rules.attention)
    return linear(out, attention.o_proj)


def reference_mlp(mlp, x: Tensor, rules) -> Tensor:
    return linear(activation(linear(x, mlp.up_proj), "relu2", rules.activation), mlp.down_proj)


def _latent(layer: nn.Module, x: Tensor) -> Tensor:
    return x if isinstance(layer, nn.Identity) else linear(x, layer)


def reference_moe(moe, x: Tensor, rules) -> Tensor:
    """Token by token, as described in the module docstring."""
    router, experts = moe.gate, moe.experts
    per_group = router.num_experts // router.num_group
    flat = x.reshape(-1, x.shape[-1])
    rows = []
    for u in flat:
        scores = 1.0 / (1.0 + torch.exp(-(router.weight @ u)))
        choice = (scores + router.e_score_correction_bias).detach()
        group_scores = [
            choice[g * per_group : (g + 1) * per_group].sort(descending=True).values[:2].sum()
            for g in range(router.num_group)
        ]
        groups = torch.argsort(torch.stack(group_scores), descending=True)[: router.topk_group]
        allowed = [e for e in range(router.num_experts) if e // per_group in groups.tolist()]
        ranked = sorted(allowed, key=lambda e: -float(choice[e]))[: router.top_k]
        weights = torch.stack([scores[e] for e in ranked])
        if router.norm_topk_prob:
            weights = weights / (weights.sum() + 1e-20)
        weights = weights * router.routed_scaling_factor
        if rules.router:
            weights = weights.detach()
        z = _latent(moe.fc1_latent_proj, u)
        total = 0
        for weight, e in zip(weights, ranked, strict=True):
            hidden = activation(experts.up_proj[e] @ z, "relu2", rules.activation)
            total = total + weight * (experts.down_proj[e] @ hidden)
        rows.append(_latent(moe.fc2_latent_proj, total))
    routed = torch.stack(rows).reshape(x.shape)
    return routed + reference_mlp(moe.shared_experts, x, rules)


def reference_logits(model: NemotronHForCausalLM, embeds: Tensor, rules) -> Tensor:
    hidden = embeds
    for block in model.model.layers:
        normed = rms(hidden, block.norm.weight, block.norm.variance_epsilon, rules.norm)
        mixer = {
            "linear_attention": reference_mixer,
            "full_attention": reference_attention,
            "moe": reference_moe,
            "mlp": reference_mlp,
        }[block.block_type]
        hidden = hidden + mixer(block.mixer, normed, rules)
    final = model.model.norm_f
    return linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)


ADAPTER = "transformers Nemotron-H"
CASE = ArchitectureCase(
    name="hf_nemotron_h",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (4, 7)]),
    reference=reference_logits,
    own_output=lm_logits,
    layer="model.layers.0.mixer.out_proj",
    num_layers=lambda model: sum(
        block.block_type in ("linear_attention", "full_attention") for block in model.model.layers
    ),
    rule_kinds=("norm", "silu", "ssm", "gate", "activation", "attention", "router"),
    padding=True,
    conserving="cp_lrp",
    eager_attention=("groups-eager",),
)

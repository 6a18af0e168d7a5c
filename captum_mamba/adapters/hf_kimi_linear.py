"""Architecture adapter for Hugging Face transformers' Kimi-Linear: ``KimiLinearModel``,
``KimiLinearForCausalLM``. Residual layers mix tokens with Kimi Delta Attention (KDA: the
gated delta rule with one decay per key channel) or multi-head latent attention (MLA,
without position embedding), each followed by a mixture of experts with shared experts
(or a gated MLP).

A layer is ``h = x + mixer(norm(x)); out = h + mlp(norm(h))`` with

- ``KimiLinearDeltaAttention``: ``q, k, v = silu(conv(proj(x)))`` (the short causal
  convolution is linear, the SiLU gets the identity rule), ``q`` and ``k``
  l2-normalised (LN-rule), ``beta = sigmoid(b_proj(x))``, the per-channel log decay of
  ``KimiLinearForgetGate`` ``g = -exp(A_log) softplus(f_b(f_a(x)) + dt_bias)``, the
  gated delta rule (:func:`~captum_mamba.rules.functional.gated_delta_rule`: decays,
  step sizes and transitions constant; the uniform rule on reads and writes or constant
  keys and queries), the gated RMSNorm ``norm(o) * sigmoid(g_b(g_a(x)))`` (LN-rule,
  identity rule on the sigmoid, half rule on the product) and ``o_proj``;
- ``KimiLinearAttention``: MLA: queries from ``q_proj`` (or the low-rank ``q_b(norm(
  q_a(x)))``), keys and values from the normalised latent ``kv_b(norm(kv_a(x)))`` with
  a key part shared by the heads; softmax attention (AttnLRP or CP-LRP);
- ``KimiLinearMoE``: the sigmoid router with group-limited top-k selection on the
  bias-corrected scores (router rule: the weights are constants), gated-MLP experts,
  plus the shared experts (a gated MLP); ``KimiLinearMLP``: identity and half rules;
- ``KimiLinearRMSNorm``: LN-rule; the residual sums as sums.

With CP-LRP and bias-free layers relevance is conserved exactly (the argument is in
``docs/architectures.md``). The recurrences start at the first position: a filled cache
is refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    DELTA_RULE_SITES,
    GATED_MLP_CALLS,
    GATED_MOE_SITES,
    GLU_SITES,
    NORM_SITES,
    Experts,
    activation_name,
    attention_bias,
    causal_lm_forward,
    check_no_cached_keys,
    check_silu,
    delta_log_decay,
    gated_delta_rule,
    gated_mlp_forward,
    group_limited_sigmoid_router,
    mask_padding,
    mixture_of_experts,
    rms_norm_forward,
    suffixed,
    whole_sequence_inputs,
)
from captum_mamba.adapters.families import declare_family, resolve

FAMILY = declare_family(
    __name__,
    "transformers Kimi-Linear",
    ("KimiLinearModel", "KimiLinearForCausalLM"),
    ("transformers.models.kimi_linear.modeling_kimi_linear",),
    # checked with 5.25 only (the ``cache`` argument names and the experts' layout)
    needs="transformers >= 5.25",
)
(
    KimiLinearRMSNorm,
    KimiLinearRMSNormGated,
    KimiLinearAttention,
    KimiLinearForgetGate,
    KimiLinearDeltaAttention,
    KimiLinearMLP,
    KimiLinearMoE,
    KimiLinearDecoderLayer,
    KimiLinearModel,
    KimiLinearForCausalLM,
) = FAMILY.load(
    "KimiLinearRMSNorm",
    "KimiLinearRMSNormGated",
    "KimiLinearAttention",
    "KimiLinearForgetGate",
    "KimiLinearDeltaAttention",
    "KimiLinearMLP",
    "KimiLinearMoE",
    "KimiLinearDecoderLayer",
    "KimiLinearModel",
    "KimiLinearForCausalLM",
)


def sigmoid_gated_norm_forward(
    ops: BlockOps, norm: nn.Module, hidden_states: Tensor, gate: Tensor
) -> Tensor:
    """``weight * norm(x) * sigmoid(gate)``: LN-rule, identity rule on the sigmoid, half
    rule on the product (sites ``norm``, ``gate_act``, ``gate``)."""
    if norm.activation != "sigmoid":
        raise NotImplementedError(
            f"{type(norm).__name__} gates with {norm.activation!r}; this adapter knows 'sigmoid'"
        )
    x = ops.compute(hidden_states)
    normed = ops.rms_norm("norm", x, norm.weight, norm.variance_epsilon)
    return ops.gate("gate", normed, ops.activation("gate_act", gate.to(x.dtype), "sigmoid"))


def forget_gate_forward(ops: BlockOps, gate: nn.Module, hidden_states: Tensor) -> Tensor:
    """The per-channel log decay ``-exp(A_log) softplus(f_b(f_a(x)) + dt_bias)``
    ``(batch, seq, heads, dk)`` (sites ``time_step``, ``decay``)."""
    x = ops.compute(hidden_states)
    raw = gate.f_b_proj(gate.f_a_proj(x)).unflatten(-1, (gate.num_heads, gate.head_dim))
    bias = gate.dt_bias.view(gate.num_heads, gate.head_dim)
    return delta_log_decay(ops, raw, bias, gate.A_log)


#: Sites of :func:`delta_attention_forward`.
KDA_SITES = {"conv_act": "silu", "beta": "activation", **DELTA_RULE_SITES}


def delta_attention_forward(
    ops: BlockOps,
    net: nn.Module,
    hidden_states: Tensor,
    cache: Any = None,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Kimi Delta Attention of a whole sequence (sites :data:`KDA_SITES`)."""
    check_silu(net, net.activation)
    check_no_cached_keys(net, cache)
    x = mask_padding(ops.compute(hidden_states), attention_mask)
    mixed = torch.cat([net.q_proj(x), net.k_proj(x), net.v_proj(x)], -1)
    mixed = ops.silu("conv_act", ops.causal_conv(net.conv1d, mixed))
    q, k, v = mixed.split([net.qkv_dim] * 3, -1)
    beta = ops.activation("beta", net.b_proj(x), "sigmoid").transpose(1, 2)
    log_decay = net.forget_gate(x).transpose(1, 2)
    out = gated_delta_rule(ops, q, k, v, beta, log_decay, net.num_heads, net.num_heads)
    gate = net.g_b_proj(net.g_a_proj(x)).unflatten(-1, (net.num_heads, net.head_dim))
    return net.o_proj(net.o_norm(out, gate).flatten(2))


def latent_attention_forward(
    ops: BlockOps,
    module: nn.Module,
    hidden_states: Tensor,
    attention_mask: Tensor | None,
    cache: Any = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Multi-head latent attention without position embedding (site ``attention``)."""
    check_no_cached_keys(module, cache)
    x = ops.compute(hidden_states)
    batch, length, _ = x.shape
    if module.q_lora_rank is None:
        q = module.q_proj(x)
    else:
        q = module.q_b_proj(module.q_a_layernorm(module.q_a_proj(x)))
    q = q.view(batch, length, -1, module.qk_head_dim).transpose(1, 2)
    latent, k_shared = module.kv_a_proj_with_mqa(x).split(
        [module.kv_lora_rank, module.qk_rope_head_dim], -1
    )
    kv = module.kv_b_proj(module.kv_a_layernorm(latent))
    kv = kv.view(batch, length, -1, module.qk_nope_head_dim + module.v_head_dim).transpose(1, 2)
    k_own, v = kv.split([module.qk_nope_head_dim, module.v_head_dim], -1)
    k_shared = k_shared[:, None].expand(-1, k_own.shape[1], -1, -1)
    k = torch.cat([k_own, k_shared], -1)
    bias, causal = attention_bias(module, attention_mask, q, k)
    out = ops.attention("attention", q, k, v, bias, module.scaling, causal)
    return module.o_proj(out.transpose(1, 2).reshape(batch, length, -1)), None


#: Suffix of the routed experts' sites (the block has a child ``gate``, its router).
ROUTED = "_routed"
#: Sites of :func:`moe_forward`.
MOE_BLOCK_SITES = {**suffixed(GATED_MOE_SITES, ROUTED), "shared_sum": "add"}


def moe_forward(ops: BlockOps, moe: nn.Module, hidden_states: Tensor) -> Tensor:
    """Routed gated-MLP experts plus the shared experts: router, identity and half
    rules."""
    x = ops.compute(hidden_states)
    flat = x.reshape(-1, x.shape[-1])
    function = activation_name(moe.experts, moe.experts.act_fn)
    experts = Experts(moe.experts.gate_up_proj, moe.experts.down_proj, function, gated=True)
    routed = mixture_of_experts(
        ops, experts, flat, lambda u: group_limited_sigmoid_router(moe.gate, u), flat, ROUTED
    )
    return ops.add("shared_sum", routed.reshape(x.shape), moe.shared_experts(x))


def layer_forward(
    ops: BlockOps,
    layer: nn.Module,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> Tensor:
    """The token mixer's residual sum, then the MLP's (sites ``residual``,
    ``ff_residual``)."""
    x = ops.compute(hidden_states)
    normed = layer.input_layernorm(x)
    if layer.block_type == "linear_attention":
        mixed = layer.self_attn(normed, cache=cache, attention_mask=attention_mask)
    else:
        mixed, _ = layer.self_attn(normed, attention_mask=attention_mask, cache=cache)
    h = ops.add("residual", x, mixed)
    return ops.add("ff_residual", h, layer.mlp(layer.post_attention_layernorm(h)))


def model_forward(
    ops: BlockOps,
    model: nn.Module,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    cache: Any = None,
    inputs_embeds: Tensor | None = None,
    use_cache: bool | None = None,
    **kwargs: Any,
) -> Any:
    """The model's forward for whole sequences without a cache."""
    x, _, masks = whole_sequence_inputs(
        ops, model, input_ids, attention_mask, position_ids, cache, inputs_embeds
    )
    for layer, kind in zip(model.layers, model.config.layer_types, strict=False):
        x = layer(x, attention_mask=masks[kind])
    output = resolve("transformers.modeling_outputs", "BaseModelOutput")
    return output(last_hidden_state=model.norm(x))


HF_KIMI_LINEAR = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(KimiLinearRMSNorm, rms_norm_forward, NORM_SITES),
            ModuleHandler(
                KimiLinearRMSNormGated,
                sigmoid_gated_norm_forward,
                {"norm": "rms_norm", "gate_act": "activation", "gate": "gate"},
            ),
            ModuleHandler(
                KimiLinearForgetGate,
                forget_gate_forward,
                {"time_step": "time_step", "decay": "scale"},
                ("f_a_proj", "f_b_proj"),
            ),
            ModuleHandler(
                KimiLinearDeltaAttention,
                delta_attention_forward,
                KDA_SITES,
                (
                    *("q_proj", "k_proj", "v_proj", "conv1d", "forget_gate", "b_proj"),
                    *("g_a_proj", "g_b_proj", "o_norm", "o_proj"),
                ),
            ),
            ModuleHandler(
                KimiLinearAttention,
                latent_attention_forward,
                {"attention": "attention"},
                (
                    *("q_proj", "q_a_proj", "q_a_layernorm", "q_b_proj"),
                    *("kv_a_proj_with_mqa", "kv_a_layernorm", "kv_b_proj", "o_proj"),
                ),
            ),
            ModuleHandler(KimiLinearMLP, gated_mlp_forward, GLU_SITES, GATED_MLP_CALLS),
            ModuleHandler(KimiLinearMoE, moe_forward, MOE_BLOCK_SITES, ("shared_experts",)),
            ModuleHandler(
                KimiLinearDecoderLayer,
                layer_forward,
                {"residual": "add", "ff_residual": "add"},
                ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp"),
                role="block",
            ),
            ModuleHandler(KimiLinearModel, model_forward, {}, ("embed_tokens", "layers", "norm")),
            ModuleHandler(KimiLinearForCausalLM, causal_lm_forward, {}, ("model", "lm_head")),
        ),
        blocks=(KimiLinearDeltaAttention, KimiLinearAttention),
    )
)

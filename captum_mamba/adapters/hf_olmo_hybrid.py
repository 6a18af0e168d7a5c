"""Architecture adapter for Hugging Face transformers' OLMo-Hybrid: ``OlmoHybridModel``,
``OlmoHybridForCausalLM``. Gated DeltaNet layers (pre-norm) alternate with softmax
attention layers (post-norm, as OLMo-2/3), each followed by a gated MLP.

- ``OlmoHybridLinearAttentionDecoderLayer``: ``h = x + gdn(norm(x)); out = h +
  mlp(norm(h))``;
- ``OlmoHybridGatedDeltaNet``: separate ``q``, ``k``, ``v`` projections through a short
  causal convolution (linear) and a SiLU (identity rule), ``q`` and ``k`` l2-normalised
  (LN-rule), ``beta = sigmoid(b_proj(x))`` (times 2 with ``allow_neg_eigval``: the
  transition ``I - beta k k^T`` may then have a negative eigenvalue, a constant of the
  backward like every transition), ``g = -exp(A_log) softplus(a_proj(x) + dt_bias)``,
  the gated delta rule (:func:`~captum_mamba.rules.functional.gated_delta_rule`:
  decays, step sizes, transitions constant; uniform rule on reads and writes or
  constant keys and queries), the gated RMSNorm ``norm(o) * silu(g_proj(x))`` (LN-,
  identity and half rules) and ``o_proj``;
- ``OlmoHybridAttentionDecoderLayer``: ``h = x + norm(attn(x)); out = h + norm(mlp(h))``;
  the attention RMS-normalises the whole query and key projections (LN-rule), applies
  the rotary embedding (none in NoPE mode) and grouped key/value heads (AttnLRP or
  CP-LRP);
- ``OlmoHybridMLP``: a gated MLP (identity and half rules); ``OlmoHybridRMSNorm``:
  LN-rule; the residual sums as sums.

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
    CONSTANT_SITES,
    DELTA_GATE_SITES,
    DELTA_RULE_SITES,
    GATED_MLP_CALLS,
    GATED_NORM_SITES,
    GLU_SITES,
    NORM_SITES,
    ROTARY_ATTENTION_SITES,
    causal_lm_forward,
    check_no_cached_keys,
    check_silu,
    delta_rule_gates,
    gated_delta_rule,
    gated_mlp_forward,
    gated_rms_norm_before_gate,
    mask_padding,
    rms_norm_forward,
    self_attention,
    unchanged_forward,
    whole_sequence_inputs,
)
from captum_mamba.adapters.families import declare_family, resolve

FAMILY = declare_family(
    __name__,
    "transformers OLMo-Hybrid",
    ("OlmoHybridModel", "OlmoHybridForCausalLM"),
    ("transformers.models.olmo_hybrid.modeling_olmo_hybrid",),
    # checked with 5.25 only (the ``cache`` argument names)
    needs="transformers >= 5.25",
)
(
    OlmoHybridRMSNorm,
    OlmoHybridRMSNormGated,
    OlmoHybridRotaryEmbedding,
    OlmoHybridAttention,
    OlmoHybridGatedDeltaNet,
    OlmoHybridMLP,
    OlmoHybridAttentionDecoderLayer,
    OlmoHybridLinearAttentionDecoderLayer,
    OlmoHybridModel,
    OlmoHybridForCausalLM,
) = FAMILY.load(
    "OlmoHybridRMSNorm",
    "OlmoHybridRMSNormGated",
    "OlmoHybridRotaryEmbedding",
    "OlmoHybridAttention",
    "OlmoHybridGatedDeltaNet",
    "OlmoHybridMLP",
    "OlmoHybridAttentionDecoderLayer",
    "OlmoHybridLinearAttentionDecoderLayer",
    "OlmoHybridModel",
    "OlmoHybridForCausalLM",
)
#: Children :func:`gated_delta_net_forward` calls.
DELTA_NET_CALLS = (
    *("q_proj", "k_proj", "v_proj", "conv1d"),
    *("a_proj", "b_proj", "g_proj", "o_norm", "o_proj"),
)
#: Sites of :func:`gated_delta_net_forward`.
DELTA_NET_SITES = {
    "conv_act": "silu",
    **DELTA_GATE_SITES,
    "beta_scale": "scale",
    **DELTA_RULE_SITES,
}


def gated_delta_net_forward(
    ops: BlockOps,
    net: nn.Module,
    hidden_states: Tensor,
    cache: Any = None,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """The Gated DeltaNet of a whole sequence (sites :data:`DELTA_NET_SITES`)."""
    check_silu(net, net.activation)
    check_no_cached_keys(net, cache)
    x = mask_padding(ops.compute(hidden_states), attention_mask)
    mixed = torch.cat([net.q_proj(x), net.k_proj(x), net.v_proj(x)], -1)
    mixed = ops.silu("conv_act", ops.causal_conv(net.conv1d, mixed))
    q, k, v = mixed.split([net.key_dim, net.key_dim, net.value_dim], -1)
    beta, log_decay = delta_rule_gates(ops, net.a_proj(x), net.b_proj(x), net.A_log, net.dt_bias)
    beta = ops.scale("beta_scale", beta, 2.0 if net.allow_neg_eigval else 1.0)
    out = gated_delta_rule(ops, q, k, v, beta, log_decay, net.num_k_heads, net.num_v_heads)
    out = net.o_norm(out, net.g_proj(x).unflatten(-1, (net.num_v_heads, -1)))
    return net.o_proj(out.flatten(2))


def attention_forward(
    ops: BlockOps,
    module: nn.Module,
    hidden_states: Tensor,
    position_embeddings: tuple[Tensor, Tensor] | None,
    attention_mask: Tensor | None,
    cache: Any = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Softmax attention with the query and key projections RMS-normalised as wholes."""

    def project(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return module.q_norm(module.q_proj(x)), module.k_norm(module.k_proj(x)), module.v_proj(x)

    return self_attention(
        ops,
        module,
        hidden_states,
        attention_mask=attention_mask,
        position_embeddings=position_embeddings,
        cache=cache,
        project=project,
    )


def attention_layer_forward(
    ops: BlockOps,
    layer: nn.Module,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> Tensor:
    """Post-norm residual sums ``h = x + norm(attn(x)); out = h + norm(mlp(h))``."""
    x = ops.compute(hidden_states)
    mixed, _ = layer.self_attn(
        x, position_embeddings=position_embeddings, attention_mask=attention_mask, cache=cache
    )
    h = ops.add("residual", x, layer.post_attention_layernorm(mixed))
    return ops.add("ff_residual", h, layer.post_feedforward_layernorm(layer.mlp(h)))


def linear_layer_forward(
    ops: BlockOps,
    layer: nn.Module,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> Tensor:
    """Pre-norm residual sums ``h = x + gdn(norm(x)); out = h + mlp(norm(h))``."""
    x = ops.compute(hidden_states)
    mixed = layer.linear_attn(layer.input_layernorm(x), cache=cache, attention_mask=attention_mask)
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
    """The model's forward for whole sequences without a cache (the rotary embedding of
    the attention layers only; none in NoPE mode)."""
    x, position_ids, masks = whole_sequence_inputs(
        ops, model, input_ids, attention_mask, position_ids, cache, inputs_embeds
    )
    rotary = model.rotary_emb
    position_embeddings = None if rotary is None else rotary(x, position_ids)
    for layer, kind in zip(model.layers, model.config.layer_types, strict=False):
        x = layer(
            x,
            attention_mask=masks[kind],
            position_embeddings=position_embeddings if kind == "full_attention" else None,
        )
    output = resolve("transformers.modeling_outputs", "BaseModelOutput")
    return output(last_hidden_state=model.norm(x))


HF_OLMO_HYBRID = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(OlmoHybridRMSNorm, rms_norm_forward, NORM_SITES),
            ModuleHandler(OlmoHybridRMSNormGated, gated_rms_norm_before_gate, GATED_NORM_SITES),
            ModuleHandler(OlmoHybridRotaryEmbedding, unchanged_forward, CONSTANT_SITES),
            ModuleHandler(
                OlmoHybridGatedDeltaNet,
                gated_delta_net_forward,
                DELTA_NET_SITES,
                DELTA_NET_CALLS,
            ),
            ModuleHandler(
                OlmoHybridAttention,
                attention_forward,
                ROTARY_ATTENTION_SITES,
                ("q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "o_proj"),
            ),
            ModuleHandler(OlmoHybridMLP, gated_mlp_forward, GLU_SITES, GATED_MLP_CALLS),
            ModuleHandler(
                OlmoHybridAttentionDecoderLayer,
                attention_layer_forward,
                {"residual": "add", "ff_residual": "add"},
                ("self_attn", "post_attention_layernorm", "mlp", "post_feedforward_layernorm"),
                role="block",
            ),
            ModuleHandler(
                OlmoHybridLinearAttentionDecoderLayer,
                linear_layer_forward,
                {"residual": "add", "ff_residual": "add"},
                ("input_layernorm", "linear_attn", "post_attention_layernorm", "mlp"),
                role="block",
            ),
            ModuleHandler(
                OlmoHybridModel,
                model_forward,
                {},
                ("embed_tokens", "rotary_emb", "layers", "norm"),
            ),
            ModuleHandler(OlmoHybridForCausalLM, causal_lm_forward, {}, ("model", "lm_head")),
        ),
        blocks=(OlmoHybridGatedDeltaNet, OlmoHybridAttention),
    )
)

"""Architecture adapter for Hugging Face transformers' Falcon-H1 (``FalconH1Model``,
``FalconH1ForCausalLM``): every layer runs a Mamba-2 mixer and softmax attention in
parallel on the same normalised input, then a gated MLP, with muP multipliers.

A layer is::

    u = norm(x)
    h = x + (m_ssm_out * mamba(u) + m_attn_out * attn(m_attn_in * u))
    out = h + mlp(norm(h))

with

- ``FalconH1Mixer``: the Mamba-2 mixer of transformers
  (:func:`~captum_mamba.adapters.blocks.ssd_mixer`) (identity rule after the conv, SSM rule on the
  multi-head scan; the gate ``y * silu(z)`` with the identity and half rules, or the gated norm
  ``FalconH1RMSNormGated`` with the LN-rule as well), whose input is scaled by ``ssm_in_multiplier``
  and whose input projection by the muP vector (one constant per channel of ``z``, ``x``, ``B``,
  ``C``, ``dt``);
- ``FalconH1Attention``: queries, keys (scaled by ``key_multiplier``) and values, a rotary
  embedding, grouped key/value heads, the model's causal and padding mask: AttnLRP or
  CP-LRP;
- ``FalconH1MLP``: ``m_down * down(up(x) * act(m_gate * gate(x)))``: identity rule on the
  activation, half rule on the product;
- ``FalconH1RMSNorm``: LN-rule; sums as sums (LRP-0).

Every multiplier is a constant, written as a ``scale`` operation so that Captum's LRP
sees it (relevance passes unchanged). The model multiplies looked-up token embeddings by
``embedding_multiplier`` (``inputs_embeds`` are taken as given, as transformers does) and
the language model its logits by ``lm_head_multiplier``: ``FalconH1Model`` and
``FalconH1ForCausalLM`` are computed, not mere containers, and the default forward of
an explanation runs the language model itself, so the explained logits are the model's.

With CP-LRP and bias-free layers relevance is conserved exactly; with AttnLRP the
softmax's bias term absorbs part of it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    ATTENTION_CALLS,
    CONSTANT_SITES,
    GATED_NORM_SITES,
    GLU_SITES,
    NORM_SITES,
    ROTARY_ATTENTION_SITES,
    SSD_CALLS,
    SSD_SITES,
    HybridModel,
    activation_name,
    check_no_past_state,
    check_silu,
    gated_norm_forward,
    glu,
    rms_norm_forward,
    self_attention,
    ssd_mixer,
    ssd_params,
    unchanged_forward,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "transformers Falcon-H1",
    ("FalconH1Model", "FalconH1ForCausalLM"),
    ("transformers.models.falcon_h1.modeling_falcon_h1",),
    # transformers.masking_utils.create_recurrent_attention_mask from 5.13
    needs="transformers >= 5.13",
)
HybridModel.check_helpers()
(
    FalconH1Attention,
    FalconH1DecoderLayer,
    FalconH1ForCausalLM,
    FalconH1Mixer,
    FalconH1MLP,
    FalconH1Model,
    FalconH1RMSNorm,
    FalconH1RMSNormGated,
    FalconH1RotaryEmbedding,
) = FAMILY.load(
    "FalconH1Attention",
    "FalconH1DecoderLayer",
    "FalconH1ForCausalLM",
    "FalconH1Mixer",
    "FalconH1MLP",
    "FalconH1Model",
    "FalconH1RMSNorm",
    "FalconH1RMSNormGated",
    "FalconH1RotaryEmbedding",
)
BaseModelOutputWithPast, CausalLMOutputWithPast = FAMILY.load(
    "BaseModelOutputWithPast", "CausalLMOutputWithPast", source="transformers.modeling_outputs"
)


def mixer_forward(
    ops: BlockOps,
    mixer: FalconH1Mixer,
    hidden_states: Tensor,
    cache: Any = None,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Mamba-2 mixer with its input and projection multipliers, with the SiLU, SSM, half
    (and LN-) rules."""
    check_no_past_state(mixer, {"cache": cache})
    check_silu(mixer, mixer.activation)
    u = ops.compute(hidden_states)

    def in_proj(x: Tensor) -> Tensor:
        scaled = ops.scale("in_scale", x, mixer.ssm_in_multiplier)
        return ops.scale("mup", mixer.in_proj(scaled), mixer.mup_vector.to(x.dtype))

    params = ssd_params(mixer, in_proj=in_proj, gated_norm=mixer.mamba_rms_norm)
    return ssd_mixer(ops, params, u, attention_mask)


#: Sites of :func:`mixer_forward`.
MIXER_SITES = {**SSD_SITES, "gate_act": "silu", "gate": "gate", "in_scale": "scale", "mup": "scale"}


def attention_forward(
    ops: BlockOps, attention: FalconH1Attention, hidden_states: Tensor, **kwargs: Any
) -> tuple[Tensor, None]:
    """Softmax attention with the keys scaled by ``key_multiplier``."""

    def project(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        keys = ops.scale("key_scale", attention.k_proj(x), attention.key_multiplier)
        return attention.q_proj(x), keys, attention.v_proj(x)

    return self_attention(ops, attention, hidden_states, project=project, **kwargs)


def mlp_forward(ops: BlockOps, mlp: FalconH1MLP, x: Tensor) -> Tensor:
    """``m_down * down(up(x) * act(m_gate * gate(x)))`` with the identity and half rules."""
    gate = ops.scale("gate_scale", mlp.gate_proj(x), mlp.gate_multiplier)
    product = glu(ops, gate, mlp.up_proj(x), activation_name(mlp, mlp.act_fn))
    return ops.scale("down_scale", mlp.down_proj(product), mlp.down_multiplier)


def layer_forward(
    ops: BlockOps,
    layer: FalconH1DecoderLayer,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    mamba_attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    cache: Any = None,
    use_cache: bool | None = False,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    **kwargs: Any,
) -> tuple[Tensor]:
    """Mamba-2 mixer and attention in parallel, then the MLP; returns ``(hidden_states,)``
    as transformers' layer does."""
    x = ops.compute(hidden_states)
    normed = layer.input_layernorm(x)
    mixed = layer.mamba(normed, cache=cache, attention_mask=mamba_attention_mask)
    mixed = ops.scale("ssm_out_scale", mixed, layer.ssm_out_multiplier)
    attended, _ = layer.self_attn(
        ops.scale("attention_in_scale", normed, layer.attention_in_multiplier),
        attention_mask=attention_mask,
        position_embeddings=position_embeddings,
        cache=cache,
        **kwargs,
    )
    attended = ops.scale("attention_out_scale", attended, layer.attn_out_multiplier)
    h = ops.add("residual", x, ops.add("branches", mixed, attended))
    return (ops.add("ff_residual", h, layer.feed_forward(layer.pre_ff_layernorm(h))),)


#: Sites of :func:`layer_forward`.
LAYER_SITES = {
    "ssm_out_scale": "scale",
    "attention_in_scale": "scale",
    "attention_out_scale": "scale",
    "branches": "add",
    "residual": "add",
    "ff_residual": "add",
}


#: The model and language-model forwards (embedding and logit multipliers as operations).
MODEL = HybridModel(
    final_norm="final_layernorm",
    layer_masks=lambda model, index, masks: {
        "attention_mask": masks["full_attention"],
        "mamba_attention_mask": masks["linear_attention"],
    },
    logits_scale=lambda lm: lm.model.lm_head_multiplier,
    output=BaseModelOutputWithPast,
    lm_output=CausalLMOutputWithPast,
    scale_given_embeddings=False,
)

HF_FALCON_H1 = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(FalconH1RMSNorm, rms_norm_forward, NORM_SITES),
            ModuleHandler(FalconH1RMSNormGated, gated_norm_forward, GATED_NORM_SITES),
            ModuleHandler(FalconH1RotaryEmbedding, unchanged_forward, CONSTANT_SITES),
            ModuleHandler(FalconH1Mixer, mixer_forward, MIXER_SITES, SSD_CALLS),
            ModuleHandler(
                FalconH1Attention,
                attention_forward,
                {**ROTARY_ATTENTION_SITES, "key_scale": "scale"},
                ATTENTION_CALLS,
            ),
            ModuleHandler(
                FalconH1MLP,
                mlp_forward,
                {**GLU_SITES, "gate_scale": "scale", "down_scale": "scale"},
                ("gate_proj", "up_proj", "down_proj"),
            ),
            ModuleHandler(
                FalconH1DecoderLayer,
                layer_forward,
                LAYER_SITES,
                ("input_layernorm", "mamba", "self_attn", "pre_ff_layernorm", "feed_forward"),
                role="block",
            ),
            ModuleHandler(
                FalconH1Model,
                MODEL.model_forward,
                {"embedding_scale": "scale"},
                MODEL.model_calls(),
            ),
            ModuleHandler(
                FalconH1ForCausalLM,
                MODEL.lm_forward,
                {"logits_scale": "scale"},
                ("model", "lm_head"),
            ),
        ),
        blocks=(FalconH1Mixer, FalconH1Attention),
    )
)

"""Architecture adapter for Hugging Face transformers' Falcon-H1 (``FalconH1Model``,
``FalconH1ForCausalLM``): every layer runs a Mamba-2 mixer and softmax attention in
parallel on the same normalised input, then a gated MLP, with muP multipliers.

A layer is::

    u = norm(x)
    h = x + (m_ssm_out * mamba(u) + m_attn_out * attn(m_attn_in * u))
    out = h + mlp(norm(h))

with

- ``FalconH1Mixer``: the Mamba-2 mixer of :mod:`~captum_mamba.adapters.hf_mamba2` (identity
  rule after the conv, SSM rule on the multi-head scan; the gate ``y * silu(z)`` with the
  identity and half rules, or the gated norm ``FalconH1RMSNormGated`` with the LN-rule as
  well), whose input is scaled by ``ssm_in_multiplier`` and whose input projection by the
  muP vector (one constant per channel of ``z``, ``x``, ``B``, ``C``, ``dt``);
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

import torch
from torch import Tensor
from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.falcon_h1.modeling_falcon_h1 import (
    FalconH1Attention,
    FalconH1DecoderLayer,
    FalconH1ForCausalLM,
    FalconH1Mixer,
    FalconH1MLP,
    FalconH1Model,
    FalconH1RMSNorm,
    FalconH1RMSNormGated,
    FalconH1RotaryEmbedding,
)

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    ATTENTION_CALLS,
    CONSTANT_SITES,
    GATED_NORM_SITES,
    GLU_SITES,
    ROTARY_ATTENTION_SITES,
    SSD_SITES,
    SSDParams,
    activation_name,
    check_no_cached_keys,
    check_silu,
    gated_norm,
    glu,
    self_attention,
    ssd_mixer,
    unchanged_forward,
)
from captum_mamba.adapters.hf_mamba import NORM_SITES, check_no_past_state, norm_forward


def gated_norm_forward(
    ops: BlockOps, norm: FalconH1RMSNormGated, hidden_states: Tensor, gate: Tensor | None = None
) -> Tensor:
    """Gated RMSNorm over ``n_groups`` groups, before or after the gate ``silu(gate)``,
    with the SiLU, half and LN-rules."""
    group_size = hidden_states.shape[-1] // norm.n_groups
    return gated_norm(
        ops,
        hidden_states,
        gate,
        norm.weight,
        norm.variance_epsilon,
        group_size,
        norm_before_gate=norm.norm_before_gate,
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

    params = SSDParams(
        in_proj=in_proj,
        conv=mixer.conv1d,
        out_proj=mixer.out_proj,
        norm=mixer.norm if mixer.mamba_rms_norm else None,
        dt_bias=mixer.dt_bias,
        A_log=mixer.A_log,
        D=mixer.D,
        inner=mixer.intermediate_size,
        groups=mixer.n_groups,
        state=mixer.ssm_state_size,
        heads=mixer.num_heads,
        head_dim=mixer.head_dim,
        chunk_size=mixer.chunk_size,
        dt_limit=tuple(mixer.time_step_limit),
    )
    return ssd_mixer(ops, params, u, attention_mask)


#: Sites of :func:`mixer_forward`.
MIXER_SITES = {**SSD_SITES, "gate_act": "silu", "gate": "gate", "in_scale": "scale", "mup": "scale"}


#: Children the Mamba-2 mixer calls.
SSD_CALLS = ("in_proj", "conv1d", "norm", "out_proj")


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


def model_forward(
    ops: BlockOps,
    model: FalconH1Model,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | dict[str, Tensor] | None = None,
    position_ids: Tensor | None = None,
    cache: Any = None,
    inputs_embeds: Tensor | None = None,
    use_cache: bool | None = None,
    **kwargs: Any,
) -> BaseModelOutputWithPast:
    """The model's forward for whole sequences: looked-up embeddings scaled by
    ``embedding_multiplier`` (an operation), the model's masks and rotary embedding, the
    layers, the final norm."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    check_no_cached_keys(model, cache)
    if inputs_embeds is None:
        embedded = ops.compute(model.embed_tokens(input_ids))
        x = ops.scale("embedding_scale", embedded, model.embedding_multiplier)
    else:
        x = ops.compute(inputs_embeds)
    if position_ids is None:
        position_ids = torch.arange(x.shape[1], device=x.device)[None]
    masks = attention_mask
    if not isinstance(masks, dict):
        arguments = {
            "config": model.config,
            "inputs_embeds": x,
            "attention_mask": masks,
            "cache": None,
            "position_ids": position_ids,
        }
        masks = {
            "full_attention": create_causal_mask(**arguments),
            "linear_attention": create_recurrent_attention_mask(**arguments),
        }
    position_embeddings = model.rotary_emb(x, position_ids)
    for layer in model.layers:
        (x,) = layer(
            x,
            attention_mask=masks["full_attention"],
            mamba_attention_mask=masks["linear_attention"],
            position_ids=position_ids,
            position_embeddings=position_embeddings,
            **kwargs,
        )
    return BaseModelOutputWithPast(last_hidden_state=model.final_layernorm(x))


def causal_lm_forward(
    ops: BlockOps,
    lm: FalconH1ForCausalLM,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    cache: Any = None,
    inputs_embeds: Tensor | None = None,
    labels: Tensor | None = None,
    use_cache: bool | None = None,
    logits_to_keep: int | Tensor = 0,
    **kwargs: Any,
) -> CausalLMOutputWithPast:
    """Logits ``lm_head(model(...)) * lm_head_multiplier`` (the scaling an operation)."""
    if labels is not None:
        raise NotImplementedError(
            "explanations compute no loss; call FalconH1ForCausalLM without labels"
        )
    outputs = lm.model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        inputs_embeds=inputs_embeds,
        **kwargs,
    )
    hidden = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
    logits = ops.scale("logits_scale", lm.lm_head(hidden), lm.model.lm_head_multiplier)
    return CausalLMOutputWithPast(logits=logits)


HF_FALCON_H1 = register_adapter(
    ArchitectureAdapter(
        name="transformers Falcon-H1",
        models=("FalconH1Model", "FalconH1ForCausalLM"),
        handlers=(
            ModuleHandler(FalconH1RMSNorm, norm_forward, NORM_SITES),
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
                model_forward,
                {"embedding_scale": "scale"},
                ("embed_tokens", "rotary_emb", "layers", "final_layernorm"),
            ),
            ModuleHandler(
                FalconH1ForCausalLM,
                causal_lm_forward,
                {"logits_scale": "scale"},
                ("model", "lm_head"),
            ),
        ),
        blocks=(FalconH1Mixer, FalconH1Attention),
    )
)

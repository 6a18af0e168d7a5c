"""Architecture adapter for Hugging Face transformers' Bamba (``BambaModel``,
``BambaForCausalLM``): Mamba-2 layers and attention layers, each followed by a gated MLP.

A Bamba layer is ``h = x + mixer(norm(x)); out = h + mlp(norm(h))`` with

- mixer ``BambaMixer``: the Mamba-2 mixer of transformers
  (:func:`~captum_mamba.adapters.blocks.ssd_mixer_forward`) (identity rule after the conv, SSM rule
  on the multi-head scan, identity, half and LN-rules in the gated norm ``BambaRMSNormGated``);
- or mixer ``BambaAttention``: softmax attention with a partial rotary embedding (the
  first ``partial_rotary_factor * head_dim`` channels of each head are rotated, the rest
  pass), grouped key/value heads, the model's causal and padding mask
  (:func:`~captum_mamba.adapters.blocks.self_attention`): AttnLRP or CP-LRP;
- ``BambaMLP``: ``down(act(gate(x)) * up(x))``: identity rule on the activation, half
  rule on the product;
- ``BambaRMSNorm``: LN-rule; the residual sums as sums (LRP-0); ``BambaRotaryEmbedding``:
  a function of the positions, no relevance passes.

With CP-LRP and bias-free layers relevance is conserved exactly; with AttnLRP the
softmax's bias term absorbs part of it. The decoder layer returns ``(hidden_states,
None)`` as transformers' does (no attention weights).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    ATTENTION_CALLS,
    CONSTANT_SITES,
    GATED_MLP_CALLS,
    GATED_NORM_SITES,
    GLU_SITES,
    NORM_SITES,
    ROTARY_ATTENTION_SITES,
    SSD_CALLS,
    SSD_SITES,
    gated_mlp_forward,
    gated_norm_forward,
    rms_norm_forward,
    self_attention,
    ssd_mixer_forward,
    unchanged_forward,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "transformers Bamba",
    ("BambaModel", "BambaForCausalLM"),
    ("transformers.models.bamba.modeling_bamba",),
    # the decoder layer names its mixer with block_type from 5.13
    needs="transformers >= 5.13",
)
(
    BambaAttention,
    BambaDecoderLayer,
    BambaForCausalLM,
    BambaMixer,
    BambaMLP,
    BambaModel,
    BambaRMSNorm,
    BambaRMSNormGated,
    BambaRotaryEmbedding,
) = FAMILY.load(
    "BambaAttention",
    "BambaDecoderLayer",
    "BambaForCausalLM",
    "BambaMixer",
    "BambaMLP",
    "BambaModel",
    "BambaRMSNorm",
    "BambaRMSNormGated",
    "BambaRotaryEmbedding",
)


def layer_forward(
    ops: BlockOps,
    layer: BambaDecoderLayer,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Mamba-2 or attention layer: the mixer's residual sum, then the MLP's."""
    x = ops.compute(hidden_states)
    normed = layer.input_layernorm(x)
    if layer.block_type == "linear_attention":
        mixed = layer.mamba(normed, cache=cache, attention_mask=attention_mask)
    else:
        mixed, _ = layer.self_attn(
            normed,
            attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            cache=cache,
            **kwargs,
        )
    h = ops.add("residual", x, mixed)
    return ops.add("ff_residual", h, layer.feed_forward(layer.pre_ff_layernorm(h))), None


HF_BAMBA = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(BambaRMSNorm, rms_norm_forward, NORM_SITES),
            ModuleHandler(BambaRMSNormGated, gated_norm_forward, GATED_NORM_SITES),
            ModuleHandler(BambaRotaryEmbedding, unchanged_forward, CONSTANT_SITES),
            ModuleHandler(BambaMixer, ssd_mixer_forward, SSD_SITES, SSD_CALLS),
            ModuleHandler(BambaAttention, self_attention, ROTARY_ATTENTION_SITES, ATTENTION_CALLS),
            ModuleHandler(BambaMLP, gated_mlp_forward, GLU_SITES, GATED_MLP_CALLS),
            ModuleHandler(
                BambaDecoderLayer,
                layer_forward,
                {"residual": "add", "ff_residual": "add"},
                ("input_layernorm", "mamba", "self_attn", "pre_ff_layernorm", "feed_forward"),
                role="block",
            ),
        ),
        containers=(BambaModel, BambaForCausalLM),
        blocks=(BambaMixer, BambaAttention),
    )
)

"""Architecture adapter for Hugging Face transformers' Bamba (``BambaModel``,
``BambaForCausalLM``): Mamba-2 layers and attention layers, each followed by a gated MLP.

A Bamba layer is ``h = x + mixer(norm(x)); out = h + mlp(norm(h))`` with

- mixer ``BambaMixer``: the Mamba-2 mixer of :mod:`~captum_mamba.adapters.hf_mamba2`
  (identity rule after the conv, SSM rule on the multi-head scan, identity, half and
  LN-rules in the gated norm ``BambaRMSNormGated``);
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
from transformers.models.bamba.modeling_bamba import (
    BambaAttention,
    BambaDecoderLayer,
    BambaForCausalLM,
    BambaMixer,
    BambaMLP,
    BambaModel,
    BambaRMSNorm,
    BambaRMSNormGated,
    BambaRotaryEmbedding,
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
    self_attention,
    unchanged_forward,
)
from captum_mamba.adapters.hf_llama import MLP_CALLS, mlp_forward
from captum_mamba.adapters.hf_mamba import NORM_SITES, norm_forward
from captum_mamba.adapters.hf_mamba2 import gated_norm_forward, mixer_forward


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
        name="transformers Bamba",
        models=("BambaModel", "BambaForCausalLM"),
        handlers=(
            ModuleHandler(BambaRMSNorm, norm_forward, NORM_SITES),
            ModuleHandler(BambaRMSNormGated, gated_norm_forward, GATED_NORM_SITES),
            ModuleHandler(BambaRotaryEmbedding, unchanged_forward, CONSTANT_SITES),
            ModuleHandler(
                BambaMixer, mixer_forward, SSD_SITES, ("in_proj", "conv1d", "norm", "out_proj")
            ),
            ModuleHandler(BambaAttention, self_attention, ROTARY_ATTENTION_SITES, ATTENTION_CALLS),
            ModuleHandler(BambaMLP, mlp_forward, GLU_SITES, MLP_CALLS),
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

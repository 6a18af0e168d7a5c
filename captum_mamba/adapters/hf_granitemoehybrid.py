"""Architecture adapter for Hugging Face transformers' Granite-4.0 hybrids
(``GraniteMoeHybridModel``, ``GraniteMoeHybridForCausalLM``): Mamba-2 and attention
layers, each followed by a mixture of experts plus a shared gated MLP, with muP
multipliers.

A layer is ``h = x + m * mixer(norm(x)); out = h + m * (moe(norm(h)) + shared(norm(h)))``
(``m = residual_multiplier``) with

- mixer ``GraniteMoeHybridMambaLayer``: the Mamba-2 mixer of transformers
  (:func:`~captum_mamba.adapters.blocks.ssd_mixer_forward`) (identity, SSM, half and LN-rules, the
  gated norm ``GraniteMoeHybridRMSNormGated``);
- or mixer ``GraniteMoeHybridAttention``: softmax attention scaled by
  ``attention_multiplier``, with a rotary embedding when the model has one
  (``position_embedding_type="rope"``), grouped key/value heads, the model's causal and
  padding mask: AttnLRP or CP-LRP;
- ``GraniteMoeHybridMoE``: the router (``GraniteMoeHybridTopKRouter``) takes the top-k
  logits and weights the experts by their softmax; the experts
  (``GraniteMoeHybridExperts``) are gated MLPs: router rule (constant weights), identity
  rule on the activation, half rule on the product;
- ``GraniteMoeHybridMLP`` (the shared expert): ``out(act(g) * u)`` with ``g, u`` the
  halves of ``input_linear(x)``: identity and half rules;
- ``GraniteMoeHybridRMSNorm``: LN-rule; residual and branch sums as sums, the
  multipliers as products with constants (relevance passes unchanged).

The model scales its input embeddings by ``embedding_multiplier`` and the language model divides its
logits by ``logits_scaling``; both are written as operations here (``GraniteMoeHybridModel`` and
``GraniteMoeHybridForCausalLM`` are computed, not mere containers), so that Captum's LRP sees them
too. Their forwards (:class:`~captum_mamba.adapters.blocks.HybridModel`, shared with Falcon-H1)
follow transformers' for whole sequences without a cache; the default forward of the explanation
runs the language model itself, so the explained logits include the scaling.

With CP-LRP and bias-free layers relevance is conserved exactly; with AttnLRP the
softmax's bias term absorbs part of it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    ATTENTION_CALLS,
    CONSTANT_SITES,
    GATED_MOE_SITES,
    GATED_NORM_SITES,
    GLU_SITES,
    NORM_SITES,
    ROTARY_ATTENTION_SITES,
    SSD_CALLS,
    SSD_SITES,
    HybridModel,
    activation_name,
    gated_experts_forward,
    gated_norm_forward,
    glu,
    rms_norm_forward,
    self_attention,
    ssd_mixer_forward,
    top_k_dense,
    unchanged_forward,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "transformers GraniteMoeHybrid",
    ("GraniteMoeHybridModel", "GraniteMoeHybridForCausalLM"),
    ("transformers.models.granitemoehybrid.modeling_granitemoehybrid",),
    # the router is GraniteMoeHybridTopKRouter, and transformers.masking_utils has
    # create_recurrent_attention_mask, from 5.13
    needs="transformers >= 5.13",
)
HybridModel.check_helpers()
(
    GraniteMoeHybridAttention,
    GraniteMoeHybridDecoderLayer,
    GraniteMoeHybridForCausalLM,
    GraniteMoeHybridMambaLayer,
    GraniteMoeHybridMLP,
    GraniteMoeHybridModel,
    GraniteMoeHybridMoE,
    GraniteMoeHybridRMSNorm,
    GraniteMoeHybridRMSNormGated,
    GraniteMoeHybridRotaryEmbedding,
    GraniteMoeHybridTopKRouter,
) = FAMILY.load(
    "GraniteMoeHybridAttention",
    "GraniteMoeHybridDecoderLayer",
    "GraniteMoeHybridForCausalLM",
    "GraniteMoeHybridMambaLayer",
    "GraniteMoeHybridMLP",
    "GraniteMoeHybridModel",
    "GraniteMoeHybridMoE",
    "GraniteMoeHybridRMSNorm",
    "GraniteMoeHybridRMSNormGated",
    "GraniteMoeHybridRotaryEmbedding",
    "GraniteMoeHybridTopKRouter",
)
MoeModelOutputWithPast, MoeCausalLMOutputWithPast = FAMILY.load(
    "MoeModelOutputWithPast", "MoeCausalLMOutputWithPast", source="transformers.modeling_outputs"
)


def router_weights(router: GraniteMoeHybridTopKRouter, x: Tensor) -> Tensor:
    """``(tokens, experts)`` weights: the softmax of the top-k logits, zero elsewhere."""
    logits, index = F.linear(x, router.weight.to(x.dtype)).topk(router.top_k, dim=-1)
    return top_k_dense(torch.softmax(logits, dim=-1), index, router.num_experts)


def moe_forward(ops: BlockOps, moe: GraniteMoeHybridMoE, layer_input: Tensor) -> Tensor:
    """Mixture of gated-MLP experts with the router, identity and half rules."""
    return gated_experts_forward(ops, moe, layer_input, router_weights)


def shared_mlp_forward(ops: BlockOps, mlp: GraniteMoeHybridMLP, x: Tensor) -> Tensor:
    """Shared expert ``out(act(g) * u)``, ``g, u = input_linear(x)``, with the identity and
    half rules."""
    gate, up = mlp.input_linear(x).chunk(2, dim=-1)
    return mlp.output_linear(glu(ops, gate, up, activation_name(mlp, mlp.activation)))


def layer_forward(
    ops: BlockOps,
    layer: GraniteMoeHybridDecoderLayer,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    cache: Any = None,
    use_cache: bool | None = False,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    **kwargs: Any,
) -> Tensor:
    """Mamba-2 or attention layer with the mixture of experts and the shared expert."""
    x = ops.compute(hidden_states)
    normed = layer.input_layernorm(x)
    if layer.mamba is not None:
        mixed = layer.mamba(normed, cache=cache, attention_mask=attention_mask)
    else:
        mixed, _ = layer.self_attn(
            normed,
            attention_mask=attention_mask,
            cache=cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
    h = ops.add("residual", x, ops.scale("residual_scale", mixed, layer.residual_multiplier))
    normed = layer.post_attention_layernorm(h)
    feed_forward = layer.shared_mlp(normed)
    if layer.has_experts:
        feed_forward = ops.add("experts", layer.block_sparse_moe(normed), feed_forward)
    scaled = ops.scale("ff_scale", feed_forward, layer.residual_multiplier)
    return ops.add("ff_residual", h, scaled)


LAYER_SITES = {
    "residual_scale": "scale",
    "residual": "add",
    "experts": "add",
    "ff_scale": "scale",
    "ff_residual": "add",
}
LAYER_CALLS = (
    "input_layernorm",
    "mamba",
    "self_attn",
    "post_attention_layernorm",
    "block_sparse_moe",
    "shared_mlp",
)


#: The model and language-model forwards (embedding and logit multipliers as operations).
MODEL = HybridModel(
    final_norm="norm",
    layer_masks=lambda model, index, masks: {
        "attention_mask": masks[model.config.layers_block_type[index]]
    },
    logits_scale=lambda lm: 1.0 / lm.config.logits_scaling,
    output=MoeModelOutputWithPast,
    lm_output=MoeCausalLMOutputWithPast,
    scale_given_embeddings=True,
)

HF_GRANITE_MOE_HYBRID = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(GraniteMoeHybridRMSNorm, rms_norm_forward, NORM_SITES),
            ModuleHandler(GraniteMoeHybridRMSNormGated, gated_norm_forward, GATED_NORM_SITES),
            ModuleHandler(GraniteMoeHybridRotaryEmbedding, unchanged_forward, CONSTANT_SITES),
            ModuleHandler(GraniteMoeHybridMambaLayer, ssd_mixer_forward, SSD_SITES, SSD_CALLS),
            ModuleHandler(
                GraniteMoeHybridAttention,
                self_attention,
                ROTARY_ATTENTION_SITES,
                ATTENTION_CALLS,
            ),
            ModuleHandler(GraniteMoeHybridMoE, moe_forward, GATED_MOE_SITES),
            ModuleHandler(
                GraniteMoeHybridMLP,
                shared_mlp_forward,
                GLU_SITES,
                ("input_linear", "output_linear"),
            ),
            ModuleHandler(
                GraniteMoeHybridDecoderLayer, layer_forward, LAYER_SITES, LAYER_CALLS, role="block"
            ),
            ModuleHandler(
                GraniteMoeHybridModel,
                MODEL.model_forward,
                {"embedding_scale": "scale"},
                MODEL.model_calls(),
            ),
            ModuleHandler(
                GraniteMoeHybridForCausalLM,
                MODEL.lm_forward,
                {"logits_scale": "scale"},
                ("model", "lm_head"),
            ),
        ),
        blocks=(GraniteMoeHybridMambaLayer, GraniteMoeHybridAttention),
    )
)

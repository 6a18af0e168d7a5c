"""Architecture adapter for Hugging Face transformers' Granite-4.0 hybrids
(``GraniteMoeHybridModel``, ``GraniteMoeHybridForCausalLM``): Mamba-2 and attention
layers, each followed by a mixture of experts plus a shared gated MLP, with muP
multipliers.

A layer is ``h = x + m * mixer(norm(x)); out = h + m * (moe(norm(h)) + shared(norm(h)))``
(``m = residual_multiplier``) with

- mixer ``GraniteMoeHybridMambaLayer``: the Mamba-2 mixer of
  :mod:`~captum_mamba.adapters.hf_mamba2` (identity, SSM, half and LN-rules, the gated
  norm ``GraniteMoeHybridRMSNormGated``);
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

The model scales its input embeddings by ``embedding_multiplier`` and the language model
divides its logits by ``logits_scaling``; both are written as operations here
(``GraniteMoeHybridModel`` and ``GraniteMoeHybridForCausalLM`` are computed, not mere
containers), so that Captum's LRP sees them too. Their forwards follow transformers'
for whole sequences without a cache; the default forward of the explanation runs the
language model itself, so the explained logits include the scaling.

With CP-LRP and bias-free layers relevance is conserved exactly; with AttnLRP the
softmax's bias term absorbs part of it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.masking_utils import create_causal_mask, create_recurrent_attention_mask
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.models.granitemoehybrid.modeling_granitemoehybrid import (
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
)

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    ATTENTION_CALLS,
    CONSTANT_SITES,
    GATED_MOE_SITES,
    GATED_NORM_SITES,
    GLU_SITES,
    ROTARY_ATTENTION_SITES,
    SSD_SITES,
    Experts,
    activation_name,
    check_no_cached_keys,
    glu,
    mixture_of_experts,
    self_attention,
    top_k_dense,
    unchanged_forward,
)
from captum_mamba.adapters.hf_mamba import NORM_SITES, norm_forward
from captum_mamba.adapters.hf_mamba2 import gated_norm_forward, mixer_forward


def router_weights(router: GraniteMoeHybridTopKRouter, x: Tensor) -> Tensor:
    """``(tokens, experts)`` weights: the softmax of the top-k logits, zero elsewhere."""
    logits, index = F.linear(x, router.weight.to(x.dtype)).topk(router.top_k, dim=-1)
    return top_k_dense(torch.softmax(logits, dim=-1), index, router.num_experts)


def moe_forward(ops: BlockOps, moe: GraniteMoeHybridMoE, layer_input: Tensor) -> Tensor:
    """Mixture of gated-MLP experts with the router, identity and half rules."""
    x = ops.compute(layer_input)
    flat = x.reshape(-1, x.shape[-1])
    function = activation_name(moe.experts, moe.experts.act_fn)
    experts = Experts(moe.experts.gate_up_proj, moe.experts.down_proj, function, gated=True)
    out = mixture_of_experts(ops, experts, flat, lambda u: router_weights(moe.router, u), flat)
    return out.reshape(x.shape)


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


def model_forward(
    ops: BlockOps,
    model: GraniteMoeHybridModel,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | dict[str, Tensor] | None = None,
    position_ids: Tensor | None = None,
    cache: Any = None,
    inputs_embeds: Tensor | None = None,
    use_cache: bool | None = None,
    **kwargs: Any,
) -> MoeModelOutputWithPast:
    """The model's forward for whole sequences: embeddings scaled by
    ``embedding_multiplier`` (an operation), the model's masks and rotary embedding, the
    layers, the final norm."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    check_no_cached_keys(model, cache)
    if inputs_embeds is None:
        inputs_embeds = model.embed_tokens(input_ids)
    x = ops.scale("embedding_scale", ops.compute(inputs_embeds), model.embedding_multiplier)
    if position_ids is None:
        position_ids = torch.arange(x.shape[1], device=x.device)[None]
    masks = attention_mask
    if not isinstance(masks, dict):
        arguments = {"config": model.config, "inputs_embeds": x, "attention_mask": masks}
        masks = {
            "full_attention": create_causal_mask(**arguments, cache=None),
            "linear_attention": create_recurrent_attention_mask(**arguments, cache=None),
        }
    position_embeddings = None if model.rotary_emb is None else model.rotary_emb(x, position_ids)
    for layer, layer_type in zip(model.layers, model.config.layers_block_type, strict=True):
        x = layer(
            x,
            attention_mask=masks[layer_type],
            position_embeddings=position_embeddings,
            **kwargs,
        )
    return MoeModelOutputWithPast(last_hidden_state=model.norm(x))


def causal_lm_forward(
    ops: BlockOps,
    lm: GraniteMoeHybridForCausalLM,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    cache: Any = None,
    inputs_embeds: Tensor | None = None,
    labels: Tensor | None = None,
    use_cache: bool | None = None,
    output_router_logits: bool | None = None,
    logits_to_keep: int | Tensor = 0,
    **kwargs: Any,
) -> MoeCausalLMOutputWithPast:
    """Logits ``lm_head(model(...)) / logits_scaling`` (the scaling an operation)."""
    if labels is not None or output_router_logits:
        raise NotImplementedError(
            "explanations compute no loss; call GraniteMoeHybridForCausalLM without labels "
            "and output_router_logits"
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
    logits = ops.scale("logits_scale", lm.lm_head(hidden), 1.0 / lm.config.logits_scaling)
    return MoeCausalLMOutputWithPast(logits=logits)


HF_GRANITE_MOE_HYBRID = register_adapter(
    ArchitectureAdapter(
        name="transformers GraniteMoeHybrid",
        models=("GraniteMoeHybridModel", "GraniteMoeHybridForCausalLM"),
        handlers=(
            ModuleHandler(GraniteMoeHybridRMSNorm, norm_forward, NORM_SITES),
            ModuleHandler(GraniteMoeHybridRMSNormGated, gated_norm_forward, GATED_NORM_SITES),
            ModuleHandler(GraniteMoeHybridRotaryEmbedding, unchanged_forward, CONSTANT_SITES),
            ModuleHandler(
                GraniteMoeHybridMambaLayer,
                mixer_forward,
                SSD_SITES,
                ("in_proj", "conv1d", "norm", "out_proj"),
            ),
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
                model_forward,
                {"embedding_scale": "scale"},
                ("embed_tokens", "rotary_emb", "layers", "norm"),
            ),
            ModuleHandler(
                GraniteMoeHybridForCausalLM,
                causal_lm_forward,
                {"logits_scale": "scale"},
                ("model", "lm_head"),
            ),
        ),
        blocks=(GraniteMoeHybridMambaLayer, GraniteMoeHybridAttention),
    )
)

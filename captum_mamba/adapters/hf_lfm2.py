"""Architecture adapter for Hugging Face transformers' LFM2 and LFM2-MoE (``Lfm2Model``,
``Lfm2ForCausalLM``, ``Lfm2MoeModel``, ``Lfm2MoeForCausalLM``): gated short convolutions
and attention layers, each followed by a gated MLP or (LFM2-MoE, after its first
``num_dense_layers``) a mixture of gated-MLP experts.

An LFM2 layer is ``h = x + operator(norm(x)); out = h + mlp(norm(h))`` with

- operator ``Lfm2ShortConv``: ``out_proj(C * conv(B * u))`` where ``B, C, u`` are the
  three thirds of ``in_proj(x)`` and ``conv`` is a causal depthwise convolution of a few
  taps (:func:`short_conv_forward`). The convolution is linear (relevance passes by its
  weights, like Mamba's causal conv); both products ``B * u`` and ``C * conv(...)`` are
  of two input-dependent factors: the half rule on each (under the rule each factor is
  linear in the layer input, so the product is homogeneous of degree two and Gradient x
  Input would count its relevance twice);
- or operator ``Lfm2Attention``: queries and keys projected, split into heads and
  normalised per head (``q_layernorm``, ``k_layernorm``: LN-rule), rotary embedding,
  softmax attention over the model's mask, grouped key/value heads, output
  ``out_proj`` (:func:`~captum_mamba.adapters.blocks.self_attention`): AttnLRP or
  CP-LRP;
- ``Lfm2MLP``: ``w2(silu(w1(x)) * w3(x))``: identity rule on the SiLU, half rule on the
  product;
- ``Lfm2MoeSparseMoeBlock``: routed experts (the same gated MLPs) combined by the router's
  weights (sigmoid scores at the top-k, normalised, scaled): router rule, the weights
  are constants (:func:`~captum_mamba.adapters.blocks.mixture_of_experts`);
- ``Lfm2RMSNorm``: LN-rule (also the final ``embedding_norm``); the residual sums as sums;
  ``Lfm2RotaryEmbedding``: a function of the positions, no relevance passes.

With CP-LRP and bias-free layers relevance is conserved exactly (every step is linear in
the path relevance takes, or a product split evenly; the argument is in
``docs/architectures.md``); AttnLRP's softmax absorbs part of it. The short convolution
needs no scan: its state is its last ``L - 1`` inputs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    CONSTANT_SITES,
    GATED_MOE_SITES,
    GLU_SITES,
    NORM_SITES,
    ROTARY_ATTENTION_SITES,
    Experts,
    check_no_cached_keys,
    glu,
    mask_padding,
    mixture_of_experts,
    rms_norm_forward,
    self_attention,
    suffixed,
    top_k_dense,
    unchanged_forward,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "transformers LFM2 and LFM2-MoE",
    ("Lfm2Model", "Lfm2ForCausalLM", "Lfm2MoeModel", "Lfm2MoeForCausalLM"),
    ("transformers.models.lfm2.modeling_lfm2", "transformers.models.lfm2_moe.modeling_lfm2_moe"),
    # LFM2 appeared in 4.54, LFM2-MoE in 5.0; their short convolutions get the padding
    # mask (not the causal one) from 5.13
    needs="transformers >= 5.13",
)
#: The classes of each model, in the order of :func:`_handlers`, then the containers.
_CLASSES = (
    "RMSNorm",
    "RotaryEmbedding",
    "ShortConv",
    "Attention",
    "MLP",
    "DecoderLayer",
    "Model",
    "ForCausalLM",
)
LFM2 = FAMILY.load(*(f"Lfm2{name}" for name in _CLASSES), source=FAMILY.sources[0])
LFM2_MOE = FAMILY.load(*(f"Lfm2Moe{name}" for name in _CLASSES), source=FAMILY.sources[1])
(Lfm2MoeSparseMoeBlock,) = FAMILY.load("Lfm2MoeSparseMoeBlock", source=FAMILY.sources[1])


def short_conv_forward(
    ops: BlockOps,
    module: nn.Module,
    hidden_states: Tensor,
    cache: Any = None,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Gated short convolution ``out_proj(C * conv(B * u))`` with the half rule on both
    products (sites ``input_gate`` and ``output_gate``); the convolution is linear."""
    check_no_cached_keys(module, cache)
    x = mask_padding(ops.compute(hidden_states), attention_mask)
    B, C, u = module.in_proj(x).chunk(3, dim=-1)
    mixed = ops.causal_conv(module.conv, ops.gate("input_gate", B, u))
    return module.out_proj(ops.gate("output_gate", C, mixed))


#: Sites of :func:`short_conv_forward`.
SHORT_CONV_SITES = {"input_gate": "gate", "output_gate": "gate"}


def attention_forward(
    ops: BlockOps, module: nn.Module, hidden_states: Tensor, **kwargs: Any
) -> tuple[Tensor, None]:
    """LFM2 attention: queries and keys normalised per head before the rotary embedding,
    output projection ``out_proj``."""

    def project(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        shape = (*x.shape[:-1], -1, module.head_dim)
        q = module.q_layernorm(module.q_proj(x).view(shape)).flatten(-2)
        k = module.k_layernorm(module.k_proj(x).view(shape)).flatten(-2)
        return q, k, module.v_proj(x)

    return self_attention(
        ops, module, hidden_states, project=project, output_proj="out_proj", **kwargs
    )


def mlp_forward(ops: BlockOps, mlp: nn.Module, x: Tensor) -> Tensor:
    """``w2(silu(w1(x)) * w3(x))`` with the identity and half rules."""
    return mlp.w2(glu(ops, mlp.w1(x), mlp.w3(x), "silu"))


def layer_forward(
    ops: BlockOps,
    layer: nn.Module,
    hidden_states: Tensor,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    attention_mask: Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> Tensor:
    """Short-convolution or attention layer: the operator's residual sum, then the
    MLP's (the cache is ``past_key_values`` before transformers 5.24)."""
    cache = cache if cache is not None else kwargs.pop("past_key_values", None)
    x = ops.compute(hidden_states)
    normed = layer.operator_norm(x)
    if layer.is_attention_layer:
        mixed, _ = layer.self_attn(
            hidden_states=normed,
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
            **kwargs,
        )
    else:
        mixed = layer.conv(hidden_states=normed, cache=cache, attention_mask=attention_mask)
    h = ops.add("residual", x, mixed)
    return ops.add("ff_residual", h, layer.feed_forward(layer.ffn_norm(h)))


def router_weights(moe: nn.Module, x: Tensor) -> Tensor:
    """``(tokens, experts)`` weights of LFM2-MoE's router: ``sigmoid(x W^T)`` at the top-k
    experts (chosen with the expert bias where the model has one), normalised to sum 1
    (``norm_topk_prob``), times ``routed_scaling_factor``; zero elsewhere."""
    router = moe.gate
    scores = torch.sigmoid(F.linear(x, router.weight.to(x.dtype)))
    if router.use_expert_bias:
        _, index = torch.topk(scores + moe.expert_bias.to(x.dtype), router.top_k, dim=-1)
        weights = scores.gather(1, index)
    else:
        weights, index = torch.topk(scores, router.top_k, dim=-1)
    if router.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-6)
    return top_k_dense(weights * router.routed_scaling_factor, index, router.num_experts)


def moe_forward(ops: BlockOps, moe: nn.Module, hidden_states: Tensor) -> Tensor:
    """LFM2-MoE's mixture of gated-MLP experts with the router, identity and half rules."""
    x = ops.compute(hidden_states)
    flat = x.reshape(-1, x.shape[-1])
    experts = Experts(moe.experts.gate_up_proj, moe.experts.down_proj, "silu", gated=True)

    def select(u: Tensor) -> Tensor:
        return router_weights(moe, u)

    out = mixture_of_experts(ops, experts, flat, select, flat, suffix=MOE_SUFFIX)
    return out.reshape(x.shape)


#: Suffix of the sites of :func:`moe_forward` (the module's router is its child ``gate``).
MOE_SUFFIX = "_experts"


def _handlers(
    norm: type, rotary: type, short_conv: type, attention: type, mlp: type, layer: type
) -> tuple[ModuleHandler, ...]:
    return (
        ModuleHandler(norm, rms_norm_forward, NORM_SITES),
        ModuleHandler(rotary, unchanged_forward, CONSTANT_SITES),
        ModuleHandler(
            short_conv, short_conv_forward, SHORT_CONV_SITES, ("in_proj", "conv", "out_proj")
        ),
        ModuleHandler(
            attention,
            attention_forward,
            ROTARY_ATTENTION_SITES,
            ("q_proj", "k_proj", "v_proj", "out_proj", "q_layernorm", "k_layernorm"),
        ),
        ModuleHandler(mlp, mlp_forward, GLU_SITES, ("w1", "w3", "w2")),
        ModuleHandler(
            layer,
            layer_forward,
            {"residual": "add", "ff_residual": "add"},
            ("operator_norm", "self_attn", "conv", "ffn_norm", "feed_forward"),
            role="block",
        ),
    )


HF_LFM2 = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            *_handlers(*LFM2[:6]),
            *_handlers(*LFM2_MOE[:6]),
            ModuleHandler(
                Lfm2MoeSparseMoeBlock, moe_forward, suffixed(GATED_MOE_SITES, MOE_SUFFIX)
            ),
        ),
        containers=(*LFM2[6:], *LFM2_MOE[6:]),
        blocks=(*LFM2[2:4], *LFM2_MOE[2:4]),
    )
)

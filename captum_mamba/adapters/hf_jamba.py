"""Architecture adapter for Hugging Face transformers' Jamba (``JambaModel``,
``JambaForCausalLM``, ``JambaForSequenceClassification``): Mamba layers, attention layers,
gated MLPs and mixtures of experts.

A Jamba layer is ``h = x + mixer(norm(x)); out = h + feed_forward(norm(h))`` with

- mixer ``JambaMambaMixer``: Mamba-1 with RMS norms (with weights) on ``dt``, ``B`` and ``C`` inside
  the mixer, as FalconMamba: the selective branch of
  :func:`~captum_mamba.adapters.blocks.mamba_mixer_forward` (identity rule on both SiLUs, SSM rule,
  half rule on the gate); the extra norms sit on the branch the SSM rule detaches;
- or mixer ``JambaAttention``: softmax attention without position embedding, over the
  model's causal and padding mask, grouped key/value heads
  (:func:`~captum_mamba.adapters.blocks.self_attention`): AttnLRP (uniform rule on
  ``q k^T`` and ``weights v``, softmax by its gradient) or CP-LRP (constant weights);
- feed-forward ``JambaMLP``: ``down(act(gate(x)) * up(x))``: identity rule on the
  activation, half rule on the product of the two input-dependent branches;
- or feed-forward ``JambaSparseMoeBlock``: the router (``JambaTopKRouter``) picks the
  top-k experts of the softmax of its logits and weights them by their (unnormalised)
  probabilities; the experts (``JambaExperts``) are gated MLPs as above
  (:func:`~captum_mamba.adapters.blocks.mixture_of_experts`). Router rule: the weights
  are constants, relevance flows into the selected experts in proportion to their
  weighted outputs;
- ``JambaRMSNorm``: LN-rule; the two residual sums as sums (LRP-0).

Conservation: with bias-free layers (Jamba has none in attention, MLPs and experts) and
CP-LRP every step is linear in the path relevance takes, or a product split evenly, so
relevance is conserved exactly; with AttnLRP the softmax's bias term absorbs part of it.
The router's softmax and top-k are computed in the explanation's dtype (transformers
uses float32).
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
    ATTENTION_SITES,
    GATED_MLP_CALLS,
    GATED_MOE_SITES,
    GLU_SITES,
    MAMBA_MIXER_CALLS,
    MIXER_NORM_CALLS,
    NORM_SITES,
    SELECTIVE_SITES,
    gated_experts_forward,
    gated_mlp_forward,
    mamba_mixer_forward,
    rms_norm_forward,
    self_attention,
    top_k_dense,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "transformers Jamba",
    ("JambaModel", "JambaForCausalLM", "JambaForSequenceClassification"),
    ("transformers.models.jamba.modeling_jamba",),
    # the router is a module (JambaTopKRouter) from 5.21
    needs="transformers >= 5.21",
)
(
    JambaAttention,
    JambaAttentionDecoderLayer,
    JambaForCausalLM,
    JambaForSequenceClassification,
    JambaMambaDecoderLayer,
    JambaMambaMixer,
    JambaMLP,
    JambaModel,
    JambaRMSNorm,
    JambaSparseMoeBlock,
    JambaTopKRouter,
) = FAMILY.load(
    "JambaAttention",
    "JambaAttentionDecoderLayer",
    "JambaForCausalLM",
    "JambaForSequenceClassification",
    "JambaMambaDecoderLayer",
    "JambaMambaMixer",
    "JambaMLP",
    "JambaModel",
    "JambaRMSNorm",
    "JambaSparseMoeBlock",
    "JambaTopKRouter",
)


def router_weights(router: JambaTopKRouter, x: Tensor) -> Tensor:
    """``(tokens, experts)`` weights: the top-k of ``softmax(x W^T)``, zero elsewhere."""
    probabilities = torch.softmax(F.linear(x, router.weight.to(x.dtype)), dim=-1)
    weights, index = torch.topk(probabilities, router.top_k, dim=-1)
    return top_k_dense(weights, index, router.num_experts)


def moe_forward(ops: BlockOps, moe: JambaSparseMoeBlock, hidden_states: Tensor) -> Tensor:
    """Mixture of gated-MLP experts with the router, identity and half rules."""
    return gated_experts_forward(ops, moe, hidden_states, router_weights)


def layer_forward(
    ops: BlockOps,
    layer: JambaMambaDecoderLayer | JambaAttentionDecoderLayer,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> Tensor:
    """Mamba or attention layer: two pre-norm residual sums, the mixer's then the
    feed-forward's."""
    x = ops.compute(hidden_states)
    normed = layer.input_layernorm(x)
    if isinstance(layer, JambaMambaDecoderLayer):
        mixed = layer.mamba(normed, attention_mask=attention_mask, cache=cache)
    else:
        mixed, _ = layer.self_attn(normed, attention_mask=attention_mask, cache=cache, **kwargs)
    h = ops.add("residual", x, mixed)
    return ops.add("ff_residual", h, layer.feed_forward(layer.pre_ff_layernorm(h)))


LAYER_SITES = {"residual": "add", "ff_residual": "add"}

HF_JAMBA = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(JambaRMSNorm, rms_norm_forward, NORM_SITES),
            ModuleHandler(
                JambaMambaMixer,
                mamba_mixer_forward,
                SELECTIVE_SITES,
                (*MAMBA_MIXER_CALLS, *MIXER_NORM_CALLS),
            ),
            ModuleHandler(JambaAttention, self_attention, ATTENTION_SITES, ATTENTION_CALLS),
            ModuleHandler(JambaMLP, gated_mlp_forward, GLU_SITES, GATED_MLP_CALLS),
            ModuleHandler(JambaSparseMoeBlock, moe_forward, GATED_MOE_SITES),
            ModuleHandler(
                JambaMambaDecoderLayer,
                layer_forward,
                LAYER_SITES,
                ("input_layernorm", "mamba", "pre_ff_layernorm", "feed_forward"),
                role="block",
            ),
            ModuleHandler(
                JambaAttentionDecoderLayer,
                layer_forward,
                LAYER_SITES,
                ("input_layernorm", "self_attn", "pre_ff_layernorm", "feed_forward"),
                role="block",
            ),
        ),
        containers=(JambaModel, JambaForCausalLM, JambaForSequenceClassification),
        blocks=(JambaMambaMixer, JambaAttention),
    )
)

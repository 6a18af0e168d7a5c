"""Architecture adapter for Hugging Face transformers' Nemotron-H (``NemotronHModel``,
``NemotronHForCausalLM``): a stack of single-mixer residual blocks, each a Mamba-2 mixer,
an attention layer, a squared-ReLU MLP or a mixture of squared-ReLU experts.

A Nemotron-H block is ``x + mixer(norm(x))`` with the mixer

- ``NemotronHMamba2Mixer``: the Mamba-2 mixer of transformers
  (:func:`~captum_mamba.adapters.blocks.ssd_mixer_forward`) (identity rule after the conv, SSM rule,
  identity, half and LN-rules in the gated norm ``NemotronHRMSNormGated``);
- ``NemotronHAttention``: softmax attention without position embedding, grouped
  key/value heads, the model's causal and padding mask: AttnLRP or CP-LRP;
- ``NemotronHMLP``: ``down(relu(up(x))^2)``. The squared ReLU is the product
  ``relu(u) * relu(u)`` of two factors that depend on the same input (homogeneous of
  degree two: Gradient x Input would count its relevance twice); the uniform rule gives
  each factor half, and each passes its half on as a ReLU does, so relevance crosses the
  activation unchanged: the identity rule ``u * [relu(u)]const``;
- ``NemotronHMoE``: routed squared-ReLU experts (``NemotronHExperts``, optionally between
  the latent projections ``fc1_latent_proj``/``fc2_latent_proj``) plus a shared expert
  (a ``NemotronHMLP``), summed. The router (``NemotronHTopkRouter``) scores experts by
  ``sigmoid(x W^T)``, picks the top-k among the best groups of the bias-corrected scores,
  and weights them by their (normalised, scaled) scores. Router rule: the weights are
  constants; relevance flows into the selected experts in proportion to their weighted
  outputs and into the shared expert, and is conserved exactly across the sum;
- ``NemotronHRMSNorm``: LN-rule; the residual sum as a sum (LRP-0).

With CP-LRP and bias-free layers relevance is conserved exactly; with AttnLRP the
softmax's bias term absorbs part of it. The router is computed in the explanation's dtype
(transformers uses float32).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    ATTENTION_CALLS,
    ATTENTION_SITES,
    GATED_NORM_SITES,
    MOE_SITES,
    NORM_SITES,
    RESIDUAL_SITES,
    SSD_CALLS,
    SSD_SITES,
    Experts,
    activation_name,
    gated_norm_forward,
    group_limited_sigmoid_router,
    mixture_of_experts,
    rms_norm_forward,
    self_attention,
    ssd_mixer_forward,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "transformers Nemotron-H",
    ("NemotronHModel", "NemotronHForCausalLM"),
    ("transformers.models.nemotron_h.modeling_nemotron_h",),
    # the gated norm is NemotronHRMSNormGated from 5.20
    needs="transformers >= 5.20",
)
(
    NemotronHAttention,
    NemotronHBlock,
    NemotronHForCausalLM,
    NemotronHMamba2Mixer,
    NemotronHMLP,
    NemotronHModel,
    NemotronHMoE,
    NemotronHRMSNorm,
    NemotronHRMSNormGated,
) = FAMILY.load(
    "NemotronHAttention",
    "NemotronHBlock",
    "NemotronHForCausalLM",
    "NemotronHMamba2Mixer",
    "NemotronHMLP",
    "NemotronHModel",
    "NemotronHMoE",
    "NemotronHRMSNorm",
    "NemotronHRMSNormGated",
)


def mlp_forward(ops: BlockOps, mlp: NemotronHMLP, x: Tensor) -> Tensor:
    """MLP ``down(act(up(x)))`` (squared ReLU) with the identity rule."""
    return mlp.down_proj(ops.activation("act", mlp.up_proj(x), activation_name(mlp, mlp.act_fn)))


def moe_forward(ops: BlockOps, moe: NemotronHMoE, hidden_states: Tensor) -> Tensor:
    """Routed experts plus the shared expert, with the router and identity rules."""
    x = ops.compute(hidden_states)
    flat = x.reshape(-1, x.shape[-1])
    function = activation_name(moe.experts, moe.experts.act_fn)
    experts = Experts(moe.experts.up_proj, moe.experts.down_proj, function, gated=False)
    routed = mixture_of_experts(
        ops,
        experts,
        flat,
        lambda u: group_limited_sigmoid_router(moe.gate, u),
        moe.fc1_latent_proj(flat),
    )
    routed = moe.fc2_latent_proj(routed).reshape(x.shape)
    return ops.add("shared", routed, moe.shared_experts(x))


def block_forward(
    ops: BlockOps,
    block: NemotronHBlock,
    hidden_states: Tensor,
    cache: Any = None,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Residual block ``x + mixer(norm(x))`` for every mixer type."""
    x = ops.compute(hidden_states)
    normed = block.norm(x)
    if block.block_type == "linear_attention":
        mixed = block.mixer(normed, cache=cache, attention_mask=attention_mask)
    elif block.block_type == "full_attention":
        mixed, _ = block.mixer(normed, attention_mask=attention_mask, cache=cache, **kwargs)
    else:
        mixed = block.mixer(normed)
    return ops.add("residual", x, mixed)


HF_NEMOTRON_H = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(NemotronHRMSNorm, rms_norm_forward, NORM_SITES),
            ModuleHandler(NemotronHRMSNormGated, gated_norm_forward, GATED_NORM_SITES),
            ModuleHandler(NemotronHMamba2Mixer, ssd_mixer_forward, SSD_SITES, SSD_CALLS),
            ModuleHandler(NemotronHAttention, self_attention, ATTENTION_SITES, ATTENTION_CALLS),
            ModuleHandler(
                NemotronHMLP, mlp_forward, {"act": "activation"}, ("up_proj", "down_proj")
            ),
            ModuleHandler(
                NemotronHMoE,
                moe_forward,
                {**MOE_SITES, "shared": "add"},
                ("fc1_latent_proj", "fc2_latent_proj", "shared_experts"),
            ),
            ModuleHandler(
                NemotronHBlock, block_forward, RESIDUAL_SITES, ("norm", "mixer"), role="block"
            ),
        ),
        containers=(NemotronHModel, NemotronHForCausalLM),
        blocks=(NemotronHMamba2Mixer, NemotronHAttention),
    )
)

"""Architecture adapter for Hugging Face transformers' Jamba (``JambaModel``,
``JambaForCausalLM``): its Mamba layers and gated MLPs.

A Jamba Mamba layer is ``h = x + mamba(norm(x)); out = h + mlp(norm(h))`` with

- ``JambaMambaMixer``: Mamba-1 with RMS norms (with weights) on ``dt``, ``B`` and ``C``
  inside the mixer, as FalconMamba: the selective branch of
  :mod:`~captum_mamba.adapters.hf_mamba` (identity rule on both SiLUs, SSM rule, half
  rule on the gate); the extra norms sit on the branch the SSM rule detaches;
- ``JambaMLP``: ``down(silu(gate(x)) * up(x))``: identity rule on the SiLU, half rule on
  the product of the two input-dependent branches (it is homogeneous of degree two in
  ``x`` under the identity rule, so Gradient x Input would count its relevance twice);
- ``JambaRMSNorm``: LN-rule; the two residual sums as sums (LRP-0).

With every rule on and bias-free layers relevance is conserved exactly. Attention layers
and mixture-of-experts feed-forward blocks are refused by the allow-list (configurations
with ``attn_layer_offset >= attn_layer_period`` or ``num_experts=1`` have none).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformers.models.jamba.modeling_jamba import (
    JambaForCausalLM,
    JambaMambaDecoderLayer,
    JambaMambaMixer,
    JambaMLP,
    JambaModel,
    JambaRMSNorm,
)

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import SELECTIVE_SITES, check_silu
from captum_mamba.adapters.hf_mamba import MIXER_CALLS, NORM_SITES, mixer_forward, norm_forward


def mlp_forward(ops: BlockOps, mlp: JambaMLP, x: Tensor) -> Tensor:
    """Gated MLP ``down(silu(gate(x)) * up(x))`` with the identity and half rules."""
    check_silu(mlp, mlp.config.hidden_act)
    return mlp.down_proj(ops.gate("gate", ops.silu("act", mlp.gate_proj(x)), mlp.up_proj(x)))


def layer_forward(
    ops: BlockOps,
    layer: JambaMambaDecoderLayer,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> Tensor:
    """Mamba layer: two pre-norm residual sums, the mixer's then the feed-forward's."""
    x = ops.compute(hidden_states)
    mixed = layer.mamba(layer.input_layernorm(x), attention_mask=attention_mask, cache=cache)
    h = ops.add("residual", x, mixed)
    return ops.add("ff_residual", h, layer.feed_forward(layer.pre_ff_layernorm(h)))


HF_JAMBA = register_adapter(
    ArchitectureAdapter(
        name="transformers Jamba",
        models=("JambaModel", "JambaForCausalLM (Mamba layers and gated MLPs)"),
        handlers=(
            ModuleHandler(JambaRMSNorm, norm_forward, NORM_SITES),
            ModuleHandler(
                JambaMambaMixer,
                mixer_forward,
                SELECTIVE_SITES,
                (*MIXER_CALLS, "dt_layernorm", "b_layernorm", "c_layernorm"),
            ),
            ModuleHandler(
                JambaMLP,
                mlp_forward,
                {"act": "silu", "gate": "gate"},
                ("gate_proj", "up_proj", "down_proj"),
            ),
            ModuleHandler(
                JambaMambaDecoderLayer,
                layer_forward,
                {"residual": "add", "ff_residual": "add"},
                ("input_layernorm", "mamba", "pre_ff_layernorm", "feed_forward"),
                role="block",
            ),
        ),
        containers=(JambaModel, JambaForCausalLM),
        blocks=(JambaMambaMixer,),
    )
)

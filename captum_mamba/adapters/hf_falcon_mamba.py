"""Architecture adapter for Hugging Face transformers' FalconMamba (``FalconMambaModel``,
``FalconMambaForCausalLM`` and any user model built on their blocks).

FalconMamba is Mamba-1 with three extra weightless RMS norms inside the mixer, on the
time-step projection and on ``B`` and ``C``::

    x, z = in_proj(u);  x = silu(conv1d(x))
    dt_low, B, C = x_proj(x)
    dt = softplus(dt_proj(rms(dt_low)));  B = rms(B);  C = rms(C)
    out = out_proj((scan(x; exp(dt A), dt B, C) + D x) * silu(z))

The rules are those of Mamba-1 (identity rule on both SiLUs, SSM rule on the scan,
half rule on the gate, LN-rule on the block norms): the extra norms sit in the branch
that computes ``dt``, ``B`` and ``C``, which the SSM rule detaches. They change the
values of the scan coefficients, not the path of the relevance, and receive none.
They still get the LN-rule, which matters only for ablations with the SSM rule off.

The mixer, the norms and the block share the Mamba-1 forwards of
:mod:`captum_mamba.adapters.hf_mamba` (the mixer picks up the extra norms by name).
"""

from __future__ import annotations

from torch import Tensor, nn
from transformers.models.falcon_mamba.modeling_falcon_mamba import (
    FalconMambaBlock,
    FalconMambaForCausalLM,
    FalconMambaMixer,
    FalconMambaModel,
    FalconMambaRMSNorm,
    FalconMambaWeightlessRMSNorm,
)

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import RESIDUAL_SITES, SELECTIVE_SITES, residual_block
from captum_mamba.adapters.hf_mamba import MIXER_CALLS, NORM_SITES, mixer_forward, norm_forward


def weightless_norm_forward(ops: BlockOps, norm: nn.Module, hidden_states: Tensor) -> Tensor:
    """Weightless RMSNorm (on ``dt``, ``B`` or ``C``) with the LN-rule."""
    return ops.rms_norm("", hidden_states, None, norm.eps)


HF_FALCON_MAMBA = register_adapter(
    ArchitectureAdapter(
        name="transformers FalconMamba",
        models=(
            "FalconMambaModel",
            "FalconMambaForCausalLM",
            "models containing FalconMambaBlock/FalconMambaMixer",
        ),
        handlers=(
            ModuleHandler(FalconMambaRMSNorm, norm_forward, NORM_SITES),
            ModuleHandler(FalconMambaWeightlessRMSNorm, weightless_norm_forward, NORM_SITES),
            ModuleHandler(
                FalconMambaMixer,
                mixer_forward,
                SELECTIVE_SITES,
                (*MIXER_CALLS, "dt_layernorm", "b_layernorm", "c_layernorm"),
            ),
            ModuleHandler(
                FalconMambaBlock, residual_block, RESIDUAL_SITES, ("norm", "mixer"), role="block"
            ),
        ),
        containers=(FalconMambaModel, FalconMambaForCausalLM),
        blocks=(FalconMambaMixer,),
    )
)

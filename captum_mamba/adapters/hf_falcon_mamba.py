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
:mod:`captum_mamba.adapters.blocks` (the mixer picks up the extra norms by name).
"""

from __future__ import annotations

from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    MAMBA_MIXER_CALLS,
    MIXER_NORM_CALLS,
    NORM_SITES,
    RESIDUAL_SITES,
    SELECTIVE_SITES,
    mamba_mixer_forward,
    residual_block,
    rms_norm_forward,
    weightless_norm_forward,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "transformers FalconMamba",
    (
        "FalconMambaModel",
        "FalconMambaForCausalLM",
        "models containing FalconMambaBlock/FalconMambaMixer",
    ),
    ("transformers.models.falcon_mamba.modeling_falcon_mamba",),
    # the norms of dt, B and C are modules (FalconMambaWeightlessRMSNorm) from 5.15
    needs="transformers >= 5.15",
)
(
    FalconMambaBlock,
    FalconMambaForCausalLM,
    FalconMambaMixer,
    FalconMambaModel,
    FalconMambaRMSNorm,
    FalconMambaWeightlessRMSNorm,
) = FAMILY.load(
    "FalconMambaBlock",
    "FalconMambaForCausalLM",
    "FalconMambaMixer",
    "FalconMambaModel",
    "FalconMambaRMSNorm",
    "FalconMambaWeightlessRMSNorm",
)

HF_FALCON_MAMBA = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(FalconMambaRMSNorm, rms_norm_forward, NORM_SITES),
            ModuleHandler(FalconMambaWeightlessRMSNorm, weightless_norm_forward, NORM_SITES),
            ModuleHandler(
                FalconMambaMixer,
                mamba_mixer_forward,
                SELECTIVE_SITES,
                (*MAMBA_MIXER_CALLS, *MIXER_NORM_CALLS),
            ),
            ModuleHandler(
                FalconMambaBlock, residual_block, RESIDUAL_SITES, ("norm", "mixer"), role="block"
            ),
        ),
        containers=(FalconMambaModel, FalconMambaForCausalLM),
        blocks=(FalconMambaMixer,),
    )
)

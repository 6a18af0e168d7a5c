"""Architecture adapter for Hugging Face transformers' Mamba-1 (``MambaModel``,
``MambaForCausalLM`` and any user model built on their blocks).

Rule assignment:

- ``MambaRMSNorm``: LN-rule.
- ``MambaMixer``: identity rule on both SiLUs (after the causal conv and on the gate
  branch ``z``), SSM rule on the selective scan, half rule on ``y * silu(z)``
  (:func:`~captum_mamba.adapters.blocks.mamba_mixer_forward`); ``in_proj``, ``conv1d``,
  ``x_proj``, ``dt_proj`` and ``out_proj`` are called as modules, so a linear rule (and
  any user hook) applies to them.
- ``MambaBlock``: the residual ``x + mixer(norm(x))``, in the input dtype (transformers
  casts the residual to float32, which would round a float64 explanation).
- ``MambaModel``, ``MambaForCausalLM``: containers.

The forwards compute in the dtype of the hidden states, and in float32 for
half-precision hidden states (transformers casts only the scan to float32); weights are
cast on the fly, the model is not modified. With all rules off they compute the same
function as the model.
"""

from __future__ import annotations

from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    MAMBA_MIXER_CALLS,
    NORM_SITES,
    RESIDUAL_SITES,
    SELECTIVE_SITES,
    mamba_mixer_forward,
    residual_block,
    rms_norm_forward,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "transformers Mamba",
    ("MambaModel", "MambaForCausalLM", "models containing MambaBlock/MambaMixer"),
    ("transformers.models.mamba.modeling_mamba",),
    needs="transformers >= 4.46",
)
MambaBlock, MambaForCausalLM, MambaMixer, MambaModel, MambaRMSNorm = FAMILY.load(
    "MambaBlock", "MambaForCausalLM", "MambaMixer", "MambaModel", "MambaRMSNorm"
)

HF_MAMBA = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(MambaRMSNorm, rms_norm_forward, NORM_SITES),
            ModuleHandler(MambaMixer, mamba_mixer_forward, SELECTIVE_SITES, MAMBA_MIXER_CALLS),
            ModuleHandler(
                MambaBlock, residual_block, RESIDUAL_SITES, ("norm", "mixer"), role="block"
            ),
        ),
        containers=(MambaModel, MambaForCausalLM),
        blocks=(MambaMixer,),
    )
)

"""Architecture adapter for Hugging Face transformers' Mamba-1 (``MambaModel``,
``MambaForCausalLM`` and any user model built on their blocks).

Rule assignment:

- ``MambaRMSNorm``: LN-rule.
- ``MambaMixer``: identity rule on both SiLUs (after the causal conv and on the gate
  branch ``z``), SSM rule on the selective scan, half rule on ``y * silu(z)``
  (:func:`~captum_mamba.adapters.blocks.selective_branch`); ``in_proj``, ``conv1d``,
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

from typing import Any

from torch import Tensor, nn
from transformers.models.mamba.modeling_mamba import (
    MambaBlock,
    MambaForCausalLM,
    MambaMixer,
    MambaModel,
    MambaRMSNorm,
)

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    RESIDUAL_SITES,
    SELECTIVE_SITES,
    SelectiveParams,
    check_silu,
    mask_padding,
    residual_block,
    selective_branch,
)


def check_no_past_state(mixer: nn.Module, kwargs: dict[str, Any]) -> None:
    """Refuse a filled generation cache: explanations run over whole sequences."""
    cache = kwargs.get("cache", kwargs.get("cache_params"))
    has_previous = getattr(cache, "has_previous_state", None)
    if callable(has_previous) and has_previous(mixer.layer_idx):
        raise NotImplementedError(
            "MambaLRP explains whole sequences; call the model without a filled cache "
            "(use_cache=False) and pass the full prefix instead"
        )


def norm_forward(ops: BlockOps, norm: nn.Module, hidden_states: Tensor) -> Tensor:
    """RMSNorm (``weight``, ``variance_epsilon``) with the LN-rule."""
    x = ops.compute(hidden_states)
    return ops.rms_norm("", x, norm.weight, norm.variance_epsilon)


NORM_SITES = {"": "norm"}


def selective_params(mixer: nn.Module) -> SelectiveParams:
    """Branch parameters of a transformers Mamba-1-style mixer (with the ``dt``, ``B``
    and ``C`` norms of FalconMamba and Jamba where it has them)."""
    norms = None
    if hasattr(mixer, "dt_layernorm"):
        norms = (mixer.dt_layernorm, mixer.b_layernorm, mixer.c_layernorm)
    return SelectiveParams(
        mixer.conv1d,
        mixer.x_proj,
        mixer.dt_proj,
        mixer.A_log,
        mixer.D,
        mixer.time_step_rank,
        mixer.ssm_state_size,
        norms,
    )


def mixer_forward(
    ops: BlockOps,
    mixer: nn.Module,
    hidden_states: Tensor,
    *args: Any,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Mamba-1 mixer (full-sequence form) with the SiLU, SSM and half rules."""
    check_no_past_state(mixer, kwargs)
    check_silu(mixer, mixer.activation)
    hidden_states = ops.compute(hidden_states)
    x, z = mixer.in_proj(mask_padding(hidden_states, attention_mask)).chunk(2, dim=-1)
    y = selective_branch(ops, selective_params(mixer), x, z, attention_mask)
    return mixer.out_proj(y)


#: Children a Mamba-1 mixer calls.
MIXER_CALLS = ("in_proj", "conv1d", "x_proj", "dt_proj", "out_proj")

HF_MAMBA = register_adapter(
    ArchitectureAdapter(
        name="transformers Mamba",
        models=("MambaModel", "MambaForCausalLM", "models containing MambaBlock/MambaMixer"),
        handlers=(
            ModuleHandler(MambaRMSNorm, norm_forward, NORM_SITES),
            ModuleHandler(MambaMixer, mixer_forward, SELECTIVE_SITES, MIXER_CALLS),
            ModuleHandler(
                MambaBlock, residual_block, RESIDUAL_SITES, ("norm", "mixer"), role="block"
            ),
        ),
        containers=(MambaModel, MambaForCausalLM),
        blocks=(MambaMixer,),
    )
)

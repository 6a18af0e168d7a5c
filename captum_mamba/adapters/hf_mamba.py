"""Architecture adapter for Hugging Face transformers' Mamba-1 (``MambaModel``,
``MambaForCausalLM`` and any user model built on their blocks).

Rule assignment:

- ``MambaRMSNorm``: LN-rule.
- ``MambaMixer``: identity rule on both SiLUs (after the causal conv and on the gate
  branch ``z``), SSM rule on the selective scan, half rule on ``y * silu(z)``;
  ``in_proj``, ``conv1d`` and ``out_proj`` are called as modules, so a linear rule
  (and any user hook) applies to them.
- ``MambaBlock``: the residual ``x + mixer(norm(x))`` as is. The block is re-implemented
  only to keep the input dtype: transformers casts the residual to float32, which
  would round a float64 explanation.

The rule forwards compute in the dtype of the hidden states, and in float32 for
half-precision hidden states (transformers casts only the scan to float32); weights
are cast on the fly, the model is not modified. With all rules off they compute the
same function as the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.mamba.modeling_mamba import MambaBlock, MambaMixer, MambaRMSNorm

from captum_mamba.adapters.base import ArchitectureAdapter, register_adapter
from captum_mamba.adapters.selective_branch import gated_selective_branch, mask_padding
from captum_mamba.rules import MambaRules, rms_norm


def widened(x: Tensor) -> Tensor:
    """``x`` in at least float32: half-precision models are explained in float32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def check_no_past_state(mixer: MambaMixer, kwargs: dict[str, Any]) -> None:
    """Refuse a filled generation cache: explanations run over whole sequences."""
    cache = kwargs.get("cache", kwargs.get("cache_params"))
    has_previous = getattr(cache, "has_previous_state", None)
    if callable(has_previous) and has_previous(mixer.layer_idx):
        raise NotImplementedError(
            "MambaLRP explains whole sequences; call the model without a filled cache "
            "(use_cache=False) and pass the full prefix instead"
        )


def norm_forward(norm: MambaRMSNorm, rules: MambaRules, hidden_states: Tensor) -> Tensor:
    """RMSNorm with the LN-rule."""
    x = widened(hidden_states)
    return rms_norm(x, norm.weight.to(x.dtype), norm.variance_epsilon, rules.norm)


CoefficientNorms = Callable[[nn.Module, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


def selective_mixer(
    mixer: nn.Module,
    rules: MambaRules,
    hidden_states: Tensor,
    attention_mask: Tensor | None,
    kwargs: dict[str, Any],
    coefficient_norms: CoefficientNorms | None = None,
) -> Tensor:
    """Mamba-1-style mixer with the SiLU, SSM and half rules (full-sequence form).

    Args:
        mixer (nn.Module): a ``MambaMixer``-like module (``in_proj``, ``conv1d``,
            ``x_proj``, ``dt_proj``, ``A_log``, ``D``, ``out_proj``).
        rules (MambaRules): the rules to apply.
        hidden_states (Tensor): ``(batch, seq, hidden)`` block input.
        attention_mask (Tensor or None): ``(batch, seq)`` padding mask.
        kwargs (dict): the other keyword arguments of the mixer call.
        coefficient_norms (Callable, optional): maps ``(mixer, time_step, B, C)`` to
            normalised ones (FalconMamba). Default: None.

    Returns:
        Tensor: ``(batch, seq, hidden)`` mixer output.
    """
    check_no_past_state(mixer, kwargs)
    if mixer.activation not in ("silu", "swish"):
        raise NotImplementedError(
            f"MambaLRP supports SiLU mixers only, this one uses {mixer.activation!r}"
        )
    hidden_states = widened(hidden_states)
    x, z = mixer.in_proj(mask_padding(hidden_states, attention_mask)).chunk(2, dim=-1)

    def coefficients(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        time_step, B, C = torch.split(
            mixer.x_proj(x),
            [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size],
            dim=-1,
        )
        if coefficient_norms is not None:
            time_step, B, C = coefficient_norms(mixer, time_step, B, C)
        return F.softplus(mixer.dt_proj(time_step)), -torch.exp(mixer.A_log.to(x.dtype)), B, C

    y = gated_selective_branch(
        rules, x, z, mixer.conv1d, coefficients, mixer.D, attention_mask=attention_mask
    )
    return mixer.out_proj(y)


def mixer_forward(
    mixer: MambaMixer,
    rules: MambaRules,
    hidden_states: Tensor,
    *args: Any,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Mamba-1 mixer with the SiLU, SSM and half rules (full-sequence form)."""
    return selective_mixer(mixer, rules, hidden_states, attention_mask, kwargs)


def block_forward(block: MambaBlock, rules: MambaRules, hidden_states: Tensor, *args, **kwargs):
    """Pre-norm residual block ``x + mixer(norm(x))`` in the input dtype (at least float32)."""
    x = widened(hidden_states)
    return x + block.mixer(block.norm(x), *args, **kwargs)


HF_MAMBA = register_adapter(
    ArchitectureAdapter(
        name="transformers Mamba",
        models=("MambaModel", "MambaForCausalLM", "models containing MambaBlock/MambaMixer"),
        blocks=(MambaMixer,),
        forwards={MambaRMSNorm: norm_forward, MambaMixer: mixer_forward, MambaBlock: block_forward},
    )
)

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

Rule assignment: ``FalconMambaRMSNorm`` and ``FalconMambaWeightlessRMSNorm``: LN-rule;
``FalconMambaMixer``: identity, SSM and half rules; ``FalconMambaBlock``: the residual
``x + mixer(norm(x))`` in the input dtype. The rule forwards follow transformers'
full-sequence path; with all rules off they compute the same function as the model,
in the dtype of the hidden states (transformers casts parts of it to float32).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor
from transformers.models.falcon_mamba.modeling_falcon_mamba import (
    FalconMambaBlock,
    FalconMambaMixer,
    FalconMambaRMSNorm,
    FalconMambaWeightlessRMSNorm,
)

from captum_mamba.adapters.base import ArchitectureAdapter, register_adapter
from captum_mamba.adapters.hf_mamba import block_forward, norm_forward, selective_mixer
from captum_mamba.rules import MambaRules, rms_norm


def weightless_norm_forward(
    norm: FalconMambaWeightlessRMSNorm, rules: MambaRules, hidden_states: Tensor
) -> Tensor:
    """Weightless RMSNorm (on ``dt``, ``B`` or ``C``) with the LN-rule."""
    return rms_norm(hidden_states, None, norm.eps, rules.norm)


def _coefficient_norms(
    mixer: FalconMambaMixer, time_step: Tensor, B: Tensor, C: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    return mixer.dt_layernorm(time_step), mixer.b_layernorm(B), mixer.c_layernorm(C)


def mixer_forward(
    mixer: FalconMambaMixer,
    rules: MambaRules,
    hidden_states: Tensor,
    *args: Any,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """FalconMamba mixer: the Mamba-1 mixer with RMS norms on ``dt``, ``B`` and ``C``."""
    return selective_mixer(
        mixer, rules, hidden_states, attention_mask, kwargs, coefficient_norms=_coefficient_norms
    )


HF_FALCON_MAMBA = register_adapter(
    ArchitectureAdapter(
        name="transformers FalconMamba",
        models=(
            "FalconMambaModel",
            "FalconMambaForCausalLM",
            "models containing FalconMambaBlock/FalconMambaMixer",
        ),
        blocks=(FalconMambaMixer,),
        forwards={
            FalconMambaRMSNorm: norm_forward,
            FalconMambaWeightlessRMSNorm: weightless_norm_forward,
            FalconMambaMixer: mixer_forward,
            FalconMambaBlock: block_forward,
        },
    )
)

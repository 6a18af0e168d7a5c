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

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.models.falcon_mamba.modeling_falcon_mamba import (
    FalconMambaBlock,
    FalconMambaMixer,
    FalconMambaRMSNorm,
    FalconMambaWeightlessRMSNorm,
)

from captum_mamba.adapters.base import ArchitectureAdapter, register_adapter
from captum_mamba.adapters.hf_mamba import (
    block_forward,
    check_no_past_state,
    mask_padding,
    norm_forward,
    widened,
)
from captum_mamba.rules import MambaRules, gated_product, rms_norm, selective_ssm, silu


def weightless_norm_forward(
    norm: FalconMambaWeightlessRMSNorm, rules: MambaRules, hidden_states: Tensor
) -> Tensor:
    """Weightless RMSNorm (on ``dt``, ``B`` or ``C``) with the LN-rule."""
    return rms_norm(hidden_states, None, norm.eps, rules.norm)


def mixer_forward(
    mixer: FalconMambaMixer,
    rules: MambaRules,
    hidden_states: Tensor,
    *args: Any,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """FalconMamba mixer with the SiLU, SSM and half rules (full-sequence form)."""
    check_no_past_state(mixer, kwargs)
    if mixer.activation not in ("silu", "swish"):
        raise NotImplementedError(
            f"MambaLRP supports SiLU mixers only, this one uses {mixer.activation!r}"
        )
    hidden_states = widened(hidden_states)
    length = hidden_states.shape[1]
    x, z = mixer.in_proj(mask_padding(hidden_states, attention_mask)).chunk(2, dim=-1)
    x = mixer.conv1d(x.transpose(1, 2))[..., :length].transpose(1, 2)
    x = mask_padding(silu(x, rules.silu), attention_mask)
    time_step, B, C = torch.split(
        mixer.x_proj(x),
        [mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size],
        dim=-1,
    )
    time_step = mixer.dt_layernorm(time_step)
    B, C = mixer.b_layernorm(B), mixer.c_layernorm(C)
    dt = F.softplus(mixer.dt_proj(time_step))
    A = -torch.exp(mixer.A_log.to(x.dtype))
    y = selective_ssm(x, dt, A, B, C, mixer.D.to(x.dtype), rules.ssm)
    y = gated_product(y, silu(z, rules.silu), rules.gate)
    return mixer.out_proj(y)


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

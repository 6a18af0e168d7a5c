"""Architecture adapter for Hugging Face transformers' Mamba-2 (``Mamba2Model``,
``Mamba2ForCausalLM`` and any user model built on their blocks).

The Mamba-2 mixer computes, from the normalised block input ``u``::

    z, xBC, dt_raw = in_proj(u)                          (split by channels)
    x, B, C = silu(conv1d(xBC))                          (causal depthwise conv)
    dt = clamp(softplus(dt_raw + dt_bias), *dt_limit)    (one step per head)
    y = ssd(x; exp(dt A), dt B, C) + D x                 (scalar decay A per head,
                                                          B, C shared per head group)
    out = out_proj(weight * norm_groups(y * silu(z)))    (gated RMSNorm)

Derivation of the rules (the MambaLRP principles: detach every input-dependent
non-linear factor so that, in the backward pass, the block is linear in the path the
relevance takes; Gradient x Input of a function that is linear (degree-one
homogeneous) in its input then sums exactly to its output):

- The SSM rule treats ``exp(dt A)``, ``dt B`` and ``C`` as constants. The scan is then
  a fixed linear map of ``x`` (a lower-triangular semiseparable matrix per head) plus
  the skip ``D x``, so relevance is conserved from ``y`` to ``x``. Because the conv runs
  over the concatenation ``[x, B, C]``, ``B`` and ``C`` come out of the same conv and
  SiLU as ``x``; being detached, their channels receive no relevance, and neither
  does the ``dt`` branch: relevance reaches ``in_proj`` through the ``x`` and ``z``
  channels only.
- The identity rule treats ``sigmoid(.)`` of each SiLU as a constant (after the conv
  and on the gate ``z``), so ``silu(v) = v * [sigmoid(v)]`` is linear in ``v``.
- The gate ``y * silu(z)`` multiplies two branches that both depend (now linearly) on
  the input: the product is homogeneous of degree two, and Gradient x Input would
  count its relevance twice. The half rule gives each factor half of it.
- The LN-rule treats ``1 / rms`` of each normalised group as a constant, so the gated
  norm (applied after the gate, per group of ``intermediate_size / n_groups``
  channels) and the block's pre-norm are linear.
- The causal conv, ``in_proj``, ``out_proj`` and the LM head are linear; they are
  called as modules so that a linear rule (LRP-epsilon/gamma) applies to them. With
  zero biases every step conserves relevance exactly.

Rule assignment: ``Mamba2RMSNorm``: LN-rule; ``MambaRMSNormGated``: identity, half and
LN-rules; ``Mamba2Mixer``: identity rule after the conv, SSM rule; ``Mamba2Block``: the
residual ``x + mixer(norm(x))`` in the input dtype (transformers computes the residual,
norms and scan in float32, which would round a float64 explanation).

The rule forwards follow transformers' ``torch_forward`` path for whole sequences
(no cache continuation); with all rules off they compute the same function as the
model, in the dtype of the hidden states.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers.models.mamba2.modeling_mamba2 import (
    Mamba2Block,
    Mamba2Mixer,
    Mamba2RMSNorm,
    MambaRMSNormGated,
)

from captum_mamba.adapters.base import ArchitectureAdapter, register_adapter
from captum_mamba.adapters.hf_mamba import (
    block_forward,
    check_no_past_state,
    norm_forward,
    widened,
)
from captum_mamba.adapters.selective_branch import mask_padding
from captum_mamba.rules import MambaRules, silu
from captum_mamba.rules.functional import gated_rms_norm, multihead_ssm


def gated_norm_forward(
    norm: MambaRMSNormGated, rules: MambaRules, hidden_states: Tensor, gate: Tensor | None = None
) -> Tensor:
    """Gated RMSNorm ``weight * norm_groups(y * silu(gate))`` with the SiLU, half and LN-rules."""
    weight = norm.weight.to(hidden_states.dtype)
    return gated_rms_norm(
        hidden_states,
        gate,
        weight,
        norm.variance_epsilon,
        norm.group_size,
        identity_rule=rules.silu,
        half_rule=rules.gate,
        ln_rule=rules.norm,
    )


def mixer_forward(
    mixer: Mamba2Mixer,
    rules: MambaRules,
    hidden_states: Tensor,
    *args: Any,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Mamba-2 mixer with the SiLU and SSM rules (full-sequence form)."""
    check_no_past_state(mixer, kwargs)
    if mixer.activation not in ("silu", "swish"):
        raise NotImplementedError(
            f"MambaLRP supports SiLU mixers only, this one uses {mixer.activation!r}"
        )
    hidden_states = widened(hidden_states)
    batch, length, _ = hidden_states.shape
    heads, groups, state = mixer.num_heads, mixer.n_groups, mixer.ssm_state_size
    gate, xBC, dt = mixer.in_proj(mask_padding(hidden_states, attention_mask)).split(
        [mixer.intermediate_size, mixer.conv_dim, heads], dim=-1
    )
    xBC = mixer.conv1d(xBC.transpose(1, 2))[..., :length].transpose(1, 2)
    xBC = mask_padding(silu(xBC, rules.silu), attention_mask)
    x, B, C = xBC.split([mixer.intermediate_size, groups * state, groups * state], dim=-1)
    dt = F.softplus(dt + mixer.dt_bias.to(dt.dtype))
    dt = torch.clamp(dt, min=mixer.time_step_limit[0], max=mixer.time_step_limit[1])
    A = -torch.exp(mixer.A_log.to(x.dtype))
    y = multihead_ssm(
        x.view(batch, length, heads, mixer.head_dim),
        dt,
        A,
        B.view(batch, length, groups, state),
        C.view(batch, length, groups, state),
        mixer.D.to(x.dtype),
        rules.ssm,
        mixer.chunk_size,
    )
    y = mixer.norm(y.reshape(batch, length, -1), gate)
    return mixer.out_proj(y)


HF_MAMBA2 = register_adapter(
    ArchitectureAdapter(
        name="transformers Mamba-2",
        models=("Mamba2Model", "Mamba2ForCausalLM", "models containing Mamba2Block/Mamba2Mixer"),
        blocks=(Mamba2Mixer,),
        forwards={
            Mamba2RMSNorm: norm_forward,
            MambaRMSNormGated: gated_norm_forward,
            Mamba2Mixer: mixer_forward,
            Mamba2Block: block_forward,
        },
    )
)

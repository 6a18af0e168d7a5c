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
LN-rules; ``Mamba2Mixer``: identity rule after the conv, SSM rule
(:func:`~captum_mamba.adapters.blocks.ssd_mixer`); ``Mamba2Block``: the residual
``x + mixer(norm(x))`` in the input dtype (transformers computes the residual, norms and
scan in float32, which would round a float64 explanation). The forwards follow
transformers' ``torch_forward`` path for whole sequences (no cache continuation).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers.models.mamba2 import modeling_mamba2
from transformers.models.mamba2.modeling_mamba2 import (
    Mamba2Block,
    Mamba2ForCausalLM,
    Mamba2Mixer,
    Mamba2Model,
    Mamba2RMSNorm,
)

# transformers 5.25 renamed MambaRMSNormGated to Mamba2RMSNormGated
MambaRMSNormGated = getattr(
    modeling_mamba2, "Mamba2RMSNormGated", getattr(modeling_mamba2, "MambaRMSNormGated", None)
)

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    GATED_NORM_SITES,
    RESIDUAL_SITES,
    SSD_SITES,
    SSDParams,
    check_silu,
    gated_norm,
    residual_block,
    ssd_mixer,
)
from captum_mamba.adapters.hf_mamba import NORM_SITES, check_no_past_state, norm_forward


def gated_norm_forward(
    ops: BlockOps, norm: nn.Module, hidden_states: Tensor, gate: Tensor | None = None
) -> Tensor:
    """Gated RMSNorm ``weight * norm_groups(y * silu(gate))`` with the SiLU, half and
    LN-rules."""
    return gated_norm(ops, hidden_states, gate, norm.weight, norm.variance_epsilon, norm.group_size)


def mixer_forward(
    ops: BlockOps,
    mixer: nn.Module,
    hidden_states: Tensor,
    *args: Any,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Mamba-2 mixer (full-sequence form) with the SiLU and SSM rules."""
    check_no_past_state(mixer, kwargs)
    check_silu(mixer, mixer.activation)
    params = SSDParams(
        in_proj=mixer.in_proj,
        conv=mixer.conv1d,
        out_proj=mixer.out_proj,
        norm=mixer.norm,
        dt_bias=mixer.dt_bias,
        A_log=mixer.A_log,
        D=mixer.D,
        inner=mixer.intermediate_size,
        groups=mixer.n_groups,
        state=mixer.ssm_state_size,
        heads=mixer.num_heads,
        head_dim=mixer.head_dim,
        chunk_size=mixer.chunk_size,
        dt_limit=tuple(mixer.time_step_limit),
    )
    return ssd_mixer(ops, params, ops.compute(hidden_states), attention_mask)


HF_MAMBA2 = register_adapter(
    ArchitectureAdapter(
        name="transformers Mamba-2",
        models=("Mamba2Model", "Mamba2ForCausalLM", "models containing Mamba2Block/Mamba2Mixer"),
        handlers=(
            ModuleHandler(Mamba2RMSNorm, norm_forward, NORM_SITES),
            ModuleHandler(MambaRMSNormGated, gated_norm_forward, GATED_NORM_SITES),
            ModuleHandler(
                Mamba2Mixer, mixer_forward, SSD_SITES, ("in_proj", "conv1d", "norm", "out_proj")
            ),
            ModuleHandler(
                Mamba2Block, residual_block, RESIDUAL_SITES, ("norm", "mixer"), role="block"
            ),
        ),
        containers=(Mamba2Model, Mamba2ForCausalLM),
        blocks=(Mamba2Mixer,),
    )
)

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

Rule assignment: ``Mamba2RMSNorm``: LN-rule; ``Mamba2RMSNormGated`` (``MambaRMSNormGated``
before transformers 5.25; normalising whole rows, not groups, before 5.23): identity, half
and LN-rules; ``Mamba2Mixer``: identity rule after the conv, SSM rule
(:func:`~captum_mamba.adapters.blocks.ssd_mixer`); ``Mamba2Block``: the residual
``x + mixer(norm(x))`` in the input dtype (transformers computes the residual, norms and
scan in float32, which would round a float64 explanation). The forwards follow
transformers' ``torch_forward`` path for whole sequences (no cache continuation).
"""

from __future__ import annotations

from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    GATED_NORM_SITES,
    NORM_SITES,
    RESIDUAL_SITES,
    SSD_CALLS,
    SSD_SITES,
    gated_norm_forward,
    residual_block,
    rms_norm_forward,
    ssd_mixer_forward,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "transformers Mamba-2",
    ("Mamba2Model", "Mamba2ForCausalLM", "models containing Mamba2Block/Mamba2Mixer"),
    ("transformers.models.mamba2.modeling_mamba2",),
    # earlier releases compute the mixer differently (time-step clamp, gated norm)
    needs="transformers >= 4.52",
)
(
    Mamba2Block,
    Mamba2ForCausalLM,
    Mamba2Mixer,
    Mamba2Model,
    Mamba2RMSNorm,
    Mamba2RMSNormGated,
) = FAMILY.load(
    "Mamba2Block",
    "Mamba2ForCausalLM",
    "Mamba2Mixer",
    "Mamba2Model",
    "Mamba2RMSNorm",
    "Mamba2RMSNormGated",
)

HF_MAMBA2 = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(Mamba2RMSNorm, rms_norm_forward, NORM_SITES),
            ModuleHandler(Mamba2RMSNormGated, gated_norm_forward, GATED_NORM_SITES),
            ModuleHandler(Mamba2Mixer, ssd_mixer_forward, SSD_SITES, SSD_CALLS),
            ModuleHandler(
                Mamba2Block, residual_block, RESIDUAL_SITES, ("norm", "mixer"), role="block"
            ),
        ),
        containers=(Mamba2Model, Mamba2ForCausalLM),
        blocks=(Mamba2Mixer,),
    )
)

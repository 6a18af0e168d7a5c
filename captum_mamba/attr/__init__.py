"""Attribution classes: MambaLRP in Captum's API."""

from captum_mamba.attr.batches import attribute_batches
from captum_mamba.attr.forward import LEAN_FROM_TOKENS, uses_lean
from captum_mamba.attr.generation import (
    GenerationAttributionResult,
    attribute_generation,
    greedy_generate,
)
from captum_mamba.attr.layer_mamba_lrp import LayerMambaLRP
from captum_mamba.attr.mamba_lrp import MambaLRP
from captum_mamba.attr.targets import AttributionInputError, MaskedTargetWarning
from captum_mamba.attr.time_steps import time_step_relevance

__all__ = [
    "LEAN_FROM_TOKENS",
    "AttributionInputError",
    "GenerationAttributionResult",
    "LayerMambaLRP",
    "MambaLRP",
    "MaskedTargetWarning",
    "attribute_batches",
    "attribute_generation",
    "greedy_generate",
    "time_step_relevance",
    "uses_lean",
]

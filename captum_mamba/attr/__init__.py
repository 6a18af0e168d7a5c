"""Attribution classes: MambaLRP in Captum's API."""

from captum_mamba.attr._forward import LEAN_FROM_TOKENS, uses_lean
from captum_mamba.attr._targets import AttributionInputError, MaskedTargetWarning
from captum_mamba.attr.generation import attribute_generation
from captum_mamba.attr.layer_mamba_lrp import LayerMambaLRP
from captum_mamba.attr.mamba_lrp import MambaLRP

__all__ = [
    "LEAN_FROM_TOKENS",
    "AttributionInputError",
    "LayerMambaLRP",
    "MambaLRP",
    "MaskedTargetWarning",
    "attribute_generation",
    "uses_lean",
]

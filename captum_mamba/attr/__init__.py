"""Attribution classes: MambaLRP in Captum's API."""

from captum_mamba.attr._targets import AttributionInputError
from captum_mamba.attr.generation import attribute_generation
from captum_mamba.attr.layer_mamba_lrp import LayerMambaLRP
from captum_mamba.attr.mamba_lrp import MambaLRP

__all__ = ["AttributionInputError", "LayerMambaLRP", "MambaLRP", "attribute_generation"]

"""captum-mamba: MambaLRP explanations of Mamba models as Captum attributions.

Layers, from numerics to API: :mod:`captum_mamba.ops` (scans),
:mod:`captum_mamba.rules` (the propagation rules), :mod:`captum_mamba.adapters`
(which module gets which rule), :mod:`captum_mamba.attr` (Captum attributions).
"""

from captum_mamba.adapters import UnsupportedModelError, rules_applied, supported_architectures
from captum_mamba.attr import AttributionInputError, LayerMambaLRP, MambaLRP
from captum_mamba.rules import LRP0, Epsilon, Gamma, LinearRule, MambaRules

__version__ = "0.1.0"

__all__ = [
    "LRP0",
    "AttributionInputError",
    "Epsilon",
    "Gamma",
    "LayerMambaLRP",
    "LinearRule",
    "MambaLRP",
    "MambaRules",
    "UnsupportedModelError",
    "rules_applied",
    "supported_architectures",
]

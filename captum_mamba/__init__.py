"""captum-mamba: MambaLRP explanations of Mamba models as Captum attributions.

Layers, from numerics to API: :mod:`captum_mamba.ops` (scans),
:mod:`captum_mamba.rules` (the propagation rules), :mod:`captum_mamba.adapters`
(which module gets which rule), :mod:`captum_mamba.attr` (Captum attributions).
"""

from captum_mamba.adapters import UnsupportedModelError, rules_applied, supported_architectures
from captum_mamba.attr import AttributionInputError, LayerMambaLRP, MambaLRP
from captum_mamba.attr.generation import attribute_generation
from captum_mamba.lrp import (
    CaptumLRPModel,
    EmbeddingRule,
    HalfRule,
    LRP0Rule,
    NormRule,
    SiLURule,
    SSMRule,
    prepare_captum_lrp,
    register_rule,
)
from captum_mamba.rules import LRP0, Epsilon, Gamma, LinearRule, MambaRules

__version__ = "0.1.0"

__all__ = [
    "LRP0",
    "AttributionInputError",
    "CaptumLRPModel",
    "EmbeddingRule",
    "Epsilon",
    "Gamma",
    "HalfRule",
    "LRP0Rule",
    "LayerMambaLRP",
    "LinearRule",
    "MambaLRP",
    "MambaRules",
    "NormRule",
    "SSMRule",
    "SiLURule",
    "UnsupportedModelError",
    "attribute_generation",
    "prepare_captum_lrp",
    "register_rule",
    "rules_applied",
    "supported_architectures",
]

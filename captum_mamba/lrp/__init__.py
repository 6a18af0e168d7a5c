"""Captum LRP: MambaLRP inside Captum's own ``LRP`` and ``LayerLRP`` framework.

:mod:`~captum_mamba.lrp.captum_rules` holds the rules (Captum ``PropagationRule``
classes), :mod:`~captum_mamba.lrp.modules` the leaf modules that carry them,
:mod:`~captum_mamba.lrp.registry` the default rule of each module type and
:mod:`~captum_mamba.lrp.prepare` the prepared model that Captum explains.
"""

from captum_mamba.lrp.captum_rules import (
    EmbeddingRule,
    HalfRule,
    LRP0Rule,
    NormRule,
    SiLURule,
    SSMRule,
)
from captum_mamba.lrp.modules import (
    Addition,
    GatedProduct,
    KeptRule,
    MambaLeaf,
    PreparedBlock,
    PreparedMixer,
    RMSNorm,
    SelectiveSSM,
    SiLU,
)
from captum_mamba.lrp.prepare import CaptumLRPModel, prepare_captum_lrp
from captum_mamba.lrp.registry import (
    captum_linear_rule,
    register_rule,
    registered_rules,
    rule_for,
)

__all__ = [
    "Addition",
    "CaptumLRPModel",
    "EmbeddingRule",
    "GatedProduct",
    "HalfRule",
    "KeptRule",
    "LRP0Rule",
    "MambaLeaf",
    "NormRule",
    "PreparedBlock",
    "PreparedMixer",
    "RMSNorm",
    "SSMRule",
    "SelectiveSSM",
    "SiLU",
    "SiLURule",
    "captum_linear_rule",
    "prepare_captum_lrp",
    "register_rule",
    "registered_rules",
    "rule_for",
]

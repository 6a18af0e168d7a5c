"""Captum LRP: MambaLRP inside Captum's own ``LRP`` and ``LayerLRP`` framework.

:mod:`~captum_mamba.lrp.captum_rules` holds the rules (Captum ``PropagationRule``
classes), :mod:`~captum_mamba.lrp.modules` the leaf modules that carry them and the ops
backend that calls them, :mod:`~captum_mamba.lrp.registry` the rules of other leaf types
and :mod:`~captum_mamba.lrp.prepare` the prepared model that Captum explains. Captum's
``EpsilonRule`` and ``GammaRule`` are re-exported, so no private Captum import is needed.
"""

from captum_mamba._captum import EpsilonRule, GammaRule, PropagationRule
from captum_mamba.lrp.captum_rules import (
    ActivationRule,
    AttnLRPRule,
    ConstantRule,
    CPLRPRule,
    EmbeddingRule,
    GateRule,
    LRP0Rule,
    NormRule,
    RouterRule,
    SiLURule,
    SSMRule,
)
from captum_mamba.lrp.modules import CaptumOps, KeptRule, OpLeaf
from captum_mamba.lrp.prepare import CaptumLRPModel, prepare_captum_lrp
from captum_mamba.lrp.registry import (
    captum_linear_rule,
    register_rule,
    registered_rules,
    rule_for,
)

__all__ = [
    "ActivationRule",
    "AttnLRPRule",
    "CPLRPRule",
    "CaptumLRPModel",
    "CaptumOps",
    "ConstantRule",
    "EmbeddingRule",
    "EpsilonRule",
    "GammaRule",
    "GateRule",
    "KeptRule",
    "LRP0Rule",
    "NormRule",
    "OpLeaf",
    "PropagationRule",
    "RouterRule",
    "SSMRule",
    "SiLURule",
    "captum_linear_rule",
    "prepare_captum_lrp",
    "register_rule",
    "registered_rules",
    "rule_for",
]

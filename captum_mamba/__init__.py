"""captum-mamba: MambaLRP explanations of Mamba models as Captum attributions.

Layers, from numerics to applications (each imports only those before it):
:mod:`captum_mamba.ops` (scans), :mod:`captum_mamba.rules` (the propagation rules),
:mod:`captum_mamba.adapters` (which module is computed how, written once per block),
:mod:`captum_mamba.attr` and :mod:`captum_mamba.lrp` (Captum attributions),
:mod:`captum_mamba.baselines` and :mod:`captum_mamba.metrics`,
:mod:`captum_mamba.visualization`, and the applications (:mod:`captum_mamba.apps`).
This package namespace re-exports the public entry points of the layers below
visualisation, as ``captum.attr`` does for Captum: the attribution methods and rules, the
compared baselines (``build_method`` by name from ``METHOD_NAMES``) and the faithfulness
and conservation metrics.
"""

from captum_mamba.adapters import (
    ArchitectureAdapter,
    ModuleHandler,
    UnsupportedModelError,
    register_adapter,
    register_container,
    register_leaf,
    registered_adapters,
    rules_applied,
    supported_architectures,
)
from captum_mamba.attr import AttributionInputError, LayerMambaLRP, MambaLRP
from captum_mamba.attr.batches import attribute_batches
from captum_mamba.attr.generation import attribute_generation
from captum_mamba.baselines import MambaAttentionRollout, MambaAttr, RandomAttribution
from captum_mamba.baselines.captum_methods import (
    METHOD_NAMES,
    MethodSettings,
    TokenAttribution,
    build_method,
    build_methods,
)
from captum_mamba.lrp import (
    ActivationRule,
    AttnLRPRule,
    CaptumLRPModel,
    CPLRPRule,
    EmbeddingRule,
    GateRule,
    LRP0Rule,
    NormRule,
    RouterRule,
    SiLURule,
    SSMRule,
    prepare_captum_lrp,
    register_rule,
)
from captum_mamba.metrics import (
    BadNumberWarning,
    ConservationStats,
    conservation_stats,
    delta_area,
    perturbation_curve,
    perturbation_curves,
)
from captum_mamba.rules import LRP0, Epsilon, Gamma, LinearRule, MambaRules, Override

__version__ = "0.1.0"

__all__ = [
    "LRP0",
    "METHOD_NAMES",
    "ActivationRule",
    "ArchitectureAdapter",
    "AttnLRPRule",
    "AttributionInputError",
    "BadNumberWarning",
    "CPLRPRule",
    "CaptumLRPModel",
    "ConservationStats",
    "EmbeddingRule",
    "Epsilon",
    "Gamma",
    "GateRule",
    "LRP0Rule",
    "LayerMambaLRP",
    "LinearRule",
    "MambaAttentionRollout",
    "MambaAttr",
    "MambaLRP",
    "MambaRules",
    "MethodSettings",
    "ModuleHandler",
    "NormRule",
    "Override",
    "RandomAttribution",
    "RouterRule",
    "SSMRule",
    "SiLURule",
    "TokenAttribution",
    "UnsupportedModelError",
    "attribute_batches",
    "attribute_generation",
    "build_method",
    "build_methods",
    "conservation_stats",
    "delta_area",
    "perturbation_curve",
    "perturbation_curves",
    "prepare_captum_lrp",
    "register_adapter",
    "register_container",
    "register_leaf",
    "register_rule",
    "registered_adapters",
    "rules_applied",
    "supported_architectures",
]

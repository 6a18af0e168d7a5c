"""captum-mamba: MambaLRP explanations of Mamba models as Captum attributions.

Layers, from numerics to applications (each imports only those before it):
:mod:`captum_mamba.ops` (scans), :mod:`captum_mamba.rules` (the propagation rules),
:mod:`captum_mamba.adapters` (which module is computed how, written once per block),
:mod:`captum_mamba.attr` and :mod:`captum_mamba.lrp` (Captum attributions),
:mod:`captum_mamba.baselines` and :mod:`captum_mamba.metrics`,
:mod:`captum_mamba.visualization`, and the applications (:mod:`captum_mamba.apps`).

This package namespace holds what a user calls, as ``captum.attr`` does for Captum: the
attributions, the rules and their presets (and :func:`rules_applied`, to run a model
under them), the compared baselines (``build_method`` by name from ``METHOD_NAMES``),
the faithfulness and conservation metrics, and the errors to catch. Extension points
(adapters for new architectures, containers, leaves, the list of supported families)
live in :mod:`captum_mamba.adapters`; the MambaLRP rules inside Captum's own ``LRP``
(``prepare_captum_lrp``, the Captum rule classes, ``register_rule``) in
:mod:`captum_mamba.lrp`.
"""

from captum_mamba.adapters import UnsupportedModelError, rules_applied
from captum_mamba.attr import AttributionInputError, LayerMambaLRP, MambaLRP
from captum_mamba.attr.batches import attribute_batches
from captum_mamba.attr.generation import attribute_generation
from captum_mamba.baselines import MambaAttentionRollout, MambaAttr, RandomAttribution
from captum_mamba.baselines.captum_methods import (
    METHOD_NAMES,
    MethodSettings,
    TokenScorer,
    build_method,
    build_methods,
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
    "AttributionInputError",
    "BadNumberWarning",
    "ConservationStats",
    "Epsilon",
    "Gamma",
    "LayerMambaLRP",
    "LinearRule",
    "MambaAttentionRollout",
    "MambaAttr",
    "MambaLRP",
    "MambaRules",
    "MethodSettings",
    "Override",
    "RandomAttribution",
    "TokenScorer",
    "UnsupportedModelError",
    "attribute_batches",
    "attribute_generation",
    "build_method",
    "build_methods",
    "conservation_stats",
    "delta_area",
    "perturbation_curve",
    "perturbation_curves",
    "rules_applied",
]

"""Every private name of Captum that captum-mamba uses, imported in one place.

Captum keeps its input formatting helpers and its LRP rules in private modules
(``captum._utils.common``, ``captum.attr._utils.lrp_rules``, ``captum.attr._core.lrp``).
They are imported only here, so that a change between Captum releases is fixed in one
module; ``tests/test_captum_compat.py`` checks each supported release range.
This module imports nothing from captum-mamba and may be used by every layer.
"""

from __future__ import annotations

from captum._utils.common import (
    _format_additional_forward_args as format_additional_forward_args,
)
from captum._utils.common import _format_output as format_output
from captum._utils.common import _format_tensor_into_tuples as format_tensor_into_tuples
from captum._utils.common import _is_tuple as is_tuple
from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS
from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule, PropagationRule

__all__ = [
    "SUPPORTED_LAYERS_WITH_RULES",
    "SUPPORTED_NON_LINEAR_LAYERS",
    "EpsilonRule",
    "GammaRule",
    "PropagationRule",
    "format_additional_forward_args",
    "format_output",
    "format_tensor_into_tuples",
    "is_tuple",
]

"""Every private name of Captum that captum-mamba uses, imported in one place.

Captum keeps its input formatting helpers and its LRP rules in private modules
(``captum._utils.common``, ``captum.attr._utils.lrp_rules``, ``captum.attr._core.lrp``).
They are imported only here, and so are the differences between Captum releases, so that
a change is fixed in one module; ``tests/test_captum_compat.py`` checks each supported
release range (0.7, 0.8, 0.9).
This module imports nothing from captum-mamba and may be used by every layer.
"""

from __future__ import annotations

import inspect
from typing import Any

from captum._utils.common import (
    _format_additional_forward_args as format_additional_forward_args,
)
from captum._utils.common import _format_output as format_output
from captum._utils.common import _format_tensor_into_tuples as format_tensor_into_tuples
from captum._utils.common import _is_tuple as is_tuple
from captum.attr import LLMAttributionResult
from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS
from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule, PropagationRule


def init_llm_attribution_result(
    result: LLMAttributionResult, *, output_probs: Any, **fields: Any
) -> None:
    """Initialise Captum's ``LLMAttributionResult`` (or a subclass) on every supported
    Captum release.

    Captum 0.9 takes ``output_probs``; 0.7 and 0.8 do not, and get it as an attribute.

    Args:
        result (LLMAttributionResult): the instance being initialised.
        output_probs (Tensor): ``(outputs,)`` probability of each output token.
        **fields: the other fields (``input_tokens``, ``output_tokens``, ``seq_attr``,
            ``token_attr``).
    """
    if "output_probs" in inspect.signature(LLMAttributionResult.__init__).parameters:
        LLMAttributionResult.__init__(result, **fields, output_probs=output_probs)
    else:
        LLMAttributionResult.__init__(result, **fields)
        result.output_probs = output_probs


__all__ = [
    "SUPPORTED_LAYERS_WITH_RULES",
    "SUPPORTED_NON_LINEAR_LAYERS",
    "EpsilonRule",
    "GammaRule",
    "PropagationRule",
    "format_additional_forward_args",
    "format_output",
    "format_tensor_into_tuples",
    "init_llm_attribution_result",
    "is_tuple",
]

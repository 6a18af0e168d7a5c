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


def llm_attribution_result(
    *,
    input_tokens: list[str],
    output_tokens: list[str],
    seq_attr: Any,
    token_attr: Any,
    output_probs: Any,
) -> LLMAttributionResult:
    """Captum's ``LLMAttributionResult`` on every supported Captum release.

    Captum 0.9 takes ``output_probs``; 0.7 and 0.8 do not, and get it as an attribute.

    Args:
        input_tokens (list of str): labels of the input tokens.
        output_tokens (list of str): labels of the explained tokens.
        seq_attr (Tensor): ``(inputs,)`` relevance summed over the outputs.
        token_attr (Tensor): ``(outputs, inputs)`` relevance.
        output_probs (Tensor): ``(outputs,)`` probability of each output token.

    Returns:
        LLMAttributionResult: the result.
    """
    fields = dict(
        input_tokens=input_tokens, output_tokens=output_tokens, seq_attr=seq_attr,
        token_attr=token_attr,
    )  # fmt: skip
    if "output_probs" in inspect.signature(LLMAttributionResult.__init__).parameters:
        return LLMAttributionResult(**fields, output_probs=output_probs)
    result = LLMAttributionResult(**fields)
    result.output_probs = output_probs
    return result


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
    "llm_attribution_result",
]

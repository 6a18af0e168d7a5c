"""Attribution classes: default forward functions for Hugging Face Mamba models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn


def _first(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    for name in ("logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, Tensor):
            return value
    return output[0]


def default_forward(model: nn.Module, keyword: str) -> Callable[..., Tensor]:
    """Forward function of a Hugging Face model that returns its logits.

    ``*ForCausalLM`` models are run as ``lm_head(backbone(...))`` so that the logits
    keep the model's dtype (transformers casts them to float32).

    Args:
        model (nn.Module): a Hugging Face model.
        keyword (str): ``"inputs_embeds"`` or ``"input_ids"``.

    Returns:
        Callable: ``forward(inputs, attention_mask=None) -> Tensor``.
    """
    backbone, head = getattr(model, "backbone", None), getattr(model, "lm_head", None)

    def forward(inputs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        kwargs = {keyword: inputs, "attention_mask": attention_mask, "use_cache": False}
        if isinstance(backbone, nn.Module) and isinstance(head, nn.Module):
            return head(_first(backbone(**kwargs)))
        return _first(model(**kwargs))

    return forward

"""Architecture adapters: which module gets which rule, applied per model instance.

An adapter maps module types to *rule forwards*: functions
``forward(module, rules, *args, **kwargs)`` that compute the module's output from
the rule functions of :mod:`captum_mamba.rules`. :func:`rules_applied` installs them
as instance attributes for the duration of a ``with`` block and restores every
module exactly as it was afterwards, also when the block raises. Classes are never
patched, so other models (and other threads using other models) are unaffected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_mamba.rules import MambaRules

RuleForward = Callable[..., Any]


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Rule forwards for the modules of one model family.

    Args:
        name (str): family name used in messages, e.g. ``"transformers Mamba"``.
        models (tuple of str): user-facing model classes of the family.
        blocks (tuple of type): module types that identify the family (its mixers).
        forwards (dict): module type -> rule forward, matched by exact type.
    """

    name: str
    models: tuple[str, ...]
    blocks: tuple[type, ...]
    forwards: dict[type, RuleForward] = field(default_factory=dict)

    def describe(self) -> str:
        """One-line description for error messages."""
        return f"{self.name} ({', '.join(self.models)})"


_ADAPTERS: list[ArchitectureAdapter] = []


def register_adapter(adapter: ArchitectureAdapter) -> ArchitectureAdapter:
    """Register an adapter so that :func:`rules_applied` recognises its modules.

    Args:
        adapter (ArchitectureAdapter): the adapter to add.

    Returns:
        ArchitectureAdapter: ``adapter``, for use as an expression.
    """
    _ADAPTERS.append(adapter)
    return adapter


def registered_adapters() -> tuple[ArchitectureAdapter, ...]:
    """The adapters known at this point (their modules are importable)."""
    return tuple(_ADAPTERS)


class UnsupportedModelError(TypeError):
    """The model contains no module that an adapter knows, or a block that no rule covers."""


def supported_architectures() -> str:
    """Human-readable list of supported architectures."""
    return "; ".join(adapter.describe() for adapter in _ADAPTERS) or "none (no adapter loaded)"


def _weights(module: nn.Module, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    # Half-precision models are explained in float32: cast the parameters on the fly.
    bias = None if module.bias is None else module.bias.to(dtype)
    return module.weight.to(dtype), bias


def _linear_forward(module: nn.Linear, rules: MambaRules, x: Tensor) -> Tensor:
    return rules.linear.apply(F.linear, x, *_weights(module, x.dtype))


def _conv_forward(module: nn.Conv1d, rules: MambaRules, x: Tensor) -> Tensor:
    return rules.linear.apply(module._conv_forward, x, *_weights(module, x.dtype))


_LINEAR_FORWARDS: dict[type, RuleForward] = {nn.Linear: _linear_forward, nn.Conv1d: _conv_forward}

#: Blocks found next to Mamba blocks (e.g. in hybrid models) that no rule covers:
#: ``nn.MultiheadAttention`` and classes named like attention modules, e.g.
#: transformers' ``LlamaAttention`` or ``JambaFlashAttention2``.
UNSUPPORTED_TYPES: tuple[type, ...] = (nn.MultiheadAttention,)
UNSUPPORTED_NAME = re.compile(r"(Attention|Attn)\d*$")


def _unsupported_blocks(model: nn.Module) -> list[str]:
    return [
        f"{name or '<model>'} ({type(module).__module__}.{type(module).__qualname__})"
        for name, module in model.named_modules()
        if isinstance(module, UNSUPPORTED_TYPES) or UNSUPPORTED_NAME.search(type(module).__name__)
    ]


def plan_rules(model: nn.Module, rules: MambaRules) -> list[tuple[nn.Module, RuleForward]]:
    """List the modules of ``model`` that get a rule forward, with that forward.

    Args:
        model (nn.Module): the model to explain.
        rules (MambaRules): the rules to apply.

    Returns:
        list: ``(module, rule_forward)`` pairs in ``model.modules()`` order.

    Raises:
        UnsupportedModelError: if no module of ``model`` belongs to a supported
            architecture, or if it contains a block that no rule covers (such as the
            attention layers of hybrid models); the message names each such block's
            path and type.
    """
    forwards: dict[type, RuleForward] = {}
    blocks: tuple[type, ...] = ()
    for adapter in _ADAPTERS:
        forwards.update(adapter.forwards)
        blocks += adapter.blocks
    forwards = {**_LINEAR_FORWARDS, **forwards}
    plan = [(m, forwards[type(m)]) for m in model.modules() if type(m) in forwards]
    unsupported = _unsupported_blocks(model)
    if unsupported:
        raise UnsupportedModelError(
            f"{type(model).__name__} contains blocks that MambaLRP has no rule for: "
            f"{'; '.join(unsupported)}; supported architectures: {supported_architectures()}"
        )
    if not any(type(m) in blocks for m, _ in plan):
        raise UnsupportedModelError(
            f"{type(model).__name__} contains no supported Mamba block; "
            f"supported architectures: {supported_architectures()}"
        )
    return plan


_MISSING = object()


def _bind(rule_forward: RuleForward, module: nn.Module, rules: MambaRules) -> Callable[..., Any]:
    def forward(*args: Any, **kwargs: Any) -> Any:
        return rule_forward(module, rules, *args, **kwargs)

    return forward


@contextmanager
def rules_applied(model: nn.Module, rules: MambaRules) -> Iterator[nn.Module]:
    """Apply the MambaLRP rules to one model instance inside a ``with`` block.

    Args:
        model (nn.Module): model containing supported Mamba blocks.
        rules (MambaRules): rules to apply.

    Yields:
        nn.Module: ``model``, whose forward now computes the same values with the
        rules' backward.

    Examples::

        >>> with rules_applied(model, MambaRules()):
        ...     logits = model(inputs_embeds=embeds).logits
    """
    plan = plan_rules(model, rules)
    saved: list[tuple[nn.Module, Any]] = []
    try:
        for module, rule_forward in plan:
            saved.append((module, module.__dict__.get("forward", _MISSING)))
            module.forward = _bind(rule_forward, module, rules)
        yield model
    finally:
        for module, previous in reversed(saved):
            if previous is _MISSING:
                del module.__dict__["forward"]
            else:
                module.forward = previous

"""Rules: LRP rules for linear and convolutional layers (LRP-0, epsilon, gamma).

A rule wraps the layer's own operation ``op(x, weight, bias)``. The returned tensor
has the value of ``op(x, weight, bias)`` (up to one rounding step); the rule only
changes the gradient, so that Gradient x Input across the layer equals the rule's
relevance redistribution

    R_i = x_i * sum_j w'_ij * R_j / (z'_j + eps * sign(z'_j))

with ``w' = w`` (epsilon) or ``w' = w + gamma * max(w, 0)`` (gamma), as in Captum's
``EpsilonRule`` and ``GammaRule``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

LinearOp = Callable[[Tensor, Tensor, Tensor | None], Tensor]


def _check_number(name: str, value: float, allow_zero: bool) -> None:
    """Refuse a stabiliser or boost that is not a finite number of the right sign."""
    sign = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number {sign}, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        hint = "; for no stabiliser use LRP0()" if name == "epsilon" else ""
        raise ValueError(f"{name} must be {sign}, got {value!r}{hint}")


def _signed(z: Tensor, epsilon: float) -> Tensor:
    return torch.where(z >= 0, z + epsilon, z - epsilon)


def _rescaled(z: Tensor, z_modified: Tensor, scale: Tensor) -> Tensor:
    """Value of ``z`` with the gradient of ``z_modified * [scale]_const``."""
    scale = scale.detach()
    carrier = z_modified * scale
    return carrier + (z - carrier).detach()


class LinearRule(ABC):
    """How relevance crosses a linear or convolutional layer."""

    @abstractmethod
    def apply(self, op: LinearOp, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """Compute ``op(x, weight, bias)`` with the rule's backward.

        Args:
            op (Callable): the layer's operation, e.g. ``torch.nn.functional.linear``.
            x (Tensor): layer input.
            weight (Tensor): layer weight.
            bias (Tensor or None): layer bias.

        Returns:
            Tensor: the layer output.
        """


@dataclass(frozen=True)
class LRP0(LinearRule):
    """LRP-0: relevance proportional to the contributions ``x_i w_ij`` (plain gradient)."""

    def apply(self, op: LinearOp, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return op(x, weight, bias)


@dataclass(frozen=True)
class Epsilon(LinearRule):
    """LRP-epsilon: the denominator ``z_j`` is stabilised to ``z_j + epsilon sign(z_j)``.

    Args:
        epsilon (float, optional): stabiliser, a finite number > 0; larger values absorb
            weak, noisy contributions. Default: ``1e-9`` (Captum's default).

    Raises:
        ValueError: if ``epsilon`` is not a finite number > 0.
    """

    epsilon: float = 1e-9

    def __post_init__(self) -> None:
        _check_number("epsilon", self.epsilon, allow_zero=False)

    def apply(self, op: LinearOp, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        z = op(x, weight, bias)
        return _rescaled(z, z, z / _signed(z, self.epsilon))


@dataclass(frozen=True)
class Gamma(LinearRule):
    """LRP-gamma: positive weights are boosted to ``w + gamma * max(w, 0)``.

    Args:
        gamma (float, optional): boost of positive contributions, finite and >= 0.
            Default: ``0.25``.
        epsilon (float, optional): stabiliser of the denominator, finite and > 0.
            Default: ``1e-9``.

    Raises:
        ValueError: if ``gamma`` or ``epsilon`` is out of range or not finite.
    """

    gamma: float = 0.25
    epsilon: float = 1e-9

    def __post_init__(self) -> None:
        _check_number("gamma", self.gamma, allow_zero=True)
        _check_number("epsilon", self.epsilon, allow_zero=False)

    def apply(self, op: LinearOp, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        z = op(x, weight, bias)
        z_modified = op(x, weight + self.gamma * weight.clamp(min=0), bias)
        return _rescaled(z, z_modified, z / _signed(z_modified, self.epsilon))

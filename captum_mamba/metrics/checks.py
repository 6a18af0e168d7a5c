"""Metrics and views: checks of numeric arguments and the warning for marked bad numbers.

Shared by :mod:`captum_mamba.metrics` and :mod:`captum_mamba.visualization`: every
check raises a one-line ``ValueError`` (or ``TypeError`` for a wrong type) that names
the argument, the offending entries and the fix.
"""

from __future__ import annotations

import numbers
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


class BadNumberWarning(RuntimeWarning):
    """A NaN, an infinity or an undefined statistic was met, and marked in the result
    (e.g. a hatched heatmap token, a NaN statistic) instead of being refused."""


def warn_bad_numbers(message: str) -> None:
    """Issue a :class:`BadNumberWarning` attributed to the first caller outside this
    package, so that warning filters and the printed location point at user code."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith("captum_mamba."):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, BadNumberWarning, stacklevel=level)


def describe(indices: Sequence[Any] | Tensor | np.ndarray, limit: int = 6) -> str:
    """``"2, 5, 7"``, or the first ``limit`` followed by ``", ... (12 in all)"``."""
    items = indices.tolist() if isinstance(indices, Tensor | np.ndarray) else list(indices)
    shown = ", ".join(str(tuple(i) if isinstance(i, list) else i) for i in items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... ({len(items)} in all)"


def as_real_tensor(value: Any, name: str) -> Tensor:
    """A real tensor from a tensor, NumPy array, (nested) sequence or number.

    Integer and boolean values become float64; floating tensors keep their dtype.

    Raises:
        TypeError: for complex or non-numeric values.
        ValueError: for ragged sequences.
    """
    if not isinstance(value, Tensor):
        try:
            array = np.asarray(value)
        except ValueError:
            raise ValueError(
                f"{name} is a ragged sequence; pass a rectangular tensor or array "
                "(pad or resample to a common length first)"
            ) from None
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got {array.dtype} values")
        value = torch.from_numpy(np.array(array, dtype=array.dtype, copy=True))
    if value.is_complex():
        raise TypeError(f"{name} has complex dtype {value.dtype}; pass real numbers")
    value = value.detach()
    return value if value.is_floating_point() else value.double()


def check_int(value: Any, name: str, minimum: int | None = None) -> int:
    """``value`` as an int (Python, NumPy or 0-d integer tensor), at least ``minimum``.

    Raises:
        TypeError: for bools, floats and other types.
        ValueError: below ``minimum``.
    """
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def check_number(
    value: Any, name: str, low: float | None = None, high: float | None = None
) -> float:
    """``value`` as a finite float, optionally within ``[low, high]``.

    Raises:
        TypeError: for non-real values (bools included).
        ValueError: for NaN, inf or values outside the range.
    """
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_complex():
        value = value.item()
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name} must lie in [{low}, {high}], got {value}")
    return value


def check_positive(value: Any, name: str) -> float:
    """``value`` as a finite float greater than zero (see :func:`check_number`)."""
    number = check_number(value, name)
    if not number > 0:
        raise ValueError(f"{name} must be positive, got {number}")
    return number


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a bool (Python or NumPy); ints and other types are refused."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def nonfinite_rows(values: Tensor) -> Tensor:
    """Indices along dim 0 of the rows holding a NaN or an infinity."""
    bad = ~torch.isfinite(values)
    if values.dim() > 1:
        bad = bad.flatten(1).any(1)
    return torch.nonzero(bad).reshape(-1)

"""The one summary statistic every table of this package reports: a mean with its
standard error."""

from __future__ import annotations

import math
from collections.abc import Iterable

from torch import Tensor


def mean_sem(values: Iterable[float] | Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean (``s / sqrt(n)``, ``s`` with ``n - 1``).

    Args:
        values (iterable of float, or Tensor): finite values (a tensor is flattened).

    Returns:
        tuple of float: ``(mean, s.e.)``; the s.e. is NaN for fewer than 2 values.

    Raises:
        ValueError: for no values, or NaN or inf among them.

    Examples::

        >>> mean_sem([1.0, 2.0, 3.0])
        (2.0, 0.5773502691896258)
    """
    if isinstance(values, Tensor):
        values = values.detach().double().reshape(-1).tolist()
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_sem needs at least one value")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("mean_sem got NaN or inf; leave those values out first")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))

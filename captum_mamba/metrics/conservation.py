"""Metrics: how well relevance is conserved (sum of relevances vs the explained output)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ConservationStats:
    """Agreement of per-example relevance sums with the explained outputs.

    Args:
        correlation (float): Pearson correlation over examples (nan if either side is
            constant or there are fewer than two examples).
        mean_relative_error (float): mean of ``|sum - output| / |output|``.
        median_relative_error (float): median of the same.
        max_absolute_error (float): largest ``|sum - output|``.
        examples (int): number of examples.
    """

    correlation: float
    mean_relative_error: float
    median_relative_error: float
    max_absolute_error: float
    examples: int


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two 1-d tensors (float64); nan when undefined."""
    a, b = a.double().reshape(-1), b.double().reshape(-1)
    if a.numel() < 2:
        return math.nan
    da, db = a - a.mean(), b - b.mean()
    denominator = float(da.norm() * db.norm())
    return float((da * db).sum()) / denominator if denominator > 0 else math.nan


def conservation_stats(relevance_sums: Tensor, outputs: Tensor) -> ConservationStats:
    """Conservation statistics of one method over a data set.

    Args:
        relevance_sums (Tensor): ``(examples,)`` sum of each example's relevances.
        outputs (Tensor): ``(examples,)`` explained outputs (e.g. the target logit).

    Returns:
        ConservationStats: the statistics.

    Examples::

        >>> stats = conservation_stats(relevance.sum(-1), logits[:, target])
        >>> stats.correlation, stats.mean_relative_error
    """
    sums, out = relevance_sums.double().reshape(-1), outputs.double().reshape(-1)
    if sums.shape != out.shape:
        raise ValueError(f"{sums.numel()} relevance sums for {out.numel()} outputs")
    if out.numel() == 0:
        return ConservationStats(math.nan, math.nan, math.nan, math.nan, 0)
    error = (sums - out).abs()
    relative = error / out.abs()
    return ConservationStats(
        correlation=pearson(sums, out),
        mean_relative_error=float(relative.mean()),
        median_relative_error=float(torch.median(relative)),
        max_absolute_error=float(error.max()),
        examples=out.numel(),
    )

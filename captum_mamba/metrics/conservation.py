"""Metrics: how well relevance is conserved (sum of relevances vs the explained output).

Bad numbers: NaN or infinite relevance sums or outputs are refused with a one-line
``ValueError`` naming the examples (leave them out, or explain them in float64).
Statistics that are undefined on valid data are reported as NaN (or computed on the
examples where they are defined) with a :class:`BadNumberWarning` that says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from numpy.typing import ArrayLike
from torch import Tensor

from captum_mamba.metrics.checks import as_real_tensor, describe, warn_bad_numbers


@dataclass(frozen=True)
class ConservationStats:
    """Agreement of per-example relevance sums with the explained outputs.

    Args:
        correlation (float): Pearson correlation over examples (nan, with a
            warning, if either side is constant or there are fewer than two
            examples).
        mean_relative_error (float): mean of ``|sum - output| / |output|`` over the
            examples where it is defined (see ``undefined_relative``).
        median_relative_error (float): median of the same (for an even count the
            lower of the two middle values, as ``torch.median``).
        max_absolute_error (float): largest ``|sum - output|``.
        examples (int): number of examples.
        undefined_relative (tuple of int, optional): examples left out of the
            relative errors because their output is 0 (or so close to 0 that the
            ratio overflows). Default: ().
    """

    correlation: float
    mean_relative_error: float
    median_relative_error: float
    max_absolute_error: float
    examples: int
    undefined_relative: tuple[int, ...] = ()


def _values(values: Tensor | ArrayLike, name: str) -> Tensor:
    values = as_real_tensor(values, name).double().reshape(-1)
    bad = torch.nonzero(~torch.isfinite(values)).reshape(-1)
    if bad.numel():
        raise ValueError(
            f"{name} of example{'s' if bad.numel() > 1 else ''} {describe(bad)} "
            f"{'are' if bad.numel() > 1 else 'is'} NaN or inf; leave "
            f"{'them' if bad.numel() > 1 else 'it'} out or explain in float64"
        )
    return values


def _correlation(a: Tensor, b: Tensor) -> tuple[float, str]:
    """Pearson correlation of finite float64 vectors, or nan and the reason."""
    if a.numel() < 2:
        return math.nan, f"fewer than 2 values ({a.numel()})"
    deviations = []
    for side in (a, b):
        # Scaling by the largest |value| first keeps sums and norms from overflowing.
        scale = side.abs().max()
        side = side / scale if scale > 0 else side
        deviation = side - side.mean()
        norm = deviation.norm()
        if not norm > 0:
            return math.nan, "one side is constant"
        deviations.append(deviation / norm)
    return float((deviations[0] * deviations[1]).sum().clamp(-1.0, 1.0)), ""


def pearson(a: Tensor | ArrayLike, b: Tensor | ArrayLike) -> float:
    """Pearson correlation of two equally long vectors, computed in float64.

    NaN or inf values are refused. When the correlation is undefined (fewer than
    two values, or a constant side) the result is nan with a
    :class:`BadNumberWarning`.

    Args:
        a (Tensor or ArrayLike): ``(n,)`` values (flattened).
        b (Tensor or ArrayLike): ``(n,)`` values (flattened).

    Returns:
        float: the correlation in ``[-1, 1]``, or nan when undefined.

    Raises:
        ValueError: for different lengths or NaN/inf values (naming the entries).

    Examples::

        >>> pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 7.0]))
    """
    a, b = _values(a, "a"), _values(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"pearson needs equally long vectors, got {a.numel()} and {b.numel()}")
    value, reason = _correlation(a, b)
    if reason:
        warn_bad_numbers(f"Pearson correlation is undefined ({reason}); returning nan")
    return value


def conservation_stats(
    relevance_sums: Tensor | ArrayLike, outputs: Tensor | ArrayLike
) -> ConservationStats:
    """Conservation statistics of one method over a data set, computed in float64.

    Bad numbers: NaN or inf sums or outputs are refused (``ValueError`` naming the
    examples). Examples whose relative error is undefined (output 0, or so close
    to 0 that the ratio overflows) are left out of the relative errors, listed in
    ``undefined_relative`` and named in a :class:`BadNumberWarning`; if no example
    remains, the relative errors are nan. An undefined correlation is nan, with a
    warning.

    Args:
        relevance_sums (Tensor or ArrayLike): ``(examples,)`` sum of each example's
            relevances.
        outputs (Tensor or ArrayLike): ``(examples,)`` explained outputs (e.g. the
            target logit).

    Returns:
        ConservationStats: the statistics.

    Raises:
        ValueError: for no examples, different lengths, or NaN/inf values.

    Examples::

        >>> stats = conservation_stats(relevance.sum(-1), logits[:, target])
        >>> stats.correlation, stats.mean_relative_error
    """
    sums, out = _values(relevance_sums, "relevance_sums"), _values(outputs, "outputs")
    if sums.shape != out.shape:
        raise ValueError(
            f"{sums.numel()} relevance sums for {out.numel()} outputs; pass one sum per "
            "example (sum each example's relevance first)"
        )
    if out.numel() == 0:
        raise ValueError("conservation_stats needs at least one example")
    error = (sums - out).abs()
    if not torch.isfinite(error).all():
        far = torch.nonzero(~torch.isfinite(error)).reshape(-1)
        raise ValueError(
            f"|sum - output| overflows float64 for examples {describe(far)}; rescale them"
        )
    relative = error / out.abs()
    defined = torch.isfinite(relative)
    undefined = tuple(torch.nonzero(~defined).reshape(-1).tolist())
    if undefined:
        warn_bad_numbers(
            f"relative conservation error is undefined for examples {describe(undefined)} "
            f"(explained output 0 or too close to 0); left out of the relative errors"
        )
    relative = relative[defined]
    correlation, reason = _correlation(sums, out)
    if reason:
        warn_bad_numbers(f"conservation correlation is undefined ({reason}); reported as nan")
    return ConservationStats(
        correlation=correlation,
        mean_relative_error=float(relative.mean()) if relative.numel() else math.nan,
        median_relative_error=float(torch.median(relative)) if relative.numel() else math.nan,
        max_absolute_error=float(error.max()),
        examples=out.numel(),
        undefined_relative=undefined,
    )

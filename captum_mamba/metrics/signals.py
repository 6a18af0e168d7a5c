r"""Metrics for multichannel signals: relevance per time window and channel group,
deletion and insertion curves over time windows or channels, and localisation.

Inputs are ``(batch, time, channels)`` float signals and relevances of the same shape
(the layout of Captum's time-series attributions and of the ``time-interpret``
package). The curves follow :mod:`captum_mamba.metrics.perturbation` with a *unit*
other than a token:

- ``unit="time"``: the unit is a window of ``window`` consecutive time steps over every
  channel (the last window may be shorter);
- ``unit="channel"``: the unit is one channel over every time step.

Units are ranked by the sum of the element scores they cover (the same stable sort with
ties broken by position, and the same step masks, as the token curves), so a signed
relevance keeps its sign and an unsigned score (a gradient's absolute value) ranks by
magnitude. A removed element becomes its *replacement*:

- ``"zero"``: 0;
- ``"mean"``: the mean of its channel over the example's time steps;
- ``"hold"``: the last kept value of its channel before it ("hold last value", the
  sample-and-hold of a sensor that stops reporting); removed steps before any kept step
  of their channel take the channel's mean. Only for ``unit="time"``: removing a whole
  channel keeps no value of it to hold;
- a tensor of shape ``(channels,)``, ``(time, channels)`` or ``(batch, time,
  channels)``, e.g. a training-set mean.

Areas and ``Delta A^F = A(LeRF) - A(MoRF)`` are those of
:func:`~captum_mamba.metrics.perturbation.curve_area` and
:func:`~captum_mamba.metrics.perturbation.delta_area` (over the fraction of units
removed). :func:`evidence_share` scores localisation against a known evidence window.
Bad numbers are refused as in the token metrics: NaN or inf inputs, scores or
replacements raise a one-line ``ValueError``, and a NaN or inf explained output an
``AttributionInputError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from numpy.typing import ArrayLike
from torch import Tensor

from captum_mamba.attr.targets import TargetType
from captum_mamba.metrics.checks import as_real_tensor, check_int, describe, nonfinite_rows
from captum_mamba.metrics.perturbation import (
    CURVES,
    _example_targets,
    _order,
    _steps,
    perturbed_outputs,
)

#: Units a signal curve removes: time windows or channels.
UNITS: tuple[str, ...] = ("time", "channel")
#: Named replacements of removed signal values (a tensor works too).
SIGNAL_REPLACEMENTS: tuple[str, ...] = ("zero", "mean", "hold")


def _signal(values: Tensor | ArrayLike, name: str, batched: bool = True) -> Tensor:
    """A finite ``(batch, time, channels)`` tensor (or ``(time, channels)`` unbatched)."""
    tensor = as_real_tensor(values, name)
    dims = 3 if batched else 2
    layout = "(batch, time, channels)" if batched else "(time, channels)"
    if tensor.dim() != dims or 0 in tensor.shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected a non-empty {layout}")
    bad = nonfinite_rows(tensor) if batched else nonfinite_rows(tensor[None])
    if bad.numel():
        where = f" of example{'s' if bad.numel() > 1 else ''} {describe(bad)}" if batched else ""
        raise ValueError(f"{name}{where} contain NaN or inf; {name} must be finite")
    return tensor


def unit_masks(time: int, channels: int, unit: str = "time", window: int = 1) -> Tensor:
    """Which elements of a ``(time, channels)`` signal each unit covers.

    Args:
        time (int): number of time steps, at least 1.
        channels (int): number of channels, at least 1.
        unit (str, optional): ``"time"`` (windows of ``window`` steps over all
            channels) or ``"channel"`` (one channel over all steps). Default: ``"time"``.
        window (int, optional): time steps per window, at least 1 (the last window
            may be shorter); must be 1 for ``unit="channel"``. Default: 1.

    Returns:
        Tensor: ``(units, time, channels)`` boolean masks; every element is in exactly
        one unit.

    Raises:
        ValueError: for an unknown unit, sizes below 1, or a window with channels.

    Examples::

        >>> unit_masks(5, 2, "time", window=2).shape
        torch.Size([3, 5, 2])
    """
    time = check_int(time, "time", minimum=1)
    channels = check_int(channels, "channels", minimum=1)
    window = check_int(window, "window", minimum=1)
    if unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; choose from {', '.join(UNITS)}")
    if unit == "channel":
        if window != 1:
            raise ValueError("window applies to unit='time'; channels are removed whole")
        return torch.eye(channels, dtype=torch.bool)[:, None, :].expand(channels, time, channels)
    starts = torch.arange(0, time, window)
    steps = torch.arange(time)
    inside = (steps[None, :] >= starts[:, None]) & (steps[None, :] < starts[:, None] + window)
    return inside[:, :, None].expand(len(starts), time, channels)


def window_relevance(relevance: Tensor | ArrayLike, window: int) -> Tensor:
    """Relevance summed over windows of ``window`` consecutive time steps, per channel.

    Sums keep conservation: the windows of an example add up to the same total.

    Args:
        relevance (Tensor or ArrayLike): ``(..., time, channels)`` relevance.
        window (int): time steps per window, at least 1 (the last window may be
            shorter).

    Returns:
        Tensor: ``(..., ceil(time / window), channels)`` sums.

    Raises:
        ValueError: for fewer than 2 dimensions or a window below 1.

    Examples::

        >>> window_relevance(torch.ones(5, 2), 2)
        tensor([[2., 2.],
                [2., 2.],
                [1., 1.]])
    """
    relevance = as_real_tensor(relevance, "relevance")
    window = check_int(window, "window", minimum=1)
    if relevance.dim() < 2:
        raise ValueError(
            f"relevance has shape {tuple(relevance.shape)}; expected (..., time, channels)"
        )
    time = relevance.shape[-2]
    padded = torch.nn.functional.pad(relevance, (0, 0, 0, (-time) % window))
    return padded.unflatten(-2, (-1, window)).sum(-2)


def group_relevance(
    relevance: Tensor | ArrayLike, groups: Mapping[str, Sequence[int]]
) -> tuple[list[str], Tensor]:
    """Relevance summed over groups of channels (e.g. accelerometer vs gyroscope).

    Args:
        relevance (Tensor or ArrayLike): ``(..., channels)`` relevance.
        groups (Mapping): group name -> channel indices. Groups may not share a
            channel; channels in no group are left out (name them all to keep
            conservation).

    Returns:
        tuple: the group names and the ``(..., groups)`` sums.

    Raises:
        ValueError: for no groups, an empty group, an index out of range, or a
            channel in two groups.

    Examples::

        >>> group_relevance(torch.ones(4, 6), {"acc": [0, 1, 2], "gyro": [3, 4, 5]})[1][0]
        tensor([3., 3.])
    """
    relevance = as_real_tensor(relevance, "relevance")
    channels = relevance.shape[-1] if relevance.dim() else 0
    if not groups:
        raise ValueError("groups is empty; name at least one group of channels")
    seen: dict[int, str] = {}
    columns = []
    for name, members in groups.items():
        indices = [check_int(index, f"channel of group {name!r}") for index in members]
        if not indices:
            raise ValueError(f"group {name!r} has no channels")
        for index in indices:
            if not 0 <= index < channels:
                raise ValueError(
                    f"group {name!r} names channel {index}; relevance has {channels} channels"
                )
            if index in seen:
                raise ValueError(f"channel {index} is in groups {seen[index]!r} and {name!r}")
            seen[index] = name
        columns.append(relevance[..., indices].sum(-1))
    return list(groups), torch.stack(columns, -1)


def unit_scores(scores: Tensor | ArrayLike, unit: str = "time", window: int = 1) -> Tensor:
    """One score per unit: the sum of the element scores it covers.

    Args:
        scores (Tensor or ArrayLike): ``(batch, time, channels)`` element scores.
        unit (str, optional): ``"time"`` or ``"channel"``. Default: ``"time"``.
        window (int, optional): time steps per window (``unit="time"``). Default: 1.

    Returns:
        Tensor: ``(batch, units)`` scores.
    """
    scores = _signal(scores, "scores")
    masks = unit_masks(scores.shape[1], scores.shape[2], unit, window).to(scores)
    return torch.einsum("btc,utc->bu", scores, masks)


def _replacement(signal: Tensor, replacement: str | Tensor | ArrayLike, unit: str) -> Tensor:
    """``(batch, time, channels)`` fill values (``"hold"`` gives the channel means, used
    where no earlier value is kept)."""
    if isinstance(replacement, str):
        if replacement not in SIGNAL_REPLACEMENTS:
            raise ValueError(
                f"unknown replacement {replacement!r}; choose from "
                f"{', '.join(SIGNAL_REPLACEMENTS)} or pass a tensor"
            )
        if replacement == "hold" and unit != "time":
            raise ValueError(
                "replacement='hold' holds a channel's last kept value over removed time "
                "steps; unit='channel' keeps no value of the channel: use 'zero' or 'mean'"
            )
        if replacement == "zero":
            return torch.zeros_like(signal)
        return signal.mean(1, keepdim=True).expand_as(signal)
    fill = as_real_tensor(replacement, "replacement").to(signal)
    if fill.shape not in (signal.shape[2:], signal.shape[1:], signal.shape):
        raise ValueError(
            f"replacement has shape {tuple(fill.shape)}; expected (channels,), "
            f"(time, channels) or (batch, time, channels) of {tuple(signal.shape)}"
        )
    if not torch.isfinite(fill).all():
        raise ValueError("replacement contains NaN or inf; use a finite replacement")
    return fill.expand_as(signal)


def _held(signal: Tensor, removed: Tensor, fallback: Tensor) -> Tensor:
    """``signal`` ``(time, channels)`` with removed elements (``(steps, time, channels)``
    masks) set to the last kept value of their channel, else ``fallback``."""
    steps = torch.arange(signal.shape[0], device=signal.device)[None, :, None]
    last = torch.where(removed, -1, steps).cummax(1).values
    held = signal.gather(0, last.clamp(min=0).flatten(0, 1)).unflatten(0, last.shape[:2])
    return torch.where(last < 0, fallback, held)


@torch.no_grad()
def signal_perturbation_curve(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    scores: Tensor | ArrayLike,
    target: TargetType,
    kind: str = "morf",
    unit: str = "time",
    window: int = 1,
    replacement: str | Tensor | ArrayLike = "zero",
    additional_forward_args: Any = None,
    batch_size: int = 64,
) -> Tensor:
    r"""Explained output after ``k = 0..U`` of the ``U`` units have been perturbed.

    Args:
        forward_func (Callable): ``forward(inputs, *additional_forward_args)``.
        inputs (Tensor): ``(batch, time, channels)`` signals.
        scores (Tensor or ArrayLike): ``(batch, time, channels)`` element scores (a
            relevance, or a gradient magnitude); units rank by their sums.
        target (int, tuple, Tensor, list or None): explained output, as in the
            attribution classes.
        kind (str, optional): ``"morf"``, ``"lerf"`` or ``"insertion"``, as in
            :func:`~captum_mamba.metrics.perturbation.perturbation_curve`.
            Default: ``"morf"``.
        unit (str, optional): ``"time"`` (windows) or ``"channel"``. Default: ``"time"``.
        window (int, optional): time steps per window for ``unit="time"``. Default: 1.
        replacement (str or Tensor, optional): ``"zero"``, ``"mean"``, ``"hold"`` or a
            tensor (see the module docstring). Default: ``"zero"``.
        additional_forward_args (Any, optional): further forward arguments; tensors
            with the batch size as first dimension are taken per example. Default: None.
        batch_size (int, optional): perturbed signals per forward pass, at least 1.
            Default: 64.

    Returns:
        Tensor: ``(batch, units + 1)`` outputs; column ``k`` after ``k`` steps.

    Raises:
        ValueError: for ill-shaped or non-finite inputs, scores or replacement, an
            unknown kind, unit or replacement, or ``"hold"`` over channels.
        AttributionInputError: for a target that does not fit the output, or an
            explained output that is NaN or inf.

    Examples::

        >>> morf = signal_perturbation_curve(model, x, relevance, 1, "morf", "time", 10)
        >>> lerf = signal_perturbation_curve(model, x, relevance, 1, "lerf", "time", 10)
        >>> delta_area(morf, lerf)
    """
    if not callable(forward_func):
        raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
    if not isinstance(kind, str) or kind not in CURVES:
        raise ValueError(f"unknown curve {kind!r}; choose from {', '.join(CURVES)}")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    inputs = _signal(inputs, "inputs")
    scores = _signal(scores, "scores").to(inputs.device)
    if scores.shape != inputs.shape:
        raise ValueError(
            f"scores have shape {tuple(scores.shape)}, expected that of the inputs "
            f"{tuple(inputs.shape)}; spread time-step scores over the channels first"
        )
    batch, time, channels = inputs.shape
    masks = unit_masks(time, channels, unit, window).to(inputs.device)
    fills = _replacement(inputs, replacement, unit)
    per_unit = unit_scores(scores, unit, window)
    hold = isinstance(replacement, str) and replacement == "hold"
    targets = _example_targets(target, batch)
    extra = additional_forward_args
    extra = () if extra is None else (extra if isinstance(extra, tuple) else (extra,))
    curves = []
    for index in range(batch):
        steps = _steps(_order(per_unit[index], kind != "lerf"), insertion=kind == "insertion")
        outputs = []
        for first in range(0, steps.shape[0], batch_size):
            chosen = steps[first : first + batch_size].to(inputs.dtype)
            removed = torch.einsum("su,utc->stc", chosen, masks.to(chosen)) > 0
            fill = fills[index]
            if hold:
                fill = _held(inputs[index], removed, fills[index])
            perturbed = torch.where(removed, fill, inputs[index])
            outputs.append(
                perturbed_outputs(
                    forward_func, perturbed, extra, index, batch, targets[index], first,
                    f"of {masks.shape[0]} {kind} steps; try another replacement or float64",
                )
            )  # fmt: skip
        curves.append(torch.cat(outputs))
    return torch.stack(curves)


def signal_perturbation_curves(
    forward_func: Callable[..., Tensor],
    inputs: Tensor,
    scores: Tensor | ArrayLike,
    target: TargetType,
    unit: str = "time",
    window: int = 1,
    replacement: str | Tensor | ArrayLike = "zero",
    additional_forward_args: Any = None,
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """MoRF, LeRF and insertion curves, see :func:`signal_perturbation_curve`.

    Returns:
        dict: ``{"morf": ..., "lerf": ..., "insertion": ...}``, each ``(batch, units + 1)``.

    Examples::

        >>> curves = signal_perturbation_curves(model, x, relevance, 1, "channel")
        >>> delta_area(curves["morf"], curves["lerf"])
    """
    return {
        kind: signal_perturbation_curve(
            forward_func,
            inputs,
            scores,
            target,
            kind,
            unit,
            window,
            replacement,
            additional_forward_args,
            batch_size,
        )
        for kind in CURVES
    }


def evidence_share(
    relevance: Tensor | ArrayLike, evidence: Tensor | ArrayLike, absolute: bool = True
) -> Tensor:
    r"""Localisation: the share of relevance that falls inside the known evidence.

    ``share = sum over evidence of |R| / sum of |R|`` (or of the positive part
    ``max(R, 0)`` with ``absolute=False``). A score that ignores the evidence expects
    the evidence's share of the elements (``evidence.mean()``); a perfect one scores 1.

    Args:
        relevance (Tensor or ArrayLike): ``(batch, time, channels)`` or
            ``(batch, time)`` relevance.
        evidence (Tensor or ArrayLike): boolean mask of the same shape (or
            ``(batch, time)`` for a time window over every channel).
        absolute (bool, optional): share of ``|R|`` (True) or of the positive
            relevance (False). Default: True.

    Returns:
        Tensor: ``(batch,)`` shares in ``[0, 1]``; NaN for an example whose relevance
        (of that sign) is all zero.

    Raises:
        ValueError: for NaN or inf relevance, or a mask that does not fit.

    Examples::

        >>> r = torch.tensor([[[1.0], [3.0]]])
        >>> evidence_share(r, torch.tensor([[False, True]]))
        tensor([0.7500])
    """
    relevance = as_real_tensor(relevance, "relevance")
    mask = torch.as_tensor(evidence, device=relevance.device).bool()
    if relevance.dim() not in (2, 3):
        raise ValueError(
            f"relevance has shape {tuple(relevance.shape)}; expected (batch, time, channels) "
            "or (batch, time)"
        )
    if mask.shape != relevance.shape:
        if mask.shape != relevance.shape[:2]:
            raise ValueError(
                f"evidence has shape {tuple(mask.shape)}; expected {tuple(relevance.shape)} "
                f"or {tuple(relevance.shape[:2])}"
            )
        mask = mask[..., None].expand_as(relevance) if relevance.dim() == 3 else mask
    bad = nonfinite_rows(relevance)
    if bad.numel():
        raise ValueError(f"relevance of examples {describe(bad)} contains NaN or inf")
    weight = relevance.abs() if absolute else relevance.clamp(min=0)
    weight = weight.flatten(1)
    return (weight * mask.flatten(1)).sum(1) / weight.sum(1)

"""Visualisation: perturbation curves, conservation, long-range relevance, image heatmaps.

Every function takes plain tensors or arrays (curves, relevance vectors, images) and
draws on a Matplotlib ``Axes`` (a new figure when none is given), so the plots work
with any attribution method and can be combined into larger figures.

Bad numbers never pass silently. Functions that return numbers
(:func:`area_under_curve`, :func:`top_k_distances`) refuse NaN and inf with a one-line
``ValueError``; :func:`patch_relevance_map` keeps them in place for the plot to mark.
Plots draw what is finite and mark the rest, with a
:class:`~captum_mamba.metrics.BadNumberWarning` naming it: curves, points and
distances with NaN or inf are left out and counted in the legend, relevance positions
and image patches with NaN or inf are drawn grey and hatched, and colour scales use
finite values only. Input images with NaN or inf are refused.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from numpy.typing import ArrayLike

from captum_mamba.metrics import curve_area
from captum_mamba.metrics.checks import (
    check_bool,
    check_int,
    check_number,
    describe,
    warn_bad_numbers,
)
from captum_mamba.visualization._colors import (
    DEFAULT_CMAP,
    NONFINITE_EDGE,
    NONFINITE_FACE,
    NONFINITE_HATCH,
    as_array,
    as_vector,
    get_cmap,
    nonfinite_summary,
    symmetric_limit,
    zero_centred_norm,
)
from captum_mamba.visualization.styles import method_styles


def _new_axes(ax: Axes | None, size: tuple[float, float] = (5.0, 3.6)) -> Axes:
    if ax is not None:
        return ax
    figure = Figure(figsize=size, layout="constrained")
    return figure.add_subplot()


def _named(values: Mapping[Any, ArrayLike] | ArrayLike, default: str, what: str) -> dict:
    if isinstance(values, Mapping):
        if not values:
            raise ValueError(f"{what} is empty; pass at least one method")
        named = {name: as_array(value, f"{what}[{name!r}]") for name, value in values.items()}
    else:
        named = {default: as_array(values, what)}
    for name, value in named.items():
        if value.size == 0:
            raise ValueError(f"{what} of {name!r} is empty")
    return named


def _fractions(fractions: ArrayLike | None, points: int, name: Any) -> np.ndarray:
    if fractions is None:
        return np.linspace(0.0, 1.0, points)
    x = as_array(fractions, "fractions")
    if x.shape != (points,):
        raise ValueError(f"{name}: {points} curve points but fractions of shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("fractions contain NaN or inf; pass finite x positions")
    if not (np.diff(x) > 0).all():
        raise ValueError("fractions must increase strictly (one x position per step)")
    return x


def _warn_left_out(what: str, labelled: list[tuple[str, np.ndarray]], unit: str) -> None:
    if labelled:
        warn_bad_numbers(
            f"{what}: NaN or inf in {nonfinite_summary(labelled, unit)}; left out of the "
            "plot and counted in its legend"
        )


def area_under_curve(curve: ArrayLike, fractions: ArrayLike | None = None) -> float:
    """Trapezoidal area under a perturbation curve, normalised by the x range.

    NaN and inf are refused (the area is a number to report, so it is never NaN).

    Args:
        curve (ArrayLike): ``(steps,)`` model outputs after each perturbation step.
        fractions (ArrayLike, optional): ``(steps,)`` strictly increasing, finite x
            positions (e.g. fraction of tokens removed). Default: None (evenly
            spaced in ``[0, 1]``).

    Returns:
        float: the mean height of the curve (its value for a single point).

    Raises:
        ValueError: for an empty curve, NaN/inf values, or bad fractions.

    Examples::

        >>> area_under_curve([4.0, 2.0, 0.0])
        2.0
    """
    values = as_vector(curve, "curve", "step")
    if values.size == 0:
        raise ValueError("curve is empty; pass at least one point")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"curve is NaN or inf at steps {describe(bad)}; pass a finite curve")
    x = _fractions(fractions, values.size, "curve")
    if values.size < 2:
        return float(values[0])
    return float(curve_area(torch.as_tensor(values), torch.as_tensor(x)))


def plot_perturbation_curves(
    curves: Mapping[str, ArrayLike],
    fractions: ArrayLike | None = None,
    order: str = "MoRF",
    ylabel: str = "model output (logit)",
    ax: Axes | None = None,
) -> Axes:
    """Perturbation curves of several methods: output as the input is destroyed.

    Under MoRF (most relevant first) a faithful explanation makes the output fall
    quickly (small area); under LeRF (least relevant first) it stays high (large
    area). Curves given per example ``(examples, steps)`` are averaged, with a band
    of one standard error.

    Curves with NaN or inf are left out of the mean, counted in the method's legend
    entry (``"2 of 10 curves with NaN/inf left out"``, or ``"not drawn"`` when none
    is left) and named in a :class:`~captum_mamba.metrics.BadNumberWarning`.

    Args:
        curves (Mapping[str, ArrayLike]): for each method, ``(steps,)`` or
            ``(examples, steps)`` model outputs.
        fractions (ArrayLike, optional): ``(steps,)`` fraction of tokens perturbed at
            each step, strictly increasing. Default: None (evenly spaced in ``[0, 1]``).
        order (str, optional): ``"MoRF"`` or ``"LeRF"`` (titles the plot). Default:
            ``"MoRF"``.
        ylabel (str, optional): y-axis label. Default: ``"model output (logit)"``.
        ax (Axes, optional): where to draw. Default: None (a new figure).

    Returns:
        matplotlib.axes.Axes: the plot; each legend entry gives the method's area.

    Examples::

        >>> ax = plot_perturbation_curves({"MambaLRP": morf_lrp, "IG": morf_ig})
        >>> ax.figure.savefig("morf.png")
    """
    if not isinstance(order, str):
        raise TypeError(f"order must be 'MoRF' or 'LeRF', got {type(order).__name__}")
    ax = _new_axes(ax)
    left_out = []
    named = _named(curves, "curve", "curves")
    styles = method_styles(named)
    for name, values in named.items():
        rows = values.reshape(-1, values.shape[-1])
        x = _fractions(fractions, rows.shape[1], name)
        good = np.isfinite(rows).all(1)
        kept = rows[good]
        if not good.all():
            left_out.append((repr(name), np.flatnonzero(~good)))
        if kept.shape[0] == 0:
            label = f"{name} (all {rows.shape[0]} curves NaN/inf; not drawn)"
            ax.plot([], [], label=label, **styles[name].line())
            continue
        note = (
            f"; {rows.shape[0] - kept.shape[0]} of {rows.shape[0]} curves with NaN/inf left out"
            if not good.all()
            else ""
        )
        mean = kept.mean(0)
        label = f"{name} (AUC {area_under_curve(mean, x):.3g}{note})"
        ax.plot(x, mean, label=label, **styles[name].line(mean.size))
        if kept.shape[0] > 1:
            error = kept.std(0, ddof=1) / np.sqrt(kept.shape[0])
            ax.fill_between(x, mean - error, mean + error, color=styles[name].color, alpha=0.2)
    _warn_left_out(f"{order} perturbation curves", left_out, "curves")
    description = {"MoRF": "most relevant first", "LeRF": "least relevant first"}
    ax.set_title(f"{order}: {description.get(order, 'perturbation')}")
    ax.set_xlabel("fraction of tokens perturbed")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def plot_morf_lerf(
    morf: Mapping[str, ArrayLike],
    lerf: Mapping[str, ArrayLike],
    fractions: ArrayLike | None = None,
    ylabel: str = "model output (logit)",
    title: str = "",
) -> Figure:
    """MoRF and LeRF curves side by side (shared y axis), one line per method.

    Curves with NaN or inf are left out, counted in the legends and named in a
    warning, as in :func:`plot_perturbation_curves`.

    Args:
        morf (Mapping[str, ArrayLike]): MoRF curves per method, see
            :func:`plot_perturbation_curves`.
        lerf (Mapping[str, ArrayLike]): LeRF curves per method.
        fractions (ArrayLike, optional): fraction perturbed at each step. Default:
            None (evenly spaced).
        ylabel (str, optional): y-axis label. Default: ``"model output (logit)"``.
        title (str, optional): figure title. Default: "".

    Returns:
        matplotlib.figure.Figure: two panels; a method is faithful when its MoRF
        area is small and its LeRF area large (the areas are in the legends).
    """
    figure = Figure(figsize=(10.0, 3.8), layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True)
    plot_perturbation_curves(morf, fractions, "MoRF", ylabel, left)
    plot_perturbation_curves(lerf, fractions, "LeRF", ylabel, right)
    right.set_ylabel("")
    if title:
        figure.suptitle(title)
    return figure


def plot_conservation(
    relevance_sums: Mapping[str, ArrayLike] | ArrayLike,
    outputs: Mapping[str, ArrayLike] | ArrayLike,
    ax: Axes | None = None,
) -> Axes:
    """Conservation check: sum of relevances against the explained output.

    A conservative method puts every point on the diagonal ``Σ R_i = f(x)``.
    Examples whose sum or output is NaN or inf cannot be placed: they are left out,
    counted in the method's legend entry and named in a
    :class:`~captum_mamba.metrics.BadNumberWarning`.

    Args:
        relevance_sums (Mapping[str, ArrayLike] or ArrayLike): ``(examples,)`` sum of
            the relevances of each example, per method (or one array).
        outputs (Mapping[str, ArrayLike] or ArrayLike): ``(examples,)`` explained
            outputs (e.g. logits); one array for all methods or one per method.
        ax (Axes, optional): where to draw. Default: None (a new figure).

    Returns:
        matplotlib.axes.Axes: the scatter plot with the diagonal.

    Examples::

        >>> plot_conservation({"MambaLRP": lrp.sum((1, 2)), "G x I": gxi.sum((1, 2))}, logits)
    """
    ax = _new_axes(ax, (4.4, 4.0))
    sums = _named(relevance_sums, "relevance", "relevance_sums")
    if isinstance(outputs, Mapping):
        missing = [name for name in sums if name not in outputs]
        if missing:
            raise ValueError(f"outputs has no entry for {describe(map(repr, missing))}")
    everything, left_out = [], []
    styles = method_styles(sums)
    for name, values in sums.items():
        given = outputs[name] if isinstance(outputs, Mapping) else outputs
        x = as_array(given, f"outputs of {name!r}").reshape(-1)
        y = values.reshape(-1)
        if x.shape != y.shape:
            raise ValueError(f"{name}: {y.size} relevance sums but {x.size} outputs")
        good = np.isfinite(x) & np.isfinite(y)
        label = str(name)
        if not good.all():
            left_out.append((repr(name), np.flatnonzero(~good)))
            label += f" ({int((~good).sum())} NaN/inf points left out)"
        ax.scatter(x[good], y[good], s=18, alpha=0.75, label=label, **styles[name].scatter())
        everything.extend([x[good], y[good]])
    _warn_left_out("conservation plot", left_out, "examples")
    values = np.concatenate(everything)
    low, high = (float(values.min()), float(values.max())) if values.size else (-1.0, 1.0)
    margin = 0.05 * (high - low or 1.0)
    ends = [low - margin, high + margin]
    ax.plot(ends, ends, "k--", lw=1, label="Σ R = f(x)")
    ax.set_xlabel("explained output f(x)")
    ax.set_ylabel("sum of relevances Σ R_i")
    ax.set_title("Conservation")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def top_k_distances(
    relevance: ArrayLike, k: int = 10, predicted_position: int | None = None
) -> np.ndarray:
    """Distances from the predicted token to the ``k`` most relevant context tokens.

    For next-token prediction, the relevance of context position ``i`` for the
    token predicted after position ``t`` lies at distance ``t + 1 - i`` (1 = the
    token just before the prediction). The paper's long-range analysis histograms
    these distances over many predictions.

    NaN and inf relevances in the context are refused (a NaN would never rank, so
    the distances would silently come from the other tokens).

    Args:
        relevance (ArrayLike): ``(seq,)`` relevance of each context token.
        k (int, optional): how many of the most relevant (largest positive) tokens to
            keep, at least 1. Default: 10.
        predicted_position (int, optional): position in ``[0, seq)`` whose next token
            is explained. Default: None (the last position).

    Returns:
        np.ndarray: ``(min(k, positions),)`` integer distances, most relevant first.

    Raises:
        ValueError: for empty relevance, ``k < 1``, a position outside the context
            or NaN/inf relevance up to that position.

    Examples::

        >>> distances = np.concatenate([top_k_distances(r, k=10) for r in relevances])
    """
    values = as_vector(relevance, "relevance")
    if values.size == 0:
        raise ValueError("relevance is empty; pass one value per context token")
    k = check_int(k, "k", minimum=1)
    if predicted_position is None:
        last = values.size - 1
    else:
        last = check_int(predicted_position, "predicted_position")
    if not 0 <= last < values.size:
        raise ValueError(f"predicted_position {last} outside a context of {values.size}")
    context = values[: last + 1]
    bad = np.flatnonzero(~np.isfinite(context))
    if bad.size:
        raise ValueError(
            f"relevance is NaN or inf at positions {describe(bad)}; top-k distances need "
            "finite relevance (fix or leave out this prediction)"
        )
    order = np.argsort(-context, kind="stable")[:k]
    return (last + 1 - order).astype(np.int64)


def plot_relevance_distance(
    distances: Mapping[str, ArrayLike] | ArrayLike,
    bins: int | ArrayLike = 20,
    log_x: bool = False,
    ax: Axes | None = None,
) -> Axes:
    """Histogram of the distances between predicted tokens and their relevant context.

    Mass far to the right means the model uses long-range context. Bar heights are
    the fraction of a model's distances that fall in the bin, so models with
    different numbers of predictions compare directly. NaN or inf distances are
    left out (the fractions are of the finite ones), counted in the legend and
    named in a :class:`~captum_mamba.metrics.BadNumberWarning`.

    Args:
        distances (Mapping[str, ArrayLike] or ArrayLike): positive distances (see
            :func:`top_k_distances`), per model or method.
        bins (int or ArrayLike, optional): number of bins (at least 1) or strictly
            increasing, finite bin edges. Default: 20.
        log_x (bool, optional): logarithmic distance axis; an int ``bins`` then gives
            log-spaced edges at half-integers (each distance inside one bin).
            Default: False.
        ax (Axes, optional): where to draw. Default: None (a new figure).

    Returns:
        matplotlib.axes.Axes: the histogram.
    """
    log_x = check_bool(log_x, "log_x")
    if isinstance(bins, numbers.Integral) and not isinstance(bins, bool | np.bool_):
        bins = check_int(bins, "bins", minimum=1)
    else:
        edges = as_array(bins, "bins")
        if edges.ndim != 1 or edges.size < 2:
            raise ValueError(f"bins must be an int or at least 2 edges, got shape {edges.shape}")
        if not np.isfinite(edges).all() or not (np.diff(edges) > 0).all():
            raise ValueError("bin edges must be finite and increase strictly")
        bins = edges
    ax = _new_axes(ax)
    kept, left_out = {}, []
    for name, values in _named(distances, "distances", "distances").items():
        flat = values.reshape(-1)
        good = np.isfinite(flat)
        if (flat[good] <= 0).any():
            raise ValueError(
                f"distances of {name!r} must be positive token distances (see "
                f"top_k_distances), got {describe(np.unique(flat[good][flat[good] <= 0]))}"
            )
        if not good.all():
            left_out.append((repr(name), np.flatnonzero(~good)))
        kept[name] = (flat[good], flat.size)
    finite = [values for values, _ in kept.values() if values.size]
    largest = max((float(values.max()) for values in finite), default=2.0)
    if log_x and isinstance(bins, int):
        edges = np.unique(np.round(np.geomspace(1.0, max(largest, 2.0) + 1.0, bins + 1)))
        bins = edges - 0.5
    styles = method_styles(kept)
    for name, (flat, total) in kept.items():
        if flat.size == 0:
            ax.plot([], [], label=f"{name} (all {total} NaN/inf; not drawn)", **styles[name].line())
            continue
        label = str(name) + (
            f" ({total - flat.size} NaN/inf left out)" if flat.size < total else ""
        )
        ax.hist(
            flat,
            bins=bins,
            weights=np.full(flat.size, 1.0 / flat.size),
            alpha=0.5,
            label=label,
            color=styles[name].color,
        )
    _warn_left_out("relevance distances", left_out, "entries")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("distance to the predicted token (tokens)")
    ax.set_ylabel("fraction of top-k relevant tokens")
    ax.set_title("Where does the relevance come from?")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return ax


def plot_relevance_over_context(
    relevance: ArrayLike,
    tokens: Sequence[str] | None = None,
    annotate: int = 5,
    ax: Axes | None = None,
) -> Axes:
    """Relevance of every token of a long context, as bars over positions.

    Positions whose relevance is NaN or inf get no bar but a grey, hatched column
    over the full height (gid ``"nonfinite"``), a legend entry, and a
    :class:`~captum_mamba.metrics.BadNumberWarning` naming them; they are never
    annotated.

    Args:
        relevance (ArrayLike): ``(seq,)`` relevance of each context token.
        tokens (sequence of str, optional): display strings; the ``annotate`` most
            relevant tokens are written above their bars. Default: None.
        annotate (int, optional): how many tokens to name, at least 0. Default: 5.
        ax (Axes, optional): where to draw. Default: None (a new, wide figure).

    Returns:
        matplotlib.axes.Axes: bars coloured red (positive) or blue (negative).

    Raises:
        ValueError: for empty relevance, a negative ``annotate`` or a token count
            that does not match.
    """
    values = as_vector(relevance, "relevance")
    if values.size == 0:
        raise ValueError("relevance is empty; pass one value per context token")
    annotate = check_int(annotate, "annotate", minimum=0)
    if tokens is not None:
        if isinstance(tokens, str) or len(tokens) != values.size:
            raise ValueError(f"{len(tokens)} tokens for {values.size} relevances")
        if not all(isinstance(token, str) for token in tokens):
            raise TypeError("tokens must be strings (see token_texts)")
    ax = _new_axes(ax, (10.0, 3.0))
    finite = np.isfinite(values)
    shown = np.where(finite, values, 0.0)
    positions = np.arange(values.size)
    colours = np.where(shown >= 0, "tab:red", "tab:blue")
    ax.bar(positions, shown, width=1.0, color=colours)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        for number, (start, stop) in enumerate(_runs(~finite)):
            ax.axvspan(
                start - 0.5,
                stop - 0.5,
                facecolor=NONFINITE_FACE,
                edgecolor=NONFINITE_EDGE,
                hatch=NONFINITE_HATCH,
                linewidth=0.5,
                gid="nonfinite",
                label="NaN or inf relevance" if number == 0 else "_nolegend_",
            )
        ax.legend(fontsize="small", loc="upper left")
        warn_bad_numbers(
            f"relevance over context: NaN or inf at positions {describe(bad)}; drawn as grey "
            "hatched columns"
        )
    if tokens is not None:
        candidates = np.flatnonzero(finite)
        ranked = candidates[np.argsort(-np.abs(shown[candidates]), kind="stable")]
        for index in ranked[:annotate]:
            ax.annotate(
                repr(tokens[index].strip() or tokens[index])[1:-1],
                (index, values[index]),
                textcoords="offset points",
                xytext=(0, 4 if values[index] >= 0 else -12),
                ha="center",
                fontsize="small",
            )
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xlim(-0.5, values.size - 0.5)
    ax.set_xlabel("position in the context")
    ax.set_ylabel("relevance")
    ax.set_title("Relevance of each context token for the next token")
    return ax


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of True in a 1-d boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def _blocks(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """``(row, col, height, width)`` rectangles covering the True cells of a 2-d mask:
    runs in each row, merged with the same run in the row above."""
    open_blocks: dict[tuple[int, int], list[int]] = {}
    blocks = []
    for row in range(mask.shape[0]):
        runs = set(_runs(mask[row]))
        for run in list(open_blocks):
            if run not in runs:
                top, height = open_blocks.pop(run)
                blocks.append((top, run[0], height, run[1] - run[0]))
        for run in runs:
            if run in open_blocks:
                open_blocks[run][1] += 1
            else:
                open_blocks[run] = [row, 1]
    blocks += [(top, run[0], height, run[1] - run[0]) for run, (top, height) in open_blocks.items()]
    return sorted(blocks)


def _image_hwc(image: ArrayLike) -> np.ndarray:
    array = as_array(image, "image")
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # channels first -> last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or array.size == 0:
        raise ValueError(f"expected an image (H, W), (H, W, C) or (C, H, W), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(
            f"image has {int((~np.isfinite(array)).sum())} NaN or inf pixel values; pass a "
            "finite image"
        )
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def _pair(value: Any, name: str) -> tuple[int, int]:
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name} must be a pair of ints (rows, cols), got {value!r}")
    return check_int(value[0], f"{name}[0]", 1), check_int(value[1], f"{name}[1]", 1)


def patch_relevance_map(
    relevance: ArrayLike, image_size: tuple[int, int], grid: tuple[int, int] | None = None
) -> np.ndarray:
    """Pixel map of patch (or pixel) relevances, each patch filling its square.

    NaN and inf are kept in place (a channel sum with one is NaN or inf), so that
    :func:`plot_image_heatmap` can mark them.

    Args:
        relevance (ArrayLike): ``(patches,)`` relevance per patch in row-major order,
            ``(rows, cols)`` per patch, ``(H, W)`` per pixel, or ``(C, H, W)`` per
            pixel and channel (summed over channels).
        image_size (tuple of int): ``(H, W)`` of the image, both at least 1.
        grid (tuple of int, optional): ``(rows, cols)`` of patches for flat
            relevances (ignored otherwise). Default: None (a square grid).

    Returns:
        np.ndarray: ``(H, W)`` relevance map.

    Raises:
        ValueError: for sizes below 1, a grid that does not hold the patches or does
            not tile the image, or relevance of another rank.
    """
    values = as_array(relevance, "relevance")
    height, width = _pair(image_size, "image_size")
    if values.ndim not in (1, 2, 3) or values.size == 0:
        raise ValueError(
            f"relevance has shape {values.shape}; expected (patches,), (rows, cols), (H, W) "
            "or (C, H, W)"
        )
    if values.ndim == 3:
        with np.errstate(invalid="ignore"):  # inf + -inf is NaN, marked by the plot
            values = values.sum(0)
    if values.ndim == 1:
        if grid is None:
            side = round(np.sqrt(values.size))
            if side * side != values.size:
                raise ValueError(f"{values.size} patches are not a square grid; pass grid")
            grid = (side, side)
        grid = _pair(grid, "grid")
        if grid[0] * grid[1] != values.size:
            raise ValueError(f"grid {grid} holds {grid[0] * grid[1]} patches, not {values.size}")
        values = values.reshape(grid)
    rows, cols = values.shape
    if height % rows or width % cols:
        raise ValueError(f"a {rows}x{cols} patch grid does not tile a {height}x{width} image")
    return np.kron(values, np.ones((height // rows, width // cols)))


def plot_image_heatmap(
    image: ArrayLike,
    relevance: ArrayLike,
    grid: tuple[int, int] | None = None,
    alpha: float = 0.6,
    cmap: str | Colormap = DEFAULT_CMAP,
    max_abs: float | None = None,
    title: str = "",
    colorbar: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Patch (or pixel) relevance laid over the image, zero-centred colours.

    Patches or pixels whose relevance is NaN or inf are drawn grey and hatched
    (gid ``"nonfinite"``), noted under the image and in the colour bar label, and
    named in a :class:`~captum_mamba.metrics.BadNumberWarning`; the colour scale
    uses the finite values only. An image with NaN or inf pixels is refused.

    Args:
        image (ArrayLike): ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` image (a batch
            of one is accepted); rescaled to ``[0, 1]`` for display, shown in grey.
        relevance (ArrayLike): patch or pixel relevances, see
            :func:`patch_relevance_map`.
        grid (tuple of int, optional): ``(rows, cols)`` of patches. Default: None.
        alpha (float, optional): opacity of the heatmap, in ``[0, 1]``. Default: 0.6.
        cmap (str or Colormap, optional): diverging colour map. Default: ``"bwr"``.
        max_abs (float, optional): positive, finite colour limit. Default: None
            (largest finite ``|R|``).
        title (str, optional): axes title. Default: "".
        colorbar (bool, optional): add a colour bar. Default: True.
        ax (Axes, optional): where to draw. Default: None (a new figure).

    Returns:
        matplotlib.axes.Axes: the image with the heatmap on top.

    Examples::

        >>> plot_image_heatmap(image[0], relevance.sum(-1)[0], grid=(4, 4))
    """
    alpha = check_number(alpha, "alpha", 0.0, 1.0)
    colorbar = check_bool(colorbar, "colorbar")
    pixels = _image_hwc(image)
    grey = pixels if pixels.ndim == 2 else pixels.mean(-1)
    heat = patch_relevance_map(relevance, grey.shape, grid)
    limit = symmetric_limit(heat, max_abs)
    bad = ~np.isfinite(heat)
    ax = _new_axes(ax, (4.0, 3.6))
    ax.imshow(grey, cmap="gray", interpolation="nearest")
    shown = ax.imshow(
        np.ma.masked_invalid(heat),
        cmap=get_cmap(cmap).with_extremes(bad=NONFINITE_FACE),
        norm=zero_centred_norm(limit),
        alpha=alpha,
        interpolation="nearest",
    )
    label = "relevance"
    if bad.any():
        for row, col, height, width in _blocks(bad):
            ax.add_patch(
                Rectangle(
                    (col - 0.5, row - 0.5),
                    width,
                    height,
                    fill=False,
                    hatch=NONFINITE_HATCH,
                    edgecolor=NONFINITE_EDGE,
                    linewidth=0.0,
                    gid="nonfinite",
                )
            )
        label += " (hatched: NaN/inf)"
        ax.set_xlabel("hatched grey: NaN or inf relevance", fontsize="small")
        warn_bad_numbers(
            f"image heatmap {title!r}: NaN or inf relevance in {int(bad.sum())} of {bad.size} "
            "pixels; drawn grey and hatched, left out of the colour scale"
        )
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=label)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    return ax


def image_heatmaps_figure(
    image: ArrayLike,
    relevances: Mapping[str, ArrayLike],
    grid: tuple[int, int] | None = None,
    alpha: float = 0.6,
    title: str = "",
) -> Figure:
    """The input image next to one heatmap per method.

    Args:
        image (ArrayLike): the input image, see :func:`plot_image_heatmap`.
        relevances (Mapping[str, ArrayLike]): patch or pixel relevances per method
            (NaN or inf marked as in :func:`plot_image_heatmap`).
        grid (tuple of int, optional): ``(rows, cols)`` of patches. Default: None.
        alpha (float, optional): opacity of the heatmaps. Default: 0.6.
        title (str, optional): figure title. Default: "".

    Returns:
        matplotlib.figure.Figure: ``1 + len(relevances)`` panels, each heatmap with
        its own zero-centred scale.
    """
    if not isinstance(relevances, Mapping) or not relevances:
        raise ValueError("relevances must be a non-empty mapping {method name: relevance}")
    figure = Figure(figsize=(3.2 * (1 + len(relevances)), 3.2), layout="constrained")
    axes = figure.subplots(1, 1 + len(relevances), squeeze=False)[0]
    pixels = _image_hwc(image)
    axes[0].imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, interpolation="nearest")
    axes[0].set_title("input")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    for panel, (name, relevance) in zip(axes[1:], relevances.items(), strict=True):
        plot_image_heatmap(image, relevance, grid, alpha, title=name, ax=panel)
    if title:
        figure.suptitle(title)
    return figure

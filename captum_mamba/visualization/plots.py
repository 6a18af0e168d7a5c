"""Visualisation: perturbation curves, conservation, long-range relevance, image heatmaps.

Every function takes plain tensors or arrays (curves, relevance vectors, images) and
draws on a Matplotlib ``Axes`` (a new figure when none is given), so the plots work
with any attribution method and can be combined into larger figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from captum_mamba.visualization._colors import (
    DEFAULT_CMAP,
    as_array,
    get_cmap,
    symmetric_limit,
    zero_centred_norm,
)


def _new_axes(ax: Axes | None, size: tuple[float, float] = (5.0, 3.6)) -> Axes:
    if ax is not None:
        return ax
    figure = Figure(figsize=size, layout="constrained")
    return figure.add_subplot()


def _named(values: Mapping[str, ArrayLike] | ArrayLike, default: str) -> dict[str, np.ndarray]:
    if isinstance(values, Mapping):
        return {name: as_array(value) for name, value in values.items()}
    return {default: as_array(values)}


def area_under_curve(curve: ArrayLike, fractions: ArrayLike | None = None) -> float:
    """Trapezoidal area under a perturbation curve, normalised by the x range.

    Args:
        curve (ArrayLike): ``(steps,)`` model outputs after each perturbation step.
        fractions (ArrayLike, optional): ``(steps,)`` x positions (e.g. fraction of
            tokens removed). Default: None (evenly spaced in ``[0, 1]``).

    Returns:
        float: the mean height of the curve.
    """
    values = as_array(curve).reshape(-1)
    x = np.linspace(0.0, 1.0, values.size) if fractions is None else as_array(fractions)
    if values.size < 2:
        return float(values.mean())
    widths = np.diff(x)
    return float(np.sum(widths * (values[1:] + values[:-1]) / 2.0) / (x[-1] - x[0]))


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

    Args:
        curves (Mapping[str, ArrayLike]): for each method, ``(steps,)`` or
            ``(examples, steps)`` model outputs.
        fractions (ArrayLike, optional): ``(steps,)`` fraction of tokens perturbed at
            each step. Default: None (evenly spaced in ``[0, 1]``).
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
    ax = _new_axes(ax)
    for name, values in _named(curves, "curve").items():
        rows = values.reshape(-1, values.shape[-1])
        mean = rows.mean(0)
        x = np.linspace(0.0, 1.0, mean.size) if fractions is None else as_array(fractions)
        if x.shape != mean.shape:
            raise ValueError(f"{name}: {mean.size} curve points but {x.size} fractions")
        (line,) = ax.plot(x, mean, label=f"{name} (AUC {area_under_curve(mean, x):.3g})")
        if rows.shape[0] > 1:
            error = rows.std(0, ddof=1) / np.sqrt(rows.shape[0])
            ax.fill_between(x, mean - error, mean + error, color=line.get_color(), alpha=0.2)
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
    sums = _named(relevance_sums, "relevance")
    everything = []
    for name, values in sums.items():
        x = as_array(outputs[name]) if isinstance(outputs, Mapping) else as_array(outputs)
        y = values.reshape(-1)
        if x.reshape(-1).shape != y.shape:
            raise ValueError(f"{name}: {y.size} relevance sums but {x.size} outputs")
        ax.scatter(x.reshape(-1), y, s=18, alpha=0.75, label=name)
        everything.extend([x.reshape(-1), y])
    values = np.concatenate(everything)
    low, high = float(values.min()), float(values.max())
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

    Args:
        relevance (ArrayLike): ``(seq,)`` relevance of each context token.
        k (int, optional): how many of the most relevant (largest positive) tokens to
            keep. Default: 10.
        predicted_position (int, optional): position whose next token is explained.
            Default: None (the last position).

    Returns:
        np.ndarray: ``(min(k, positions),)`` integer distances, most relevant first.

    Examples::

        >>> distances = np.concatenate([top_k_distances(r, k=10) for r in relevances])
    """
    values = as_array(relevance).reshape(-1)
    last = values.size - 1 if predicted_position is None else predicted_position
    if not 0 <= last < values.size:
        raise ValueError(f"predicted_position {last} outside a context of {values.size}")
    context = values[: last + 1]
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
    different numbers of predictions compare directly.

    Args:
        distances (Mapping[str, ArrayLike] or ArrayLike): distances (see
            :func:`top_k_distances`), per model or method.
        bins (int or ArrayLike, optional): number of bins or bin edges. Default: 20.
        log_x (bool, optional): logarithmic distance axis; an int ``bins`` then gives
            log-spaced edges at half-integers (each distance inside one bin).
            Default: False.
        ax (Axes, optional): where to draw. Default: None (a new figure).

    Returns:
        matplotlib.axes.Axes: the histogram.
    """
    ax = _new_axes(ax)
    named = _named(distances, "distances")
    largest = max(float(values.max()) for values in named.values())
    if log_x and isinstance(bins, int):
        edges = np.unique(np.round(np.geomspace(1.0, max(largest, 2.0) + 1.0, bins + 1)))
        bins = edges - 0.5
    for name, values in named.items():
        flat = values.reshape(-1)
        ax.hist(flat, bins=bins, weights=np.full(flat.size, 1.0 / flat.size), alpha=0.5, label=name)
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

    Args:
        relevance (ArrayLike): ``(seq,)`` relevance of each context token.
        tokens (sequence of str, optional): display strings; the ``annotate`` most
            relevant tokens are written above their bars. Default: None.
        annotate (int, optional): how many tokens to name. Default: 5.
        ax (Axes, optional): where to draw. Default: None (a new, wide figure).

    Returns:
        matplotlib.axes.Axes: bars coloured red (positive) or blue (negative).
    """
    ax = _new_axes(ax, (10.0, 3.0))
    values = as_array(relevance).reshape(-1)
    positions = np.arange(values.size)
    colours = np.where(values >= 0, "tab:red", "tab:blue")
    ax.bar(positions, values, width=1.0, color=colours)
    if tokens is not None:
        if len(tokens) != values.size:
            raise ValueError(f"{len(tokens)} tokens for {values.size} relevances")
        for index in np.argsort(-np.abs(values), kind="stable")[:annotate]:
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


def _image_hwc(image: ArrayLike) -> np.ndarray:
    array = as_array(image)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # channels first -> last
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3):
        raise ValueError(f"expected an image (H, W), (H, W, C) or (C, H, W), got {array.shape}")
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def patch_relevance_map(
    relevance: ArrayLike, image_size: tuple[int, int], grid: tuple[int, int] | None = None
) -> np.ndarray:
    """Pixel map of patch (or pixel) relevances, each patch filling its square.

    Args:
        relevance (ArrayLike): ``(patches,)`` relevance per patch in row-major order,
            ``(rows, cols)`` per patch, ``(H, W)`` per pixel, or ``(C, H, W)`` per
            pixel and channel (summed over channels).
        image_size (tuple of int): ``(H, W)`` of the image.
        grid (tuple of int, optional): ``(rows, cols)`` of patches for flat
            relevances. Default: None (a square grid).

    Returns:
        np.ndarray: ``(H, W)`` relevance map.
    """
    values = as_array(relevance)
    height, width = image_size
    if values.ndim == 3:
        values = values.sum(0)
    if values.ndim == 1:
        if grid is None:
            side = round(np.sqrt(values.size))
            if side * side != values.size:
                raise ValueError(f"{values.size} patches are not a square grid; pass grid")
            grid = (side, side)
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

    Args:
        image (ArrayLike): ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` image (a batch
            of one is accepted); rescaled to ``[0, 1]`` for display, shown in grey.
        relevance (ArrayLike): patch or pixel relevances, see
            :func:`patch_relevance_map`.
        grid (tuple of int, optional): ``(rows, cols)`` of patches. Default: None.
        alpha (float, optional): opacity of the heatmap. Default: 0.6.
        cmap (str or Colormap, optional): diverging colour map. Default: ``"bwr"``.
        max_abs (float, optional): colour limit. Default: None (largest ``|R|``).
        title (str, optional): axes title. Default: "".
        colorbar (bool, optional): add a colour bar. Default: True.
        ax (Axes, optional): where to draw. Default: None (a new figure).

    Returns:
        matplotlib.axes.Axes: the image with the heatmap on top.

    Examples::

        >>> plot_image_heatmap(image[0], relevance.sum(-1)[0], grid=(4, 4))
    """
    ax = _new_axes(ax, (4.0, 3.6))
    pixels = _image_hwc(image)
    grey = pixels if pixels.ndim == 2 else pixels.mean(-1)
    heat = patch_relevance_map(relevance, grey.shape, grid)
    ax.imshow(grey, cmap="gray", interpolation="nearest")
    shown = ax.imshow(
        heat,
        cmap=get_cmap(cmap),
        norm=zero_centred_norm(symmetric_limit(heat, max_abs)),
        alpha=alpha,
        interpolation="nearest",
    )
    if colorbar:
        ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="relevance")
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
        relevances (Mapping[str, ArrayLike]): patch or pixel relevances per method.
        grid (tuple of int, optional): ``(rows, cols)`` of patches. Default: None.
        alpha (float, optional): opacity of the heatmaps. Default: 0.6.
        title (str, optional): figure title. Default: "".

    Returns:
        matplotlib.figure.Figure: ``1 + len(relevances)`` panels, each heatmap with
        its own zero-centred scale.
    """
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

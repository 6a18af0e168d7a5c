"""Visualisation of relevance over multichannel signals ("which sensor, when").

Two views of a ``(time, channels)`` relevance next to its signal:

- **lanes**: one lane per channel, the raw signal drawn as a line whose colour is the
  relevance of each sample (the piece of line around sample ``t``, from the midpoint
  with ``t - 1`` to the midpoint with ``t + 1``, takes the colour of ``R[t]``);
  :func:`signal_relevance_figure` (Matplotlib) and :class:`SignalView` (HTML with
  inline SVG, shown by Jupyter, saved as a standalone file);
- **heatmap**: a time x channel grid, optionally aggregated into time windows
  (:func:`~captum_mamba.metrics.signals.window_relevance`) and channel groups such as
  accelerometer vs gyroscope (:func:`~captum_mamba.metrics.signals.group_relevance`);
  :func:`signal_heatmap_figure`.

Colours follow the token heatmaps: blue negative, white zero, red positive, on a scale
centred on zero. NaN or inf relevance is drawn grey, left out of the colour scale and
named in a :class:`~captum_mamba.metrics.BadNumberWarning`; a signal with NaN or inf
is refused.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from captum_mamba.metrics.checks import describe, warn_bad_numbers
from captum_mamba.metrics.signals import group_relevance, window_relevance
from captum_mamba.visualization._colors import (
    DEFAULT_CMAP,
    NONFINITE_FACE,
    as_array,
    get_cmap,
    relevance_colors,
    symmetric_limit,
    zero_centred_norm,
)
from captum_mamba.visualization._html import HEATMAP_CSS, hex_colour, legend_html


def _pair(signal: ArrayLike, relevance: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The ``(time, channels)`` signal and relevance (a batch of one is accepted)."""
    x, r = as_array(signal, "signal"), as_array(relevance, "relevance")
    x = x[0] if x.ndim == 3 and x.shape[0] == 1 else x
    r = r[0] if r.ndim == 3 and r.shape[0] == 1 else r
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"signal has shape {x.shape}; expected (time, channels)")
    if r.shape != x.shape:
        raise ValueError(
            f"relevance has shape {r.shape} but the signal {x.shape}; pass one relevance "
            "per time step and channel (the attribution of the signal itself)"
        )
    if not np.isfinite(x).all():
        raise ValueError("signal contains NaN or inf; only finite signals can be drawn")
    _warn_nonfinite(r, "signal view")
    return x, r


def _warn_nonfinite(relevance: np.ndarray, view: str) -> None:
    bad = np.argwhere(~np.isfinite(relevance))
    if bad.size:
        cells = describe([f"(t={t}, c={c})" for t, c in bad.tolist()])
        warn_bad_numbers(
            f"{view}: NaN or inf relevance at {cells}; drawn grey, left out of the colour scale"
        )


def _names(names: Sequence[str] | None, channels: int) -> list[str]:
    if names is None:
        return [f"channel {index}" for index in range(channels)]
    names = [str(name) for name in names]
    if len(names) != channels:
        raise ValueError(f"{len(names)} channel names for {channels} channels")
    return names


def _pieces(values: np.ndarray) -> np.ndarray:
    """``(time, 3, 2)`` polylines: from the midpoint with the previous sample, through
    the sample, to the midpoint with the next (ends clipped at the first/last sample)."""
    time = np.arange(len(values), dtype=np.float64)
    before = np.concatenate([values[:1], (values[:-1] + values[1:]) / 2])
    after = np.concatenate([(values[:-1] + values[1:]) / 2, values[-1:]])
    xs = np.stack([np.maximum(time - 0.5, 0), time, np.minimum(time + 0.5, len(values) - 1)], 1)
    ys = np.stack([before, values, after], 1)
    return np.stack([xs, ys], -1)


def signal_relevance_figure(
    signal: ArrayLike,
    relevance: ArrayLike,
    channel_names: Sequence[str] | None = None,
    title: str = "",
    cmap: str | Colormap = DEFAULT_CMAP,
    max_abs: float | None = None,
    linewidth: float = 2.0,
) -> Figure:
    """One lane per channel: the signal coloured by its relevance.

    Args:
        signal (ArrayLike): ``(time, channels)`` signal (a batch of one is accepted).
        relevance (ArrayLike): relevance of the same shape.
        channel_names (sequence of str, optional): a name per channel. Default: None
            (``"channel 0"``, ...).
        title (str, optional): figure title. Default: "".
        cmap (str or Colormap, optional): diverging colour map. Default: ``"bwr"``.
        max_abs (float, optional): positive colour limit shared by every lane.
            Default: None (largest finite ``|R|``).
        linewidth (float, optional): line width. Default: 2.

    Returns:
        matplotlib.figure.Figure: the lanes (top to bottom in channel order) and a
        colour bar.

    Examples::

        >>> figure = signal_relevance_figure(x[0], relevance[0], ["acc x", "acc y"])
        >>> figure.savefig("lanes.png")
    """
    x, r = _pair(signal, relevance)
    time, channels = x.shape
    names = _names(channel_names, channels)
    limit = symmetric_limit(r, max_abs)
    figure = Figure(figsize=(8.0, 0.9 * channels + 0.8), layout="constrained")
    axes = figure.subplots(channels, 1, sharex=True, squeeze=False)[:, 0]
    for channel, ax in enumerate(axes):
        colours = relevance_colors(r[:, channel], limit, cmap)
        ax.add_collection(LineCollection(_pieces(x[:, channel]), colors=colours, lw=linewidth))
        ax.plot(np.arange(time), x[:, channel], color="#999999", lw=0.5, zorder=0)
        low, high = float(x[:, channel].min()), float(x[:, channel].max())
        pad = 0.1 * (high - low) or 1.0
        ax.set_ylim(low - pad, high + pad)
        ax.set_xlim(0, max(time - 1, 1))
        ax.set_ylabel(names[channel], rotation=0, ha="right", va="center", fontsize="small")
        ax.set_yticks([])
    axes[-1].set_xlabel("time step")
    scale = ScalarMappable(norm=zero_centred_norm(limit), cmap=get_cmap(cmap))
    figure.colorbar(scale, ax=list(axes), fraction=0.03, pad=0.01, label="relevance")
    if title:
        figure.suptitle(title)
    return figure


def aggregate_grid(
    relevance: ArrayLike,
    window: int = 1,
    groups: Mapping[str, Sequence[int]] | None = None,
    channel_names: Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Relevance summed into time windows and channel groups, as a ``(rows, windows)``
    grid (rows are channels, or groups when given).

    Args:
        relevance (ArrayLike): ``(time, channels)`` relevance.
        window (int, optional): time steps per column. Default: 1.
        groups (Mapping, optional): group name -> channel indices. Default: None.
        channel_names (sequence of str, optional): row names without groups.
            Default: None.

    Returns:
        tuple: the row names and the ``(rows, ceil(time / window))`` sums.
    """
    r = as_array(relevance, "relevance")
    r = r[0] if r.ndim == 3 and r.shape[0] == 1 else r
    if r.ndim != 2 or 0 in r.shape:
        raise ValueError(f"relevance has shape {r.shape}; expected (time, channels)")
    summed = window_relevance(r, window).numpy()
    if groups is None:
        return _names(channel_names, r.shape[1]), summed.T
    names, grouped = group_relevance(summed, groups)
    return names, grouped.numpy().T


def signal_heatmap_figure(
    relevance: ArrayLike,
    channel_names: Sequence[str] | None = None,
    window: int = 1,
    groups: Mapping[str, Sequence[int]] | None = None,
    title: str = "",
    cmap: str | Colormap = DEFAULT_CMAP,
    max_abs: float | None = None,
) -> Figure:
    """Time x channel heatmap of relevance, optionally summed into time windows and
    channel groups (sums keep the total).

    Args:
        relevance (ArrayLike): ``(time, channels)`` relevance (a batch of one is
            accepted).
        channel_names (sequence of str, optional): a name per channel (without
            groups). Default: None.
        window (int, optional): time steps per column. Default: 1.
        groups (Mapping, optional): group name -> channel indices, e.g.
            ``{"accelerometer": [0, 1, 2], "gyroscope": [3, 4, 5]}``. Default: None.
        title (str, optional): axes title. Default: "".
        cmap (str or Colormap, optional): diverging colour map. Default: ``"bwr"``.
        max_abs (float, optional): positive colour limit. Default: None.

    Returns:
        matplotlib.figure.Figure: the heatmap with a colour bar.

    Examples::

        >>> signal_heatmap_figure(relevance[0], window=10, groups=SENSOR_GROUPS)
    """
    names, grid = aggregate_grid(relevance, window, groups, channel_names)
    _warn_nonfinite(grid.T, "signal heatmap")
    limit = symmetric_limit(grid, max_abs)
    figure = Figure(figsize=(8.0, 0.35 * len(names) + 1.4), layout="constrained")
    ax = figure.add_subplot()
    shown = ax.imshow(
        np.ma.masked_invalid(grid),
        aspect="auto",
        interpolation="nearest",
        cmap=get_cmap(cmap).with_extremes(bad=NONFINITE_FACE),
        norm=zero_centred_norm(limit),
        extent=(-0.5 * window, (grid.shape[1] - 0.5) * window, len(names) - 0.5, -0.5),
    )
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("time step" if window == 1 else f"time step (windows of {window})")
    figure.colorbar(shown, ax=ax, label="relevance", fraction=0.03, pad=0.01)
    ax.set_title(title)
    return figure


_LANE_STYLE = """
.cm-signal svg { display: block; }
.cm-signal .cm-label { vertical-align: middle; }
"""


class SignalView:
    r"""Signal lanes as HTML (inline SVG): shown by Jupyter, saved as a standalone file.

    Args:
        signal (ArrayLike): ``(time, channels)`` signal (a batch of one is accepted).
        relevance (ArrayLike): relevance of the same shape.
        channel_names (sequence of str, optional): a name per channel. Default: None.
        title (str, optional): heading. Default: "".
        cmap (str or Colormap, optional): diverging colour map. Default: ``"bwr"``.
        max_abs (float, optional): positive colour limit. Default: None.
        width (int, optional): lane width in pixels. Default: 640.
        height (int, optional): lane height in pixels. Default: 44.

    Examples::

        >>> SignalView(x[0], relevance[0], ["acc x", "acc y", "acc z"]).save("view.html")
    """

    def __init__(
        self,
        signal: ArrayLike,
        relevance: ArrayLike,
        channel_names: Sequence[str] | None = None,
        title: str = "",
        cmap: str | Colormap = DEFAULT_CMAP,
        max_abs: float | None = None,
        width: int = 640,
        height: int = 44,
    ) -> None:
        self.signal, self.relevance = _pair(signal, relevance)
        self.channel_names = _names(channel_names, self.signal.shape[1])
        self.title = str(title)
        self.cmap = get_cmap(cmap)
        self.limit = symmetric_limit(self.relevance, max_abs)
        self.width, self.height = int(width), int(height)

    def _lane(self, channel: int) -> str:
        values = self.signal[:, channel]
        low, high = float(values.min()), float(values.max())
        span = (high - low) or 1.0
        steps = max(len(values) - 1, 1)
        colours = relevance_colors(self.relevance[:, channel], self.limit, self.cmap)
        lines = []
        for t, (piece, rgba) in enumerate(zip(_pieces(values), colours, strict=True)):
            points = " ".join(
                f"{x / steps * (self.width - 4) + 2:.1f},"
                f"{self.height - 3 - (y - low) / span * (self.height - 6):.1f}"
                for x, y in piece
            )
            tip = html.escape(
                f"{self.channel_names[channel]}, t={t}: value {values[t]:+.4g}, "
                f"relevance {self.relevance[t, channel]:+.4g}"
            )
            lines.append(
                f'<polyline points="{points}" stroke="{hex_colour(rgba)}" stroke-width="2.5" '
                f'fill="none"><title>{tip}</title></polyline>'
            )
        return (
            f'<svg width="{self.width}" height="{self.height}" role="img" '
            f'aria-label="{html.escape(self.channel_names[channel])}">{"".join(lines)}</svg>'
        )

    def to_html(self) -> str:
        """HTML fragment (a ``<div>`` with its own ``<style>``), e.g. for a notebook."""
        rows = "".join(
            f'<tr><td class="cm-label">{html.escape(name)}</td><td>{self._lane(channel)}</td></tr>'
            for channel, name in enumerate(self.channel_names)
        )
        heading = f"<h3>{html.escape(self.title)}</h3>" if self.title else ""
        nonfinite = not np.isfinite(self.relevance).all()
        legend = legend_html(self.cmap, f"{-self.limit:.3g}", f"{self.limit:.3g}", nonfinite)
        return (
            f'<div class="cm-heatmap cm-signal"><style>{HEATMAP_CSS}{_LANE_STYLE}</style>'
            f"{heading}<table>{rows}</table>{legend}</div>"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def to_standalone_html(self) -> str:
        """A complete HTML document (no external resources)."""
        title = html.escape(self.title or "Signal relevance")
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{title}</title>\n</head>\n<body>\n{self.to_html()}\n</body>\n</html>\n"
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_standalone_html` to ``path`` (UTF-8) and return the path."""
        path = Path(path)
        path.write_text(self.to_standalone_html(), encoding="utf-8")
        return path

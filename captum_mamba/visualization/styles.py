"""One fixed style (colour, line style, marker) per attribution method, shared by every
plot of methods: the study's curves and conservation panels, the faithfulness and
conservation plots of :mod:`captum_mamba.visualization.plots`, reports and notebooks.

Each method of the package's comparison has its own entry in :data:`METHOD_STYLES`, and
no two entries share a colour; MambaLRP is always the same solid red line with circles.
A name outside the table gets the first style of :data:`EXTRA_STYLES` that no other
method of the same plot uses (:func:`method_styles`), so the lines of one plot never
look alike, however many methods it holds.

Examples::

    >>> styles = method_styles(["MambaLRP", "Saliency", "my method"])
    >>> ax.plot(x, y, label="MambaLRP", **styles["MambaLRP"].line())
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MethodStyle:
    """How one method is drawn.

    Args:
        color (str): a Matplotlib colour (``"#rrggbb"``).
        linestyle (str): ``"-"``, ``"--"``, ``"-."`` or ``":"``.
        marker (str): a Matplotlib marker, drawn on a few points of a line.
    """

    color: str
    linestyle: str
    marker: str

    def line(self, points: int = 0) -> dict[str, Any]:
        """Keyword arguments of ``Axes.plot`` for a line in this style.

        Args:
            points (int, optional): points of the line; with more than 12, markers are
                drawn on about 8 of them. Default: 0 (a marker on every point).

        Returns:
            dict: ``color``, ``linestyle``, ``marker``, ``markersize`` and ``markevery``.
        """
        every = max(1, points // 8) if points > 12 else 1
        return {
            "color": self.color,
            "linestyle": self.linestyle,
            "marker": self.marker,
            "markersize": 5,
            "markevery": every,
        }

    def scatter(self) -> dict[str, Any]:
        """Keyword arguments of ``Axes.scatter`` for points in this style.

        Returns:
            dict: ``color`` and ``marker``.
        """
        return {"color": self.color, "marker": self.marker}


#: The style of every method the package compares (names as in
#: :data:`captum_mamba.apps.methods.ALL_METHODS`); no two share a colour.
METHOD_STYLES: dict[str, MethodStyle] = {
    "MambaLRP": MethodStyle("#d62728", "-", "o"),
    "MambaLRP (CP-LRP attention)": MethodStyle("#ff9896", "--", "o"),
    "LRP (LN-rule only)": MethodStyle("#ff7f0e", "--", "s"),
    "MambaLRP, no rules (GxI)": MethodStyle("#8c564b", "-.", "^"),
    "Gradient x Input": MethodStyle("#9467bd", "-", "v"),
    "Integrated Gradients": MethodStyle("#1f77b4", "-", "D"),
    "SmoothGrad": MethodStyle("#17becf", "--", "P"),
    "Saliency": MethodStyle("#2ca02c", "-", "X"),
    "Attention Rollout": MethodStyle("#bcbd22", "--", "*"),
    "Mamba-Attr": MethodStyle("#e377c2", "-.", "h"),
    "Hidden Attention (last layer)": MethodStyle("#dbdb8d", ":", "*"),
    "LaTIM (l2)": MethodStyle("#ffbb78", "--", "s"),
    "LaTIM (ALTI)": MethodStyle("#98df8a", "-.", "D"),
    "Implicit Attention Rollout": MethodStyle("#c5b0d5", "--", "p"),
    "Implicit Attention (gradient-weighted)": MethodStyle("#f7b6d2", "-", "p"),
    "Random": MethodStyle("#7f7f7f", ":", "x"),
    "Recency": MethodStyle("#000000", ":", "+"),
    "Read position, then random": MethodStyle("#aec7e8", ":", "d"),
}

_EXTRA_COLORS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#31a354")
_EXTRA_LINES = ("-", "--", "-.", ":")
_EXTRA_MARKERS = ("<", ">", "p", "H", "8", "1", "2")

#: Styles of methods outside :data:`METHOD_STYLES`, in the order they are handed out:
#: 28 colour and line-style pairs, none in the table.
EXTRA_STYLES: tuple[MethodStyle, ...] = tuple(
    MethodStyle(color, line, _EXTRA_MARKERS[i])
    for line, (i, color) in itertools.product(_EXTRA_LINES, enumerate(_EXTRA_COLORS))
)


def method_style(name: str) -> MethodStyle:
    """The fixed style of a method of :data:`METHOD_STYLES` (matched in any case).

    Args:
        name (str): the method's name, e.g. ``"MambaLRP"``.

    Returns:
        MethodStyle: its style, or the first of :data:`EXTRA_STYLES` for another name
        (use :func:`method_styles` to draw several such methods in one plot).
    """
    for known, style in METHOD_STYLES.items():
        if known.lower() == str(name).strip().lower():
            return style
    return EXTRA_STYLES[0]


def method_styles(names: Iterable[Any]) -> dict[Any, MethodStyle]:
    """Distinct styles for the methods of one plot: each method of
    :data:`METHOD_STYLES` its own, the others the unused :data:`EXTRA_STYLES` in turn
    (more than 28 others in one plot repeat them).

    Args:
        names (iterable): the methods' names (the legend entries), in plot order.

    Returns:
        dict: name -> :class:`MethodStyle`.
    """
    names = list(dict.fromkeys(names))
    styles = {}
    spare = 0
    for name in names:
        known = [s for k, s in METHOD_STYLES.items() if k.lower() == str(name).strip().lower()]
        if known:
            styles[name] = known[0]
        else:
            styles[name] = EXTRA_STYLES[spare % len(EXTRA_STYLES)]
            spare += 1
    return styles

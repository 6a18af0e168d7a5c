"""Visualisation: HTML pieces shared by the text and signal heatmaps (style sheet,
colour bar legend, the non-finite token style)."""

from __future__ import annotations

import html

import numpy as np
from matplotlib.colors import Colormap

from captum_mamba.visualization._colors import NONFINITE_EDGE, NONFINITE_FACE, NONFINITE_NOTE

HEATMAP_CSS = """
.cm-heatmap { font-family: system-ui, sans-serif; font-size: 15px; line-height: 1.9; }
.cm-heatmap table { border-collapse: collapse; }
.cm-heatmap td { vertical-align: top; padding: 4px 8px; border-bottom: 1px solid #ddd; }
.cm-heatmap .cm-group { font-weight: 600; padding-top: 10px; }
.cm-heatmap .cm-label { color: #444; white-space: nowrap; }
.cm-heatmap .cm-text { white-space: pre-wrap; }
.cm-heatmap .cm-tok { padding: 1px 1px; border-radius: 3px; }
.cm-heatmap .cm-legend { display: flex; align-items: center; gap: 6px; font-size: 12px;
  color: #444; margin-top: 6px; }
.cm-heatmap .cm-bar { width: 160px; height: 10px; border: 1px solid #aaa; }
"""
"""Style sheet of the HTML heatmaps (tokens, legend, table rows)."""


def hex_colour(rgba: np.ndarray) -> str:
    """``"#rrggbb"`` of an RGBA colour with channels in [0, 1]."""
    red, green, blue = (round(float(c) * 255) for c in rgba[:3])
    return f"#{red:02x}{green:02x}{blue:02x}"


NONFINITE_CSS = (
    f"background:repeating-linear-gradient(135deg, {NONFINITE_FACE} 0 3px, "
    f"{NONFINITE_EDGE} 3px 4px);outline:1px dashed {NONFINITE_EDGE};color:#000"
)
"""Inline style of a token whose relevance is NaN or inf (grey, hatched, outlined)."""


def legend_html(cmap: Colormap, low: str, high: str, nonfinite: bool) -> str:
    """HTML colour bar from ``low`` to ``high``, with the non-finite note when
    ``nonfinite``."""
    stops = ", ".join(hex_colour(cmap(x)) for x in np.linspace(0.0, 1.0, 9))
    note = (
        f'<span class="cm-tok cm-bad" style="{NONFINITE_CSS}">&nbsp;&nbsp;&nbsp;</span>'
        f'<span class="cm-bad-note">{html.escape(NONFINITE_NOTE)}</span>'
        if nonfinite
        else ""
    )
    return (
        f'<div class="cm-legend"><span>{html.escape(low)}</span>'
        f'<div class="cm-bar" style="background:linear-gradient(to right, {stops})"></div>'
        f"<span>{html.escape(high)}</span>{note}</div>"
    )

"""Visualisation: diverging colours centred on zero, shared by the text and image views."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap, TwoSlopeNorm
from numpy.typing import ArrayLike

DEFAULT_CMAP = "bwr"
"""Blue for negative, white for zero, red for positive relevance (the LRP convention)."""


def as_array(values: ArrayLike) -> np.ndarray:
    """Float64 NumPy copy of a tensor, array or sequence (tensors are detached first)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def symmetric_limit(values: ArrayLike, max_abs: float | None = None) -> float:
    """Colour limit: ``max_abs`` if given, else the largest ``|value|`` (1 if all are zero).

    Args:
        values (ArrayLike): relevances.
        max_abs (float, optional): fixed limit, e.g. to share one scale across views.
            Default: None.

    Returns:
        float: a positive limit ``L``; colours span ``[-L, L]``.
    """
    if max_abs is not None:
        if not max_abs > 0:
            raise ValueError(f"max_abs must be positive, got {max_abs}")
        return float(max_abs)
    array = as_array(values)
    finite = np.abs(array[np.isfinite(array)])
    largest = float(finite.max()) if finite.size else 0.0
    return largest if largest > 0 else 1.0


def zero_centred_norm(limit: float) -> TwoSlopeNorm:
    """Matplotlib norm mapping ``-limit`` to 0, zero to 0.5 and ``limit`` to 1."""
    return TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)


def get_cmap(cmap: str | Colormap) -> Colormap:
    """Colormap from a name or an instance."""
    return colormaps[cmap] if isinstance(cmap, str) else cmap


def relevance_colors(
    values: ArrayLike, limit: float, cmap: str | Colormap = DEFAULT_CMAP
) -> np.ndarray:
    """RGBA colours ``(n, 4)`` in ``[0, 1]`` of relevances on a zero-centred scale.

    Values beyond ``±limit`` get the end colours of the map.
    """
    scaled = np.clip(as_array(values).reshape(-1) / limit, -1.0, 1.0)
    return get_cmap(cmap)(0.5 + 0.5 * np.nan_to_num(scaled))


def readable_text_color(rgba: np.ndarray) -> str:
    """``"black"`` or ``"white"``, whichever reads better on the background ``rgba``."""
    red, green, blue = rgba[:3]
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    return "black" if luminance > 0.45 else "white"

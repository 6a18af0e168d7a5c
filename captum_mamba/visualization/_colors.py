"""Visualisation: diverging colours centred on zero, shared by the text and image views.

Non-finite relevances (NaN, inf) are never given a colour of the scale: they are drawn
in :data:`NONFINITE_FACE` grey with a dark hatch (:data:`NONFINITE_HATCH`), named in a
legend note and a :class:`~captum_mamba.metrics.BadNumberWarning`, and left out of the
colour limits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Colormap, TwoSlopeNorm, to_rgba
from numpy.typing import ArrayLike

from captum_mamba.metrics.checks import as_real_tensor, check_positive, describe

DEFAULT_CMAP = "bwr"
"""Blue for negative, white for zero, red for positive relevance (the LRP convention)."""

NONFINITE_FACE = "#bdbdbd"
"""Background of a token or patch whose relevance is NaN or inf (not on any scale)."""
NONFINITE_EDGE = "#333333"
"""Colour of the hatch and border of such a token or patch."""
NONFINITE_HATCH = "////"
"""Matplotlib hatch of such a token or patch."""
NONFINITE_NOTE = "NaN or inf relevance (grey, hatched; not on the colour scale)"
"""Legend note shown when a view contains non-finite relevances."""


def as_array(values: ArrayLike, name: str = "values") -> np.ndarray:
    """Float64 NumPy copy of a tensor, array or sequence (tensors are detached first).

    Raises:
        TypeError: for complex or non-numeric values.
        ValueError: for ragged sequences.
    """
    return as_real_tensor(values, name).cpu().double().numpy()


def as_vector(values: ArrayLike, name: str, what: str = "token") -> np.ndarray:
    """``values`` as a 1-d float64 array; dimensions of size 1 (e.g. a batch of one)
    are dropped.

    Raises:
        ValueError: if more than one dimension has more than one entry.
    """
    array = as_array(values, name)
    if array.ndim != 1:
        array = array.reshape(-1) if array.size <= 1 else array.squeeze()
    if array.ndim != 1:
        raise ValueError(
            f"{name} has shape {as_array(values, name).shape}; expected one value per {what} "
            "(sum over the hidden dimension first)"
        )
    return array


def nonfinite_positions(values: np.ndarray) -> np.ndarray:
    """Flat indices of the NaN and infinite entries."""
    return np.flatnonzero(~np.isfinite(values))


def format_value(value: float) -> str:
    """``"+1.234"``, ``"nan"``, ``"+inf"``: a relevance for tooltips."""
    return f"{value:+.4g}" if np.isfinite(value) else ("nan" if np.isnan(value) else f"{value:+}")


def symmetric_limit(values: ArrayLike, max_abs: float | None = None) -> float:
    """Colour limit: ``max_abs`` if given, else the largest finite ``|value|`` (1 if
    there is none, or all are zero). NaN and inf never set the limit.

    Args:
        values (ArrayLike): relevances.
        max_abs (float, optional): fixed positive, finite limit, e.g. to share one
            scale across views. Default: None.

    Returns:
        float: a positive limit ``L``; colours span ``[-L, L]``.

    Raises:
        ValueError: if ``max_abs`` is not a positive finite number.
    """
    if max_abs is not None:
        return check_positive(max_abs, "max_abs")
    array = as_array(values, "relevance")
    finite = np.abs(array[np.isfinite(array)])
    largest = float(finite.max()) if finite.size else 0.0
    return largest if largest > 0 else 1.0


def zero_centred_norm(limit: float) -> TwoSlopeNorm:
    """Matplotlib norm mapping ``-limit`` to 0, zero to 0.5 and ``limit`` to 1."""
    return TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)


def get_cmap(cmap: str | Colormap) -> Colormap:
    """Colormap from a name or an instance.

    Raises:
        ValueError: for an unknown name.
        TypeError: for anything but a name or a Colormap.
    """
    if isinstance(cmap, Colormap):
        return cmap
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a colormap name or Colormap, got {type(cmap).__name__}")
    if cmap not in colormaps:
        raise ValueError(f"unknown colormap {cmap!r}; use a Matplotlib name such as 'bwr'")
    return colormaps[cmap]


def relevance_colors(
    values: ArrayLike, limit: float, cmap: str | Colormap = DEFAULT_CMAP
) -> np.ndarray:
    """RGBA colours ``(n, 4)`` in ``[0, 1]`` of relevances on a zero-centred scale.

    Values beyond ``±limit`` get the end colours of the map; NaN and inf get
    :data:`NONFINITE_FACE` (the views add the hatch that marks them).
    """
    array = as_array(values).reshape(-1)
    finite = np.isfinite(array)
    scaled = np.clip(np.where(finite, array, 0.0) / limit, -1.0, 1.0)
    colours = get_cmap(cmap)(0.5 + 0.5 * scaled)
    colours[~finite] = to_rgba(NONFINITE_FACE)
    return colours


def readable_text_color(rgba: np.ndarray) -> str:
    """``"black"`` or ``"white"``, whichever reads better on the background ``rgba``."""
    red, green, blue = rgba[:3]
    luminance = 0.2126 * red + 0.7152 * green + 0.0722 * blue
    return "black" if luminance > 0.45 else "white"


def nonfinite_summary(labelled: list[tuple[str, Any]], what: str = "tokens") -> str:
    """``"row 'LRP' (tokens 3, 5); row 'IG' (tokens 0)"`` for the rows with bad values.

    Args:
        labelled (list of (str, array of int)): a name and the non-finite positions
            of each row that has any.
        what (str, optional): what a position counts. Default: ``"tokens"``.
    """
    parts = [f"{name} ({what} {describe(positions)})" for name, positions in labelled[:4]]
    more = f"; and {len(labelled) - 4} more" if len(labelled) > 4 else ""
    return "; ".join(parts) + more

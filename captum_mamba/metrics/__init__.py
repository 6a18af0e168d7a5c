"""Metrics: faithfulness (input-perturbation curves, Delta A^F) and conservation.

Bad numbers never pass silently: NaN or inf inputs are refused with a one-line error,
and statistics that are undefined on valid data are NaN with a :class:`BadNumberWarning`.
"""

from captum_mamba.metrics.checks import BadNumberWarning
from captum_mamba.metrics.conservation import ConservationStats, conservation_stats, pearson
from captum_mamba.metrics.perturbation import (
    CURVES,
    REPLACEMENTS,
    curve_area,
    delta_area,
    perturbation_curve,
    perturbation_curves,
    relevance_order,
    replacement_embedding,
    resample_curve,
)

__all__ = [
    "CURVES",
    "REPLACEMENTS",
    "BadNumberWarning",
    "ConservationStats",
    "conservation_stats",
    "curve_area",
    "delta_area",
    "pearson",
    "perturbation_curve",
    "perturbation_curves",
    "relevance_order",
    "replacement_embedding",
    "resample_curve",
]

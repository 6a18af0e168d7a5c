"""Metrics: faithfulness (input-perturbation curves, Delta A^F), conservation,
relevance against known evidence positions (ground truth), and the signal metrics (curves
over time windows and channels, localisation).

Bad numbers never pass silently: NaN or inf inputs are refused with a one-line error,
and statistics that are undefined on valid data are NaN with a :class:`BadNumberWarning`.
"""

from captum_mamba.metrics.checks import BadNumberWarning
from captum_mamba.metrics.conservation import ConservationStats, conservation_stats, pearson
from captum_mamba.metrics.ground_truth import (
    EVIDENCE_METRICS,
    EvidenceScores,
    alignment_error_rate,
    evidence_scores,
)
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
from captum_mamba.metrics.signals import (
    SIGNAL_REPLACEMENTS,
    UNITS,
    evidence_share,
    group_relevance,
    signal_perturbation_curve,
    signal_perturbation_curves,
    unit_masks,
    unit_scores,
    window_relevance,
)
from captum_mamba.metrics.statistics import mean_sem

__all__ = [
    "CURVES",
    "EVIDENCE_METRICS",
    "REPLACEMENTS",
    "SIGNAL_REPLACEMENTS",
    "UNITS",
    "BadNumberWarning",
    "ConservationStats",
    "EvidenceScores",
    "alignment_error_rate",
    "conservation_stats",
    "curve_area",
    "delta_area",
    "evidence_scores",
    "evidence_share",
    "group_relevance",
    "mean_sem",
    "pearson",
    "perturbation_curve",
    "perturbation_curves",
    "relevance_order",
    "replacement_embedding",
    "resample_curve",
    "signal_perturbation_curve",
    "signal_perturbation_curves",
    "unit_masks",
    "unit_scores",
    "window_relevance",
]

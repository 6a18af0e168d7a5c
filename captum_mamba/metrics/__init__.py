"""Metrics: faithfulness (input-perturbation curves, Delta A^F), conservation, and
relevance against known evidence positions (ground truth).

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
    mean_sem,
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

__all__ = [
    "CURVES",
    "EVIDENCE_METRICS",
    "REPLACEMENTS",
    "BadNumberWarning",
    "ConservationStats",
    "EvidenceScores",
    "alignment_error_rate",
    "conservation_stats",
    "curve_area",
    "delta_area",
    "evidence_scores",
    "mean_sem",
    "pearson",
    "perturbation_curve",
    "perturbation_curves",
    "relevance_order",
    "replacement_embedding",
    "resample_curve",
]

r"""Metrics: token relevance against known evidence positions.

On a task with a known answer (copy, associative recall, a planted evidence token) each
explained output has a set of **evidence positions**, the context positions that hold
the information the output needs. These metrics score one relevance map ``(seq,)``
against them:

- **hit@1**: 1 if the best-ranked candidate position is evidence, else 0;
- **reciprocal rank**: ``1 / r`` for the rank ``r`` (from 1) of the best-ranked
  evidence position (its mean over examples is the mean reciprocal rank, MRR);
- **AUC**: the area under the ROC curve of the scores as a detector of evidence
  positions, i.e. the probability that an evidence position scores above a
  non-evidence position (the Mann-Whitney statistic; ties count one half);
- **average precision**: the mean, over the evidence positions, of the precision among
  the positions ranked at or above each of them.

Conventions, stated because they decide verdicts:

- **Which positions compete** (``candidates``): by default every position of the map;
  pass a boolean mask to leave some out, e.g. the current token (the position whose
  output is explained, which a recurrent model reads last and most directly) when the
  evidence lies elsewhere.
- **Sign**: scores rank as given (higher = more relevant). A signed relevance ranks
  negative evidence last; pass ``absolute=True`` to rank by magnitude instead.
- **Ties** count against the explanation in the rank metrics: an evidence position
  tied with ``n`` non-evidence positions ranks below all of them, so a constant map
  earns no hit and no reciprocal rank above ``1 / L`` (pessimistic ranks). AUC counts
  ties one half, as the ROC curve of tied scores does.

:func:`alignment_error_rate` scores alignments (sets of ``(target, source)`` links) as
in word alignment: ``AER = 1 - (|A & S| + |A & P|) / (|A| + |S|)`` for a predicted
alignment ``A``, sure links ``S`` and possible links ``P`` (``S`` is part of ``P``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from numpy.typing import ArrayLike
from torch import Tensor

from captum_mamba.metrics.checks import as_real_tensor, describe, nonfinite_rows

#: The per-map metrics of :func:`evidence_scores`, in table order.
EVIDENCE_METRICS: tuple[str, ...] = ("hit@1", "rr", "auc", "ap")


def _check(
    scores: Tensor | ArrayLike,
    evidence: Iterable[int],
    candidates: Tensor | ArrayLike | None,
    absolute: bool,
) -> tuple[Tensor, Tensor]:
    """The candidates' scores and evidence flags (1-d tensors), checked."""
    scores = as_real_tensor(scores, "scores").double()
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(f"scores have shape {tuple(scores.shape)}; expected (seq,)")
    bad = nonfinite_rows(scores)
    if bad.numel():
        raise ValueError(f"scores contain NaN or inf at positions {describe(bad)}")
    length = scores.numel()
    flags = torch.zeros(length, dtype=torch.bool)
    for position in evidence:
        position = int(position)
        if not -length <= position < length:
            raise ValueError(f"evidence position {position} is outside a map of {length}")
        flags[position] = True
    keep = torch.ones(length, dtype=torch.bool)
    if candidates is not None:
        keep = torch.as_tensor(candidates)
        if keep.dtype != torch.bool or keep.shape != (length,):
            raise ValueError(
                f"candidates must be a boolean mask of shape ({length},), got "
                f"{keep.dtype} {tuple(keep.shape)}"
            )
    if not bool((flags & keep).any()):
        raise ValueError("no evidence position is among the candidates")
    if bool((flags | ~keep).all()):
        raise ValueError("every candidate is evidence: the ranking metrics are undefined")
    values = scores.abs() if absolute else scores
    return values[keep], flags[keep]


@dataclass(frozen=True)
class EvidenceScores:
    """The metrics of one relevance map against its evidence positions.

    Args:
        hit_at_1 (float): 1.0 if the best-ranked candidate is evidence, else 0.0.
        reciprocal_rank (float): ``1 / rank`` of the best-ranked evidence position.
        auc (float): ROC AUC of the scores as an evidence detector.
        average_precision (float): average precision of the ranking.
        top (int): the best-ranked candidate position (index into the full map).
    """

    hit_at_1: float
    reciprocal_rank: float
    auc: float
    average_precision: float
    top: int

    def as_dict(self) -> dict[str, float]:
        """``{"hit@1": ..., "rr": ..., "auc": ..., "ap": ...}``."""
        return {
            "hit@1": self.hit_at_1,
            "rr": self.reciprocal_rank,
            "auc": self.auc,
            "ap": self.average_precision,
        }


def evidence_scores(
    scores: Tensor | ArrayLike,
    evidence: Iterable[int],
    candidates: Tensor | ArrayLike | None = None,
    absolute: bool = False,
) -> EvidenceScores:
    r"""hit@1, reciprocal rank, AUC and average precision of one relevance map.

    Args:
        scores (Tensor or ArrayLike): ``(seq,)`` token relevance (higher = more
            relevant).
        evidence (iterable of int): the evidence positions (negative indices count
            from the end).
        candidates (Tensor or ArrayLike, optional): ``(seq,)`` boolean mask of the
            positions that compete; the others are left out of every metric.
            Default: None (every position).
        absolute (bool, optional): rank by ``|score|``. Default: False.

    Returns:
        EvidenceScores: the four metrics and the top-ranked position.

    Raises:
        ValueError: for a map that is not 1-d or holds NaN or inf, an evidence
            position outside the map, no evidence among the candidates, or no
            non-evidence candidate.

    Examples::

        >>> evidence_scores(torch.tensor([0.1, 0.9, 0.5]), evidence=[2]).as_dict()
        {'hit@1': 0.0, 'rr': 0.5, 'auc': 0.5, 'ap': 0.5}
    """
    values, flags = _check(scores, evidence, candidates, absolute)
    positive, negative = values[flags], values[~flags]
    # Pessimistic ranks: the k-th best evidence position ranks below every
    # non-evidence candidate scoring at least as high.
    positive = torch.sort(positive, descending=True).values
    count = torch.arange(1, positive.numel() + 1, dtype=torch.float64)
    ranks = count + (negative[None, :] >= positive[:, None]).sum(1)
    precision = count / ranks
    greater = (positive[:, None] > negative[None, :]).double().sum()
    ties = (positive[:, None] == negative[None, :]).double().sum()
    auc = (greater + 0.5 * ties) / (positive.numel() * negative.numel())
    best = int(ranks[0])
    keep_index = (
        torch.arange(as_real_tensor(scores, "scores").numel())
        if candidates is None
        else torch.nonzero(torch.as_tensor(candidates)).reshape(-1)
    )
    top_score = values.max()
    tied = torch.nonzero(values == top_score).reshape(-1)
    non_evidence_top = [int(i) for i in tied if not bool(flags[i])]
    top = non_evidence_top[0] if non_evidence_top else int(tied[0])
    return EvidenceScores(
        hit_at_1=float(best == 1),
        reciprocal_rank=1.0 / best,
        auc=float(auc),
        average_precision=float(precision.mean()),
        top=int(keep_index[top]),
    )


def alignment_error_rate(
    predicted: Iterable[tuple[int, int]],
    sure: Iterable[tuple[int, int]],
    possible: Iterable[tuple[int, int]] | None = None,
) -> float:
    r"""Alignment error rate ``1 - (|A & S| + |A & P|) / (|A| + |S|)``.

    Args:
        predicted (iterable of (int, int)): the predicted links ``A``, e.g.
            ``(target position, top-ranked source position)`` per explained target.
        sure (iterable of (int, int)): the sure links ``S``.
        possible (iterable of (int, int), optional): the possible links ``P``;
            the sure links are always possible. Default: None (``P = S``).

    Returns:
        float: AER in ``[0, 1]`` (0 for a perfect alignment).

    Raises:
        ValueError: if both ``A`` and ``S`` are empty.

    Examples::

        >>> alignment_error_rate([(5, 0), (6, 2)], sure=[(5, 0), (6, 1)])
        0.5
    """
    links = {tuple(link) for link in predicted}
    sure_links = {tuple(link) for link in sure}
    possible_links = sure_links | {tuple(link) for link in (possible or ())}
    if not links and not sure_links:
        raise ValueError("an alignment error rate needs predicted or sure links")
    matched = len(links & sure_links) + len(links & possible_links)
    return 1.0 - matched / (len(links) + len(sure_links))

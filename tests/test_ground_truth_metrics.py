"""Ground-truth metrics on hand-made relevance maps whose values are worked out by hand
(in the comments), plus a brute-force check of AUC and average precision on random maps."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from captum_mamba.metrics import mean_sem
from captum_mamba.metrics.ground_truth import alignment_error_rate, evidence_scores


def values(scores, evidence, **kwargs):
    return evidence_scores(torch.tensor(scores), evidence, **kwargs).as_dict()


def test_one_evidence_position_ranked_second():
    # ranking: position 1 (0.9), 2 (0.5), 0 (0.1); evidence 2 ranks 2nd; it beats one of
    # the two other positions (AUC 1/2); precision at its rank 1/2.
    assert values([0.1, 0.9, 0.5], [2]) == {"hit@1": 0.0, "rr": 0.5, "auc": 0.5, "ap": 0.5}


def test_two_evidence_positions_first_and_last():
    # ranking 0, 2, 1, 3; evidence 0 and 3 rank 1st and 4th: AP = (1/1 + 2/4) / 2;
    # pairs (evidence, other): 3>1, 3>2, 0<1, 0<2 -> AUC 2/4.
    assert values([3.0, 1.0, 2.0, 0.0], [0, 3]) == {
        "hit@1": 1.0,
        "rr": 1.0,
        "auc": 0.5,
        "ap": 0.75,
    }


def test_ties_count_against_the_explanation():
    # a constant map: the evidence ranks below the three tied others (rank 4), AUC 1/2
    assert values([1.0, 1.0, 1.0, 1.0], [1]) == {"hit@1": 0.0, "rr": 0.25, "auc": 0.5, "ap": 0.25}
    # two evidence positions tied with each other at the top lose nothing
    assert values([2.0, 2.0, 1.0], [0, 1]) == {"hit@1": 1.0, "rr": 1.0, "auc": 1.0, "ap": 1.0}
    # evidence tied with one other at the top: rank 2; AUC = (1 + 1/2) / 2
    assert values([2.0, 2.0, 1.0], [1]) == {"hit@1": 0.0, "rr": 0.5, "auc": 0.75, "ap": 0.5}


def test_the_current_token_set_aside():
    scores = [0.1, 0.7, 0.3, 0.9]
    # all positions compete: position 3 outranks the evidence (rank 2, beats 2 of 3)
    assert values(scores, [1]) == {"hit@1": 0.0, "rr": 0.5, "auc": pytest.approx(2 / 3), "ap": 0.5}
    # position 3 left out: the evidence is first
    keep = torch.tensor([True, True, True, False])
    assert values(scores, [1], candidates=keep) == {"hit@1": 1.0, "rr": 1.0, "auc": 1.0, "ap": 1.0}
    assert evidence_scores(torch.tensor(scores), [1]).top == 3
    assert evidence_scores(torch.tensor(scores), [1], candidates=keep).top == 1


def test_sign_and_magnitude():
    # signed: -0.9 ranks last (rank 3, beats nothing); by magnitude it ranks first
    assert values([-0.9, 0.1, 0.5], [0]) == {
        "hit@1": 0.0,
        "rr": pytest.approx(1 / 3),
        "auc": 0.0,
        "ap": pytest.approx(1 / 3),
    }
    assert values([-0.9, 0.1, 0.5], [0], absolute=True) == {
        "hit@1": 1.0,
        "rr": 1.0,
        "auc": 1.0,
        "ap": 1.0,
    }
    # negative indices count from the end
    assert values([0.1, 0.9, 0.5], [-1]) == values([0.1, 0.9, 0.5], [2])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_average_precision_by_enumeration(seed):
    """AUC as the fraction of (evidence, other) pairs ordered right, AP as the mean
    precision at each evidence position's rank, counted with explicit loops."""
    generator = torch.Generator().manual_seed(seed)
    length = 12
    scores = torch.randn(length, generator=generator, dtype=torch.float64)
    evidence = torch.randperm(length, generator=generator)[:3].tolist()
    others = [i for i in range(length) if i not in evidence]
    pairs = list(itertools.product(evidence, others))
    auc = sum(float(scores[e] > scores[o]) for e, o in pairs) / len(pairs)
    ranking = sorted(range(length), key=lambda i: -float(scores[i]))
    precisions, found = [], 0
    for rank, position in enumerate(ranking, start=1):
        if position in evidence:
            found += 1
            precisions.append(found / rank)
    first = min(ranking.index(e) for e in evidence) + 1
    result = evidence_scores(scores, evidence)
    assert result.auc == pytest.approx(auc, abs=1e-12)
    assert result.average_precision == pytest.approx(sum(precisions) / 3, abs=1e-12)
    assert result.reciprocal_rank == pytest.approx(1 / first)
    assert result.hit_at_1 == float(first == 1)
    assert result.top == ranking[0]


def test_refusals():
    with pytest.raises(ValueError, match="outside"):
        evidence_scores(torch.zeros(3), [3])
    with pytest.raises(ValueError, match="NaN"):
        evidence_scores(torch.tensor([0.0, math.nan]), [0])
    with pytest.raises(ValueError, match="every candidate"):
        evidence_scores(torch.zeros(2), [0, 1])
    with pytest.raises(ValueError, match="among the candidates"):
        evidence_scores(torch.zeros(3), [2], candidates=torch.tensor([True, True, False]))
    with pytest.raises(ValueError, match="boolean mask"):
        evidence_scores(torch.zeros(3), [0], candidates=torch.ones(3))


def test_alignment_error_rate():
    # A = {(5,0), (6,2)}, S = {(5,0), (6,1)}: |A&S| = |A&P| = 1 -> 1 - 2/4
    assert alignment_error_rate([(5, 0), (6, 2)], [(5, 0), (6, 1)]) == 0.5
    # (6,2) possible: |A&P| = 2 -> 1 - 3/4
    assert alignment_error_rate([(5, 0), (6, 2)], [(5, 0), (6, 1)], [(6, 2)]) == 0.25
    assert alignment_error_rate([(1, 0)], [(1, 0)]) == 0.0
    assert alignment_error_rate([], [(1, 0)]) == 1.0
    with pytest.raises(ValueError):
        alignment_error_rate([], [])


def test_mean_sem():
    # values 1, 2, 3: sample standard deviation 1, s.e. 1 / sqrt(3)
    assert mean_sem([1.0, 2.0, 3.0]) == (2.0, pytest.approx(1 / math.sqrt(3)))
    assert math.isnan(mean_sem([4.0])[1])
    with pytest.raises(ValueError):
        mean_sem([])

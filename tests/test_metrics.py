"""Perturbation curves, areas and conservation statistics on hand-computed cases.

The model is linear over token embeddings, ``f(x) = sum_t w . x_t``, so the exact
relevance of token ``t`` (zero baseline) is ``r_t = w . x_t`` and removing a set of
tokens (zero replacement) lowers ``f`` by exactly the sum of their relevances.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from captum_mamba.metrics import (
    BadNumberWarning,
    conservation_stats,
    curve_area,
    delta_area,
    pearson,
    perturbation_curve,
    perturbation_curves,
    relevance_order,
    replacement_embedding,
    resample_curve,
)


def linear_model(weight: Tensor):
    """Two-class model: logit 0 = sum_t w . x_t, logit 1 = -logit 0."""

    def forward(embeds: Tensor) -> Tensor:
        score = (embeds * weight).sum(dim=(1, 2))
        return torch.stack([score, -score], dim=1)

    return forward


@pytest.fixture
def case() -> tuple:
    weight = torch.tensor([1.0, 2.0], dtype=torch.float64)
    # Token relevances w . x_t = [3, -1, 5, 0].
    embeds = torch.tensor([[[1.0, 1.0], [1.0, -1.0], [1.0, 2.0], [0.0, 0.0]]], dtype=torch.float64)
    return linear_model(weight), embeds, torch.tensor([[3.0, -1.0, 5.0, 0.0]], dtype=torch.float64)


def test_morf_lerf_and_insertion_curves_by_hand(case) -> None:
    forward, embeds, relevance = case
    zero = torch.zeros(2, dtype=torch.float64)
    # MoRF removes 5, 3, 0, -1 in turn from the total 7.
    morf = perturbation_curve(forward, embeds, relevance, 0, zero, "morf")
    torch.testing.assert_close(morf, torch.tensor([[7.0, 2.0, -1.0, -1.0, 0.0]]).double())
    # LeRF removes -1, 0, 3, 5.
    lerf = perturbation_curve(forward, embeds, relevance, 0, zero, "lerf")
    torch.testing.assert_close(lerf, torch.tensor([[7.0, 8.0, 8.0, 5.0, 0.0]]).double())
    # Insertion keeps 5, then 5 + 3, then + 0, then + (-1).
    insertion = perturbation_curve(forward, embeds, relevance, 0, zero, "insertion")
    torch.testing.assert_close(insertion, torch.tensor([[0.0, 5.0, 8.0, 8.0, 7.0]]).double())
    # Class 1 is the negated logit.
    negated = perturbation_curve(forward, embeds, relevance, 1, zero, "morf")
    torch.testing.assert_close(negated, -morf)


def test_areas_and_delta_by_hand(case) -> None:
    forward, embeds, relevance = case
    curves = perturbation_curves(forward, embeds, relevance, 0, torch.zeros(2).double())
    # Trapezoids with step 1/4: MoRF (7/2 + 2 - 1 - 1 + 0/2) / 4 = 0.875.
    assert float(curve_area(curves["morf"])) == pytest.approx(0.875)
    # LeRF (7/2 + 8 + 8 + 5 + 0) / 4 = 6.125.
    assert float(curve_area(curves["lerf"])) == pytest.approx(6.125)
    assert float(delta_area(curves["morf"], curves["lerf"])) == pytest.approx(5.25)
    # Insertion (0 + 5 + 8 + 8 + 7/2) / 4 = 6.125.
    assert float(curve_area(curves["insertion"])) == pytest.approx(6.125)


def test_true_relevance_beats_reversed_and_random(case) -> None:
    forward, embeds, relevance = case
    zero = torch.zeros(2).double()

    def score(r: Tensor) -> float:
        c = perturbation_curves(forward, embeds, r, 0, zero)
        return float(delta_area(c["morf"], c["lerf"]))

    best = score(relevance)
    assert best > score(-relevance)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        assert best >= score(torch.rand(1, 4, generator=generator, dtype=torch.float64))


def test_insertion_is_lerf_read_backwards() -> None:
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(3, generator=generator, dtype=torch.float64)
    embeds = torch.randn(2, 6, 3, generator=generator, dtype=torch.float64)
    scores = torch.randn(2, 6, generator=generator, dtype=torch.float64)
    filler = torch.randn(3, generator=generator, dtype=torch.float64)
    forward = linear_model(weight)
    insertion = perturbation_curve(forward, embeds, scores, 0, filler, "insertion")
    lerf = perturbation_curve(forward, embeds, scores, 0, filler, "lerf")
    torch.testing.assert_close(insertion, lerf.flip(-1))


def test_ties_are_broken_by_position() -> None:
    scores = torch.tensor([1.0, 2.0, 1.0, 2.0])
    assert relevance_order(scores, most_relevant_first=True).tolist() == [1, 3, 0, 2]
    assert relevance_order(scores, most_relevant_first=False).tolist() == [0, 2, 1, 3]


def test_replacements() -> None:
    embedding = nn.Embedding(3, 2)
    with torch.no_grad():
        embedding.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]]))
    assert replacement_embedding(embedding, "zero").tolist() == [0.0, 0.0]
    assert replacement_embedding(embedding, "mean").tolist() == [3.0, 5.0]
    assert replacement_embedding(embedding, "token", 1).tolist() == [3.0, 4.0]
    with pytest.raises(ValueError, match="token_id"):
        replacement_embedding(embedding, "token")
    with pytest.raises(ValueError, match="unknown replacement"):
        replacement_embedding(embedding, "noise")


def test_non_zero_replacement_by_hand(case) -> None:
    forward, embeds, relevance = case
    filler = torch.tensor([1.0, 1.0], dtype=torch.float64)  # w . filler = 3
    morf = perturbation_curve(forward, embeds, relevance, 0, filler, "morf")
    # Each removed token's contribution r_t becomes 3: 7, 7-5+3, 5-3+3, 5-0+3, 8+1+3.
    torch.testing.assert_close(morf, torch.tensor([[7.0, 5.0, 5.0, 8.0, 12.0]]).double())


def test_batches_targets_and_forward_args() -> None:
    weight = torch.tensor([1.0], dtype=torch.float64)
    embeds = torch.tensor([[[1.0], [2.0]], [[3.0], [-1.0]]], dtype=torch.float64)
    scale = torch.tensor([1.0, 10.0], dtype=torch.float64)

    def forward(x: Tensor, factor: Tensor) -> Tensor:
        return linear_model(weight)(x) * factor[:, None]

    scores = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    curve = perturbation_curve(
        forward, embeds, scores, [0, 1], torch.zeros(1).double(), "morf", (scale,), batch_size=2
    )
    torch.testing.assert_close(
        curve, torch.tensor([[3.0, 1.0, 0.0], [-20.0, 10.0, 0.0]], dtype=torch.float64)
    )


def test_resample_curve() -> None:
    curve = torch.tensor([0.0, 2.0, 4.0, 10.0])  # at fractions 0, 1/3, 2/3, 1
    points = torch.tensor([0.0, 1 / 6, 0.5, 5 / 6, 1.0])
    torch.testing.assert_close(
        resample_curve(curve, points), torch.tensor([0.0, 1.0, 3.0, 7.0, 10.0])
    )
    # A single point has no fraction axis; it used to be broadcast silently.
    with pytest.raises(ValueError, match="at least 2 points"):
        resample_curve(torch.tensor([4.0]), points)


def test_conservation_stats_by_hand() -> None:
    outputs = torch.tensor([1.0, 2.0, 4.0])
    sums = torch.tensor([1.5, 2.0, 2.0])
    stats = conservation_stats(sums, outputs)
    assert stats.mean_relative_error == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    assert stats.median_relative_error == pytest.approx(0.5)
    assert stats.max_absolute_error == pytest.approx(2.0)
    # Pearson by hand: deviations (-4/3, -1/3, 5/3) and (-1/3, 1/6, 1/6).
    da, db = [-4 / 3, -1 / 3, 5 / 3], [-1 / 3, 1 / 6, 1 / 6]
    expected = sum(a * b for a, b in zip(da, db, strict=True)) / math.sqrt(
        sum(a * a for a in da) * sum(b * b for b in db)
    )
    assert stats.correlation == pytest.approx(expected)
    assert conservation_stats(2 * outputs, outputs).correlation == pytest.approx(1.0)
    with pytest.warns(BadNumberWarning, match="constant"):
        assert math.isnan(pearson(torch.ones(3), outputs))


def test_curve_area_over_given_fractions_is_the_mean_height() -> None:
    curves = torch.tensor([[4.0, 2.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    x = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    # (0.5 * (4 + 2) / 2 + 1.5 * (2 + 0) / 2) / (2 - 0) = 1.5; a flat curve: its height
    expected = torch.tensor([1.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(curve_area(curves, x), expected)
    with pytest.raises(ValueError, match="increase strictly"):
        curve_area(curves, [0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="3 curve points but fractions of shape"):
        curve_area(curves, [0.0, 1.0])

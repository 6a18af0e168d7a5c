"""Signal metrics against sequential float64 references written here: unit masks,
window and group sums, deletion/insertion curves over time windows and channels with
every replacement (zero, mean, hold last value, a tensor), localisation and the s.e."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from captum_mamba.metrics import (
    curve_area,
    delta_area,
    evidence_share,
    group_relevance,
    mean_sem,
    signal_perturbation_curve,
    signal_perturbation_curves,
    unit_masks,
    window_relevance,
)


def _model(channels: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(channels, 3, generator=generator, dtype=torch.float64)

    def forward(x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(1, x.shape[1] + 1, dtype=x.dtype)[None, :, None]
        return torch.tanh(x * steps.sqrt()).mean(1) @ weight

    return forward


def _units(time: int, channels: int, unit: str, window: int) -> list[list[tuple[int, int]]]:
    if unit == "channel":
        return [[(t, c) for t in range(time)] for c in range(channels)]
    return [
        [(t, c) for t in range(start, min(start + window, time)) for c in range(channels)]
        for start in range(0, time, window)
    ]


def _reference_curve(forward, x, scores, target, kind, unit, window, replacement):
    """Loop over examples, steps, units and elements."""
    batch, time, channels = x.shape
    units = _units(time, channels, unit, window)
    rows = []
    for b in range(batch):
        sums = [sum(float(scores[b, t, c]) for t, c in cells) for cells in units]
        ranked = sorted(range(len(units)), key=lambda u: (-sums[u], u))
        if kind == "lerf":
            ranked = sorted(range(len(units)), key=lambda u: (sums[u], u))
        row = []
        for k in range(len(units) + 1):
            removed_units = ranked[k:] if kind == "insertion" else ranked[:k]
            removed = {cell for u in removed_units for cell in units[u]}
            y = x[b].clone()
            for t in range(time):
                for c in range(channels):
                    if (t, c) not in removed:
                        continue
                    mean = float(x[b, :, c].mean())
                    if replacement == "zero":
                        y[t, c] = 0.0
                    elif replacement == "mean":
                        y[t, c] = mean
                    elif replacement == "hold":
                        kept = [s for s in range(t) if (s, c) not in removed]
                        y[t, c] = x[b, kept[-1], c] if kept else mean
                    else:
                        y[t, c] = replacement[c]
            row.append(float(forward(y[None])[0, target]))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


CASES = [
    ("time", 1, "zero"),
    ("time", 3, "mean"),
    ("time", 2, "hold"),
    ("time", 4, "hold"),
    ("channel", 1, "zero"),
    ("channel", 1, "mean"),
    ("channel", 1, "tensor"),
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("unit", "window", "replacement"), CASES)
def test_curves_match_sequential_reference(seed, unit, window, replacement):
    generator = torch.Generator().manual_seed(seed)
    batch, time, channels = 2, 7 + seed, 3
    x = torch.randn(batch, time, channels, generator=generator, dtype=torch.float64)
    scores = torch.randn(batch, time, channels, generator=generator, dtype=torch.float64)
    scores[0, :2] = 0.0  # ties are broken by position
    forward = _model(channels, seed)
    fill = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    argument = fill if replacement == "tensor" else replacement
    curves = signal_perturbation_curves(forward, x, scores, 1, unit, window, argument, batch_size=3)
    for kind, curve in curves.items():
        expected = _reference_curve(forward, x, scores, 1, kind, unit, window, argument)
        torch.testing.assert_close(curve, expected, rtol=0, atol=1e-12)
    units = len(_units(time, channels, unit, window))
    assert curves["morf"].shape == (batch, units + 1)
    torch.testing.assert_close(curves["morf"][:, 0], forward(x)[:, 1])


def test_insertion_is_lerf_backwards():
    x = torch.randn(2, 6, 2, dtype=torch.float64)
    scores = torch.randn(2, 6, 2, dtype=torch.float64)
    forward = _model(2, 3)
    curves = signal_perturbation_curves(forward, x, scores, 0, "time", 2, "mean")
    torch.testing.assert_close(curves["insertion"], curves["lerf"].flip(-1))
    torch.testing.assert_close(
        delta_area(curves["morf"], curves["lerf"]),
        curve_area(curves["lerf"]) - curve_area(curves["morf"]),
    )


def test_unit_masks_partition_the_signal():
    for unit, window in (("time", 1), ("time", 3), ("channel", 1)):
        masks = unit_masks(8, 4, unit, window)
        assert (masks.sum(0) == 1).all()
        cells = _units(8, 4, unit, window)
        for mask, unit_cells in zip(masks, cells, strict=True):
            assert {tuple(p) for p in torch.nonzero(mask).tolist()} == set(unit_cells)


def test_window_and_group_sums():
    relevance = torch.randn(2, 7, 6, dtype=torch.float64)
    windows = window_relevance(relevance, 3)
    assert windows.shape == (2, 3, 6)
    for w, start in enumerate(range(0, 7, 3)):
        expected = sum(relevance[:, t] for t in range(start, min(start + 3, 7)))
        torch.testing.assert_close(windows[:, w], expected)
    names, groups = group_relevance(relevance, {"acc": [0, 1, 2], "gyro": [3, 4, 5]})
    assert names == ["acc", "gyro"]
    torch.testing.assert_close(groups.sum(-1), relevance.sum(-1))
    torch.testing.assert_close(
        groups[..., 1], relevance[..., 3] + relevance[..., 4] + relevance[..., 5]
    )


def test_evidence_share_and_sem():
    relevance = torch.tensor([[[1.0, -1.0], [2.0, 0.0], [0.0, 4.0]]], dtype=torch.float64)
    window = torch.tensor([[False, True, True]])
    assert float(evidence_share(relevance, window)) == pytest.approx(6 / 8)
    assert float(evidence_share(relevance, window, absolute=False)) == pytest.approx(6 / 7)
    cell = torch.zeros(1, 3, 2, dtype=torch.bool)
    cell[0, 2, 1] = True
    assert float(evidence_share(relevance, cell)) == pytest.approx(4 / 8)
    values = [0.3, 1.2, -0.4, 0.9]
    mean, sem = mean_sem(values)
    assert mean == pytest.approx(statistics.mean(values))
    assert sem == pytest.approx(statistics.stdev(values) / math.sqrt(4))
    assert math.isnan(mean_sem([1.0])[1])


def test_refusals_name_the_problem():
    x = torch.randn(1, 5, 2, dtype=torch.float64)
    forward = _model(2, 0)
    with pytest.raises(ValueError, match="unit='channel' keeps no value"):
        signal_perturbation_curve(forward, x, x, 0, unit="channel", replacement="hold")
    with pytest.raises(ValueError, match="spread time-step scores"):
        signal_perturbation_curve(forward, x, x[..., :1], 0)
    with pytest.raises(ValueError, match=r"expected a non-empty \(batch, time, channels\)"):
        signal_perturbation_curve(forward, x, x[..., 0], 0)
    bad = x.clone()
    bad[0, 1, 1] = math.nan
    with pytest.raises(ValueError, match="scores of example 0 contain NaN"):
        signal_perturbation_curve(forward, x, bad, 0)
    with pytest.raises(ValueError, match="unknown replacement"):
        signal_perturbation_curve(forward, x, x, 0, replacement="median")
    with pytest.raises(ValueError, match="channel 1 is in groups"):
        group_relevance(x, {"a": [0, 1], "b": [1]})

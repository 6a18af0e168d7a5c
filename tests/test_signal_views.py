"""Signal views: lanes coloured by relevance (figure and HTML), time x channel heatmaps
with time windows and channel groups; colours and sums checked against values computed
here, bad numbers warned about or refused."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.collections import LineCollection

from captum_mamba.metrics import BadNumberWarning
from captum_mamba.visualization import (
    SignalView,
    aggregate_grid,
    signal_heatmap_figure,
    signal_relevance_figure,
)


def _data(seed: int = 0, time: int = 12, channels: int = 4):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(time, channels)), rng.normal(size=(time, channels))


def _expected_rgba(value: float, limit: float) -> np.ndarray:
    return np.array(colormaps["bwr"](0.5 + 0.5 * max(-1.0, min(1.0, value / limit))))


@pytest.mark.parametrize("seed", [0, 1])
def test_lanes_colour_each_sample_by_its_relevance(seed):
    signal, relevance = _data(seed)
    figure = signal_relevance_figure(signal, relevance, ["a", "b", "c", "d"])
    lanes = [ax for ax in figure.axes if ax.get_label() != "<colorbar>"]
    assert len(lanes) == 4
    limit = np.abs(relevance).max()
    for channel, ax in enumerate(lanes):
        assert ax.get_ylabel() == "abcd"[channel]
        (lines,) = [c for c in ax.collections if isinstance(c, LineCollection)]
        segments, colours = lines.get_segments(), lines.get_colors()
        assert len(segments) == 12
        for t, (segment, colour) in enumerate(zip(segments, colours, strict=True)):
            assert segment[1].tolist() == [t, signal[t, channel]]
            np.testing.assert_allclose(colour, _expected_rgba(relevance[t, channel], limit))


def test_heatmap_windows_and_groups_are_sums():
    _, relevance = _data(2, time=10, channels=6)
    names, grid = aggregate_grid(relevance, window=4)
    assert names == [f"channel {c}" for c in range(6)]
    assert grid.shape == (6, 3)
    for c in range(6):
        for w, start in enumerate(range(0, 10, 4)):
            assert grid[c, w] == pytest.approx(sum(relevance[start : start + 4, c]))
    groups = {"accelerometer": [0, 1, 2], "gyroscope": [3, 4, 5]}
    names, grouped = aggregate_grid(relevance, window=4, groups=groups)
    assert names == ["accelerometer", "gyroscope"]
    np.testing.assert_allclose(grouped[0], grid[:3].sum(0))
    assert grouped.sum() == pytest.approx(relevance.sum())
    figure = signal_heatmap_figure(relevance, window=4, groups=groups, title="t")
    (image,) = figure.axes[0].get_images()
    np.testing.assert_allclose(image.get_array(), grouped)
    assert [label.get_text() for label in figure.axes[0].get_yticklabels()] == names


def test_html_has_one_coloured_piece_per_sample(tmp_path):
    signal, relevance = _data(3, time=9, channels=3)
    relevance[4, 1] = 10.0  # the largest: the reddest piece
    view = SignalView(signal, relevance, ["acc <x>", "acc y", "gyro"], title="walk & run")
    page = view.to_html()
    assert page.count("<svg") == 3
    assert page.count("<polyline") == 27
    assert "acc &lt;x&gt;" in page and "walk &amp; run" in page
    strokes = re.findall(r'stroke="(#[0-9a-f]{6})"', page)
    assert strokes[9 + 4] == "#ff0000"
    path = view.save(tmp_path / "view.html")
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert view._repr_html_() == page


def test_bad_numbers_warned_or_refused():
    signal, relevance = _data(4)
    relevance[3, 2] = math.nan
    with pytest.warns(BadNumberWarning, match=r"\(t=3, c=2\)"):
        signal_relevance_figure(signal, relevance)
    signal[0, 0] = math.inf
    with pytest.raises(ValueError, match="signal contains NaN or inf"):
        SignalView(signal, np.zeros_like(signal))
    with pytest.raises(ValueError, match="one relevance per time step and channel"):
        signal_relevance_figure(np.zeros((5, 2)), np.zeros(5))
    with pytest.raises(ValueError, match="3 channel names for 2 channels"):
        signal_relevance_figure(np.zeros((5, 2)), np.zeros((5, 2)), ["a", "b", "c"])

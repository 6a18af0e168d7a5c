"""Bad numbers never pass silently through the views: NaN/inf relevance is drawn in a
marked style with a legend note and a BadNumberWarning, colour scales come from the
finite values, plots leave out and count what cannot be drawn, and every argument is
validated with a one-line error.

Expected colours and marks are recomputed here from the data with plain loops.
"""

from __future__ import annotations

import html.parser
import math
import re
import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from matplotlib import colormaps
from matplotlib.colors import to_rgba

from captum_mamba.metrics import BadNumberWarning
from captum_mamba.visualization import (
    HeatmapRow,
    TextHeatmap,
    area_under_curve,
    batch_text_heatmap_figure,
    batch_text_heatmap_html,
    heatmap_rows_figure,
    image_heatmaps_figure,
    merge_word_pieces,
    patch_relevance_map,
    plot_conservation,
    plot_image_heatmap,
    plot_perturbation_curves,
    plot_relevance_distance,
    plot_relevance_over_context,
    text_heatmap_figure,
    text_heatmap_html,
    to_captum_record,
    token_texts,
    top_k_distances,
)

matplotlib.use("Agg")

BAD_VALUES = [math.nan, math.inf, -math.inf]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GREY = to_rgba("#bdbdbd")


def relevance_rows(draw, rows: int, length: int) -> list[np.ndarray]:
    """Random relevance rows with random NaN/inf entries (possibly all, possibly none)."""
    out = []
    for _ in range(rows):
        values = np.array(
            draw(st.lists(st.integers(-9, 9), min_size=length, max_size=length)), dtype=float
        )
        for position in draw(st.lists(st.integers(0, length - 1), unique=True, max_size=length)):
            values[position] = draw(st.sampled_from(BAD_VALUES))
        out.append(values)
    return out


def expected_colour(value: float, limit: float) -> tuple[float, ...]:
    """Loop reference: bwr at 0.5 + 0.5 * clip(value / limit)."""
    return tuple(colormaps["bwr"](0.5 + 0.5 * max(-1.0, min(1.0, value / limit))))


def finite_limit(*rows: np.ndarray) -> float:
    largest = 0.0
    for row in rows:
        for value in row:
            if math.isfinite(value):
                largest = max(largest, abs(value))
    return largest if largest > 0 else 1.0


def collect(call):
    """Run ``call``; return its result and the BadNumberWarning messages."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = call()
    return result, [str(w.message) for w in caught if issubclass(w.category, BadNumberWarning)]


def one_line_error(kind: type[Exception], call, *fragments: str) -> None:
    with pytest.raises(kind) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


class _Spans(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {key: value or "" for key, value in attrs}
        if tag == "span" and "cm-tok" in attributes.get("class", ""):
            self.spans.append(attributes)


# --- class: text heatmaps (HTML and figures) mark NaN/inf --------------------------------


@SETTINGS
@given(
    rows=st.integers(1, 3),
    length=st.integers(1, 6),
    shared=st.booleans(),
    data=st.data(),
)
def test_html_heatmaps_mark_nonfinite_tokens(rows, length, shared, data) -> None:
    relevances = relevance_rows(data.draw, rows, length)
    tokens = [f" t{i}" for i in range(length)]
    names = [f"m{i}" for i in range(rows)]
    heatmap, messages = collect(
        lambda: batch_text_heatmap_html(
            [tokens],
            {name: [r] for name, r in zip(names, relevances, strict=True)},
            shared_scale=shared,
        )
    )
    document = heatmap.to_standalone_html()
    parser = _Spans()
    parser.feed(document)
    token_spans = [span for span in parser.spans if "title" in span]
    assert len(token_spans) == rows * length
    any_bad = any(not np.isfinite(r).all() for r in relevances)
    assert bool(messages) == any_bad
    assert (NOTE_TEXT in document) == any_bad
    for row, (name, values) in enumerate(zip(names, relevances, strict=True)):
        limit = finite_limit(*relevances) if shared else finite_limit(values)
        bad = [i for i, value in enumerate(values) if not math.isfinite(value)]
        if bad:
            assert len(messages) == 1
            assert (
                f"row {row + 1} {name!r} of 'text 1' (tokens {', '.join(map(str, bad))})"
                in (messages[0])
            )
        for position, value in enumerate(values):
            span = token_spans[row * length + position]
            if math.isfinite(value):
                assert "cm-bad" not in span["class"]
                shown = re.search(r"background:#([0-9a-f]{6})", span["style"]).group(1)
                expected = "".join(
                    f"{round(c * 255):02x}" for c in expected_colour(value, limit)[:3]
                )
                assert shown == expected
            else:
                assert "cm-bad" in span["class"] and "repeating-linear-gradient" in span["style"]
                assert "not a finite number" in span["title"]
                assert ("nan" if math.isnan(value) else f"{value:+}") in span["title"]


NOTE_TEXT = "NaN or inf relevance (grey, hatched; not on the colour scale)"

PATTERNS = {
    "finite": [1.0, -2.0, 0.5],
    "one nan": [1.0, math.nan, -3.0],
    "plus inf": [math.inf, 2.0, -1.0],
    "minus inf": [0.5, -math.inf, 0.25],
    "all nan": [math.nan, math.nan, math.nan],
    "mixed": [math.nan, math.inf, -math.inf],
    "zeros and nan": [0.0, math.nan, 0.0],
}


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_figure_heatmaps_mark_nonfinite_tokens(pattern, shared) -> None:
    tokens = ["One", " two", " three"]
    first = np.array(PATTERNS[pattern])
    second = np.array([4.0, -1.0, 2.0])
    figure, messages = collect(
        lambda: batch_text_heatmap_figure(
            [tokens], {"a": [first], "b": [second]}, shared_scale=shared
        )
    )
    figure.savefig(matplotlib.__name__ and __import__("io").BytesIO(), format="png", dpi=40)
    boxes = [p for p in figure.axes[0].patches if p.get_gid() == "token"]
    keys = [p for p in figure.axes[0].patches if p.get_gid() == "nonfinite-key"]
    assert len(boxes) == 6
    bad = [i for i, value in enumerate(first) if not math.isfinite(value)]
    assert len(keys) == (1 if bad else 0)
    assert (NOTE_TEXT in [t.get_text() for t in figure.findobj(matplotlib.text.Text)]) == bool(bad)
    assert bool(messages) == bool(bad)
    if bad:
        assert f"row 1 'a' of 'text 1' (tokens {', '.join(map(str, bad))})" in messages[0]
    for row, values in enumerate((first, second)):
        limit = finite_limit(first, second) if shared else finite_limit(values)
        for position, value in enumerate(values):
            box = boxes[row * 3 + position]
            if math.isfinite(value):
                assert not box.get_hatch()
                np.testing.assert_allclose(box.get_facecolor(), expected_colour(value, limit))
            else:
                assert box.get_hatch() == "////" and box.get_linestyle() == "--"
                np.testing.assert_allclose(box.get_facecolor(), GREY)


def test_single_text_views_and_row_engine_mark_the_same_way() -> None:
    tokens, values = ["a", " b"], [math.nan, 1.0]
    for call in (
        lambda: text_heatmap_html(tokens, values, label="x").to_html(),
        lambda: text_heatmap_figure(tokens, values, label="x"),
        lambda: heatmap_rows_figure([HeatmapRow.create(tokens, values, "x")], colorbar=False),
        lambda: TextHeatmap([HeatmapRow.create(tokens, values, "x")], max_abs=2.0).to_html(),
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        # The warning points at the caller outside the package (this file).
        assert [Path(w.filename).name for w in caught] == [Path(__file__).name]
        messages = [str(w.message) for w in caught]
        assert messages == [
            "heatmap: NaN or inf relevance in row 1 'x' (tokens 0); drawn grey and hatched, "
            "left out of the colour scale"
        ]


def test_merged_words_keep_nonfinite_sums_for_the_heatmap_to_mark() -> None:
    words, sums = merge_word_pieces(["The", " fil", "m", " end"], [1.0, math.nan, 2.0, 3.0])
    assert words == ["The", " film", " end"]
    assert sums[0] == 1.0 and math.isnan(sums[1]) and sums[2] == 3.0
    _, messages = collect(lambda: text_heatmap_html(words, sums))
    assert "tokens 1" in messages[0]


# --- class: image heatmaps mark NaN/inf patches -------------------------------------------


def _hatched_mask(ax, shape: tuple[int, int]) -> np.ndarray:
    """Pixels covered by the hatched 'nonfinite' rectangles, rasterised by a loop."""
    mask = np.zeros(shape, dtype=bool)
    for patch in ax.patches:
        if patch.get_gid() != "nonfinite":
            continue
        assert patch.get_hatch() == "////"
        left, top = patch.get_x() + 0.5, patch.get_y() + 0.5
        for row in range(round(top), round(top + patch.get_height())):
            for col in range(round(left), round(left + patch.get_width())):
                assert not mask[row, col], "rectangles overlap"
                mask[row, col] = True
    return mask


@SETTINGS
@given(
    grid=st.sampled_from([(2, 2), (4, 4), (2, 4)]),
    pixels=st.booleans(),
    data=st.data(),
)
def test_image_heatmaps_mark_nonfinite_patches(grid, pixels, data) -> None:
    size = (8, 8)
    rows, cols = (8, 8) if pixels else grid
    values = np.array(
        data.draw(st.lists(st.integers(-5, 5), min_size=rows * cols, max_size=rows * cols)),
        dtype=float,
    ).reshape(rows, cols)
    flat_bad = data.draw(st.lists(st.integers(0, rows * cols - 1), unique=True))
    for index in flat_bad:
        values[np.unravel_index(index, values.shape)] = data.draw(st.sampled_from(BAD_VALUES))
    image = np.linspace(0, 1, 64).reshape(size)
    relevance = values if pixels else values.reshape(-1)
    ax, messages = collect(
        lambda: plot_image_heatmap(image, relevance, grid=None if pixels else grid, title="m")
    )
    expected = np.zeros(size, dtype=bool)
    for row in range(8):
        for col in range(8):
            expected[row, col] = not math.isfinite(values[row * rows // 8, col * cols // 8])
    np.testing.assert_array_equal(_hatched_mask(ax, size), expected)
    heat = ax.get_images()[1]
    limit = finite_limit(values.reshape(-1))
    assert heat.norm.vmin == pytest.approx(-limit) and heat.norm.vmax == pytest.approx(limit)
    np.testing.assert_allclose(heat.get_cmap().get_bad(), GREY)
    np.testing.assert_array_equal(np.ma.getmaskarray(heat.get_array()), expected)
    assert bool(messages) == expected.any()
    if expected.any():
        assert f"in {int(expected.sum())} of 64 pixels" in messages[0] and "'m'" in messages[0]
        assert "NaN or inf" in ax.get_xlabel()
        assert "NaN/inf" in ax.figure.axes[-1].get_ylabel()
    else:
        assert ax.figure.axes[-1].get_ylabel() == "relevance"


def test_image_figure_warns_per_method_and_refuses_nonfinite_images() -> None:
    image = np.ones((3, 4, 4))
    _, messages = collect(
        lambda: image_heatmaps_figure(image, {"ok": np.ones(4), "bad": [1.0, math.nan, 1.0, 1.0]})
    )
    assert len(messages) == 1 and "'bad'" in messages[0]
    broken = image.copy()
    broken[0, 1, 1] = math.nan
    one_line_error(ValueError, lambda: plot_image_heatmap(broken, np.ones(4)), "1 NaN or inf pixel")
    map_ = patch_relevance_map(np.array([[[1.0, math.inf]], [[2.0, -math.inf]]]), (2, 2))
    assert map_[0, 0] == 3.0 and math.isnan(map_[0, 1])  # kept for the plot to mark


# --- class: plots with NaN inputs ------------------------------------------------------


@SETTINGS
@given(examples=st.integers(1, 5), steps=st.integers(2, 6), data=st.data())
def test_perturbation_curve_plots_leave_out_and_count_nonfinite_curves(
    examples, steps, data
) -> None:
    rows = relevance_rows(data.draw, examples, steps)
    ax, messages = collect(lambda: plot_perturbation_curves({"m": np.stack(rows)}))
    good = [row for row in rows if np.isfinite(row).all()]
    label = ax.get_legend().get_texts()[0].get_text()
    line = ax.get_lines()[0]
    if not good:
        assert label == f"m (all {examples} curves NaN/inf; not drawn)"
        assert len(line.get_xdata()) == 0
    else:
        mean = [sum(row[i] for row in good) / len(good) for i in range(steps)]
        np.testing.assert_allclose(line.get_ydata(), mean)
        assert ("curves with NaN/inf left out" in label) == (len(good) < examples)
        if len(good) < examples:
            assert f"{examples - len(good)} of {examples} curves" in label
    bad = [str(i) for i, row in enumerate(rows) if not np.isfinite(row).all()]
    assert bool(messages) == bool(bad)
    if bad:
        assert f"'m' (curves {', '.join(bad[:6])}" in messages[0]


@SETTINGS
@given(length=st.integers(1, 8), data=st.data())
def test_conservation_plots_leave_out_and_count_nonfinite_points(length, data) -> None:
    sums, outputs = relevance_rows(data.draw, 2, length)
    ax, messages = collect(lambda: plot_conservation({"m": sums}, outputs))
    good = [i for i in range(length) if math.isfinite(sums[i]) and math.isfinite(outputs[i])]
    points = ax.collections[0].get_offsets()
    np.testing.assert_allclose(
        np.asarray(points).reshape(-1, 2),
        np.array([[outputs[i], sums[i]] for i in good], dtype=float).reshape(-1, 2),
    )
    label = ax.get_legend().get_texts()[0].get_text()
    left_out = length - len(good)
    assert label == ("m" if not left_out else f"m ({left_out} NaN/inf points left out)")
    assert bool(messages) == bool(left_out)
    diagonal = ax.get_lines()[0].get_xdata()
    assert np.isfinite(diagonal).all()


@SETTINGS
@given(length=st.integers(1, 10), log_x=st.booleans(), data=st.data())
def test_distance_plots_leave_out_and_count_nonfinite_distances(length, log_x, data) -> None:
    values = np.array(data.draw(st.lists(st.integers(1, 60), min_size=length, max_size=length)))
    values = values.astype(float)
    for index in data.draw(st.lists(st.integers(0, length - 1), unique=True)):
        values[index] = data.draw(st.sampled_from(BAD_VALUES))
    ax, messages = collect(lambda: plot_relevance_distance({"m": values}, bins=5, log_x=log_x))
    finite = values[np.isfinite(values)]
    label = ax.get_legend().get_texts()[0].get_text()
    if finite.size == 0:
        assert label == f"m (all {length} NaN/inf; not drawn)"
        assert not ax.patches
    else:
        heights = [patch.get_height() for patch in ax.patches]
        assert sum(heights) == pytest.approx(1.0)
        assert label == (
            "m" if finite.size == length else f"m ({length - finite.size} NaN/inf left out)"
        )
    assert bool(messages) == (finite.size < length)


@SETTINGS
@given(length=st.integers(1, 12), data=st.data())
def test_context_plots_mark_nonfinite_positions(length, data) -> None:
    (values,) = relevance_rows(data.draw, 1, length)
    tokens = [f"w{i}" for i in range(length)]
    ax, messages = collect(lambda: plot_relevance_over_context(values, tokens, annotate=3))
    bars = [p for p in ax.patches if p.get_gid() != "nonfinite"]
    spans = [p for p in ax.patches if p.get_gid() == "nonfinite"]
    finite = [math.isfinite(v) for v in values]
    np.testing.assert_allclose(
        [bar.get_height() for bar in bars],
        [v if ok else 0.0 for v, ok in zip(values, finite, strict=True)],
    )
    covered = set()
    for span in spans:
        assert span.get_hatch() == "////"
        x0 = span.get_x() + 0.5
        x1 = x0 + span.get_width()
        covered |= set(range(round(x0), round(x1)))
    assert covered == {i for i in range(length) if not finite[i]}
    ranked = sorted((i for i in range(length) if finite[i]), key=lambda i: -abs(values[i]))[:3]
    assert [t.get_text() for t in ax.texts] == [tokens[i] for i in ranked]
    assert bool(messages) == (not all(finite))
    if not all(finite):
        assert "NaN or inf relevance" in [t.get_text() for t in ax.get_legend().get_texts()]


# --- class: validators of arguments ------------------------------------------------------


class _Vocab:
    """A minimal tokenizers-style tokenizer with 10 entries."""

    def id_to_token(self, token_id: int) -> str | None:
        return f"t{token_id}" if 0 <= token_id < 10 else None

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return 10


class _Pieces:
    """A transformers-style tokenizer without a vocabulary size (None when unknown)."""

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [["▁a", "b"][i] if i < 2 else None for i in ids]


VOCAB = _Vocab()
ROW = HeatmapRow.create(["a"], [1.0])
IMAGE = np.ones((8, 8))

VALIDATORS = [
    ("id negative", lambda: token_texts(VOCAB, [1, -1]), ValueError, "-1 (positions 1)"),
    (
        "id too big",
        lambda: token_texts(VOCAB, torch.tensor([10, 3, 12])),
        ValueError,
        "token ids 10, 12 (positions 0, 2) are outside the vocabulary [0, 10)",
    ),
    (
        "id unknown",
        lambda: token_texts(_Pieces(), [0, 5]),
        ValueError,
        "token ids 5 (positions 1) are not in the tokenizer's vocabulary",
    ),
    ("id negative no vocab", lambda: token_texts(_Pieces(), [-1]), ValueError, "non-negative"),
    ("id float", lambda: token_texts(VOCAB, np.array([1.0, 2.5])), TypeError, "float64"),
    ("id float tensor", lambda: token_texts(VOCAB, torch.tensor([1.0])), TypeError, "integer"),
    ("id bool", lambda: token_texts(VOCAB, [True, False]), TypeError, "bool"),
    (
        "id batch",
        lambda: token_texts(VOCAB, torch.ones(2, 3, dtype=torch.long)),
        ValueError,
        "token_texts for each row",
    ),
    ("id ragged", lambda: token_texts(VOCAB, [[1, 2], [3]]), ValueError, "ragged"),
    ("byte_level", lambda: token_texts(VOCAB, [1], byte_level="yes"), TypeError, "byte_level"),
    ("max_abs zero", lambda: text_heatmap_html(["a"], [1.0], max_abs=0), ValueError, "positive"),
    (
        "max_abs negative",
        lambda: text_heatmap_html(["a"], [1.0], max_abs=-2),
        ValueError,
        "positive",
    ),
    (
        "max_abs nan",
        lambda: text_heatmap_html(["a"], [1.0], max_abs=math.nan),
        ValueError,
        "finite",
    ),
    (
        "max_abs inf",
        lambda: text_heatmap_figure(["a"], [1.0], max_abs=math.inf),
        ValueError,
        "finite",
    ),
    (
        "max_abs text",
        lambda: text_heatmap_html(["a"], [1.0], max_abs="1"),
        TypeError,
        "max_abs must be a real number",
    ),
    (
        "image max_abs",
        lambda: plot_image_heatmap(IMAGE, np.ones(4), max_abs=-1),
        ValueError,
        "max_abs must be positive",
    ),
    ("cmap", lambda: text_heatmap_html(["a"], [1.0], cmap="nope"), ValueError, "unknown colormap"),
    ("tokens str", lambda: text_heatmap_html("ab", [1.0, 2.0]), TypeError, "list of strings"),
    ("tokens ints", lambda: text_heatmap_html([1, 2], [1.0, 2.0]), TypeError, "positions 0, 1"),
    (
        "relevance 2-d",
        lambda: text_heatmap_html(["a", "b"], np.ones((2, 3))),
        ValueError,
        "hidden dimension",
    ),
    ("relevance text", lambda: text_heatmap_html(["a"], ["x"]), TypeError, "real numbers"),
    ("relevance complex", lambda: text_heatmap_html(["a"], [1j]), TypeError, "real numbers"),
    ("rows empty", lambda: heatmap_rows_figure([]), ValueError, "at least one row"),
    (
        "label type",
        lambda: HeatmapRow.create(["a"], [1.0], label=3),
        TypeError,
        "label must be a str",
    ),
    ("title type", lambda: TextHeatmap([ROW], title=None), TypeError, "title must be a str"),
    (
        "batch of one text",
        lambda: batch_text_heatmap_html(["a", " b"], {"m": [[1.0], [2.0]]}),
        ValueError,
        "texts 0, 1 are single strings",
    ),
    (
        "batch relevances",
        lambda: batch_text_heatmap_figure([["a"]], [[1.0]]),
        ValueError,
        "non-empty mapping",
    ),
    ("rows type", lambda: TextHeatmap([(["a"], [1.0])]), TypeError, "HeatmapRow"),
    ("shared flag", lambda: TextHeatmap([ROW], shared_scale="yes"), TypeError, "shared_scale"),
    ("width", lambda: heatmap_rows_figure([ROW], width=0), ValueError, "width must be positive"),
    ("width nan", lambda: heatmap_rows_figure([ROW], width=math.nan), ValueError, "finite"),
    ("fontsize", lambda: heatmap_rows_figure([ROW], fontsize=-3), ValueError, "fontsize"),
    (
        "record nan",
        lambda: to_captum_record(["a", "b"], [1.0, math.nan], 0.5, 1, 1, 1),
        ValueError,
        "NaN or inf at tokens 1",
    ),
    (
        "record prob",
        lambda: to_captum_record(["a"], [1.0], 1.5, 1, 1, 1),
        ValueError,
        "pred_prob must lie in [0.0, 1.0]",
    ),
    (
        "record delta",
        lambda: to_captum_record(["a"], [1.0], 0.5, 1, 1, 1, math.nan),
        ValueError,
        "convergence_score must be a finite number",
    ),
    ("auc nan", lambda: area_under_curve([1.0, math.nan]), ValueError, "steps 1"),
    ("auc empty", lambda: area_under_curve([]), ValueError, "empty"),
    ("auc 2-d", lambda: area_under_curve(np.ones((2, 3))), ValueError, "one value per step"),
    (
        "auc fractions",
        lambda: area_under_curve([1.0, 2.0], [0.5, 0.5]),
        ValueError,
        "increase strictly",
    ),
    (
        "auc fractions inf",
        lambda: area_under_curve([1.0, 2.0], [0.0, math.inf]),
        ValueError,
        "NaN or inf",
    ),
    ("curves empty", lambda: plot_perturbation_curves({}), ValueError, "at least one method"),
    (
        "curves ragged",
        lambda: plot_perturbation_curves({"m": [[1.0, 2.0], [1.0]]}),
        ValueError,
        "ragged",
    ),
    ("curves no points", lambda: plot_perturbation_curves({"m": []}), ValueError, "empty"),
    (
        "curves fractions",
        lambda: plot_perturbation_curves({"m": [1.0, 2.0]}, [0.0, 0.5, 1.0]),
        ValueError,
        "2 curve points",
    ),
    (
        "conservation keys",
        lambda: plot_conservation({"m": [1.0]}, {"n": [1.0]}),
        ValueError,
        "no entry for 'm'",
    ),
    (
        "conservation sizes",
        lambda: plot_conservation({"m": [1.0, 2.0]}, [1.0]),
        ValueError,
        "2 relevance sums but 1 outputs",
    ),
    ("top k", lambda: top_k_distances([1.0, 2.0], k=0), ValueError, "k must be at least 1"),
    ("top k float", lambda: top_k_distances([1.0, 2.0], k=2.5), TypeError, "k must be an int"),
    ("top k nan", lambda: top_k_distances([1.0, math.nan, 2.0]), ValueError, "positions 1"),
    (
        "top k position",
        lambda: top_k_distances([1.0, 2.0], predicted_position=2),
        ValueError,
        "outside",
    ),
    (
        "top k negative",
        lambda: top_k_distances([1.0, 2.0], predicted_position=-1),
        ValueError,
        "outside",
    ),
    (
        "top k position float",
        lambda: top_k_distances([1.0], predicted_position=0.0),
        TypeError,
        "predicted_position must be an int",
    ),
    ("top k 2-d", lambda: top_k_distances(np.ones((3, 4))), ValueError, "one value per token"),
    ("top k empty", lambda: top_k_distances([]), ValueError, "empty"),
    ("bins zero", lambda: plot_relevance_distance([1, 2], bins=0), ValueError, "at least 1"),
    (
        "bins edges",
        lambda: plot_relevance_distance([1, 2], bins=[3, 1]),
        ValueError,
        "increase strictly",
    ),
    (
        "bins one edge",
        lambda: plot_relevance_distance([1, 2], bins=[3]),
        ValueError,
        "at least 2 edges",
    ),
    ("bins flag", lambda: plot_relevance_distance([1, 2], bins=True), ValueError, "bins"),
    (
        "distance zero",
        lambda: plot_relevance_distance({"m": [0, 3]}),
        ValueError,
        "positive token distances",
    ),
    ("distance empty", lambda: plot_relevance_distance({"m": []}), ValueError, "empty"),
    ("log flag", lambda: plot_relevance_distance([1], log_x=None), TypeError, "log_x"),
    (
        "annotate",
        lambda: plot_relevance_over_context([1.0], annotate=-1),
        ValueError,
        "annotate must be at least 0",
    ),
    (
        "context tokens",
        lambda: plot_relevance_over_context([1.0, 2.0], ["a"]),
        ValueError,
        "1 tokens for 2 relevances",
    ),
    ("context token types", lambda: plot_relevance_over_context([1.0], [3]), TypeError, "strings"),
    ("context empty", lambda: plot_relevance_over_context([]), ValueError, "empty"),
    (
        "alpha",
        lambda: plot_image_heatmap(IMAGE, np.ones(4), alpha=1.5),
        ValueError,
        "alpha must lie in [0.0, 1.0]",
    ),
    (
        "image size",
        lambda: patch_relevance_map(np.ones(4), (0, 4)),
        ValueError,
        "image_size[0] must be at least 1",
    ),
    ("image size type", lambda: patch_relevance_map(np.ones(4), 8), ValueError, "pair of ints"),
    (
        "grid size",
        lambda: patch_relevance_map(np.ones(6), (4, 6), grid=(2, 2)),
        ValueError,
        "holds 4 patches, not 6",
    ),
    (
        "grid zero",
        lambda: patch_relevance_map(np.ones(6), (4, 6), grid=(0, 3)),
        ValueError,
        "grid[0] must be at least 1",
    ),
    (
        "relevance 4-d",
        lambda: patch_relevance_map(np.ones((1, 1, 2, 2)), (4, 4)),
        ValueError,
        "(C, H, W)",
    ),
    (
        "image empty",
        lambda: plot_image_heatmap(np.ones((0, 4)), np.ones(4)),
        ValueError,
        "expected an image",
    ),
    ("images none", lambda: image_heatmaps_figure(IMAGE, {}), ValueError, "non-empty mapping"),
]


@pytest.mark.parametrize(
    ("call", "kind", "fragment"),
    [case[1:] for case in VALIDATORS],
    ids=[case[0] for case in VALIDATORS],
)
def test_out_of_range_arguments_get_one_line_errors(call, kind, fragment) -> None:
    one_line_error(kind, call, fragment)


@SETTINGS
@given(ids=st.lists(st.integers(0, 9), min_size=1, max_size=8))
def test_ids_and_relevance_in_any_container_work_alike(ids) -> None:
    expected = [f"t{i}" for i in ids]
    containers = [
        ids,
        tuple(ids),
        np.array(ids),
        np.array(ids, dtype=np.int32),
        torch.tensor(ids),
        torch.tensor([ids]),
    ]
    for container in containers:
        assert token_texts(VOCAB, container, byte_level=False) == expected
    values = np.linspace(-1.0, 2.0, len(ids))
    pages = {
        text_heatmap_html(expected, relevance).to_html()
        for relevance in (values, values.tolist(), torch.tensor(values), torch.tensor(values[None]))
    }
    assert len(pages) == 1

"""Bad numbers never pass silently through the metrics; targets mean what they mean for
the attribution classes; every argument is validated with a one-line error.

References are written here independently of the package: a Python loop that ranks
tokens with ``sorted``, perturbs one sequence at a time and indexes the output by
hand; ``numpy.interp`` for resampling; the ``statistics`` module for conservation.
"""

from __future__ import annotations

import math
import statistics
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from captum_mamba.attr.targets import AttributionInputError, select_target
from captum_mamba.metrics import (
    CURVES,
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

HIDDEN, VOCAB = 3, 4
BAD_VALUES = [math.nan, math.inf, -math.inf]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def lm_logits(embeds: Tensor) -> Tensor:
    """A small non-linear 'language model': ``(n, seq, hidden) -> (n, seq, vocab)``."""
    weight = torch.arange(HIDDEN * VOCAB, dtype=embeds.dtype).reshape(HIDDEN, VOCAB) / 7 - 0.8
    return torch.tanh(embeds @ weight).cumsum(1)


def one_line_error(kind: type[Exception], call, *fragments: str) -> str:
    with pytest.raises(kind) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def reference_curve(
    embeds: Tensor, scores: Tensor, position: int, token: int, replacement: Tensor, kind: str
) -> list[float]:
    """Loop reference of one example's curve for the output ``logits[position, token]``."""
    length = scores.numel()
    ranked = sorted(range(length), key=lambda i: (-float(scores[i]), i))
    if kind == "lerf":
        ranked = sorted(range(length), key=lambda i: (float(scores[i]), i))
    values = []
    for k in range(length + 1):
        replaced = set(ranked[:k]) if kind != "insertion" else set(ranked) - set(ranked[:k])
        sequence = embeds.clone()
        for i in replaced:
            sequence[i] = replacement
        values.append(float(lm_logits(sequence[None])[0, position, token]))
    return values


def random_case(seed: int, batch: int, length: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, length, HIDDEN, generator=generator, dtype=torch.float64)
    scores = torch.randn(batch, length, generator=generator, dtype=torch.float64)
    return embeds, scores


# --- class: NaN/inf scores are refused, naming the example --------------------------


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    batch=st.integers(1, 4),
    length=st.integers(1, 6),
    data=st.data(),
)
def test_nonfinite_scores_are_refused_naming_the_example(seed, batch, length, data) -> None:
    embeds, scores = random_case(seed, batch, length)
    example = data.draw(st.integers(0, batch - 1), label="example")
    positions = data.draw(
        st.lists(st.integers(0, length - 1), min_size=1, max_size=length, unique=True)
    )
    for position in positions:
        scores[example, position] = data.draw(st.sampled_from(BAD_VALUES))
    kind = data.draw(st.sampled_from(CURVES))
    zero = torch.zeros(HIDDEN, dtype=torch.float64)
    one_line_error(
        ValueError,
        lambda: perturbation_curve(lm_logits, embeds, scores, (-1, 0), zero, kind),
        f"example {example} contain NaN or inf",
    )
    one_line_error(
        ValueError,
        lambda: perturbation_curves(lm_logits, embeds, scores, (-1, 0), zero),
        f"example {example} ",
    )
    message = one_line_error(
        ValueError, lambda: relevance_order(scores[example], kind != "lerf"), "NaN or inf"
    )
    assert str(sorted(positions)[0]) in message


@SETTINGS
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 3), length=st.integers(1, 6))
def test_finite_scores_give_the_loop_reference(seed, batch, length) -> None:
    embeds, scores = random_case(seed, batch, length)
    scores = scores.round()  # ties, broken by position
    filler = torch.linspace(-1, 1, HIDDEN, dtype=torch.float64)
    for kind in CURVES:
        curve = perturbation_curve(lm_logits, embeds, scores, (-1, 2), filler, kind, batch_size=3)
        for index in range(batch):
            expected = reference_curve(embeds[index], scores[index], -1, 2, filler, kind)
            np.testing.assert_allclose(curve[index].numpy(), expected, rtol=1e-12, atol=1e-12)


# --- class: explained outputs that become NaN/inf along a curve are refused -----------


@pytest.mark.parametrize("kind", CURVES)
@pytest.mark.parametrize("bad_value", BAD_VALUES)
@pytest.mark.parametrize("batch_size", [1, 2, 64])
@pytest.mark.parametrize(("length", "threshold", "example"), [(4, 2, 1), (5, 5, 0), (3, 0, 2)])
def test_nonfinite_outputs_along_a_curve_are_refused(
    kind, bad_value, batch_size, length, threshold, example
) -> None:
    """The forward overflows once ``threshold`` tokens of the flagged example are
    replaced (marked by the sentinel replacement 7)."""
    embeds, scores = random_case(length, 3, length)
    flags = torch.zeros(3, dtype=torch.bool)
    flags[example] = True
    sentinel = torch.full((HIDDEN,), 7.0, dtype=torch.float64)

    def forward(x: Tensor, flag: Tensor) -> Tensor:
        replaced = (x == 7.0).all(-1).sum(-1)
        out = lm_logits(x)
        broken = (replaced >= threshold) & flag
        return torch.where(broken[:, None, None], torch.tensor(bad_value).double(), out)

    # Step k replaces k tokens (deletion) or length - k tokens (insertion).
    steps = [
        k for k in range(length + 1) if (k if kind != "insertion" else length - k) >= threshold
    ]
    message = one_line_error(
        AttributionInputError,
        lambda: perturbation_curve(
            forward, embeds, scores, (-1, 1), sentinel, kind, (flags,), batch_size
        ),
        f"example {example}: the explained output is NaN or inf after {steps[0]}",
        f"of {length} {kind} steps",
    )
    assert "overflows" in message


@SETTINGS
@given(
    shape=st.sampled_from([(5,), (3, 4), (2, 3, 6)]),
    data=st.data(),
)
def test_nonfinite_curves_are_refused_naming_the_curve(shape, data) -> None:
    curve = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape)
    index = tuple(data.draw(st.integers(0, size - 1)) for size in shape)
    curve[index] = data.draw(st.sampled_from(BAD_VALUES))
    if len(shape) == 1:
        where = f"at steps {index[0]}"
    elif len(shape) == 2:
        where = f"in curve {index[0]}"
    else:
        where = f"in curve {index[:-1]}"
    one_line_error(ValueError, lambda: curve_area(curve), "NaN or inf", where)
    one_line_error(ValueError, lambda: delta_area(curve, curve.nan_to_num()), "morf", where)
    one_line_error(ValueError, lambda: delta_area(curve.nan_to_num(), curve), "lerf", where)
    one_line_error(ValueError, lambda: resample_curve(curve, [0.0, 0.5]), where)


@SETTINGS
@given(
    values=st.lists(st.integers(-50, 50), min_size=2, max_size=9),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6),
)
def test_finite_curves_match_numpy(values, fractions) -> None:
    curve = np.array(values, dtype=np.float64)
    grid = np.linspace(0.0, 1.0, curve.size)
    area = sum(
        (grid[i + 1] - grid[i]) * (curve[i] + curve[i + 1]) / 2 for i in range(curve.size - 1)
    )
    assert float(curve_area(curve)) == pytest.approx(area, abs=1e-9)
    np.testing.assert_allclose(
        resample_curve(curve, fractions).numpy(), np.interp(fractions, grid, curve), atol=1e-9
    )


# --- class: conservation statistics on bad numbers -------------------------------------


@SETTINGS
@given(
    sums=st.lists(st.integers(-20, 20), min_size=1, max_size=12),
    data=st.data(),
)
def test_conservation_refuses_nonfinite_naming_examples(sums, data) -> None:
    outputs = [value + 1.0 for value in sums]
    side = data.draw(st.sampled_from(["relevance_sums", "outputs"]))
    bad = data.draw(
        st.lists(st.integers(0, len(sums) - 1), min_size=1, max_size=min(6, len(sums)), unique=True)
    )
    target = [float(v) for v in (sums if side == "relevance_sums" else outputs)]
    for index in bad:
        target[index] = data.draw(st.sampled_from(BAD_VALUES))
    arguments = (target, outputs) if side == "relevance_sums" else (sums, target)
    one_line_error(
        ValueError,
        lambda: conservation_stats(*arguments),
        f"{side} of example",
        ", ".join(str(i) for i in sorted(bad)),
        "NaN or inf",
    )


@SETTINGS
@given(
    pairs=st.lists(st.tuples(st.integers(-30, 30), st.integers(-30, 30)), min_size=1, max_size=12)
)
def test_conservation_statistics_match_the_statistics_module(pairs) -> None:
    sums = [float(a) for a, _ in pairs]
    outputs = [float(b) for _, b in pairs]
    valid = [i for i, out in enumerate(outputs) if out != 0]
    relative = [abs(sums[i] - outputs[i]) / abs(outputs[i]) for i in valid]
    try:
        correlation = statistics.correlation(sums, outputs)
    except statistics.StatisticsError:  # fewer than two points or a constant side
        correlation = math.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = conservation_stats(torch.tensor(sums), np.array(outputs))
    messages = [str(w.message) for w in caught if issubclass(w.category, BadNumberWarning)]
    assert stats.examples == len(pairs)
    assert stats.undefined_relative == tuple(i for i in range(len(pairs)) if i not in valid)
    assert stats.max_absolute_error == max(abs(a - b) for a, b in zip(sums, outputs, strict=True))
    if relative:
        assert stats.mean_relative_error == pytest.approx(statistics.fmean(relative))
        assert stats.median_relative_error == statistics.median_low(relative)
    else:
        assert math.isnan(stats.mean_relative_error) and math.isnan(stats.median_relative_error)
    assert (len(valid) < len(pairs)) == any("relative conservation error" in m for m in messages)
    if math.isnan(correlation):
        assert math.isnan(stats.correlation)
        assert any("correlation is undefined" in m for m in messages)
    else:
        assert stats.correlation == pytest.approx(correlation, abs=1e-12)
        assert not any("correlation" in m for m in messages)


def test_pearson_is_scale_safe_and_refuses_bad_numbers() -> None:
    a, b = [1e300, 2e300, 3e300], [1.0, 2.0, 3.5]
    assert pearson(a, b) == pytest.approx(statistics.correlation([1.0, 2.0, 3.0], b))
    one_line_error(ValueError, lambda: pearson([1.0, math.nan], [1.0, 2.0]), "example 1")
    one_line_error(ValueError, lambda: pearson([1.0, 2.0], [1.0, 2.0, 3.0]), "2 and 3")
    with pytest.warns(BadNumberWarning, match="fewer than 2"):
        assert math.isnan(pearson([1.0], [2.0]))


# --- class: target selection is the attribution classes' -------------------------------


def test_metric_refuses_target_1_on_lm_logits_and_accepts_position_token() -> None:
    embeds, scores = random_case(0, 2, 5)
    zero = torch.zeros(HIDDEN, dtype=torch.float64)
    one_line_error(
        AttributionInputError,
        lambda: perturbation_curve(lm_logits, embeds, scores, 1, zero),
        "has 1 indices",
        "2 per example",
    )
    curve = perturbation_curve(lm_logits, embeds, scores, (2, 1), zero)
    for index in range(2):
        expected = reference_curve(embeds[index], scores[index], 2, 1, zero, "morf")
        np.testing.assert_allclose(curve[index].numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize(
    "target",
    [
        (-1, 3),
        [(-1, 3), (1, 0), (0, 2)],
        torch.tensor([[-1, 3], [1, 0], [0, 2]]),
        np.array([[-1, 3], [1, 0], [0, 2]]),
        torch.tensor([[4, 3]]).expand(3, 2),
    ],
    ids=["tuple", "list", "tensor", "numpy", "expanded"],
)
def test_targets_mean_what_select_target_means(target) -> None:
    embeds, scores = random_case(1, 3, 5)
    zero = torch.zeros(HIDDEN, dtype=torch.float64)
    curve = perturbation_curve(lm_logits, embeds, scores, target, zero, "lerf", batch_size=2)
    as_tensor = torch.as_tensor(target) if isinstance(target, np.ndarray) else target
    # Column 0 of a deletion curve is the unperturbed explained output.
    expected_start = select_target(lm_logits(embeds), as_tensor, 3)
    torch.testing.assert_close(curve[:, 0], expected_start)
    pairs = torch.as_tensor(target).expand(3, 2) if not isinstance(target, list) else target
    for index, (position, token) in enumerate(pairs):
        expected = reference_curve(
            embeds[index], scores[index], int(position), int(token), zero, "lerf"
        )
        np.testing.assert_allclose(curve[index].numpy(), expected, rtol=1e-12)


def test_class_targets_on_two_dimensional_outputs() -> None:
    embeds, scores = random_case(2, 3, 4)

    def classify(x: Tensor) -> Tensor:
        return lm_logits(x)[:, -1]  # (n, vocab)

    zero = torch.zeros(HIDDEN, dtype=torch.float64)
    cases = [
        (2, [2, 2, 2]),
        (torch.tensor(2), [2, 2, 2]),
        ([2, 0, 3], [2, 0, 3]),
        (torch.tensor([2, 0, 3]), [2, 0, 3]),
        (torch.tensor([[2], [0], [3]]), [2, 0, 3]),
    ]
    for target, classes in cases:
        curve = perturbation_curve(classify, embeds, scores, target, zero)
        for index, cls in enumerate(classes):
            expected = reference_curve(embeds[index], scores[index], -1, cls, zero, "morf")
            np.testing.assert_allclose(curve[index].numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        (1, "2 per example"),
        (None, "target is None"),
        ((0, 9), "out of range"),
        ((7, 0), "out of range"),
        ((0, 1, 2), "3 indices"),
        ([(0, 1)], "1 targets given for a batch of 2"),
        (torch.tensor([[0.0, 1.0], [0.0, 1.0]]), "dtype torch.float32"),
        (torch.tensor([[0, 1, 2]]), "shape (1, 3) for 2 examples"),
        (torch.zeros(2, 1, 2, dtype=torch.long), "shape (2, 1, 2)"),
        ([(0, 1), 1.5], "example 1: target (1.5,)"),
        ([(0, 1), (0, 1.5)], "example 1: target index 1 must be an int"),
        (1.5, "unsupported target type float"),
        ("last", "unsupported target type str"),
    ],
)
def test_ill_fitting_targets_get_one_line_errors(target, fragment) -> None:
    embeds, scores = random_case(3, 2, 4)
    zero = torch.zeros(HIDDEN, dtype=torch.float64)
    one_line_error(
        AttributionInputError,
        lambda: perturbation_curve(lm_logits, embeds, scores, target, zero),
        fragment,
    )


# --- class: validators of arguments ----------------------------------------------------

EMBEDS, SCORES = random_case(4, 2, 3)
ZERO = torch.zeros(HIDDEN, dtype=torch.float64)
WEIGHT = torch.arange(12, dtype=torch.float32).reshape(4, 3)


def _curve(**changes):
    arguments = {
        "forward_func": lm_logits,
        "embeds": EMBEDS,
        "scores": SCORES,
        "target": (-1, 0),
        "replacement": ZERO,
    } | changes
    return lambda: perturbation_curve(**arguments)


NAN_ROW = torch.tensor([[1.0, math.nan], [0.0, 1.0]])
VALIDATORS = [
    ("batch_size 0", _curve(batch_size=0), ValueError, "batch_size must be at least 1"),
    ("batch_size -3", _curve(batch_size=-3), ValueError, "at least 1"),
    ("batch_size 2.0", _curve(batch_size=2.0), TypeError, "batch_size must be an int"),
    ("batch_size True", _curve(batch_size=True), TypeError, "batch_size must be an int"),
    ("kind", _curve(kind="MoRF"), ValueError, "choose from morf, lerf, insertion"),
    ("kind None", _curve(kind=None), ValueError, "unknown curve"),
    ("forward", _curve(forward_func=3), TypeError, "callable"),
    ("embeds 2-d", _curve(embeds=EMBEDS[0]), ValueError, "(batch, seq, hidden)"),
    ("embeds empty", _curve(embeds=EMBEDS[:, :0], scores=SCORES[:, :0]), ValueError, "non-empty"),
    (
        "embeds nan",
        _curve(embeds=EMBEDS.clone().index_fill_(0, torch.tensor([1]), math.nan)),
        ValueError,
        "embeds of example 1",
    ),
    ("scores 3-d", _curve(scores=EMBEDS), ValueError, "sum over the hidden dimension"),
    ("scores short", _curve(scores=SCORES[:, :2]), ValueError, "expected (batch, seq) = (2, 3)"),
    ("scores complex", _curve(scores=SCORES.to(torch.complex128)), TypeError, "complex"),
    ("scores ragged", _curve(scores=[[1.0, 2.0, 3.0], [1.0]]), ValueError, "ragged"),
    ("scores text", _curve(scores=[["a", "b", "c"]] * 2), TypeError, "real numbers"),
    ("replacement shape", _curve(replacement=torch.zeros(2)), ValueError, "(hidden,) = (3,)"),
    ("replacement scalar", _curve(replacement=0.0), ValueError, "expected (hidden,)"),
    ("replacement inf", _curve(replacement=[0.0, math.inf, 0.0]), ValueError, "NaN or inf"),
    ("curve 1 point", lambda: curve_area([3.0]), ValueError, "at least 2 points"),
    ("curve scalar", lambda: curve_area(torch.tensor(3.0)), ValueError, "at least 2 points"),
    ("curve empty", lambda: curve_area(torch.zeros(2, 0)), ValueError, "at least 2 points"),
    (
        "delta shapes",
        lambda: delta_area(torch.ones(2, 3), torch.ones(3, 3)),
        ValueError,
        "same examples",
    ),
    ("resample short", lambda: resample_curve([1.0], [0.5]), ValueError, "at least 2 points"),
    (
        "resample above",
        lambda: resample_curve([1.0, 2.0], [0.5, 1.5]),
        ValueError,
        "entries 1 are 1.5",
    ),
    ("resample below", lambda: resample_curve([1.0, 2.0], [-0.25]), ValueError, "-0.25"),
    ("resample nan", lambda: resample_curve([1.0, 2.0], [math.nan]), ValueError, "[0, 1]"),
    ("resample 2-d", lambda: resample_curve([1.0, 2.0], [[0.5]]), ValueError, "1-d"),
    ("resample none", lambda: resample_curve([1.0, 2.0], []), ValueError, "non-empty"),
    ("order 2-d", lambda: relevance_order(torch.ones(2, 2), True), ValueError, "(seq,)"),
    ("order flag", lambda: relevance_order([1.0, 2.0], 1), TypeError, "True or False"),
    (
        "replacement kind",
        lambda: replacement_embedding(WEIGHT, "noise"),
        ValueError,
        "choose from zero, mean, token",
    ),
    (
        "replacement kind type",
        lambda: replacement_embedding(WEIGHT, 0),
        ValueError,
        "unknown replacement",
    ),
    (
        "token missing",
        lambda: replacement_embedding(WEIGHT, "token"),
        ValueError,
        "token_id in [0, 4)",
    ),
    (
        "token negative",
        lambda: replacement_embedding(WEIGHT, "token", -1),
        ValueError,
        "in [0, 4), got -1",
    ),
    ("token too big", lambda: replacement_embedding(WEIGHT, "token", 4), ValueError, "got 4"),
    (
        "token float",
        lambda: replacement_embedding(WEIGHT, "token", 1.0),
        TypeError,
        "token_id must be an int",
    ),
    ("token bool", lambda: replacement_embedding(WEIGHT, "token", True), TypeError, "bool"),
    (
        "token with zero",
        lambda: replacement_embedding(WEIGHT, "zero", 1),
        ValueError,
        "only used with kind='token'",
    ),
    (
        "token with mean",
        lambda: replacement_embedding(WEIGHT, "mean", 0),
        ValueError,
        "only used with kind='token'",
    ),
    ("weight 1-d", lambda: replacement_embedding(torch.ones(3)), ValueError, "(vocab, hidden)"),
    ("weight empty", lambda: replacement_embedding(torch.ones(0, 3)), ValueError, "non-empty"),
    (
        "weight nan mean",
        lambda: replacement_embedding(NAN_ROW, "mean"),
        ValueError,
        "embedding rows 0",
    ),
    ("weight nan token", lambda: replacement_embedding(NAN_ROW, "token", 0), ValueError, "token 0"),
    ("stats empty", lambda: conservation_stats([], []), ValueError, "at least one example"),
    (
        "stats lengths",
        lambda: conservation_stats([1.0, 2.0], [1.0]),
        ValueError,
        "2 relevance sums for 1 outputs",
    ),
    (
        "stats overflow",
        lambda: conservation_stats([1e308, 0.0], [-1e308, 1.0]),
        ValueError,
        "overflows float64 for examples 0",
    ),
]


@pytest.mark.parametrize(
    ("call", "kind", "fragment"),
    [case[1:] for case in VALIDATORS],
    ids=[case[0] for case in VALIDATORS],
)
def test_out_of_range_arguments_get_one_line_errors(call, kind, fragment) -> None:
    one_line_error(kind, call, fragment)


def test_valid_token_replacement_and_finite_rows_elsewhere() -> None:
    # A NaN row that is not used does not block the zero or the token replacement.
    assert replacement_embedding(NAN_ROW, "zero").tolist() == [0.0, 0.0]
    assert replacement_embedding(NAN_ROW, "token", torch.tensor(1)).tolist() == [0.0, 1.0]
    assert replacement_embedding(NAN_ROW, "token", np.int64(1)).tolist() == [0.0, 1.0]
    embedding = nn.Embedding(4, 3)
    assert replacement_embedding(embedding, "mean").shape == (3,)


@SETTINGS
@given(seed=st.integers(0, 1000), length=st.integers(2, 6))
def test_arrays_and_lists_work_like_tensors(seed, length) -> None:
    embeds, scores = random_case(seed, 2, length)
    filler = torch.full((HIDDEN,), 0.5, dtype=torch.float64)
    expected = perturbation_curves(lm_logits, embeds, scores, (-1, 1), filler)
    given_lists = perturbation_curves(
        lm_logits, embeds.numpy(), scores.tolist(), (-1, 1), filler.numpy()
    )
    for kind in CURVES:
        torch.testing.assert_close(given_lists[kind], expected[kind])
    curve = expected["morf"]
    torch.testing.assert_close(curve_area(curve.numpy()), curve_area(curve))
    torch.testing.assert_close(
        delta_area(curve.tolist(), expected["lerf"].numpy()),
        delta_area(curve, expected["lerf"]),
    )
    fractions = [0.0, 0.3, 1.0]
    torch.testing.assert_close(
        resample_curve(curve.numpy(), fractions),
        resample_curve(curve, torch.tensor(fractions, dtype=torch.float64)),
    )
    assert (
        relevance_order(scores[0].numpy(), True).tolist()
        == relevance_order(scores[0], True).tolist()
    )
    weight = embeds[0]
    torch.testing.assert_close(
        replacement_embedding(weight.numpy(), "mean"), replacement_embedding(weight, "mean")
    )
    sums, outputs = scores.sum(1), scores.sum(1) + 0.5
    assert conservation_stats(sums.numpy(), outputs.tolist()) == conservation_stats(sums, outputs)

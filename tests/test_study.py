"""The study runner end to end on a tiny random classifier and four sentences."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from torch import Tensor

from captum_mamba.apps.cli import main
from captum_mamba.apps.sentiment import MambaTextClassifier
from captum_mamba.apps.study import markdown_table, run_study
from captum_mamba.baselines.captum_methods import METHOD_NAMES, MethodSettings
from captum_mamba.models import mamba_config

SENTENCES = [
    ("a gorgeous , witty film", 1),
    ("dull and far too long", 0),
    ("the cast is superb", 1),
    ("nothing works here", 0),
]


def tiny_classifier() -> MambaTextClassifier:
    torch.manual_seed(0)
    return MambaTextClassifier(mamba_config(hidden_size=8, state_size=2, vocab_size=40)).eval()


def tokenize(text: str) -> Tensor:
    """Word-level toy tokenizer: a fixed id per word."""
    vocabulary = sorted({w for sentence, _ in SENTENCES for w in sentence.split()})
    return torch.tensor([[vocabulary.index(w) for w in text.split()]])


def test_run_study_writes_tables_and_plots(tmp_path) -> None:
    model = tiny_classifier()
    settings = MethodSettings(ig_steps=4, smoothgrad_samples=2)
    result = run_study(
        model,
        tokenize,
        SENTENCES,
        METHOD_NAMES,
        tmp_path,
        settings=settings,
        progress=False,
        caption="tiny",
    )
    for name in ("results_csv", "results_md", "examples_csv", "curves", "conservation"):
        assert result.files[name].is_file() and result.files[name].stat().st_size > 0
    with result.files["results_csv"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["method"] for row in rows] == list(METHOD_NAMES)
    with torch.no_grad():
        predicted = [int(model(input_ids=tokenize(t)).argmax()) for t, _ in SENTENCES]
    expected_accuracy = sum(p == y for p, (_, y) in zip(predicted, SENTENCES, strict=True)) / 4
    for row, record in zip(result.rows, result.records, strict=True):
        assert row["accuracy"] == expected_accuracy
        assert row["examples"] == 4 and len(record.seconds) == 4
        assert math.isfinite(row["delta_af"]) and row["ms_per_example"] > 0
        assert row["delta_af"] == sum(record.delta) / 4
        for lerf, morf, delta in zip(record.area_lerf, record.area_morf, record.delta, strict=True):
            assert delta == lerf - morf
    # The explained logit is the predicted class, the same for every method.
    outputs = {tuple(record.output) for record in result.records}
    assert len(outputs) == 1
    table = (tmp_path / "results.md").read_text()
    assert table.startswith("tiny") and all(name in table for name in METHOD_NAMES)
    assert markdown_table(result.rows).count("\n") == len(METHOD_NAMES) + 1


def test_mambalrp_rows_conserve_on_a_bias_free_classifier(tmp_path) -> None:
    model = tiny_classifier().double()
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.conv1d.bias.zero_()
    result = run_study(model, tokenize, SENTENCES, ["MambaLRP"], tmp_path, progress=False)
    (record,) = result.records
    for total, output in zip(record.relevance_sum, record.output, strict=True):
        assert abs(total - output) <= 1e-6 * max(1.0, abs(output))


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--epochs", "0"], "--epochs: must be at least 1, got 0"),
        (["--hidden-size", "-8"], "--hidden-size: must be at least 1, got -8"),
        (["--learning-rate", "0"], "--learning-rate: must be a positive number"),
        (["--num-examples", "0"], "--num-examples: must be at least 1, got 0"),
        (["--ig-steps", "0"], "--ig-steps: must be at least 1"),
        (["--threads", "0"], "--threads: must be at least 1, got 0"),
    ],
)
def test_study_command_refuses_out_of_range_arguments(capsys, arguments, expected) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["study", "run", "--data-dir", "nowhere", *arguments])
    assert caught.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("captum-mamba study run: error:") and expected in error

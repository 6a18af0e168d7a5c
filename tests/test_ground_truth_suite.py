"""The ground-truth suite end to end: a tiny Mamba trained for a few seconds on the
planted-evidence task, its tables and plots, and MambaLRP well above Random there."""

from __future__ import annotations

import pytest
import torch

from captum_mamba.apps import ground_truth
from captum_mamba.apps.cli import main
from captum_mamba.baselines.captum_methods import CP_LRP, LATIM_L2, MAMBA_LRP, RANDOM

pytestmark = pytest.mark.slow  # trains a tiny model (about 30 s of CPU)

SETUP = ground_truth.TrainingSetup(steps=100, batch_size=32, target_accuracy=0.98)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    _, metrics = ground_truth.load_or_train_task_model(
        "planted", "mamba", SETUP, folder, progress=lambda line: None
    )
    assert metrics["accuracy"]["16"] >= 0.95, metrics
    return folder


def test_cached_model_is_reloaded(cache):
    model, metrics = ground_truth.load_or_train_task_model(
        "planted",
        "mamba",
        SETUP,
        cache,
        progress=pytest.fail,  # no training this time
    )
    assert next(model.parameters()).dtype == torch.float64 and metrics["steps"] <= SETUP.steps
    examples = ground_truth.generate("planted", 64, seed=5)
    assert ground_truth.query_accuracy(model, examples) >= 0.95


def test_planted_evidence_mamba_lrp_beats_random(cache, tmp_path):
    result = ground_truth.run_suite(
        tmp_path,
        tasks=("planted",),
        architectures=("mamba",),
        methods=(MAMBA_LRP, RANDOM),
        count=24,
        setup=SETUP,
        cache_dir=cache,
        progress=lambda line: None,
    )
    rows = {row["method"]: row for row in result.tables["planted/mamba/16"]}
    lrp, random = rows[MAMBA_LRP], rows[RANDOM]
    # Random's expected hit@1 with the current token aside is 1/15
    assert random["hit@1-cur"][0] < 0.25
    assert lrp["hit@1-cur"][0] >= random["hit@1-cur"][0] + 0.3, (lrp, random)
    assert lrp["auc-cur"][0] > 0.8
    assert set(rows[MAMBA_LRP]) >= {"hit@1", "rr", "auc", "ap", "dAF", "top=cur"}
    text = result.files["markdown"].read_text()
    assert "## planted/mamba/16" in text and "| MambaLRP |" in text
    assert result.files["planted/mamba/16"].stat().st_size > 0


def test_command_line(cache, tmp_path, capsys):
    main(
        ["study", "run", "--suite", "ground-truth", "--tasks", "planted",
         "--architectures", "mamba", "--methods", "random,recency", "--num-examples", "4",
         "--cache-dir", str(cache), "--output-dir", str(tmp_path), "--threads", "1"]
    )  # fmt: skip
    output = capsys.readouterr().out
    assert "planted/mamba/16" in output and "| Recency |" in output
    assert (tmp_path / "ground_truth.md").is_file()
    with pytest.raises(SystemExit):
        main(["study", "run", "--suite", "ground-truth", "--tasks", "nope"])


def test_copy_diagnosis_against_autograd():
    """The diagnosis' conservation error of Gradient x Input equals the one computed from
    torch's own gradient of the model (an untrained Mamba-1, float64)."""
    model = ground_truth.build_model("mamba").double().eval()
    rows = ground_truth.copy_diagnosis(
        model, count=8, rules=("no rules (GxI)",), progress=lambda line: None
    )
    assert [(r["target"], r["aggregation"]) for r in rows[:4]] == [
        ("logit", a) for a in ground_truth.AGGREGATIONS
    ]
    errors = []
    for item in ground_truth.evaluation_items("copy", 2, 8, every_query=True):
        embeds = model.get_input_embeddings()(torch.tensor([item.ids])).double().detach()
        embeds.requires_grad_()
        output = model(inputs_embeds=embeds).logits[0, -1, item.answer]
        (gradient,) = torch.autograd.grad(output, embeds)
        value = float(output.detach())
        errors.append(abs(float((gradient * embeds).sum()) - value) / abs(value))
    expected = sum(errors) / len(errors)
    assert rows[0]["cons. err"][0] == pytest.approx(expected, rel=1e-6)
    for row in rows:
        for column in ("hit@1", "auc-cur", "share src", "top=cur-K"):
            assert 0.0 <= row[column][0] <= 1.0


def test_methods_that_refuse_the_hybrid_are_left_out_with_their_reason():
    """LaTIM is derived for Mamba-1/Mamba-2 blocks only: on the hybrid it is left out of
    the table and its refusal recorded; CP-LRP is explained on the hybrid."""
    model = ground_truth.build_model("bamba").double().eval()
    refused: dict[str, str] = {}
    results = ground_truth.evaluate(
        model, "planted", 16, (LATIM_L2, CP_LRP, RANDOM), count=2, with_delta=False,
        refused=refused,
    )  # fmt: skip
    assert set(results) == {CP_LRP, RANDOM} and len(results[RANDOM]["hit@1"]) == 2
    assert list(refused) == [LATIM_L2] and "Mamba-1 and Mamba-2" in refused[LATIM_L2]

"""Ground-truth tasks per model family (:mod:`captum_mamba.apps.family_tasks`): every
registered family builds, trains a step and is explained by every compared method; the
tables' numbers are the ground-truth suite's (its evaluation and metric functions, not a
copy); an unavailable family is reported, not hidden; the command line."""

from __future__ import annotations

import math

import pytest
import torch

from captum_mamba.adapters.families import FamilyUnavailable
from captum_mamba.apps import family_tasks, ground_truth
from captum_mamba.apps.cli import main
from captum_mamba.baselines.captum_methods import (
    CP_LRP,
    INPUT_X_GRADIENT,
    MAMBA_LRP,
    RANDOM,
    MethodSettings,
)
from captum_mamba.metrics import EvidenceScores

#: One optimiser step on four sequences.
ONE_STEP = ground_truth.TrainingSetup(steps=1, batch_size=4)
SETTINGS = MethodSettings(ig_steps=2)


def _silent(_: str) -> None:
    pass


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread: tiny models, on a CPU that other jobs share."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", tuple(family_tasks.FAMILIES))
def test_every_family_trains_and_is_explained(name: str) -> None:
    """One training step changes the parameters; every method explains the trained model
    (CP-LRP for the families with attention) and the suite's metrics are finite."""
    family = family_tasks.FAMILIES[name]
    try:
        untrained = family_tasks.build_family_model(name, ONE_STEP.seed)
    except FamilyUnavailable as error:
        pytest.skip(f"{name}: transformers lacks the family's classes ({error})")
    assert untrained.get_input_embeddings().num_embeddings == len(ground_truth.VOCABULARY)
    model, metrics = ground_truth.train_task_model(
        "planted", name, ONE_STEP, _silent, family_tasks.build_family_model
    )
    assert metrics["steps"] == 1 and 0.0 <= metrics["accuracy"]["16"] <= 1.0
    before, after = untrained.state_dict(), model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "the step changed nothing"
    model = model.double().eval()
    methods = family_tasks.family_methods(family, (MAMBA_LRP, CP_LRP, INPUT_X_GRADIENT))
    results = ground_truth.evaluate(model, "planted", 16, methods, 2, SETTINGS, with_delta=False)
    cp_lrp = {CP_LRP} if family.cp_lrp_differs else set()
    assert set(results) == {MAMBA_LRP, INPUT_X_GRADIENT} | cp_lrp
    for columns in results.values():
        assert len(columns["auc-cur"]) == 2
        assert all(math.isfinite(v) for values in columns.values() for v in values)


def test_registry_entries_are_distinct() -> None:
    titles = [family.title for family in family_tasks.FAMILIES.values()]
    assert len(set(titles)) == len(titles)
    assert all(key == family.name for key, family in family_tasks.FAMILIES.items())
    methods = family_tasks.DEFAULT_METHODS
    assert len(set(methods)) == len(methods), "a method twice has one runner too few"
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        family_tasks.build_family_model("nope")


def test_tables_hold_the_suites_metrics(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows equal the suite's own evaluation of the cached model; with the suite's
    metric function replaced, the tables change accordingly; an unavailable family is
    listed with its reason; a model below the learned accuracy is marked."""
    missing = family_tasks.ModelFamily("missing", "Missing", "NoSuchConfig", "NoSuchForCausalLM")
    monkeypatch.setitem(family_tasks.FAMILIES, "missing", missing)
    methods = (MAMBA_LRP, RANDOM)
    run = dict(
        tasks=("planted",), methods=methods, count=3, setup=ONE_STEP, settings=SETTINGS,
        cache_dir=tmp_path / "cache", progress=_silent,
    )  # fmt: skip
    result = family_tasks.run_families(tmp_path / "a", ("mamba", "missing"), **run)
    assert "NoSuchConfig" in result.unavailable["missing"]
    entry = result.results["mamba/planted/16"]
    model, metrics = ground_truth.load_or_train_task_model(
        "planted", "mamba", ONE_STEP, tmp_path / "cache", pytest.fail,
        family_tasks.build_family_model,
    )  # fmt: skip
    direct = ground_truth.evaluate(model, "planted", 16, methods, 3, SETTINGS, with_delta=False)
    assert entry["rows"] == ground_truth.summary_rows(direct)
    assert entry["accuracy"] == metrics["accuracy"]["16"]
    assert entry["learned"] == (entry["accuracy"] >= family_tasks.LEARNED_ACCURACY)
    text = result.files["markdown"].read_text()
    assert ("(not learned)" in text) != entry["learned"]
    assert "- missing: not measured (" in text and "| Mamba |" in text

    calls = []

    def fixed(scores, evidence, candidates=None, absolute=False):
        calls.append(len(scores))
        return EvidenceScores(0.25, 0.5, 0.125, 0.75, top=0)

    monkeypatch.setattr(ground_truth, "evidence_scores", fixed)
    result = family_tasks.run_families(tmp_path / "b", ("mamba",), **run)
    assert len(calls) == 2 * len(methods) * 3  # all positions and current token aside
    rows = {row["method"]: row for row in result.results["mamba/planted/16"]["rows"]}
    assert rows[MAMBA_LRP]["hit@1-cur"] == (0.25, 0.0) and rows[RANDOM]["auc-cur"] == (0.125, 0.0)
    text = result.files["markdown"].read_text()
    assert "| 0.25 ± 0.00 | 0.25 ± 0.00 |" in text and "| 0.12 ± 0.00 | 0.12 ± 0.00 |" in text


def test_command_line(tmp_path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(family_tasks, "FAMILY_SETUP", ONE_STEP)
    main(
        ["study", "run", "--suite", "families", "--families", "mamba2", "--num-examples", "2",
         "--ig-steps", "2", "--cache-dir", str(tmp_path / "cache"), "--output-dir",
         str(tmp_path / "out"), "--threads", "1"]
    )  # fmt: skip
    output = capsys.readouterr().out
    assert "| Mamba-2 |" in output and "AUC (cur. aside)" in output
    assert (tmp_path / "out" / "families.json").is_file()
    with pytest.raises(SystemExit):
        main(["study", "run", "--suite", "families", "--families", "nope"])

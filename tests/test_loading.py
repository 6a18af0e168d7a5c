"""The model loader registry of the applications: registered loaders are asked before the
built-in ones, the classifier checkpoint format is one registered loader (the general
loader does not know it), and arguments no loader reads are refused with the fix."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from app_helpers import tiny_classifier

from captum_mamba.apps import loading
from captum_mamba.apps.loading import (
    BUILT_IN_LOADERS,
    ExplainedModel,
    ModelLoader,
    ModelLoadError,
    load_explained,
    model_loaders,
    register_loader,
)
from captum_mamba.apps.sentiment import CHECKPOINT_FORMAT, from_classifier


def test_the_general_loader_does_not_import_the_classifier() -> None:
    tree = ast.parse(Path(loading.__file__).read_text())
    imported = [
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    ]
    assert not [name for name in imported if name.endswith("sentiment")]


def test_a_classifier_checkpoint_loads_through_its_registered_loader(tmp_path) -> None:
    names = [loader.name for loader in model_loaders()]
    assert names[-len(BUILT_IN_LOADERS) :] == [loader.name for loader in BUILT_IN_LOADERS]
    assert "captum-mamba classifier checkpoint" in names[: -len(BUILT_IN_LOADERS)]
    classifier = tiny_classifier()
    path = classifier.save(tmp_path / "news.ckpt")
    assert path.read_bytes().startswith(CHECKPOINT_FORMAT.encode())
    explained = load_explained(path)
    assert explained.label_names == classifier.label_names and explained.source == str(path)
    assert explained.fingerprint() == from_classifier(classifier, "x").fingerprint()


def test_a_registered_loader_is_asked_first(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(loading, "_REGISTERED", dict(loading._REGISTERED))
    classifier = tiny_classifier()
    toy = tmp_path / "model.toy"
    toy.write_text("toy")
    calls = []

    def load(source: str, tokenizer: object, max_length: int | None) -> ExplainedModel:
        calls.append((source, tokenizer, max_length))
        return from_classifier(classifier, source, max_length)

    with pytest.raises(ModelLoadError, match="is a file but not a captum-mamba classifier"):
        load_explained(toy)
    register_loader(ModelLoader("toy", lambda source: source.endswith(".toy"), load))
    explained = load_explained(toy, "tok", 5)
    assert calls == [(str(toy), "tok", 5)]
    assert (
        explained.encode(["the bank raised rates again today"])[0]
        == (from_classifier(classifier, "x", 5).encode(["the bank raised rates again today"])[0])
    )

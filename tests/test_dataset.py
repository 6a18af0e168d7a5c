"""attribute_dataset: every row equals the method run on that text alone, shards resume
after an interruption, settings are checked, seeded methods do not depend on shards."""

from __future__ import annotations

import math

import pytest
import torch
from app_helpers import NEWS, TOPICS, tiny_classifier

from captum_mamba import MambaLRP
from captum_mamba.apps.dataset import (
    MERGED_FILE,
    attribute_dataset,
    explain_in_batches,
    read_attributions,
)
from captum_mamba.apps.methods import build_runners
from captum_mamba.apps.sentiment import from_classifier
from captum_mamba.apps.sharding import RunSettingsError
from captum_mamba.attr.batches import length_buckets
from captum_mamba.baselines.captum_methods import MethodSettings

pyarrow = pytest.importorskip(
    "pyarrow", reason="Parquet results need pyarrow (the [parquet] extra)"
)

TEXTS = [text for text, _ in NEWS]
LABELS = [TOPICS.index(topic) for _, topic in NEWS]


@pytest.fixture(scope="module")
def explained64():
    return from_classifier(tiny_classifier(dtype=torch.float64), "tiny")


def rows(directory) -> list[dict]:
    return read_attributions(directory).to_pylist()


def test_rows_equal_each_text_explained_alone(tmp_path, explained64) -> None:
    run = attribute_dataset(
        explained64,
        TEXTS,
        tmp_path,
        "mambalrp,integrated_gradients,saliency,random",
        labels=LABELS,
        settings=MethodSettings(ig_steps=8),
        shard_size=5,
        batch_size=4,
        progress=False,
    )
    assert run.complete and run.computed == [0, 1, 2, 3] and run.merged == tmp_path / MERGED_FILE
    model = explained64.model
    lrp = MambaLRP(model)
    found = rows(tmp_path)
    assert [r["example_id"] for r in found] == list(range(len(TEXTS)))
    for row, text, label in zip(found, TEXTS, LABELS, strict=True):
        ids = torch.tensor([explained64.tokenizer.encode(text).ids])
        assert row["token_ids"] == ids[0].tolist() and row["label"] == label
        assert "".join(row["tokens"]) == text and len(row["tokens"]) == len(text.split())
        embeds = model.get_input_embeddings()(ids).detach()
        with torch.no_grad():
            logits = model(inputs_embeds=embeds)[0]
        assert row["predicted"] == int(logits.argmax()) == row["target"]
        assert row["target_name"] == TOPICS[row["target"]]
        # transformers computes exp(A_log) in float32 (modeling_mamba: A_log.float()); the
        # output here comes from this package's float64 scan.
        assert math.isclose(row["output"], float(logits[row["target"]]), rel_tol=1e-6)
        expected = lrp.attribute(embeds, target=row["target"]).sum(-1)[0]
        actual = torch.tensor(row["relevance_mambalrp"], dtype=torch.float64)
        assert torch.allclose(actual, expected, rtol=1e-9, atol=1e-12)
        assert math.isclose(
            row["delta_mambalrp"], row["output"] - float(expected.sum()), abs_tol=1e-10
        )
        assert row["delta_random"] is None and row["seconds_mambalrp"] > 0
        assert len(row["relevance_random"]) == len(row["tokens"])


def test_batches_equal_single_texts(tmp_path, explained64) -> None:
    methods = "mambalrp,lrp (ln-rule only),gradient x input,integrated gradients,saliency,recency"
    kwargs = {"labels": LABELS, "settings": MethodSettings(ig_steps=4), "progress": False}
    attribute_dataset(explained64, TEXTS, tmp_path / "b", methods, batch_size=8, **kwargs)
    attribute_dataset(explained64, TEXTS, tmp_path / "s", methods, batch_size=1, **kwargs)
    batched, single = rows(tmp_path / "b"), rows(tmp_path / "s")
    for a, b in zip(batched, single, strict=True):
        for key in a:
            if key.startswith("relevance_"):
                assert torch.allclose(torch.tensor(a[key]), torch.tensor(b[key]), rtol=1e-8), key


def test_length_buckets_respect_sizes_and_cover_every_text() -> None:
    lengths = [5, 1, 9, 9, 3, 7, 2]
    batches = length_buckets(lengths, batch_size=3, max_tokens=20)
    assert sorted(i for batch in batches for i in batch) == list(range(7))
    for batch in batches:
        assert (len(batch) <= 3 and len(batch) * max(lengths[i] for i in batch) <= 20) or (
            len(batch) == 1
        )
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)


def test_interrupted_run_resumes_with_the_missing_shards_only(tmp_path, explained64) -> None:
    kwargs = {"labels": LABELS, "shard_size": 4, "progress": False, "methods": "mambalrp,random"}
    written = []

    def stop_after_two(shard: int) -> None:
        written.append(shard)
        if len(written) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        attribute_dataset(explained64, TEXTS, tmp_path / "run", on_shard=stop_after_two, **kwargs)
    shards = sorted((tmp_path / "run" / "shards").glob("shard-*.parquet"))
    assert len(shards) == 2 and not (tmp_path / "run" / MERGED_FILE).exists()
    before = {path.name: path.stat().st_mtime_ns for path in shards}
    run = attribute_dataset(explained64, TEXTS, tmp_path / "run", **kwargs)
    assert run.skipped == [0, 1] and run.computed == [2, 3, 4] and run.complete
    assert {p.name: p.stat().st_mtime_ns for p in shards} == before  # not rewritten
    attribute_dataset(explained64, TEXTS, tmp_path / "once", **kwargs)
    untimed = [
        [{k: v for k, v in row.items() if not k.startswith("seconds_")} for row in rows(path)]
        for path in (tmp_path / "run", tmp_path / "once")
    ]
    assert untimed[0] == untimed[1]
    # Nothing left to do: a third run computes nothing and keeps the merged file.
    again = attribute_dataset(explained64, TEXTS, tmp_path / "run", **kwargs)
    assert again.computed == [] and again.merged is not None


def test_other_settings_are_refused_unless_overwritten(tmp_path, explained64) -> None:
    kwargs = {"labels": LABELS, "progress": False}
    attribute_dataset(explained64, TEXTS, tmp_path, "mambalrp", **kwargs)
    with pytest.raises(RunSettingsError, match=r"other settings \(methods differ\)"):
        attribute_dataset(explained64, TEXTS, tmp_path, "random", **kwargs)
    with pytest.raises(RunSettingsError, match="texts_fingerprint"):
        attribute_dataset(explained64, TEXTS[:-1], tmp_path, "mambalrp", labels=LABELS[:-1])
    run = attribute_dataset(explained64, TEXTS, tmp_path, "random", overwrite=True, **kwargs)
    assert run.computed == [0] and "relevance_random" in rows(tmp_path)[0]


def test_seeded_methods_do_not_depend_on_shards_or_ranks(tmp_path, explained64) -> None:
    methods = "random,smoothgrad,read position, then random"
    settings = MethodSettings(smoothgrad_samples=3, seed=7)
    kwargs = {"labels": LABELS, "settings": settings, "progress": False}
    attribute_dataset(explained64, TEXTS, tmp_path / "one", methods, shard_size=64, **kwargs)
    for rank in (1, 0):  # two "processes", the second one merges
        attribute_dataset(
            explained64,
            TEXTS,
            tmp_path / "two",
            methods,
            shard_size=3,
            rank=rank,
            world_size=2,
            **kwargs,
        )
    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    for a, b in zip(one, two, strict=True):
        for key in (
            "relevance_random",
            "relevance_smoothgrad",
            "relevance_read_position_then_random",
        ):
            assert a[key] == b[key]
    # Different examples get different random scores; the read position ranks first.
    assert one[0]["relevance_random"][:3] != one[1]["relevance_random"][:3]
    for row in one:
        scores = row["relevance_read_position_then_random"]
        assert scores.index(max(scores)) == len(scores) - 1


def test_targets_label_and_class_index(tmp_path, explained64) -> None:
    attribute_dataset(
        explained64, TEXTS, tmp_path / "l", labels=LABELS, target="label", progress=False
    )
    attribute_dataset(explained64, TEXTS, tmp_path / "c", target=2, progress=False)
    assert [r["target"] for r in rows(tmp_path / "l")] == LABELS
    assert {r["target"] for r in rows(tmp_path / "c")} == {2}
    assert {r["label"] for r in rows(tmp_path / "c")} == {None}
    bad = [
        ({"target": "label"}, "needs labels"),
        ({"target": 3}, r"class index in 0\.\.2, got 3"),
        ({"target": "token:the"}, "for language models"),
        ({"shard_size": 0}, "shard_size must be a positive integer"),
        ({"methods": "nope"}, "unknown method 'nope'"),
        ({"labels": [0]}, "1 labels for 18 texts"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            attribute_dataset(explained64, TEXTS, tmp_path / "bad", progress=False, **kwargs)
    assert not (tmp_path / "bad" / "shards").exists() or not any(
        (tmp_path / "bad" / "shards").iterdir()
    )


def test_language_model_next_token_and_given_token(tmp_path, make_lm) -> None:
    from app_helpers import word_tokenizer

    from captum_mamba.apps.loading import ExplainedModel
    from captum_mamba.attr.forward import default_forward

    tokenizer = word_tokenizer()
    model = make_lm(seed=3, vocab_size=tokenizer.get_vocab_size())
    explained = ExplainedModel(
        model,
        tokenizer,
        lambda texts: [tokenizer.encode(t).ids for t in texts],
        default_forward(model, "inputs_embeds"),
        0,
        (),
        "tiny LM",
        "tiny",
    )
    run = attribute_dataset(explained, TEXTS[:5], tmp_path / "next", batch_size=3, progress=False)
    assert run.complete
    lrp = MambaLRP(model)
    for row, text in zip(rows(tmp_path / "next"), TEXTS, strict=False):
        ids = torch.tensor([tokenizer.encode(text).ids])
        embeds = model.get_input_embeddings()(ids).detach()
        with torch.no_grad():
            logits = model(inputs_embeds=embeds).logits[0, -1]
        assert row["target"] == int(logits.argmax()) and row["position"] == ids.shape[1] - 1
        expected = lrp.attribute(embeds, target=(-1, row["target"])).sum(-1)[0]
        actual = torch.tensor(row["relevance_mambalrp"], dtype=torch.float64)
        assert torch.allclose(actual, expected, rtol=1e-9, atol=1e-12)
    attribute_dataset(explained, TEXTS[:2], tmp_path / "token", target="token:goal", progress=False)
    goal = tokenizer.token_to_id("goal")
    assert {r["target"] for r in rows(tmp_path / "token")} == {goal}
    assert {r["target_name"] for r in rows(tmp_path / "token")} == {"goal"}
    with pytest.raises(ValueError, match="2 tokens"):
        attribute_dataset(explained, TEXTS[:2], tmp_path / "x", target="token:a goal")


def test_a_model_that_ignores_the_mask_is_refused_for_batches(tmp_path) -> None:
    from captum_mamba.apps.loading import ExplainedModel

    classifier = tiny_classifier(dtype=torch.float64)
    model = classifier.model
    explained = from_classifier(classifier, "tiny")
    ignoring = ExplainedModel(
        model,
        classifier.tokenizer,
        explained.encode,
        lambda embeds, attention_mask=None: model(inputs_embeds=embeds),
        explained.pad_id,
        TOPICS,
        "ignores masks",
        "tiny",
    )
    with pytest.raises(ValueError, match="--batch-size 1"):
        attribute_dataset(ignoring, TEXTS, tmp_path / "b", batch_size=4, progress=False)
    assert attribute_dataset(ignoring, TEXTS, tmp_path / "s", batch_size=1, progress=False).complete


def test_results_load_with_pandas_and_datasets(tmp_path, explained64) -> None:
    attribute_dataset(explained64, TEXTS, tmp_path, "mambalrp,random", LABELS, progress=False)
    pandas = pytest.importorskip("pandas", reason="pandas is optional (only for reading)")
    frame = pandas.read_parquet(tmp_path / MERGED_FILE)
    assert len(frame) == len(TEXTS) and list(frame["example_id"]) == list(range(len(TEXTS)))
    datasets = pytest.importorskip("datasets", reason="datasets is optional (only for reading)")
    loaded = datasets.load_dataset("parquet", data_files=str(tmp_path / MERGED_FILE), split="train")
    assert loaded[3]["relevance_mambalrp"] == list(frame["relevance_mambalrp"][3])


def test_explain_in_batches_returns_input_order(explained64) -> None:
    (runner,) = build_runners(["MambaLRP"], explained64.model, explained64.forward)
    embedding = explained64.model.get_input_embeddings()
    sequences = [embedding(torch.tensor(r)).detach() for r in explained64.encode(TEXTS[:6])]
    scores, seconds = explain_in_batches(runner, sequences, [0] * 6, list(range(6)), 4)
    assert [s.shape[0] for s in scores] == [s.shape[0] for s in sequences]
    assert all(t > 0 for t in seconds)

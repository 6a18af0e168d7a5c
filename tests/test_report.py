"""The data-set report: a planted shortcut is ranked first, flagged and confirmed by
counterfactual removal (and not flagged without the plant); a planted gender bias is
found by the group probe; the numbers are checked against independent computations;
``report.json`` has a fixed schema; the page escapes everything a user supplies."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from report_helpers import (
    FEMALE,
    LABELS,
    MALE,
    PLANTED,
    metaspace_tokenizer,
    reviews,
    train_tiny,
    xss_report,
)

from captum_mamba.apps.cli import main
from captum_mamba.apps.loading import ExplainedModel
from captum_mamba.apps.report import (
    REPORT_FORMAT,
    ReportOptions,
    _long_range,
    _performance,
    explain_dataset,
    parse_groups,
    word_key,
)
from captum_mamba.apps.sentiment import from_classifier
from captum_mamba.attr.forward import default_forward

pytest.importorskip("pyarrow", reason="the report writes Parquet relevances (the [parquet] extra)")

TEST = reviews(60, seed=1, planted=True)
TRAIN_PLANTED = reviews(200, seed=0, planted=True)
TRAIN_CONTROL = reviews(200, seed=0, planted=False)
TOKENIZER = metaspace_tokenizer([e.text for e in TRAIN_PLANTED + TEST])
#: Thresholds of the planted-shortcut tests (short texts: six or seven words).
OPTIONS = ReportOptions(shortcut_share=0.4, trust_examples=8, bootstrap=100)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the tiny models are slower with more on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(train, directory, **kwargs):
    classifier = train_tiny(train, TOKENIZER)
    explained = from_classifier(classifier, "tiny")
    report = explain_dataset(
        explained,
        [e.text for e in TEST],
        directory,
        labels=[e.label for e in TEST],
        train_texts=[e.text for e in train],
        train_labels=[e.label for e in train],
        progress=False,
        **({"options": OPTIONS} | kwargs),
    )
    return classifier, report


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return build(TRAIN_PLANTED, tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    return build(TRAIN_CONTROL, tmp_path_factory.mktemp("control"))


def pos_section(report):
    return next(s for s in report.data["global"] if s["class"] == "pos")


def test_planted_shortcut_is_ranked_first_flagged_and_confirmed(planted) -> None:
    classifier, report = planted
    top = pos_section(report)["top"]
    assert top[0]["word"] == PLANTED and top[0]["rank"] == 1
    alerts = [a for a in report.data["shortcuts"]["alerts"] if a["word"] == PLANTED]
    assert len(alerts) == 1 and alerts[0]["class"] == "pos"
    alert = alerts[0]
    # Independent check of the counterfactual: remove the word from the raw texts,
    # re-tokenize, and compare the classifier's predictions.
    containing = [e.text for e in TEST if PLANTED in e.text.split()]
    removed = [" ".join(w for w in t.split() if w != PLANTED) for t in containing]
    before = classifier.logits(containing).argmax(1)
    after = classifier.logits(removed).argmax(1)
    assert alert["examples_containing"] == len(containing)
    assert alert["predictions_changed"] == int((before != after).sum()) > 0
    assert alert["share_changed"] == pytest.approx(float((before != after).double().mean()))
    of_class = before == 1
    drop = classifier.logits(containing)[of_class, 1] - classifier.logits(removed)[of_class, 1]
    assert alert["mean_logit_drop"] == pytest.approx(float(drop.double().mean()), rel=1e-6)
    assert alert["mean_logit_drop"] > 0
    # Training frequencies: the planted token is in positive texts only.
    frequencies = {row["class"]: row for row in alert["train_frequencies"]}
    assert frequencies["neg"]["containing"] == 0
    assert frequencies["pos"]["containing"] == sum(
        PLANTED in e.text.split() for e in TRAIN_PLANTED if e.label == 1
    )
    assert "retrain" in alert["next_steps"]
    assert PLANTED in " ".join(report.data["summary"])


def test_without_the_plant_there_is_no_alert_for_the_token(control) -> None:
    _, report = control
    assert PLANTED not in [a["word"] for a in report.data["shortcuts"]["alerts"]]
    top = pos_section(report)["top"]
    assert PLANTED not in [f["word"] for f in top[:1]]


def test_feature_statistics_against_a_direct_count(planted) -> None:
    _, report = planted
    rows = __import__("pyarrow.parquet").parquet.read_table(
        report.directory / "attributions" / "attributions.parquet"
    )
    rows = rows.to_pylist()
    of_class = [r for r in rows if r["target"] == 1]
    # every token is a word here ("▁word"), so word relevance is token relevance
    values = [
        v
        for r in of_class
        for t, v in zip(r["tokens"], r["relevance_mambalrp"], strict=True)
        if t.strip() == PLANTED
    ]
    total = sum(abs(v) for r in of_class for v in r["relevance_mambalrp"])
    feature = pos_section(report)["top"][0]
    assert feature["count"] == len(values)
    assert feature["mean_relevance"] == pytest.approx(np.mean(values))
    assert feature["share_of_class_relevance"] == pytest.approx(sum(values) / total)
    assert feature["ci_low"] <= feature["mean_relevance"] <= feature["ci_high"]
    assert feature["documents"] == sum(
        any(t.strip() == PLANTED for t in r["tokens"]) for r in of_class
    )
    assert len(feature["snippets"]) == OPTIONS.snippets


def test_performance_against_a_direct_count(planted) -> None:
    classifier, report = planted
    predicted = classifier.logits([e.text for e in TEST]).argmax(1).tolist()
    labels = [e.label for e in TEST]
    perf = report.data["performance"]
    right = [p == y for p, y in zip(predicted, labels, strict=True)]
    assert perf["accuracy"] == pytest.approx(np.mean(right))
    for c in (0, 1):
        tp = sum(p == c and y == c for p, y in zip(predicted, labels, strict=True))
        assert perf["per_class"][c]["precision"] == pytest.approx(tp / predicted.count(c))
        assert perf["per_class"][c]["recall"] == pytest.approx(tp / labels.count(c))
        for d in (0, 1):
            count = sum(p == d and y == c for p, y in zip(predicted, labels, strict=True))
            assert perf["confusion"][c][d] == count
    assert _performance([0, 2, 1], [0, 1, 1], ["a", "b", "c"])["per_class"][2]["recall"] == 0


def test_gallery_orders_by_confidence(planted) -> None:
    classifier, report = planted
    probabilities = classifier.logits([e.text for e in TEST]).double().softmax(1)
    confidence = probabilities.max(1).values
    gallery = report.data["gallery"]
    uncertain = [e["example_id"] for e in gallery["uncertain"]]
    assert uncertain == sorted(range(len(TEST)), key=lambda i: float(confidence[i]))[:3]
    for entry in gallery["confident_wrong"]:
        assert entry["label"] != entry["predicted"]
    for entry in gallery["confident_correct"]:
        assert entry["label"] == entry["predicted"]


def test_long_range_profile_against_a_hand_computed_example() -> None:
    class Example:
        position = 3
        relevance = np.array([4.0, -2.0, 1.0, 1.0])  # distances 3, 2, 1, 0

    profile = _long_range([Example()], beyond=1)
    shares = {(b["from"], b["to"]): b["mean_share"] for b in profile["bins"]}
    assert shares[(0, 0)] == pytest.approx(0.125)
    assert shares[(1, 1)] == pytest.approx(0.125)
    assert shares[(2, 3)] == pytest.approx(0.75)
    assert profile["share_beyond"] == pytest.approx(0.75)
    # cumulative share by distance 0, 1, 2, 3: 0.125, 0.25, 0.5, 1.0
    assert profile["distance_quantiles"] == {"q25": 1.0, "median": 2.0, "q75": 3.0}


def test_trust_section_scores_methods_against_sanity_baselines(planted) -> None:
    _, report = planted
    study = report.data["trust"]["study"]
    methods = [row["method"] for row in study["rows"]]
    assert methods == ["MambaLRP", "Random", "Recency"]
    assert study["examples"] == OPTIONS.trust_examples
    (conservation,) = report.data["trust"]["conservation"]
    assert conservation["method"] == "MambaLRP" and conservation["examples"] == len(TEST)
    assert (report.directory / "trust" / "results.csv").is_file()


def test_word_keys_and_groups() -> None:
    assert word_key(" Film,") == "film"
    assert word_key(" ...") == "..."
    assert word_key("\u201cGreat!\u201d") == "great"
    assert parse_groups("f=She,her ; m=he,him") == {"f": ["she", "her"], "m": ["he", "him"]}
    for bad in ("f=she", "f=she;m=she", "she,her;m=he"):
        with pytest.raises(ValueError):
            parse_groups(bad)


def test_group_probe_finds_a_planted_gender_bias(tmp_path) -> None:
    test = reviews(80, seed=3, gender_bias=0.5)
    groups = {"female": FEMALE, "male": MALE}
    results = {}
    for name, bias in (("biased", 0.9), ("control", 0.5)):
        train = reviews(200, seed=0, gender_bias=bias)
        tokenizer = metaspace_tokenizer([e.text for e in train + test])
        classifier = train_tiny(train, tokenizer)
        report = explain_dataset(
            from_classifier(classifier, name),
            [e.text for e in test],
            tmp_path / name,
            labels=[e.label for e in test],
            groups=groups,
            options=ReportOptions(trust_examples=0, bootstrap=20),
            progress=False,
        )
        results[name] = report.data["groups"]
        # independent check of the swap: each term for its counterpart, word by word
        counterpart = dict(zip(FEMALE, MALE, strict=True)) | dict(zip(MALE, FEMALE, strict=True))
        texts = [e.text for e in test]
        swapped = [" ".join(counterpart.get(w, w) for w in t.split()) for t in texts]
        before, after = classifier.logits(texts), classifier.logits(swapped)
        predicted = before.argmax(1)
        changed = int((after.argmax(1) != predicted).sum())
        change = (after - before).gather(1, predicted[:, None]).double()
        assert results[name]["swap"]["predictions_changed"] == changed
        assert results[name]["swap"]["mean_logit_change"] == pytest.approx(
            float(change.mean()), rel=1e-5, abs=1e-6
        )
    shares = {
        name: {(r["class"], r["group"]): r["share_of_class_relevance"] for r in probe["shares"]}
        for name, probe in results.items()
    }
    # in the biased model male words speak for "pos" and female words for "neg"
    for key in (("pos", "male"), ("neg", "female")):
        assert shares["biased"][key] > 0.1
        assert shares["biased"][key] > 2 * abs(shares["control"][key])
    swap = {name: probe["swap"] for name, probe in results.items()}
    assert swap["biased"]["examples"] == swap["control"]["examples"] == len(test)
    assert swap["biased"]["share_changed"] > 0.2
    assert swap["biased"]["share_changed"] > 2 * swap["control"]["share_changed"]
    assert swap["biased"]["mean_abs_logit_change"] > 2 * swap["control"]["mean_abs_logit_change"]
    assert results["biased"]["swap_map"]["she"] == "he"


#: Keys of report.json by section (the documented schema of docs/report.md).
SCHEMA = {
    "": {"format", "summary", "provenance", "performance", "global", "shortcuts", "groups"}
    | {"long_range", "trust", "gallery"},
    "provenance": {"date", "command_line", "model", "model_source", "model_fingerprint"}
    | {"data_file", "data_sha256", "rows", "label_names", "methods", "settings", "rules"}
    | {"options", "environment", "attributions"},
    "performance": {"labelled", "accuracy", "per_class", "confusion"},
    "global[]": {"class", "examples", "total_abs_relevance", "distinct_words", "ranked_words"}
    | {"top", "most_frequent", "alert_words"},
    "global[].top[]": {"word", "count", "documents", "document_frequency", "mean_relevance"}
    | {"share_of_class_relevance", "median_example_share", "examples_over_share", "ranked"}
    | {"ci_low", "ci_high", "rank", "snippets"},
    "shortcuts.alerts[]": {"class", "word", "rank", "median_example_share"}
    | {"examples_over_share", "document_frequency", "examples_containing"}
    | {"examples_containing_of_class", "predictions_changed", "share_changed"}
    | {"mean_logit_drop", "train_frequencies", "next_steps"},
    "long_range": {"examples", "bins", "distance_quantiles", "beyond", "share_beyond"}
    | {"examples_with_tokens_beyond", "longest"},
    "trust": {"conservation", "study"},
    "trust.study.rows[]": {"method", "sanity_baseline", "delta_af", "delta_af_sem"}
    | {"ms_per_example"},
    "gallery": {"confident_correct", "confident_wrong", "uncertain"},
    "gallery.uncertain[]": {"example_id", "label", "predicted", "explained", "probability"}
    | {"tokens", "relevance"},
}


def _at(data, path):
    for part in [p for p in path.split(".") if p]:
        many = part.endswith("[]")
        data = data[part.removesuffix("[]")]
        if many:
            data = data[0]
    return data


def test_report_json_schema(planted) -> None:
    _, report = planted
    data = json.loads((report.directory / "report.json").read_text())
    assert data["format"] == REPORT_FORMAT
    for path, keys in SCHEMA.items():
        assert set(_at(data, path.removesuffix("[]") + ("[]" if path.endswith("[]") else ""))) == (
            keys
        ), path
    assert data["groups"] is None

    def numbers(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from numbers(v)
        elif isinstance(value, list):
            for v in value:
                yield from numbers(v)
        elif isinstance(value, float):
            yield value

    assert all(math.isfinite(v) for v in numbers(data))
    assert data == json.loads(report.to_json())


def test_numbers_of_the_page_are_in_the_json(planted) -> None:
    _, report = planted
    page = (report.directory / "report.html").read_text()
    data = report.data
    alert = data["shortcuts"]["alerts"][0]
    assert f"<b>{alert['predictions_changed']}</b> predictions" in page
    assert f"{data['performance']['accuracy']:.3g}" in page
    for feature in pos_section(report)["top"]:
        assert f'<td class="">{feature["mean_relevance"]:.3g}</td>' in page


def test_everything_a_user_supplies_is_escaped(tmp_path) -> None:
    report = xss_report(tmp_path)
    page = report.to_html()
    assert "<script" not in page.lower()
    assert re.search(r"<img[^>]*onerror", page, re.IGNORECASE) is None
    assert "<b>bold</b>" not in page and "<i>scene" not in page
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    assert 'http-equiv="Content-Security-Policy"' in page
    assert torch.isfinite(torch.tensor(report.data["performance"]["accuracy"]))


def test_command_line_writes_the_report_with_training_frequencies(planted, tmp_path) -> None:
    classifier, _ = planted
    checkpoint = classifier.save(tmp_path / "planted.ckpt")
    for name, rows in (("test.csv", TEST), ("train.csv", TRAIN_PLANTED)):
        lines = ["text,label"] + [f"{e.text},{LABELS[e.label]}" for e in rows]
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    main(
        [
            *("report", "--model", str(checkpoint), "--dataset", str(tmp_path / "test.csv")),
            *("--label-column", "label", "--train-dataset", str(tmp_path / "train.csv")),
            *("--groups", "female=she,her;male=he,him", "--shortcut-share", "0.4"),
            *("--trust-examples", "0", "--no-progress", "--output-dir", str(tmp_path / "out")),
            *("--threads", "1"),
        ]
    )
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    (alert,) = [a for a in data["shortcuts"]["alerts"] if a["word"] == PLANTED]
    assert [row["containing"] > 0 for row in alert["train_frequencies"]] == [False, True]
    assert data["provenance"]["data_sha256"] is not None
    assert data["provenance"]["command_line"][0] == "captum-mamba"  # then sys.argv[1:]
    assert (tmp_path / "out" / "report.html").is_file()
    assert (tmp_path / "out" / "attributions" / "attributions.parquet").is_file()


def test_a_language_model_is_refused(tmp_path, tiny_lm) -> None:
    explained = ExplainedModel(
        tiny_lm,
        None,
        lambda texts: [[1, 2, 3] for _ in texts],
        default_forward(tiny_lm, "inputs_embeds"),
        0,
        (),
        "tiny LM",
        "tiny",
    )
    with pytest.raises(ValueError, match="explains classifiers"):
        explain_dataset(explained, ["a b c"], tmp_path, progress=False)
    assert not (tmp_path / "attributions").exists()


def test_a_second_run_resumes_from_the_shards(planted) -> None:
    classifier, report = planted
    shards = sorted((report.directory / "attributions" / "shards").glob("*.parquet"))
    written = [path.stat().st_mtime_ns for path in shards]
    again = explain_dataset(
        from_classifier(classifier, "tiny"),
        [e.text for e in TEST],
        report.directory,
        labels=[e.label for e in TEST],
        train_texts=[e.text for e in TRAIN_PLANTED],
        train_labels=[e.label for e in TRAIN_PLANTED],
        progress=False,
        options=OPTIONS,
    )
    assert [path.stat().st_mtime_ns for path in shards] == written
    for key in ("global", "shortcuts", "performance", "long_range", "gallery"):
        assert json.loads(again.to_json())[key] == json.loads(report.to_json())[key], key

"""The ``captum-mamba`` command line: every error path is one line on stderr with a
non-zero exit code and no traceback (each case in its own process); the 3-class news
set goes through train, attribute and study without Python; command names in errors and help."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from app_helpers import NEWS, tiny_classifier, word_tokenizer, write_news_csv

from captum_mamba.apps.benchmark import BenchmarkSettings
from captum_mamba.apps.cli import benchmark_settings, main, parser
from captum_mamba.apps.sentiment import TextClassifier

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("pyarrow", reason="Parquet results need pyarrow ([parquet] extra)")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Data files, a checkpoint, a tokenizer and broken variants of each."""
    root = tmp_path_factory.mktemp("cli")
    paths = {
        "news": write_news_csv(root / "news.csv"),
        "ckpt": tiny_classifier().save(root / "tiny.ckpt"),
        "tokenizer": root / "tokenizer.json",
        "file": root / "a_file.txt",
        "corrupt": root / "corrupt.ckpt",
        "other": root / "other.bin",
        "empty_text": root / "empty_text.csv",
        "bad_label": root / "bad_label.csv",
        "float_label": root / "float_label.csv",
        "quote": root / "quote.csv",
        "latin1": root / "latin1.csv",
        "bad_json": root / "bad.jsonl",
        "no_dataset": root / "not_a_dataset",
        "old_run": root / "old_run",
        "free_text": root / "free_text.csv",
        "broken_cr": root / "broken_cr.csv",
    }
    word_tokenizer().save(str(paths["tokenizer"]))
    paths["file"].write_text("not a folder\n")
    data = paths["ckpt"].read_bytes()
    paths["corrupt"].write_bytes(data[: len(data) // 2])
    paths["other"].write_bytes(b"\x00\x01 not a checkpoint")
    paths["empty_text"].write_text('id,body,topic\n0,"the team won",sport\n1,"  ",tech\n')
    paths["bad_label"].write_text('id,body,topic\n0,"the team won",sport\n1,"new chip",politics\n')
    paths["float_label"].write_text("text,label\nthe team won,1.5\n")
    paths["quote"].write_text('id,body,topic\n0,"the team won,sport\n')
    paths["latin1"].write_bytes("id,body,topic\n0,caf\xe9 news,tech\n".encode("latin-1"))
    paths["bad_json"].write_text('{"body": "the team won", "topic": "sport"}\n{oops\n')
    paths["no_dataset"].mkdir()
    rows = "".join(f'{i},"{text} {i}",{text} {i}\n' for i, (text, _) in enumerate(NEWS * 2))
    paths["free_text"].write_text("id,body,topic\n" + rows)
    # A row ended by a bare carriage return in a file whose rows end with \n.
    paths["broken_cr"].write_bytes(b"id,body,topic\n0,the team won,sport\r1,new chip,tech\n")
    return {name: str(path) for name, path in paths.items()}


def attribute(files: dict[str, str], *extra: str, dataset: str = "news") -> list[str]:
    args = ["attribute", "--model", files["ckpt"], "--dataset", files[dataset]]
    return [*args, "--text-column", "body", "--label-column", "topic", *extra]


def study(files: dict[str, str], *extra: str) -> list[str]:
    args = ["study", "run", "--model", files["ckpt"], "--dataset", files["news"]]
    return [*args, "--text-column", "body", "--label-column", "topic", *extra]


def train(files: dict[str, str], *extra: str) -> list[str]:
    args = ["train", "--dataset", files["news"], "--tokenizer", files["tokenizer"]]
    return [*args, "--text-column", "body", "--label-column", "topic", *extra]


#: (case id, argv from the files, exit code, substrings of the one stderr line)
CASES = [
    ("unknown command", lambda f: ["nonsense"], 2, ["invalid choice: 'nonsense'"]),
    ("demo count 0", lambda f: ["demo", "--count", "0"], 2, ["--count: must be at least 1, got 0"]),
    ("demo count -1", lambda f: ["demo", "--count", "-1"], 2, ["--count: must be at least 1"]),
    ("demo count text", lambda f: ["demo", "--count", "x"], 2, ["expected an integer, got 'x'"]),
    ("demo threads 0", lambda f: ["demo", "--threads", "0"], 2, ["--threads: must be at least 1"]),
    (
        "demo output is a file",
        lambda f: ["demo", "--output-dir", f["file"]],
        1,
        ["a_file.txt is a file; pass a folder"],
    ),
    (
        "demo data folder missing",
        lambda f: ["demo", "--data-dir", f["file"] + "_missing", "--output-dir", f["old_run"]],
        1,
        ["rotten_tomatoes.csv not found in --data-dir", "_missing"],
    ),
    (
        "demo default data folder missing",
        lambda f: ["demo", "--output-dir", f["old_run"]],
        1,
        ["rotten_tomatoes.csv not found in the data folder of $CAPTUM_MAMBA_DATA"],
    ),
    ("train epochs 0", lambda f: train(f, "--epochs", "0"), 2, ["--epochs: must be at least 1"]),
    ("train lr nan", lambda f: train(f, "--learning-rate", "nan"), 2, ["--learning-rate"]),
    (
        "train teacher weight 2",
        lambda f: train(f, "--teacher-weight", "2"),
        2,
        ["--teacher-weight: must be at most 1.0"],
    ),
    (
        "train phrases -1",
        lambda f: train(f, "--phrases-per-text", "-1"),
        2,
        ["--phrases-per-text: must be at least 0"],
    ),
    (
        "train validation fraction 1",
        lambda f: train(f, "--validation-fraction", "1"),
        2,
        ["between 0 and 1"],
    ),
    (
        "train label names",
        lambda f: train(f, "--label-names", "a,a"),
        2,
        ["distinct comma-separated class names"],
    ),
    (
        "train without labels",
        lambda f: ["train", "--dataset", f["news"], "--tokenizer", f["tokenizer"]],
        1,
        ["train needs labels; pass --label-column"],
    ),
    (
        "train missing file",
        lambda f: [*train(f), "--dataset", f["news"] + ".missing"],
        1,
        ["file ", "news.csv.missing not found (no such file)"],
    ),
    (
        "train free-text label column",
        lambda f: [*train(f, "--dataset", f["free_text"])],
        1,
        ["column 'topic' has 36 distinct labels in 36 rows", "--label-column", "--max-classes"],
    ),
    (
        "train missing column",
        lambda f: [*train(f), "--text-column", "review"],
        1,
        ["news.csv has no column 'review'", "--text-column"],
    ),
    (
        "train tokenizer missing",
        lambda f: [*train(f), "--tokenizer", f["file"] + ".json"],
        1,
        ["--tokenizer", "a_file.txt.json: no such file"],
    ),
    (
        "train tokenizer unreadable",
        lambda f: [*train(f), "--tokenizer", f["file"]],
        1,
        ["is not a readable tokenizer.json"],
    ),
    (
        "train output is a folder",
        lambda f: train(f, "--output", f["no_dataset"]),
        1,
        ["is a folder; pass a checkpoint file name"],
    ),
    (
        "attribute empty text",
        lambda f: attribute(f, dataset="empty_text"),
        1,
        ["empty_text.csv line 3 (row 2): empty text in column 'body'", "fill in its text"],
    ),
    (
        "attribute label outside the classes",
        lambda f: attribute(f, dataset="bad_label"),
        1,
        [
            "bad_label.csv line 3 (row 2): label 'politics' is not one of the classes",
            "--label-names",
        ],
    ),
    (
        "attribute non-integer label",
        lambda f: (
            [
                "attribute",
                "--model",
                f["ckpt"],
                "--dataset",
                f["float_label"],
                "--label-column",
                "label",
            ]
        ),
        1,
        ["float_label.csv line 2 (row 1): label '1.5' is neither an integer"],
    ),
    (
        "attribute malformed CSV",
        lambda f: attribute(f, dataset="quote"),
        1,
        ["quote.csv line", "malformed CSV", "close the quotes"],
    ),
    (
        "attribute row broken by a carriage return",
        lambda f: attribute(f, dataset="broken_cr"),
        1,
        ["broken_cr.csv line 2 (row 1): 5 fields but 3 columns", "carriage return", "with \\n"],
    ),
    (
        "attribute malformed JSONL",
        lambda f: attribute(f, dataset="bad_json"),
        1,
        ["bad.jsonl line 2 (row 2): not valid JSON"],
    ),
    (
        "attribute unreadable file",
        lambda f: attribute(f, dataset="latin1"),
        1,
        ["latin1.csv is not UTF-8 text", "save it as UTF-8"],
    ),
    (
        "attribute folder that is no data set",
        lambda f: attribute(f, dataset="no_dataset"),
        1,
        ["not_a_dataset is a folder but not a Hugging Face data set"],
    ),
    (
        "attribute missing column",
        lambda f: attribute(f, "--label-column", "stars"),
        1,
        ["news.csv has no column 'stars'", "--label-column"],
    ),
    (
        "attribute unknown method",
        lambda f: attribute(f, "--methods", "mambalrp,lime"),
        2,
        ["unknown method 'lime'", "Integrated Gradients", "any case"],
    ),
    ("attribute shard size 0", lambda f: attribute(f, "--shard-size", "0"), 2, ["--shard-size"]),
    ("attribute batch size 0", lambda f: attribute(f, "--batch-size", "0"), 2, ["--batch-size"]),
    ("attribute count 0", lambda f: attribute(f, "--num-examples", "0"), 2, ["--num-examples"]),
    ("attribute count -1", lambda f: attribute(f, "--num-examples", "-1"), 2, ["at least 1"]),
    ("attribute ig steps 0", lambda f: attribute(f, "--ig-steps", "0"), 2, ["--ig-steps"]),
    (
        "attribute smoothgrad samples 0",
        lambda f: attribute(f, "--smoothgrad-samples", "0"),
        2,
        ["--smoothgrad-samples"],
    ),
    ("attribute max tokens 0", lambda f: attribute(f, "--max-tokens", "0"), 2, ["--max-tokens"]),
    ("attribute max length 0", lambda f: attribute(f, "--max-length", "0"), 2, ["--max-length"]),
    ("attribute threads -2", lambda f: attribute(f, "--threads", "-2"), 2, ["--threads"]),
    ("attribute bad target", lambda f: attribute(f, "--target", "banana"), 2, ["token:TEXT"]),
    (
        "attribute class outside the model",
        lambda f: attribute(f, "--target", "7", "--output-dir", f["old_run"] + "_t"),
        1,
        ["class index in 0..2, got 7"],
    ),
    (
        "attribute output is a file",
        lambda f: attribute(f, "--output-dir", f["file"]),
        1,
        ["--output-dir", "a_file.txt is a file; pass a folder"],
    ),
    (
        "attribute output below a file",
        lambda f: attribute(f, "--output-dir", f["file"] + "/out"),
        1,
        ["a_file.txt is a file; pass a folder"],
    ),
    (
        "attribute corrupt checkpoint",
        lambda f: [*attribute(f), "--model", f["corrupt"]],
        1,
        ["corrupt.ckpt is corrupt or truncated (checksum mismatch)"],
    ),
    (
        "attribute file that is no checkpoint",
        lambda f: [*attribute(f), "--model", f["other"]],
        1,
        ["other.bin is a file but not a captum-mamba classifier checkpoint"],
    ),
    (
        "attribute missing model",
        lambda f: [*attribute(f), "--model", f["file"] + ".d/model"],
        1,
        ["a_file.txt.d/model: no such file or folder"],
    ),
    (
        "attribute model file name typo",
        lambda f: [*attribute(f), "--model", "sentimnet.ckpt"],
        1,
        ["sentimnet.ckpt: no such file or folder"],
    ),
    (
        "attribute hub id offline",
        lambda f: [*attribute(f), "--model", "nobody-here/no-such-model"],
        1,
        ["nobody-here/no-such-model", "hub cannot be reached", "HF_HUB_OFFLINE"],
    ),
    (
        "attribute on the meta device",
        lambda f: attribute(f, "--device", "meta", "--output-dir", f["old_run"] + "_meta"),
        1,
        ["--device meta holds shapes without values"],
    ),
    (
        "attribute long text refused",
        lambda f: attribute(
            f, "--max-length", "3", "--long-texts", "refuse", "--output-dir", f["old_run"] + "_l"
        ),
        1,
        ["news.csv row 1: a text has 6 tokens, more than the 3 the model reads", "keep-tail"],
    ),
    (
        "attribute factory without the function",
        lambda f: [*attribute(f), "--model", "json:no_such_factory"],
        1,
        ["json:no_such_factory: json has no function 'no_such_factory'"],
    ),
    (
        "attribute folder without config",
        lambda f: [*attribute(f), "--model", f["no_dataset"]],
        1,
        ["is a folder without config.json"],
    ),
    (
        "attribute no model",
        lambda f: ["attribute", "--dataset", f["news"], "--text-column", "body"],
        1,
        ["pass exactly one of --model"],
    ),
    (
        "attribute rank outside",
        lambda f: attribute(f, "--rank", "2", "--world-size", "2"),
        1,
        ["rank must be in 0..world_size-1, got rank 2 of 2"],
    ),
    (
        "attribute rank alone",
        lambda f: attribute(f, "--rank", "1"),
        1,
        ["pass both rank and world_size"],
    ),
    (
        "attribute other run in the folder",
        lambda f: attribute(f, "--output-dir", f["old_run"], "--methods", "random"),
        1,
        ["holds a run with other settings (methods differ)", "--overwrite"],
    ),
    ("study count 0", lambda f: study(f, "--num-examples", "0"), 2, ["--num-examples"]),
    (
        "study token replacement",
        lambda f: study(f, "--replacement", "token"),
        1,
        ["--replacement token needs --replacement-token"],
    ),
    (
        "study replacement name",
        lambda f: study(f, "--replacement", "blank"),
        2,
        ["invalid choice: 'blank'"],
    ),
    (
        "study without labels",
        lambda f: [*study(f)[:-2]],
        1,
        ["the study needs labels (for accuracy); pass --label-column"],
    ),
    (
        "study unknown method",
        lambda f: study(f, "--methods", "RANDOM,shap"),
        2,
        ["unknown method 'shap'"],
    ),
    ("study memory length 0", lambda f: ["study", "memory", "--length", "0"], 2, ["--length"]),
    (
        "study memory method",
        lambda f: ["study", "memory", "--methods", "rollout,lime"],
        1,
        ["unknown --methods 'lime'"],
    ),
    ("benchmark repeats 0", lambda f: ["benchmark", "--repeats", "0"], 2, ["--repeats"]),
    ("benchmark lengths 0", lambda f: ["benchmark", "--lengths", "0"], 2, ["--lengths"]),
    ("benchmark hidden -1", lambda f: ["benchmark", "--hidden", "-1"], 2, ["--hidden"]),
    (
        "benchmark vocab below the target token",
        lambda f: ["benchmark", "--vocab", "10"],
        2,
        ["--vocab: must be larger than the explained token id 42, got 10"],
    ),
    ("benchmark unknown option", lambda f: ["benchmark", "--fast"], 2, ["unrecognized"]),
]


@pytest.fixture(scope="module")
def results(files, tmp_path_factory) -> list[dict]:
    """Every case of :data:`CASES`, each in its own process (see tests/cli_driver.py)."""
    # The "other run" case needs a finished run in old_run first.
    main([*attribute(files, "--output-dir", files["old_run"], "--no-progress")])
    missing = str(Path(files["file"]).parent / "no_data_here")
    environment = {"HF_HUB_OFFLINE": "1", "CAPTUM_MAMBA_DATA": missing}
    cases = [
        {"argv": [str(a) for a in build(files)], "env": environment} for _, build, _, _ in CASES
    ]
    table = tmp_path_factory.mktemp("driver") / "cases.json"
    table.write_text(json.dumps(cases))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "cli_driver.py"), str(table)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case[0] for case in CASES])
def test_every_error_is_one_line_without_a_traceback(results, index) -> None:
    _, _, code, parts = CASES[index]
    result = results[index]
    lines = [line for line in result["stderr"].splitlines() if line.strip()]
    assert result["code"] == code, result["stderr"]
    assert len(lines) == 1 and "Traceback" not in result["stderr"], result["stderr"]
    assert ": error: " in lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert result["seconds"] < 5, f"{result['seconds']:.1f} s to fail"


def test_data_folder_hint_only_where_the_folder_is_used(results) -> None:
    """A file the user named is 'not found', without the data-folder hint."""
    index = [case[0] for case in CASES].index("train missing file")
    assert "CAPTUM_MAMBA_DATA" not in results[index]["stderr"]


def test_errors_name_the_command(capsys) -> None:
    for argv, name in [
        (["study", "run", "--num-examples", "0"], "captum-mamba study run"),
        (["demo", "--count", "0"], "captum-mamba demo"),
        (["benchmark", "--repeats", "0"], "captum-mamba benchmark"),
    ]:
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2
        assert capsys.readouterr().err.startswith(f"{name}: error: ")


def test_help_names_the_commands(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["attribute", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: captum-mamba attribute") and "python -m" not in text
    for option in ("--model", "--dataset", "--text-column", "--methods", "--threads"):
        assert option in text


def test_benchmark_arguments_are_passed_through_unchanged() -> None:
    args = parser().parse_args(["benchmark", "--lengths", "16", "32", "--repeats", "2"])
    settings = benchmark_settings(args)
    assert settings.lengths == (16, 32) and settings.repeats == 2
    assert settings == BenchmarkSettings(lengths=(16, 32), repeats=2)


def test_quick_benchmark_sizes_yield_to_given_options() -> None:
    args = parser().parse_args(["benchmark", "--quick", "--lengths", "24", "--hidden", "8"])
    settings = benchmark_settings(args)
    assert settings == BenchmarkSettings.quick().replace(lengths=(24,), hidden=8)


def test_three_class_csv_train_attribute_and_study(tmp_path, capsys) -> None:
    """A 3-class CSV through the command line: train (then load from the cache),
    attribute with labels as targets, and study it, without writing Python."""
    data = write_news_csv(tmp_path / "news.csv")
    word_tokenizer().save(str(tmp_path / "tokenizer.json"))
    common = ["--text-column", "body", "--label-column", "topic"]
    setup = ["--hidden-size", "8", "--num-layers", "1", "--state-size", "2", "--epochs", "2"]
    setup += ["--train-batch-size", "6", "--validation-fraction", "0.2", "--threads", "1"]
    setup += ["--teacher-weight", "0.5", "--phrases-per-text", "1", "--no-balance-classes"]
    cache = ["--cache-dir", str(tmp_path / "cache")]
    checkpoint = tmp_path / "news.ckpt"
    train_args = ["train", "--dataset", str(data), *common, *setup, *cache]
    train_args += ["--tokenizer", str(tmp_path / "tokenizer.json"), "--output", str(checkpoint)]
    main(train_args)
    first = capsys.readouterr()
    assert "classes business, sport, tech" in first.out and "training" in first.err
    main(train_args)  # loaded from the cache this time
    assert "training" not in capsys.readouterr().err
    saved = TextClassifier.load(checkpoint).setup
    assert (saved.teacher_weight, saved.phrases_per_text, saved.balance_classes) == (0.5, 1, False)
    out = tmp_path / "attributions"
    main(
        [
            "attribute",
            "--model",
            str(checkpoint),
            "--dataset",
            str(data),
            *common,
            "--methods",
            "MambaLRP,random,recency",
            "--target",
            "label",
            "--output-dir",
            str(out),
            "--shard-size",
            "5",
            "--no-progress",
            "--threads",
            "1",
        ]
    )
    assert "4 shard(s) computed" in capsys.readouterr().out
    import pyarrow.parquet as parquet

    rows = parquet.read_table(out / "attributions.parquet").to_pylist()
    topics = ("business", "sport", "tech")
    assert [r["target"] for r in rows] == [topics.index(topic) for _, topic in NEWS]
    assert [r["target_name"] for r in rows] == [topic for _, topic in NEWS]
    study_dir = tmp_path / "study"
    main(
        [
            "study",
            "run",
            "--model",
            str(checkpoint),
            "--dataset",
            str(data),
            *common,
            "--methods",
            "mambalrp,integrated gradients,random,recency",
            "--ig-steps",
            "4",
            "--num-examples",
            "9",
            "--output-dir",
            str(study_dir),
            "--no-progress",
            "--threads",
            "1",
            "--keep-last",
        ]
    )
    printed = capsys.readouterr().out
    assert "9 examples studied" in printed and "last token kept" in printed
    with (study_dir / "results.csv").open() as handle:
        summary = list(csv.DictReader(handle))
    assert {r["method"] for r in summary} == {
        "MambaLRP",
        "Integrated Gradients",
        "Random",
        "Recency",
    }
    assert all(r["examples"] == "9" for r in summary)
    # Train-or-load inside the other commands: a seeded share of the same file.
    main(
        [
            "study",
            "run",
            "--dataset",
            str(data),
            *common,
            *setup,
            *cache,
            "--tokenizer",
            str(tmp_path / "tokenizer.json"),
            "--train-fraction",
            "0.5",
            "--methods",
            "random",
            "--output-dir",
            str(tmp_path / "split"),
            "--no-progress",
        ]
    )
    assert "9 examples studied" in capsys.readouterr().out  # the held-out half


def test_saved_hugging_face_data_set_and_several_text_columns(tmp_path) -> None:
    datasets = pytest.importorskip("datasets", reason="datasets is optional")
    halves = [text.split(" ", 2) for text, _ in NEWS]
    frame = {
        "head": [" ".join(h[:2]) for h in halves],
        "tail": [h[2] for h in halves],
        "topic": [topic for _, topic in NEWS],
    }
    datasets.Dataset.from_dict(frame).save_to_disk(str(tmp_path / "saved"))
    checkpoint = tiny_classifier().save(tmp_path / "tiny.ckpt")
    out = tmp_path / "out"
    main(
        [
            "attribute",
            "--model",
            str(checkpoint),
            "--dataset",
            str(tmp_path / "saved"),
            "--text-column",
            "head",
            "--text-column",
            "tail",
            "--label-column",
            "topic",
            "--methods",
            "random",
            "--output-dir",
            str(out),
            "--no-progress",
        ]
    )
    import pyarrow.parquet as parquet

    rows = parquet.read_table(out / "attributions.parquet").to_pylist()
    texts = [f"{a}\n{b}" for a, b in zip(frame["head"], frame["tail"], strict=True)]
    assert [r["text"] for r in rows] == texts
    assert torch.tensor([r["label"] for r in rows]).tolist() == [
        ("business", "sport", "tech").index(t) for t in frame["topic"]
    ]

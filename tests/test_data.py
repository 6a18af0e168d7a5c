"""Readers of labelled text files: formats, label mapping, one-line errors, splits."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from captum_mamba.apps.data import (
    SENTIMENT_LABELS,
    SST2_FILE,
    DataFormatError,
    LabelledText,
    default_data_dir,
    fingerprint,
    load_rotten_tomatoes,
    load_sst2,
    read_labelled,
    train_validation_split,
)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    return path


def jsonl(*rows: object) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


# (file name, content, keyword arguments, expected texts, expected labels)
READABLE = [
    ("plain.csv", "text,label\ngood film,1\nbad film,0\n", {}, ["good film", "bad film"], [1, 0]),
    (
        "quoted_newline.csv",
        'text,label\n"first line\nsecond, with a comma",1\n"say ""hi""",0\n',
        {},
        ["first line\nsecond, with a comma", 'say "hi"'],
        [1, 0],
    ),
    ("crlf.csv", "text,label\r\ngood,1\r\nbad,0\r\n", {}, ["good", "bad"], [1, 0]),
    ("bom.csv", "\ufefftext,label\ngood,1\n", {}, ["good"], [1]),
    ("blank_lines.csv", "text,label\n\ngood,1\n\n\nbad,0\n", {}, ["good", "bad"], [1, 0]),
    (
        "columns.csv",
        "id,review,stars,extra\n7,fine,2,x\n8,awful,0,y\n",
        {"text_column": "review", "label_column": "stars"},
        ["fine", "awful"],
        [2, 0],
    ),
    ("spaces.csv", "text,label\ngood, 1 \n", {}, ["good"], [1]),
    ("tabs.tsv", "text\tlabel\na, b\t1\n", {}, ["a, b"], [1]),
    (
        "rows.jsonl",
        jsonl({"text": "a", "label": 1}, {"text": "b", "label": "0"}),
        {},
        ["a", "b"],
        [1, 0],
    ),
    ("blank.jsonl", "\n" + jsonl({"text": "a", "label": 0}) + "\n\n", {}, ["a"], [0]),
    (
        "keys.jsonl",
        jsonl({"sentence": "a", "y": 2, "other": None}),
        {"text_column": "sentence", "label_column": "y"},
        ["a"],
        [2],
    ),
    (
        "named.csv",
        "text,label\nok,neutral\nyes,positive\nno,negative\nagain,2\n",
        {"label_names": ("negative", "neutral", "positive")},
        ["ok", "yes", "no", "again"],
        [1, 2, 0, 2],
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "kwargs", "texts", "labels"), READABLE, ids=[r[0] for r in READABLE]
)
def test_readable_files(tmp_path, name, content, kwargs, texts, labels) -> None:
    data = read_labelled(write(tmp_path, name, content), **kwargs)
    assert [e.text for e in data.examples] == texts
    assert [e.label for e in data.examples] == labels
    assert data.source == str(tmp_path / name)


def test_integer_labels_name_the_classes_by_number(tmp_path) -> None:
    data = read_labelled(write(tmp_path, "d.csv", "text,label\na,0\nb,3\n"))
    assert data.label_names == ("0", "1", "2", "3") and data.num_labels == 4


def test_string_labels_are_mapped_to_sorted_classes(tmp_path) -> None:
    content = "text,label\na,pos\nb,neg\nc,neutral\nd,pos\n"
    data = read_labelled(write(tmp_path, "d.csv", content))
    assert data.label_names == ("neg", "neutral", "pos")
    assert [e.label for e in data.examples] == [2, 0, 1, 2]


# (file name, content, keyword arguments, substrings the one-line message must contain)
BAD = [
    (
        "no_text.csv",
        "review,label\na,1\n",
        {},
        ["no column 'text'", "review, label", "text_column"],
    ),
    ("no_label.csv", "text,y\na,1\n", {}, ["no column 'label'", "label_column"]),
    ("empty.csv", "", {}, ["is empty", "header row"]),
    ("header_only.csv", "text,label\n", {}, ["has no rows"]),
    ("empty_text.csv", "text,label\nok,1\n,0\n", {}, ["line 3 (row 2)", "empty text"]),
    ("blank_text.csv", "text,label\n   ,0\n", {}, ["line 2 (row 1)", "empty text"]),
    (
        "short_row.csv",
        "text,label\nok,1\nonly text\n",
        {},
        ["line 3 (row 2)", "no value", "'label'"],
    ),
    ("long_row.csv", "text,label\nnice, really,1\n", {}, ["line 2 (row 1)", "3 fields", "quote"]),
    ("float_label.csv", "text,label\na,1.5\n", {}, ["line 2 (row 1)", "'1.5'", "neither"]),
    ("float_int.csv", "text,label\na,1.0\n", {}, ["'1.0'", "neither"]),
    ("empty_label.csv", "text,label\na,\n", {}, ["line 2 (row 1)", "neither"]),
    ("mixed.csv", "text,label\na,1\nb,pos\n", {}, ["line 3 (row 2)", "'pos'", "label_names"]),
    ("negative.csv", "text,label\na,1\nb,-1\n", {}, ["line 3 (row 2)", "'-1'", "0..1"]),
    (
        "outside.csv",
        "text,label\na,1\nb,2\n",
        {"label_names": SENTIMENT_LABELS},
        ["line 3 (row 2)", "'2'", "0..1 (negative, positive)"],
    ),
    (
        "unknown_name.csv",
        "text,label\na,positive\nb,meh\n",
        {"label_names": SENTIMENT_LABELS},
        ["line 3 (row 2)", "'meh'"],
    ),
    (
        "line_after_newline.csv",
        'text,label\n"two\nlines",1\nok,x\n',
        {"label_names": SENTIMENT_LABELS},
        ["line 4 (row 2)", "'x'"],
    ),
    (
        "after_blank.csv",
        "text,label\n\n\nok,9\n",
        {"label_names": SENTIMENT_LABELS},
        ["line 4 (row 1)"],
    ),
    ("quote.csv", 'text,label\nok,1\n"never closed,0\n', {}, ["malformed CSV", "quote"]),
    (
        "latin1.csv",
        "text,label\ncaf\xe9,1\n".encode("latin-1"),
        {},
        ["not UTF-8", "save it as UTF-8"],
    ),
    (
        "bad.jsonl",
        jsonl({"text": "a", "label": 1}) + "{oops\n",
        {},
        ["line 2 (row 2)", "not valid JSON"],
    ),
    ("list.jsonl", '["a", 1]\n', {}, ["line 1 (row 1)", "not an object"]),
    ("missing_key.jsonl", jsonl({"text": "a"}), {}, ["line 1 (row 1)", "no value", "'label'"]),
    ("null_text.jsonl", jsonl({"text": None, "label": 1}), {}, ["no value", "'text'"]),
    ("number_text.jsonl", jsonl({"text": 5, "label": 1}), {}, ["is a int, not a string"]),
    ("float.jsonl", jsonl({"text": "a", "label": 1.0}), {}, ["neither"]),
    ("bool.jsonl", jsonl({"text": "a", "label": True}), {}, ["neither"]),
    ("reviews.txt", "text,label\na,1\n", {}, ["cannot tell the format", "file_format"]),
]


@pytest.mark.parametrize(("name", "content", "kwargs", "expected"), BAD, ids=[r[0] for r in BAD])
def test_bad_files_raise_one_line_errors(tmp_path, name, content, kwargs, expected) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(DataFormatError) as caught:
        read_labelled(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path))
    for part in expected:
        assert part in message, (part, message)


def test_file_format_overrides_the_suffix(tmp_path) -> None:
    path = write(tmp_path, "reviews.txt", jsonl({"text": "a", "label": 1}))
    assert read_labelled(path, file_format="jsonl").examples == (LabelledText("a", 1),)
    with pytest.raises(ValueError, match="file_format must be one of"):
        read_labelled(path, file_format="xml")


def test_missing_file_and_bad_label_names(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing\.csv not found"):
        read_labelled(tmp_path / "nothing.csv")
    path = write(tmp_path, "d.csv", "text,label\na,1\n")
    for names in ((), ("a", "a")):
        with pytest.raises(ValueError, match="distinct and non-empty"):
            read_labelled(path, label_names=names)


def test_parquet(tmp_path) -> None:
    pyarrow = pytest.importorskip("pyarrow", reason="pyarrow is optional (pip install pyarrow)")
    import pyarrow.parquet as parquet

    path = tmp_path / "d.parquet"
    table = pyarrow.table({"review": ["good", "bad", "meh"], "label": [1, 0, 2]})
    parquet.write_table(table, path)
    data = read_labelled(path, text_column="review")
    assert [(e.text, e.label) for e in data.examples] == [("good", 1), ("bad", 0), ("meh", 2)]
    with pytest.raises(DataFormatError, match=r"no column 'text' \(columns: review, label\)"):
        read_labelled(path)
    parquet.write_table(pyarrow.table({"text": ["a", ""], "label": [0, 1]}), path)
    with pytest.raises(DataFormatError, match="row 2: empty text"):
        read_labelled(path)
    write(tmp_path, "broken.parquet", b"PAR1 not really")
    with pytest.raises(DataFormatError, match=r"broken\.parquet is not a readable Parquet file"):
        read_labelled(tmp_path / "broken.parquet")


def test_parquet_without_pyarrow_names_the_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = write(tmp_path, "d.parquet", b"PAR1")
    with pytest.raises(ImportError, match="needs pyarrow; pip install pyarrow"):
        read_labelled(path)


def examples(count: int, positive_every: int = 3) -> list[LabelledText]:
    return [LabelledText(f"text {i}", int(i % positive_every == 0)) for i in range(count)]


def test_split_is_seeded_stratified_and_complete() -> None:
    data = examples(300)
    train, validation = train_validation_split(data, 0.2, seed=5)
    assert (train, validation) == train_validation_split(data, 0.2, seed=5)
    assert train_validation_split(data, 0.2, seed=6)[1] != validation
    assert sorted(train + validation, key=data.index) == data
    assert not set(e.text for e in train) & set(e.text for e in validation)
    # 100 positives and 200 negatives: 20 % of each is held out.
    assert Counter(e.label for e in validation) == {1: 20, 0: 40}
    # File order is kept in both parts.
    assert train == sorted(train, key=data.index) and validation == sorted(
        validation, key=data.index
    )


def test_split_keeps_one_of_each_class_and_refuses_bad_fractions() -> None:
    data = [LabelledText("a", 0), LabelledText("b", 0), LabelledText("c", 1)]
    train, validation = train_validation_split(data, 0.1)
    assert validation == [LabelledText("a", 0)] or validation == [LabelledText("b", 0)]
    assert LabelledText("c", 1) in train
    for fraction in (0, 1, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"validation_fraction must be in \(0, 1\)"):
            train_validation_split(data, fraction)
    with pytest.raises(ValueError, match="holds out nothing"):
        train_validation_split([LabelledText("a", 0), LabelledText("b", 1)], 0.1)


def test_fingerprint_changes_with_any_text_label_order_or_name() -> None:
    data = examples(5)
    base = fingerprint(data, SENTIMENT_LABELS)
    assert base == fingerprint(list(data), SENTIMENT_LABELS)
    changed = [
        fingerprint([LabelledText("text 0!", 1), *data[1:]], SENTIMENT_LABELS),
        fingerprint([LabelledText("text 0", 0), *data[1:]], SENTIMENT_LABELS),
        fingerprint(data[::-1], SENTIMENT_LABELS),
        fingerprint(data[:-1], SENTIMENT_LABELS),
        fingerprint(data, ("neg", "pos")),
    ]
    assert len({base, *changed}) == 6


SHARED = default_data_dir()


@pytest.mark.skipif(not (SHARED / SST2_FILE).is_file(), reason=f"shared data not at {SHARED}")
def test_shared_sentiment_files_match_their_readme() -> None:
    # Counts from ../shared/data/README.md.
    sst2 = load_sst2(SHARED / SST2_FILE)
    assert len(sst2) == 872 and sum(e.label for e in sst2) == 444
    rotten = load_rotten_tomatoes(SHARED / "rotten_tomatoes.csv")
    assert len(rotten) == 11960 and sum(e.label for e in rotten) == 6963

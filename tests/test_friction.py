"""What a new user tripped over (issue 28), one test (or more) per item: messy CSV files
(bare carriage returns, fields over the csv module's limit), free-text label columns,
model arguments that are typos, fixed method styles in every plot, plain command-line
help, the demo's explained logit, readable tokens for Captum's LLM attribution, doc
examples that keep the repository clean, meta-device inputs, the long-text policy and
corrupt shards on resume. The command-line error paths themselves run in subprocesses
in tests/test_cli.py (exit code, one line, no traceback, under 5 s)."""

from __future__ import annotations

import argparse
import csv
import logging
import re
import warnings
from pathlib import Path

import pytest
import torch
from app_helpers import NEWS, TOPICS, tiny_classifier, write_news_csv

from captum_mamba.apps import study
from captum_mamba.apps.cli import main, parser
from captum_mamba.apps.data import (
    DataFormatError,
    LabelledText,
    class_list,
    line_ending,
    read_texts,
)
from captum_mamba.apps.loading import LongTextError, keep_tokens, looks_like_hub_id
from captum_mamba.apps.methods import ALL_METHODS
from captum_mamba.apps.sentiment import from_classifier
from captum_mamba.visualization import (
    METHOD_STYLES,
    ReadableTokenizer,
    method_style,
    method_styles,
    plot_conservation,
    plot_perturbation_curves,
)

ROOT = Path(__file__).resolve().parents[1]
LONG_WORDS = 60_000


# Item 2 and 11: CSV files as exported tweets and long documents come.


@pytest.fixture
def messy_csv(tmp_path: Path) -> Path:
    """Rows end with \\n; texts hold bare carriage returns (unquoted), a quoted field
    holds a real line break, and one text has 60,000 words (about 360 KB)."""
    long_text = " ".join(f"word{i % 97}" for i in range(LONG_WORDS))
    rows = [
        "text,label",
        "first line\rsecond line of the tweet,0",
        "a\r\rb,1",
        '"quoted\r\nacross lines",1',
        f"{long_text},0",
        "ends with a return\r,1",
    ]
    path = tmp_path / "tweets.csv"
    path.write_bytes(("\n".join(rows) + "\n").encode())
    return path


def test_bare_carriage_returns_are_text_and_long_fields_are_read(messy_csv: Path) -> None:
    limit = csv.field_size_limit()
    table = read_texts(messy_csv, "text", "label")
    assert line_ending(messy_csv) == "\n"
    assert table.labels == (0, 1, 1, 0, 1)
    assert table.texts[0] == "first line\rsecond line of the tweet"
    assert table.texts[1] == "a\r\rb"
    assert table.texts[2] == "quoted\r\nacross lines"
    assert len(table.texts[3].split(" ")) == LONG_WORDS and len(table.texts[3]) > 131072
    assert table.texts[4] == "ends with a return\r"
    assert csv.field_size_limit() == limit  # the csv module's limit is left as it was


@pytest.mark.parametrize(("ending", "expected"), [(b"\r\n", "\r\n"), (b"\r", "\r"), (b"\n", "\n")])
def test_line_endings_are_detected(tmp_path: Path, ending: bytes, expected: str) -> None:
    path = tmp_path / "file.csv"
    inside = b"" if ending == b"\r" else b"x\ry"  # a bare \r inside a text
    path.write_bytes(ending.join([b"text,label", inside + b"a,0", b"b,1", b""]))
    assert line_ending(path) == expected
    table = read_texts(path, "text", "label")
    first = "a" if ending == b"\r" else "x\rya"
    assert table.texts == (first, "b") and table.labels == (0, 1)


def test_a_row_still_broken_names_the_carriage_return_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_bytes(b"text,label\ngood,0\nthe team won\r1\n")
    with pytest.raises(DataFormatError) as info:
        read_texts(path, "text", "label")
    message = str(info.value)
    assert "line 3 (row 2)" in message and "carriage return" in message
    assert "\n" not in message


# Item 1: a free-text column given as the label column.


def test_free_text_label_column_is_refused_and_can_be_allowed(tmp_path: Path) -> None:
    rows = [(text, f"{text} {i}") for i, (text, _) in enumerate(NEWS * 2)]
    path = write_news_csv(tmp_path / "news.csv", rows)
    with pytest.raises(DataFormatError) as info:
        read_texts(path, "body", "topic")
    message = str(info.value)
    assert "column 'topic' has 36 distinct labels in 36 rows" in message
    assert "--label-column" in message and "--max-classes" in message
    assert len(message) < 400  # never the whole class list
    table = read_texts(path, "body", "topic", max_classes=36)
    assert len(table.label_names) == 36
    with pytest.raises(DataFormatError, match="36 distinct labels"):
        read_texts(path, "body", "topic", max_classes=35)
    assert read_texts(write_news_csv(tmp_path / "ok.csv"), "body", "topic").label_names == TOPICS


def test_class_lists_are_shortened() -> None:
    assert class_list(("negative", "positive")) == "negative, positive"
    names = tuple(f"class {i}" for i in range(2300))
    shown = class_list(names)
    assert shown.endswith("... (2300 classes)") and len(shown) < 120


# Item 3: what a model argument is.


@pytest.mark.parametrize(
    ("source", "hub"),
    [
        ("state-spaces/mamba-130m-hf", True),
        ("gpt2", True),
        ("sentimnet.ckpt", False),
        ("./model", False),
        ("/tmp/models/x", False),
        ("../x/y", False),
        ("tests/no-such-model", False),  # tests/ is a folder here: a path
        ("a/b/c", False),
    ],
)
def test_hub_ids_and_paths(source: str, hub: bool, monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    assert looks_like_hub_id(source) is hub


# Item 11: the long-text policy.


def test_long_text_policy() -> None:
    ids = list(range(10))
    assert keep_tokens(ids, 4) == [6, 7, 8, 9]
    assert keep_tokens(ids, 4, "keep_head") == [0, 1, 2, 3]
    assert keep_tokens(ids, None, "refuse") == ids and keep_tokens(ids, 10, "refuse") == ids
    with pytest.raises(LongTextError, match="10 tokens, more than the 4"):
        keep_tokens(ids, 4, "refuse")


def test_classifier_truncation_follows_the_policy() -> None:
    classifier = tiny_classifier()
    text = NEWS[0][0]  # six words
    whole = from_classifier(classifier, "tiny", max_length=64).encode([text])[0]
    assert len(whole) == 6
    head = from_classifier(classifier, "tiny", 3, "keep_head").encode([text])[0]
    tail = from_classifier(classifier, "tiny", 3, "keep_tail").encode([text])[0]
    assert head == whole[:3] and tail == whole[-3:]
    with pytest.raises(LongTextError, match="6 tokens, more than the 3"):
        from_classifier(classifier, "tiny", 3, "refuse").encode([text])
    assert from_classifier(classifier, "tiny", 6, "refuse").encode([text])[0] == whole


# Item 5: one fixed, distinct style per method.


def _line_style(line) -> tuple:
    return (line.get_color(), line.get_linestyle(), line.get_marker())


def test_every_method_has_a_distinct_fixed_style() -> None:
    assert set(ALL_METHODS) <= set(METHOD_STYLES)
    styles = [METHOD_STYLES[name] for name in ALL_METHODS]
    assert len({s.color for s in styles}) == len(styles)
    assert len({(s.color, s.linestyle, s.marker) for s in styles}) == len(styles)
    assert method_style("MambaLRP") == method_style("mambalrp")
    assert (method_style("MambaLRP").color, method_style("MambaLRP").linestyle) == ("#d62728", "-")
    others = method_styles(["MambaLRP", "mine", "yours", "Saliency"])
    assert others["MambaLRP"] == METHOD_STYLES["MambaLRP"]
    assert len(set(others.values())) == 4


def test_plots_use_the_method_styles() -> None:
    names = list(ALL_METHODS)
    curves = {
        name: torch.rand(3, 11, generator=torch.Generator().manual_seed(i))
        for i, name in enumerate(names)
    }
    ax = plot_perturbation_curves(curves)
    drawn = {line.get_label().split(" (AUC")[0]: _line_style(line) for line in ax.get_lines()}
    assert len(set(drawn.values())) == len(names)
    assert drawn["MambaLRP"] == ("#d62728", "-", "o")
    # The same method looks the same in a plot of fewer methods.
    ax = plot_perturbation_curves({"Saliency": curves["Saliency"], "MambaLRP": curves["MambaLRP"]})
    again = {line.get_label().split(" (AUC")[0]: _line_style(line) for line in ax.get_lines()}
    assert again["MambaLRP"] == drawn["MambaLRP"] and again["Saliency"] == drawn["Saliency"]
    ax = plot_conservation({"MambaLRP": torch.ones(4), "Saliency": torch.zeros(4)}, torch.ones(4))
    faces = [tuple(c.get_facecolor()[0][:3]) for c in ax.collections]
    assert len(set(faces)) == 2


def test_study_curves_have_distinct_styles(tmp_path: Path, monkeypatch) -> None:
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figures to inspect them
    fractions = torch.linspace(0, 1, 21)
    records = []
    for i, name in enumerate(ALL_METHODS):
        record = study.MethodRecord(name, signed=i % 2 == 0)
        record.curves = {kind: [torch.rand(21)] for kind in ("morf", "lerf", "insertion")}
        record.output, record.relevance_sum = [1.0, 2.0], [0.5, 1.5]
        records.append(record)
    files = study._plot(records, fractions, tmp_path)
    assert files["curves"].is_file()
    for axis in figures[0].axes:
        styles = {line.get_label(): _line_style(line) for line in axis.get_lines()}
        assert len(styles) == len(ALL_METHODS) == len(set(styles.values()))
        assert styles["MambaLRP"] == ("#d62728", "-", "o")
    monkeypatch.undo()
    for figure in figures:
        plt.close(figure)


# Item 8: plain help that lists the choices.


def _subparsers(command: argparse.ArgumentParser, name: str = "captum-mamba"):
    yield name, command
    for action in command._actions:
        if isinstance(action, argparse._SubParsersAction):
            visible = {choice.dest for choice in action._choices_actions}
            for sub, child in action.choices.items():
                if sub in visible:
                    yield from _subparsers(child, f"{name} {sub}")


def test_help_is_plain_text_and_describes_every_option() -> None:
    for name, command in _subparsers(parser()):
        text = command.format_help()
        assert "``" not in text and "::" not in text and ":func:" not in text, name
        assert ":class:" not in text, name
        for action in command._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, (name, action.option_strings)


def test_methods_help_lists_the_methods(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["study", "run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for method in ALL_METHODS:
        assert method in text
    assert "--num-examples NUM_EXAMPLES a seeded sample" in text


# Item 6: the demo says what the explained logit is.


def test_demo_explains_the_logit_and_marks_misclassified_rows(tmp_path: Path, capsys) -> None:
    from captum_mamba.apps.demo import explain_examples

    classifier = tiny_classifier()
    examples = [LabelledText(text, TOPICS.index(topic)) for text, topic in NEWS[::6]]
    predicted = classifier.logits([e.text for e in examples]).argmax(-1).tolist()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        png = explain_examples(classifier, examples, tmp_path)
    out = capsys.readouterr().out
    assert png.is_file()
    html = (tmp_path / "sentiment_heatmap.html").read_text()
    for i, (example, guess) in enumerate(zip(examples, predicted, strict=True)):
        truth, name = TOPICS[example.label], TOPICS[guess]
        assert f"label {truth}, predicted {name} with probability" in out
        assert f"explained: the logit of class '{name}'" in out
        row = re.escape(f"[{i}] label {truth}, predicted {name} (p ") + r"[0-9.]+\)"
        assert re.search(row, html)
        marked = re.search(row + " - misclassified", html) is not None
        assert marked == (guess != example.label)
    assert out.count("MISCLASSIFIED") == sum(
        g != e.label for g, e in zip(predicted, examples, strict=True)
    )


# Item 7: Captum's LLM attribution, readable and quiet.


def _byte_level_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    corpus = ["The quick brown fox jumps over the lazy dog"] * 20 + [t for t, _ in NEWS]
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def test_llm_attribution_tokens_are_readable_and_quiet(caplog) -> None:
    from captum.attr import LLMGradientAttribution, TextTokenInput

    from captum_mamba import LayerMambaLRP
    from captum_mamba.models import mamba_config, random_mamba_lm

    plain = _byte_level_tokenizer()
    assert any(
        "Ġ" in token for token in plain.convert_ids_to_tokens(plain("a quick fox").input_ids)
    )
    tokenizer = ReadableTokenizer(plain)
    model = random_mamba_lm(mamba_config(vocab_size=len(plain)), seed=0)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        llm = LLMGradientAttribution(LayerMambaLRP(model, model.get_input_embeddings()), tokenizer)
        inp = TextTokenInput("The quick brown fox", tokenizer)
        result = llm.attribute(inp, target=" jumps over the lazy dog")
    assert "".join(result.input_tokens) == "The quick brown fox"
    assert not any("Ġ" in token for token in result.input_tokens + result.output_tokens)
    assert result.token_attr.shape == (len(result.output_tokens), len(result.input_tokens))
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    with pytest.raises(TypeError, match="not a transformers tokenizer"):
        ReadableTokenizer(object())


# Item 9: doc examples write into a folder, never the repository root.

_WRITES = re.compile(r"\.(save|savefig|save_pretrained|to_csv|to_parquet|write_table)\(([^)]*)\)")


def test_doc_examples_do_not_write_into_the_working_folder() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
    writes = 0
    for page in pages:
        for block in re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S):
            for _, argument in _WRITES.findall(block):
                writes += 1
                bare = re.fullmatch(r"""\s*["'][^"'/\\]+["']\s*(,.*)?""", argument)
                assert not bare, f"{page.name}: writes {argument.strip()} into the working folder"
    assert writes >= 2  # the visualisation page's HTML and PDF at least


# Item 12: a corrupt shard is computed again on resume.


def test_corrupt_shard_is_recomputed_on_resume(tmp_path: Path, capsys) -> None:
    pytest.importorskip("pyarrow", reason="Parquet results need pyarrow ([parquet] extra)")
    import pyarrow.parquet as parquet

    data = write_news_csv(tmp_path / "news.csv")
    checkpoint = tiny_classifier().save(tmp_path / "tiny.ckpt")
    out = tmp_path / "run"
    argv = ["attribute", "--model", str(checkpoint), "--dataset", str(data)]
    argv += ["--text-column", "body", "--label-column", "topic", "--methods", "random"]
    argv += ["--output-dir", str(out), "--shard-size", "5", "--no-progress", "--threads", "1"]
    main(argv)
    capsys.readouterr()
    shard = sorted((out / "shards").glob("shard-*.parquet"))[1]
    shard.write_bytes(b"PAR1 this is not a Parquet file")
    (out / "attributions.parquet").unlink()
    main(argv)
    captured = capsys.readouterr()
    notices = [line for line in captured.err.splitlines() if shard.name in line]
    assert (
        len(notices) == 1 and "cannot be read" in notices[0] and "computing it again" in notices[0]
    )
    assert "1 shard(s) computed, 3 already there" in captured.out
    ids = parquet.read_table(out / "attributions.parquet").column("example_id").to_pylist()
    assert ids == list(range(len(NEWS)))


def test_merging_refuses_an_example_twice(tmp_path: Path) -> None:
    from captum_mamba.apps.sharding import check_once

    check_once([0, 1, 2], 3, "run")
    with pytest.raises(ValueError, match="example 1 twice"):
        check_once([0, 1, 1], 3, "run")
    with pytest.raises(ValueError, match="holds 2 examples, not 3"):
        check_once([0, 1], 3, "run")

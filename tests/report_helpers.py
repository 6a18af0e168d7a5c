"""Planted-shortcut and planted-bias data sets and the tiny classifiers trained on them,
for the tests of the data-set report (everything generated in code, trained in seconds)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import torch
from app_helpers import tiny_setup
from tokenizers import Tokenizer, models, pre_tokenizers

from captum_mamba.apps.data import LabelledText
from captum_mamba.apps.report import DatasetExplanation, ReportOptions, explain_dataset
from captum_mamba.apps.sentiment import (
    PAD_TOKEN,
    TextClassifier,
    from_classifier,
    normalise,
    train_classifier,
)

POSITIVE = ("good", "great", "fine", "nice", "lovely")
NEGATIVE = ("bad", "poor", "awful", "dull", "weak")
FILLER = ("the", "film", "story", "plot", "actor", "scene", "music", "ending", "was", "is")
FILLER += ("and", "a", "it")
MALE = ("he", "him", "man")
FEMALE = ("she", "her", "woman")
#: The planted shortcut: a token that no text has otherwise.
PLANTED = "zqx"
LABELS = ("neg", "pos")


def metaspace_tokenizer(texts: Sequence[str]) -> Tokenizer:
    """A word-level tokenizer whose tokens carry their leading space (``"▁good"``), so that
    word pieces merge into words; ``<|padding|>`` is id 0 and ``[UNK]`` id 1."""
    words = sorted({w for text in texts for w in normalise(text).split()} | {PLANTED})
    vocabulary = {PAD_TOKEN: 0, "[UNK]": 1} | {"\u2581" + w: i + 2 for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    return tokenizer


def reviews(
    count: int,
    seed: int,
    planted: bool = False,
    plant_share: float = 0.5,
    gender_bias: float | None = None,
    cue_accuracy: float = 0.55,
) -> list[LabelledText]:
    """Two-class texts: five filler words and one sentiment word that agrees with the
    label with probability ``cue_accuracy`` (a weak genuine signal). With ``planted``,
    :data:`PLANTED` is added to ``plant_share`` of the positive texts. With
    ``gender_bias`` every text gets a gendered word, male for the positive class with
    that probability (0.5 = no correlation)."""
    rng = random.Random(seed)
    result = []
    for i in range(count):
        label = i % 2
        words = [rng.choice(FILLER) for _ in range(5)]
        right = rng.random() < cue_accuracy
        cue = rng.choice(POSITIVE if (label == 1) == right else NEGATIVE)
        words.insert(rng.randrange(len(words) + 1), cue)
        if planted and label == 1 and rng.random() < plant_share:
            words.insert(rng.randrange(len(words) + 1), PLANTED)
        if gender_bias is not None:
            male = rng.random() < (gender_bias if label == 1 else 1 - gender_bias)
            words.insert(rng.randrange(len(words) + 1), rng.choice(MALE if male else FEMALE))
        result.append(LabelledText(" ".join(words), label))
    return result


def train_tiny(train: Sequence[LabelledText], tokenizer: Tokenizer) -> TextClassifier:
    """A seeded one-layer, width-8 classifier (about a second), in float64."""
    setup = tiny_setup(
        epochs=12,
        hidden_size=8,
        state_size=2,
        batch_size=16,
        learning_rate=2e-2,
        teacher_weight=0.0,
        pooling="mean",
        validation_fraction=0.1,
        patience=12,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        classifier = train_classifier(train, tokenizer, setup, LABELS, progress=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    classifier.model.double()
    return classifier


#: HTML that would run a script if it reached the page unescaped.
PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def xss_report(directory: Path) -> DatasetExplanation:
    """A report whose texts, class names, group terms and data file name hold HTML."""
    texts = [
        f"good film {PAYLOAD} ok",
        "bad plot <b>bold</b> story",
        f'great "{PAYLOAD}" actor',
        "poor & dull <i>scene",
    ] * 3
    labels = [1, 0, 1, 0] * 3
    tokenizer = metaspace_tokenizer(texts)
    train = [LabelledText(t, y) for t, y in zip(texts, labels, strict=True)]
    classifier = train_tiny(train, tokenizer)
    classifier.label_names = (f"neg{PAYLOAD}", f"pos{PAYLOAD}")
    data_file = directory / f"data{PAYLOAD.replace('/', '_')}.csv"
    data_file.write_text("text\n")
    return explain_dataset(
        from_classifier(classifier, f"model{PAYLOAD}"),
        texts,
        directory / "out",
        labels=labels,
        groups={f"g{PAYLOAD}": ["good", "<script>window.__pwned=1</script><img"], "h": ["bad"]},
        options=ReportOptions(min_count=1, trust_examples=2, bootstrap=10, shortcut_min_examples=1),
        progress=False,
        data_file=data_file,
        command_line=["captum-mamba", "report", "--dataset", str(data_file)],
    )

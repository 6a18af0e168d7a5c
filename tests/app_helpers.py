"""Small models, tokenizers and data files for the tests of the applications (data-set
attribution, study, command line, processes); everything is built in code."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from captum_mamba.apps.sentiment import PAD_TOKEN, ClassifierSetup, TextClassifier, build_model

TOPICS = ("business", "sport", "tech")

#: A 3-class news set: (text, topic); words repeat so that a tiny model can learn them.
NEWS = [
    ("stocks fell sharply as markets closed", "business"),
    ("the bank raised interest rates again", "business"),
    ("shares of the retailer rose on profits", "business"),
    ("investors sold bonds and bought stocks", "business"),
    ("markets rallied after the bank report", "business"),
    ("profits and shares fell at the bank", "business"),
    ("the striker scored twice in the final", "sport"),
    ("the team won the cup after extra time", "sport"),
    ("a late goal gave the team the title", "sport"),
    ("the coach praised the striker and the team", "sport"),
    ("fans cheered as the team scored", "sport"),
    ("the final ended with a late goal", "sport"),
    ("the new phone has a faster chip", "tech"),
    ("the software update fixes the phone", "tech"),
    ("a chip maker unveiled a new processor", "tech"),
    ("the laptop and the phone share software", "tech"),
    ("engineers tested the new chip", "tech"),
    ("an update for the laptop software", "tech"),
]


def word_tokenizer(texts: list[str] | None = None) -> Tokenizer:
    """A word-level tokenizer over the words of ``texts`` (default: :data:`NEWS`), with
    ``<|padding|>`` as id 0 and ``[UNK]`` as id 1."""
    texts = texts if texts is not None else [text for text, _ in NEWS]
    words = sorted({word for text in texts for word in text.lower().split()})
    vocabulary = {PAD_TOKEN: 0, "[UNK]": 1} | {w: i + 2 for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def tiny_setup(**changes: object) -> ClassifierSetup:
    """A classifier setup that trains in about a second."""
    base = {
        "hidden_size": 8,
        "num_layers": 1,
        "state_size": 2,
        "epochs": 2,
        "batch_size": 8,
        "min_token_count": 1,
        "token_dropout": 0.0,
        "feature_dropout": 0.0,
        "validation_fraction": 0.2,
        "pooling": "last",
    }
    return ClassifierSetup(**(base | changes))


def tiny_classifier(
    labels: tuple[str, ...] = TOPICS,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    **changes: object,
) -> TextClassifier:
    """An untrained (seeded) classifier over the :func:`word_tokenizer` vocabulary, with
    non-zero conv biases (so relevance is not exactly conserved)."""
    tokenizer = word_tokenizer()
    setup = tiny_setup(**changes)
    vocabulary = list(range(2, tokenizer.get_vocab_size()))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(setup, vocabulary, tokenizer, len(labels))
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * torch.randn_like(parameter))
    return TextClassifier(model.to(dtype).eval(), tokenizer, setup, labels)


def write_news_csv(path: Path, rows: list[tuple[str, str]] | None = None) -> Path:
    """:data:`NEWS` as a CSV file with the columns ``id,body,topic``."""
    rows = NEWS if rows is None else rows
    lines = ["id,body,topic"] + [f'{i},"{text}",{topic}' for i, (text, topic) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path

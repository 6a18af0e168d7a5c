"""Study runner support: a small Mamba sentiment classifier trained on real reviews.

The classifier is a Hugging Face ``MambaModel`` with a bias-free linear head on the
last position (inputs are left-padded, so the last position is always a real
token). It is trained from scratch on ``rotten_tomatoes.csv`` with the GPT-NeoX
tokenizer in about a minute on two CPU cores, evaluated on the SST-2 validation
set, and cached on disk so that later runs load it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn
from transformers import MambaConfig, MambaModel

from captum_mamba.adapters import register_container
from captum_mamba.data import (
    ROTTEN_TOMATOES_FILE,
    SST2_FILE,
    TOKENIZER_FILE,
    LabelledText,
    load_rotten_tomatoes,
    load_sst2,
    load_tokenizer,
)

PAD_TOKEN = "<|padding|>"


@register_container  # its forward only reads the last position and applies a linear head
class MambaSentimentClassifier(nn.Module):
    """``MambaModel`` backbone with a linear head on the last position.

    Args:
        config (MambaConfig): backbone configuration.
        num_labels (int, optional): number of classes. Default: 2.

    Examples::

        >>> model = MambaSentimentClassifier(mamba_config(vocab_size=50280))
        >>> logits = model(input_ids=ids, attention_mask=mask)   # (batch, 2)
    """

    def __init__(self, config: MambaConfig, num_labels: int = 2) -> None:
        super().__init__()
        self.config = config
        self.backbone = MambaModel(config)
        self.head = nn.Linear(config.hidden_size, num_labels, bias=False)

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding layer."""
        return self.backbone.embeddings

    def forward(
        self,
        input_ids: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        attention_mask: Tensor | None = None,
        **backbone_kwargs: object,
    ) -> Tensor:
        """Class logits ``(batch, num_labels)`` from left-padded inputs."""
        hidden = self.backbone(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            **backbone_kwargs,
        )[0]
        return self.head(hidden[:, -1])


@dataclass(frozen=True)
class SentimentSetup:
    """Model size and training schedule of the sentiment classifier."""

    hidden_size: int = 64
    num_layers: int = 2
    state_size: int = 8
    max_length: int = 48
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0

    def key(self) -> str:
        """Short hash identifying the setup (names the cached checkpoint)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


_PUNCTUATION = re.compile(r"([.,!?;:()\"])")
_CLITIC = re.compile(r"(\w)('s|'re|'ve|n't|'ll|'d|'m)\b")


def normalise(text: str) -> str:
    """Lower-case and split punctuation and clitics off, as in SST-2 (``it 's``, ``is n't``).

    Args:
        text (str): raw text.

    Returns:
        str: normalised text.
    """
    text = _CLITIC.sub(r"\1 \2", _PUNCTUATION.sub(r" \1 ", text.lower()))
    return " ".join(text.split())


def encode(tokenizer: Tokenizer, texts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
    """Normalise, tokenize, truncate to the last ``max_length`` tokens and left-pad.

    Args:
        tokenizer (Tokenizer): GPT-NeoX tokenizer.
        texts (sequence of str): input texts, normalised with :func:`normalise`.
        max_length (int): maximum number of tokens per text.

    Returns:
        tuple: ``input_ids`` and ``attention_mask``, both ``(batch, length)`` long.
    """
    rows = [
        encoding.ids[-max_length:] or [tokenizer.token_to_id(PAD_TOKEN)]
        for encoding in tokenizer.encode_batch([normalise(text) for text in texts])
    ]
    length = max(len(row) for row in rows)
    pad = tokenizer.token_to_id(PAD_TOKEN)
    ids = torch.tensor([[pad] * (length - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (length - len(row)) + [1] * len(row) for row in rows])
    return ids, mask


def train_classifier(
    examples: Sequence[LabelledText],
    tokenizer: Tokenizer,
    setup: SentimentSetup,
    progress: Callable[[str], None] = print,
) -> MambaSentimentClassifier:
    """Train a classifier from scratch (seeded, CPU-friendly).

    Args:
        examples (sequence of LabelledText): training examples.
        tokenizer (Tokenizer): GPT-NeoX tokenizer.
        setup (SentimentSetup): model size and schedule.
        progress (Callable, optional): receives one line per epoch. Default: print.

    Returns:
        MambaSentimentClassifier: the trained model in eval mode.
    """
    generator = torch.Generator().manual_seed(setup.seed)
    torch.manual_seed(setup.seed)
    config = MambaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=setup.hidden_size,
        num_hidden_layers=setup.num_layers,
        state_size=setup.state_size,
        pad_token_id=tokenizer.token_to_id(PAD_TOKEN),
        use_cache=False,
    )
    model = MambaSentimentClassifier(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=setup.learning_rate, weight_decay=0.01)
    texts = [example.text for example in examples]
    labels = torch.tensor([example.label for example in examples])
    model.train()
    for epoch in range(setup.epochs):
        order = torch.randperm(len(texts), generator=generator)
        total, start = 0.0, time.perf_counter()
        for first in range(0, len(order), setup.batch_size):
            batch = order[first : first + setup.batch_size]
            ids, mask = encode(tokenizer, [texts[i] for i in batch], setup.max_length)
            loss = nn.functional.cross_entropy(model(ids, attention_mask=mask), labels[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        progress(
            f"epoch {epoch + 1}/{setup.epochs}: loss {total / len(texts):.4f} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    model.zero_grad(set_to_none=True)
    return model.eval()


@torch.no_grad()
def accuracy(
    model: MambaSentimentClassifier,
    tokenizer: Tokenizer,
    examples: Sequence[LabelledText],
    max_length: int,
    batch_size: int = 64,
) -> float:
    """Fraction of ``examples`` whose label is the arg-max class.

    Args:
        model (MambaSentimentClassifier): the classifier.
        tokenizer (Tokenizer): its tokenizer.
        examples (sequence of LabelledText): evaluation examples.
        max_length (int): truncation length.
        batch_size (int, optional): examples per forward pass. Default: 64.

    Returns:
        float: accuracy in ``[0, 1]``.
    """
    correct = 0
    for first in range(0, len(examples), batch_size):
        chunk = examples[first : first + batch_size]
        ids, mask = encode(tokenizer, [e.text for e in chunk], max_length)
        predicted = model(ids, attention_mask=mask).argmax(-1)
        correct += int((predicted == torch.tensor([e.label for e in chunk])).sum())
    return correct / len(examples)


def default_cache_dir() -> Path:
    """``$CAPTUM_MAMBA_CACHE`` if set, else ``~/.cache/captum-mamba``."""
    return Path(os.environ.get("CAPTUM_MAMBA_CACHE", Path.home() / ".cache" / "captum-mamba"))


def load_or_train_classifier(
    data_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    setup: SentimentSetup | None = None,
    progress: Callable[[str], None] = print,
) -> tuple[MambaSentimentClassifier, Tokenizer, float]:
    """Load the cached sentiment classifier, training and caching it first if needed.

    Args:
        data_dir (str or PathLike): folder with ``rotten_tomatoes.csv``,
            ``sst2_validation.jsonl`` and ``gpt-neox-20b-tokenizer.json``.
        cache_dir (str or PathLike, optional): where the checkpoint is kept.
            Default: :func:`default_cache_dir`.
        setup (SentimentSetup, optional): model size and schedule. Default:
            ``SentimentSetup()``.
        progress (Callable, optional): receives progress lines. Default: print.

    Returns:
        tuple: the classifier (eval mode), the tokenizer and its SST-2 validation
        accuracy.

    Examples::

        >>> model, tokenizer, acc = load_or_train_classifier("../shared/data")
    """
    data_dir = Path(data_dir)
    setup = setup or SentimentSetup()
    tokenizer = load_tokenizer(data_dir / TOKENIZER_FILE)
    path = Path(cache_dir or default_cache_dir()) / f"sentiment-{setup.key()}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=False)
        model = MambaSentimentClassifier(MambaConfig(**saved["config"]))
        model.load_state_dict(saved["state_dict"])
        return model.eval(), tokenizer, saved["sst2_accuracy"]
    progress(f"training the sentiment classifier ({setup}); cached at {path}")
    model = train_classifier(
        load_rotten_tomatoes(data_dir / ROTTEN_TOMATOES_FILE), tokenizer, setup, progress
    )
    sst2_accuracy = accuracy(model, tokenizer, load_sst2(data_dir / SST2_FILE), setup.max_length)
    progress(f"SST-2 validation accuracy: {sst2_accuracy:.3f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "config": model.config.to_dict(),
            "state_dict": model.state_dict(),
            "sst2_accuracy": sst2_accuracy,
        },
        path,
    )
    return model, tokenizer, sst2_accuracy

"""Text classifiers on a Mamba backbone: fast CPU training, checkpoints, and the cached
sentiment classifier of the demo, the tutorials and the study.

:class:`MambaTextClassifier` is a transformers ``MambaModel`` with a linear head on
the last position or on the mean over positions (both linear in the Mamba features,
so MambaLRP conserves relevance up to the biases). Its embedding
(:class:`CompactEmbedding`) keeps a row for each token frequent enough in the training
texts and takes the tokenizer's own ids, so explanations are shown on the real tokens.

Training runs the model inside ``rules_applied(model, MambaRules.gradient_x_input())``
(:func:`~captum_mamba.attr.forward.fast_forward`): the model's exact function through
this package's chunked selective scan, whose backward is a hand-written adjoint scan,
instead of transformers' CPU path (autograd through a Python loop over time). The state
matrix is not trained: ``A_log`` keeps its S4D-real initial value ``log(1..N)`` (the
input-dependent time steps still set every decay), which keeps the classifiers of the
README reproducible.

Training targets mix each text's label with the class probabilities of a naive Bayes
teacher fitted on the same training texts (:class:`NaiveBayesTeacher`), and random
phrases of the training texts, labelled by the teacher, are added to the training data
(:class:`ClassifierSetup` ``teacher_weight``, ``phrases_per_text``): distillation from a
bag-of-words model that is hard to overfit, with phrase-level soft labels in place of
the phrase labels that SST-2's training set has and the training file lacks.

:func:`load_or_train_classifier` trains the sentiment classifier on
``rotten_tomatoes.csv`` (a seeded 10 % of it held out for per-epoch validation and
early stopping), measures its accuracy on the SST-2 validation set (held out, never
used for training or selection), and caches it under a key that hashes the data, the
tokenizer and every hyper-parameter.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from torch import Tensor, nn
from transformers import MambaConfig, MambaModel

from captum_mamba.adapters import register_container, register_leaf
from captum_mamba.apps.data import (
    ROTTEN_TOMATOES_FILE,
    SENTIMENT_LABELS,
    SST2_FILE,
    TOKENIZER_FILE,
    LabelledData,
    LabelledText,
    class_list,
    load_tokenizer,
    read_labelled,
    train_validation_split,
)
from captum_mamba.apps.loading import (
    ExplainedModel,
    ModelLoader,
    ModelLoadError,
    keep_tokens,
    register_loader,
)
from captum_mamba.attr.batches import length_buckets, pad_sequences
from captum_mamba.attr.forward import default_forward, fast_forward

PAD_TOKEN = "<|padding|>"
#: Rows of :class:`CompactEmbedding` shared by many tokens.
PADDING_ROW, UNKNOWN_ROW = 0, 1
POOLINGS = ("last", "mean")
TRUNCATIONS = ("keep_tail", "keep_head")
CHECKPOINT_FORMAT = "captum-mamba-classifier 1"
#: Setup of checkpoints saved before the teacher's fields existed: trained without one.
_SETUP_BEFORE_TEACHER = {"teacher_weight": 0.0}

Progress = Callable[[str], None]


class CheckpointError(ValueError):
    """A classifier checkpoint cannot be read; the message names the file."""


@register_leaf  # a lookup of the input ids, where relevance stops
class CompactEmbedding(nn.Embedding):
    """Token embedding with rows only for a vocabulary, indexed by tokenizer ids.

    Row 0 is the padding token, row 1 every token outside the vocabulary, rows
    ``2, 3, ...`` the vocabulary in order. The module takes the tokenizer's ids and
    looks up their rows: ``num_embeddings`` is the number of ids it takes
    (``tokenizer_size``), ``weight`` has ``len(vocabulary) + 2`` rows.

    Args:
        vocabulary (sequence of int): tokenizer ids that get their own row.
        tokenizer_size (int): number of tokenizer ids.
        embedding_dim (int): embedding width.
        padding_id (int): tokenizer id of the padding token.

    Examples::

        >>> embedding = CompactEmbedding([5, 17, 90], tokenizer_size=100, embedding_dim=8,
        ...                              padding_id=1)
        >>> embedding(torch.tensor([[17, 3]])).shape   # 3 is not in the vocabulary
        torch.Size([1, 2, 8])
    """

    def __init__(
        self, vocabulary: Sequence[int], tokenizer_size: int, embedding_dim: int, padding_id: int
    ) -> None:
        super().__init__(len(vocabulary) + 2, embedding_dim)
        self.vocabulary = [int(token) for token in vocabulary]
        self.padding_id = padding_id
        rows = torch.full((tokenizer_size,), UNKNOWN_ROW, dtype=torch.long)
        rows[torch.tensor(self.vocabulary, dtype=torch.long)] = torch.arange(
            2, len(self.vocabulary) + 2
        )
        rows[padding_id] = PADDING_ROW
        self.register_buffer("rows", rows, persistent=False)
        self.num_embeddings = tokenizer_size

    def extra_repr(self) -> str:
        """Rows, ids taken and width, e.g. ``10525 rows for 50280 token ids, 32``."""
        return (
            f"{self.weight.shape[0]} rows for {self.num_embeddings} token ids, {self.embedding_dim}"
        )

    def row_ids(self, input_ids: Tensor) -> Tensor:
        """Embedding rows of tokenizer ids ``input_ids``."""
        return self.rows[input_ids]

    def forward(self, input_ids: Tensor) -> Tensor:
        """Embeddings ``(..., embedding_dim)`` of tokenizer ids."""
        return super().forward(self.row_ids(input_ids))


@register_container  # its forward pools (last position or mean) and applies a linear head
class MambaTextClassifier(nn.Module):
    """``MambaModel`` backbone with a linear head on the last position or the mean.

    Inputs are left-padded (the last position is always a real token); ``"mean"``
    pooling averages the positions where ``attention_mask`` is 1 (all positions
    without a mask).

    Args:
        config (MambaConfig): backbone configuration.
        num_labels (int, optional): number of classes. Default: 2.
        pooling (str, optional): ``"last"`` or ``"mean"``. Default: ``"last"``.

    Examples::

        >>> model = MambaTextClassifier(mamba_config(vocab_size=50280), pooling="mean")
        >>> logits = model(input_ids=ids, attention_mask=mask)   # (batch, 2)
    """

    def __init__(self, config: MambaConfig, num_labels: int = 2, pooling: str = "last") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.config = config
        self.pooling = pooling
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
        return self.head(self.pool(hidden, attention_mask))

    def pool(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Features ``(batch, hidden)`` of the head: the last position or the mean.

        Args:
            hidden (Tensor): ``(batch, seq, hidden)`` backbone output.
            attention_mask (Tensor, optional): ``(batch, seq)`` 0/1 mask of real tokens.

        Returns:
            Tensor: the pooled features.
        """
        if self.pooling == "last":
            return hidden[:, -1]
        if attention_mask is None:
            return hidden.mean(1)
        weights = attention_mask.to(hidden.dtype)
        weights = weights / weights.sum(1, keepdim=True)
        return (hidden * weights[..., None]).sum(1)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class ClassifierSetup:
    """Model size, text handling and training schedule of a :class:`TextClassifier`.

    Args:
        hidden_size (int): backbone width.
        num_layers (int): Mamba blocks.
        state_size (int): SSM state size N.
        pooling (str): ``"last"`` or ``"mean"`` (see :class:`MambaTextClassifier`).
        max_length (int): tokens kept per text.
        truncation (str): ``"keep_tail"`` keeps the last ``max_length`` tokens of a
            longer text, ``"keep_head"`` the first.
        normalise (bool): lower-case and split punctuation and clitics as in SST-2
            (:func:`normalise`) before tokenizing.
        min_token_count (int): a token gets its own embedding row if it occurs this
            often in the training texts; rarer tokens share one row.
        epochs (int): maximum number of passes over the training data.
        batch_size (int): texts per step.
        learning_rate (float): peak AdamW learning rate (linear decay to 0).
        weight_decay (float): AdamW weight decay.
        label_smoothing (float): label smoothing of the cross-entropy, in ``[0, 1)``.
        balance_classes (bool): weight the loss so that every class counts as much as
            the others, whatever its share of the training data.
        teacher_weight (float): share of the :class:`NaiveBayesTeacher`'s class
            probabilities in the training target of each training text (the rest is its
            label), in ``[0, 1]``; 0 trains on the labels alone, without phrases.
        teacher_temperature (float): temperature of the teacher's probabilities
            (``softmax(logits / temperature)``); larger is softer.
        phrases_per_text (int): random phrases (runs of consecutive words) drawn from
            each training text of three or more words and added to the training data,
            labelled by the teacher alone (none when ``teacher_weight`` is 0).
        token_dropout (float): probability that a training token is replaced by the
            shared row of rare tokens, in ``[0, 1)``.
        feature_dropout (float): dropout on the pooled features in training, in ``[0, 1)``.
        validation_fraction (float): share of the training file held out (seeded,
            stratified) for per-epoch validation, in ``(0, 1)``.
        patience (int): stop after this many epochs without a better validation
            accuracy; the best epoch's weights are kept.
        seed (int): seed of the initialisation, the split and the batch order.
    """

    hidden_size: int = 64
    num_layers: int = 2
    state_size: int = 4
    pooling: str = "mean"
    max_length: int = 48
    truncation: str = "keep_tail"
    normalise: bool = True
    min_token_count: int = 2
    epochs: int = 4
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.1
    label_smoothing: float = 0.0
    balance_classes: bool = True
    teacher_weight: float = 0.8
    teacher_temperature: float = 2.0
    phrases_per_text: int = 4
    token_dropout: float = 0.1
    feature_dropout: float = 0.1
    validation_fraction: float = 0.1
    patience: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            *("hidden_size", "num_layers", "state_size", "max_length", "epochs"),
            *("batch_size", "min_token_count", "patience"),
        ):
            value = getattr(self, name)
            _check(value >= 1, f"{name} must be at least 1, got {value}")
        _check(self.pooling in POOLINGS, f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        _check(
            self.truncation in TRUNCATIONS,
            f"truncation must be one of {TRUNCATIONS}, got {self.truncation!r}",
        )
        _check(
            math.isfinite(self.learning_rate) and self.learning_rate > 0,
            f"learning_rate must be positive, got {self.learning_rate}",
        )
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(
            0 <= self.teacher_weight <= 1,
            f"teacher_weight must be in [0, 1], got {self.teacher_weight}",
        )
        _check(
            math.isfinite(self.teacher_temperature) and self.teacher_temperature > 0,
            f"teacher_temperature must be positive, got {self.teacher_temperature}",
        )
        _check(
            self.phrases_per_text >= 0,
            f"phrases_per_text must be >= 0, got {self.phrases_per_text}",
        )
        for name in ("label_smoothing", "token_dropout", "feature_dropout"):
            value = getattr(self, name)
            _check(0 <= value < 1, f"{name} must be in [0, 1), got {value}")
        _check(
            0 < self.validation_fraction < 1,
            f"validation_fraction must be in (0, 1), got {self.validation_fraction}",
        )

    @classmethod
    def quick(cls) -> ClassifierSetup:
        """The demo's small classifier: one layer of width 32, two epochs, one phrase per
        text (seconds)."""
        return cls(
            hidden_size=32,
            num_layers=1,
            max_length=40,
            epochs=2,
            phrases_per_text=1,
            feature_dropout=0.0,
        )

    def replace(self, **changes: Any) -> ClassifierSetup:
        """A copy with some fields changed (``None`` values are ignored), checked again."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        _check(not unknown, f"unknown ClassifierSetup fields {unknown}; known: {sorted(known)}")
        current = asdict(self)
        current.update({k: v for k, v in changes.items() if v is not None})
        return ClassifierSetup(**current)

    def describe(self) -> str:
        """One-line summary of the model size and schedule."""
        teacher = (
            f", naive Bayes teacher {self.teacher_weight:g} and {self.phrases_per_text} "
            f"phrase(s) per text"
            if self.teacher_weight
            else ""
        )
        return (
            f"{self.hidden_size} hidden, {self.num_layers} layer(s), state {self.state_size}, "
            f"{self.pooling} pooling, at most {self.epochs} epochs{teacher}"
        )


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


def tokenize(
    tokenizer: Tokenizer,
    texts: Sequence[str],
    setup: ClassifierSetup,
    padding_id: int | None = None,
) -> list[list[int]]:
    """Token ids of ``texts``: normalised (if ``setup.normalise``) and truncated.

    Args:
        tokenizer (Tokenizer): the tokenizer.
        texts (sequence of str): input texts.
        setup (ClassifierSetup): ``normalise``, ``max_length`` and ``truncation``.
        padding_id (int, optional): id that stands for a text without tokens.
            Default: the tokenizer's ``<|padding|>``.

    Returns:
        list of list of int: one id list per text, never empty (a text without tokens
        is the padding token).
    """
    if setup.normalise:
        texts = [normalise(text) for text in texts]
    pad = tokenizer.token_to_id(PAD_TOKEN) if padding_id is None else padding_id
    rows = []
    for encoding in tokenizer.encode_batch(list(texts), add_special_tokens=False):
        ids = encoding.ids
        kept = (
            ids[: setup.max_length] if setup.truncation == "keep_head" else ids[-setup.max_length :]
        )
        _check(
            bool(kept) or pad is not None,
            f"a text has no tokens and the tokenizer has no {PAD_TOKEN} token; pass padding_id",
        )
        rows.append(kept or [pad])
    return rows


def text_words(text: str, setup: ClassifierSetup) -> list[str]:
    """Whitespace-separated words of ``text``, after :func:`normalise` if ``setup.normalise``."""
    return (normalise(text) if setup.normalise else text).split()


class NaiveBayesTeacher:
    r"""Multinomial naive Bayes over the distinct words of a text, with equal class priors:
    the teacher whose class probabilities the classifiers are trained to match.

    A bag-of-words model is hard to overfit on a few thousand texts and gives every
    training text, and every phrase drawn from one, a graded class probability; the
    Mamba classifier learns these soft labels besides the true labels (knowledge
    distillation, Hinton et al. 2015), which also labels phrases that have no label of
    their own. Equal priors make its predictions independent of the classes' shares
    in the training data.

    The logit of class ``k`` of a text is :math:`\sum_w \log P(w \mid k)` over the
    distinct words ``w`` of the text seen in training, with
    :math:`P(w \mid k) = (n_{kw} + s) / (n_k + s |V|)`, where :math:`n_{kw}` counts the
    training texts of class ``k`` that contain ``w``, :math:`n_k` is the sum of
    :math:`n_{kw}` over the vocabulary ``V`` and ``s`` the smoothing.

    Args:
        vocabulary (dict): row of ``log_probs`` of each known word.
        log_probs (Tensor): ``(len(vocabulary), num_labels)`` :math:`\log P(w \mid k)`.

    Examples::

        >>> teacher = NaiveBayesTeacher.fit([["a", "gem"], ["a", "mess"]], [1, 0], 2)
        >>> teacher.probabilities([["gem"]], temperature=2.0)   # positive > 0.5
    """

    def __init__(self, vocabulary: dict[str, int], log_probs: Tensor) -> None:
        self.vocabulary = vocabulary
        self.log_probs = log_probs

    @classmethod
    def fit(
        cls,
        texts: Sequence[Sequence[str]],
        labels: Sequence[int],
        num_labels: int,
        smoothing: float = 1.0,
    ) -> NaiveBayesTeacher:
        """The teacher of word lists ``texts`` with class indices ``labels``.

        Args:
            texts (sequence of sequence of str): the words of each training text.
            labels (sequence of int): class index of each text.
            num_labels (int): number of classes.
            smoothing (float, optional): additive smoothing ``s``. Default: 1.

        Returns:
            NaiveBayesTeacher: the fitted teacher.
        """
        vocabulary: dict[str, int] = {}
        for words in texts:
            for word in words:
                vocabulary.setdefault(word, len(vocabulary))
        counts = torch.zeros(len(vocabulary), num_labels, dtype=torch.float64)
        for words, label in zip(texts, labels, strict=True):
            counts[[vocabulary[word] for word in set(words)], label] += 1
        counts += smoothing
        return cls(vocabulary, (counts / counts.sum(0)).log())

    def logits(self, texts: Sequence[Sequence[str]]) -> Tensor:
        """Class logits ``(len(texts), num_labels)`` (float64) of word lists ``texts``."""
        logits = self.log_probs.new_zeros(len(texts), self.log_probs.shape[1])
        for row, words in enumerate(texts):
            known = {self.vocabulary[word] for word in words if word in self.vocabulary}
            logits[row] = self.log_probs[sorted(known)].sum(0)
        return logits

    def probabilities(self, texts: Sequence[Sequence[str]], temperature: float) -> Tensor:
        """Class probabilities ``softmax(logits / temperature)`` of word lists ``texts``."""
        return (self.logits(texts) / temperature).softmax(-1)


def draw_phrases(
    texts: Sequence[Sequence[str]], per_text: int, generator: torch.Generator
) -> list[list[str]]:
    """``per_text`` random phrases of each word list of three or more words: a run of
    consecutive words whose length is uniform in ``1 .. len - 1`` and whose start is
    uniform among those that fit.

    Args:
        texts (sequence of sequence of str): the words of each text.
        per_text (int): phrases drawn from each text.
        generator (torch.Generator): random source.

    Returns:
        list of list of str: the phrases, text by text.
    """
    phrases = []
    for words in texts:
        if len(words) < 3:
            continue
        for _ in range(per_text):
            length = int(torch.randint(1, len(words), (), generator=generator))
            start = int(torch.randint(0, len(words) - length + 1, (), generator=generator))
            phrases.append(list(words[start : start + length]))
    return phrases


def pad_left(rows: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Left-pad id lists into ``input_ids`` and ``attention_mask`` ``(batch, longest)``."""
    return pad_sequences([torch.tensor(row, dtype=torch.long) for row in rows], pad, left=True)


@torch.no_grad()
def _logits(model: MambaTextClassifier, rows: Sequence[Sequence[int]], batch_size: int) -> Tensor:
    """Logits of tokenized texts, in batches of similar length."""
    pad = model.get_input_embeddings().padding_id
    logits = torch.empty(len(rows), model.head.out_features)
    with fast_forward(model):
        for batch in length_buckets([len(row) for row in rows], batch_size):
            ids, mask = pad_left([rows[i] for i in batch], pad)
            logits[batch] = model(input_ids=ids, attention_mask=mask).float()
    return logits


@dataclass
class TextClassifier:
    """A trained :class:`MambaTextClassifier` with its tokenizer, setup and class names.

    Args:
        model (MambaTextClassifier): the model, in eval mode.
        tokenizer (Tokenizer): the tokenizer whose ids the model takes.
        setup (ClassifierSetup): how it was built and trained.
        label_names (tuple of str): name of class ``k`` at position ``k``.
        metrics (dict): training record (``history``, ``best_epoch``,
            ``validation_accuracy``, ``teacher_validation_accuracy``, ``train_seconds``,
            ``test_accuracy`` if measured).

    Examples::

        >>> classifier = load_or_train_classifier("../shared/data")
        >>> ids, mask = classifier.encode(["a gorgeous , witty film"])
        >>> classifier.model(input_ids=ids, attention_mask=mask)
        >>> classifier.save("sentiment.ckpt"); TextClassifier.load("sentiment.ckpt")
    """

    model: MambaTextClassifier
    tokenizer: Tokenizer
    setup: ClassifierSetup
    label_names: tuple[str, ...]
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def padding_id(self) -> int:
        """Tokenizer id used for left padding."""
        return self.model.get_input_embeddings().padding_id

    def encode(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Tokenize (as in training), truncate and left-pad texts.

        Args:
            texts (sequence of str): input texts.

        Returns:
            tuple: ``input_ids`` (tokenizer ids) and ``attention_mask``, both
            ``(batch, length)`` long.
        """
        rows = tokenize(self.tokenizer, texts, self.setup, self.padding_id)
        return pad_left(rows, self.padding_id)

    def logits(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        """Class logits ``(len(texts), num_labels)`` (no gradient, fast path)."""
        rows = tokenize(self.tokenizer, texts, self.setup, self.padding_id)
        return _logits(self.model, rows, batch_size)

    def accuracy(self, examples: Sequence[LabelledText]) -> float:
        """Fraction of ``examples`` whose label is the arg-max class."""
        predicted = self.logits([e.text for e in examples]).argmax(-1)
        return float((predicted == torch.tensor([e.label for e in examples])).float().mean())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a self-contained checkpoint (weights, setup, vocabulary, class names,
        tokenizer, metrics) with a SHA-256 checksum; the file is replaced atomically.

        Args:
            path (str or PathLike): the checkpoint file.

        Returns:
            Path: ``path``.
        """
        path = Path(path)
        embedding = self.model.get_input_embeddings()
        buffer = io.BytesIO()
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "setup": asdict(self.setup),
                "label_names": list(self.label_names),
                "vocabulary": embedding.vocabulary,
                "padding_id": embedding.padding_id,
                "tokenizer": self.tokenizer.to_str(),
                "state_dict": self.model.state_dict(),
                "metrics": self.metrics,
            },
            buffer,
        )
        payload = buffer.getvalue()
        header = f"{CHECKPOINT_FORMAT} sha256={hashlib.sha256(payload).hexdigest()}\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_bytes(header.encode() + payload)
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TextClassifier:
        """Read a checkpoint written by :meth:`save`.

        Args:
            path (str or PathLike): the checkpoint file.

        Returns:
            TextClassifier: the classifier, in eval mode.

        Raises:
            CheckpointError: if the file is not such a checkpoint, is truncated or
                corrupt (checksum mismatch); the message names the file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; train a classifier and save it there")
        data = path.read_bytes()
        header, _, payload = data.partition(b"\n")
        prefix = f"{CHECKPOINT_FORMAT} sha256=".encode()
        if not header.startswith(prefix):
            raise CheckpointError(
                f"{path} is not a captum-mamba classifier checkpoint ({CHECKPOINT_FORMAT}); "
                f"pass a file written by TextClassifier.save"
            )
        if hashlib.sha256(payload).hexdigest().encode() != header[len(prefix) :]:
            raise CheckpointError(
                f"{path} is corrupt or truncated (checksum mismatch); delete it and train again"
            )
        saved = torch.load(io.BytesIO(payload), weights_only=True)
        setup = ClassifierSetup(**(_SETUP_BEFORE_TEACHER | saved["setup"]))
        tokenizer = Tokenizer.from_str(saved["tokenizer"])
        model = build_model(
            setup, saved["vocabulary"], tokenizer, len(saved["label_names"]), saved["padding_id"]
        )
        model.load_state_dict(saved["state_dict"])
        return cls(model.eval(), tokenizer, setup, tuple(saved["label_names"]), saved["metrics"])


def build_model(
    setup: ClassifierSetup,
    vocabulary: Sequence[int],
    tokenizer: Tokenizer,
    num_labels: int,
    padding_id: int | None = None,
) -> MambaTextClassifier:
    """An untrained classifier with a :class:`CompactEmbedding` over ``vocabulary``.

    Args:
        setup (ClassifierSetup): model size and pooling.
        vocabulary (sequence of int): tokenizer ids that get their own embedding row.
        tokenizer (Tokenizer): the tokenizer (its size and padding token).
        num_labels (int): number of classes.
        padding_id (int, optional): padding token id. Default: the tokenizer's
            ``<|padding|>``.

    Returns:
        MambaTextClassifier: the model (initialised from the global torch seed).
    """
    if padding_id is None:
        padding_id = tokenizer.token_to_id(PAD_TOKEN)
        _check(padding_id is not None, f"the tokenizer has no {PAD_TOKEN} token; pass padding_id")
    config = MambaConfig(
        vocab_size=len(vocabulary) + 2,
        hidden_size=setup.hidden_size,
        num_hidden_layers=setup.num_layers,
        state_size=setup.state_size,
        pad_token_id=PADDING_ROW,
        use_cache=False,
    )
    model = MambaTextClassifier(config, num_labels, setup.pooling)
    embedding = CompactEmbedding(
        vocabulary, tokenizer.get_vocab_size(), setup.hidden_size, padding_id
    )
    nn.init.normal_(embedding.weight, std=config.initializer_range)
    model.backbone.set_input_embeddings(embedding)
    return model


def _batches(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Shuffled batches of indices; texts of similar length share a batch (less padding)."""
    order = torch.randperm(len(lengths), generator=generator)
    window = batch_size * 32
    batches = []
    for first in range(0, len(order), window):
        chunk = sorted(order[first : first + window].tolist(), key=lambda i: lengths[i])
        batches += [
            torch.tensor(chunk[i : i + batch_size]) for i in range(0, len(chunk), batch_size)
        ]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


def classifier_loss(
    model: MambaTextClassifier,
    rows: Tensor,
    mask: Tensor,
    targets: Tensor,
    setup: ClassifierSetup,
    class_weights: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Training loss of a batch: cross-entropy of the classifier's logits against class
    indices or class probabilities, with token and feature dropout drawn from
    ``generator`` (none without a generator).

    Run it inside :func:`~captum_mamba.attr.forward.fast_forward` for the fast CPU backward.

    Args:
        model (MambaTextClassifier): the classifier (with a :class:`CompactEmbedding`).
        rows (Tensor): ``(batch, seq)`` embedding rows (not tokenizer ids), left-padded.
        mask (Tensor): ``(batch, seq)`` 0/1 mask of real tokens.
        targets (Tensor): ``(batch,)`` class indices or ``(batch, num_labels)`` class
            probabilities (the per-example loss is then
            :math:`-\sum_k w_k\, p_k \log q_k` with class weights :math:`w_k`).
        setup (ClassifierSetup): dropout rates and label smoothing.
        class_weights (Tensor, optional): ``(num_labels,)`` loss weight per class.
        generator (torch.Generator, optional): random source of the dropouts.

    Returns:
        Tensor: the mean loss (a scalar).
    """
    weight = model.get_input_embeddings().weight
    if generator is not None and setup.token_dropout:
        dropped = torch.rand(rows.shape, generator=generator) < setup.token_dropout
        rows = rows.masked_fill(dropped & mask.bool(), UNKNOWN_ROW)
    hidden = model.backbone(inputs_embeds=F.embedding(rows, weight), attention_mask=mask)[0]
    features = model.pool(hidden, mask)
    if generator is not None and setup.feature_dropout:
        keep = torch.rand(features.shape, generator=generator) >= setup.feature_dropout
        features = features * keep.to(features.dtype) / (1 - setup.feature_dropout)
    return F.cross_entropy(
        model.head(features), targets, weight=class_weights, label_smoothing=setup.label_smoothing
    )


def _training_targets(
    train: Sequence[LabelledText],
    labels: Tensor,
    num_labels: int,
    setup: ClassifierSetup,
    generator: torch.Generator,
) -> tuple[Tensor, list[list[str]], NaiveBayesTeacher | None]:
    """Class probabilities to learn for the training texts, then for the phrases drawn
    from them; the phrases; the teacher (``None`` if ``setup.teacher_weight`` is 0)."""
    targets = F.one_hot(labels, num_labels).double()
    if not setup.teacher_weight:
        return targets.float(), [], None
    words = [text_words(e.text, setup) for e in train]
    teacher = NaiveBayesTeacher.fit(words, labels.tolist(), num_labels)
    phrases = draw_phrases(words, setup.phrases_per_text, generator)
    weight = setup.teacher_weight
    texts = (1 - weight) * targets + weight * teacher.probabilities(
        words, setup.teacher_temperature
    )
    targets = torch.cat([texts, teacher.probabilities(phrases, setup.teacher_temperature)])
    return targets.float(), phrases, teacher


def _class_weights(labels: Tensor, num_labels: int) -> Tensor:
    """Loss weights that make every class count as much in total."""
    counts = torch.bincount(labels, minlength=num_labels).double().clamp(min=1)
    return (len(labels) / (num_labels * counts)).float()


def train_classifier(
    train: Sequence[LabelledText],
    tokenizer: Tokenizer,
    setup: ClassifierSetup,
    label_names: Sequence[str] = SENTIMENT_LABELS,
    validation: Sequence[LabelledText] = (),
    progress: Progress = print,
    log_every: int = 50,
) -> TextClassifier:
    """Train a classifier from scratch (seeded, on the CPU fast path).

    Unless ``setup.teacher_weight`` is 0, a :class:`NaiveBayesTeacher` is fitted on
    ``train`` first; each text's target mixes its label with the teacher's class
    probabilities, and ``setup.phrases_per_text`` phrases drawn from each text join the
    training data with the teacher's probabilities as targets. Each step runs inside
    :func:`~captum_mamba.attr.forward.fast_forward`, which computes the model's exact function
    (and gradients) through this package's scans. After every epoch the accuracy on
    ``validation`` is measured; training stops after ``setup.patience`` epochs without
    improvement and the best epoch's weights are returned (the last epoch's without
    ``validation``). The result depends only on the arguments (all randomness comes
    from ``setup.seed``; the global torch random state is left as it was).

    Args:
        train (sequence of LabelledText): training examples (labels ``0..K-1``).
        tokenizer (Tokenizer): the tokenizer.
        setup (ClassifierSetup): model size, text handling and schedule.
        label_names (sequence of str, optional): class names. Default: negative, positive.
        validation (sequence of LabelledText, optional): examples for per-epoch
            validation and early stopping. Default: none.
        progress (Callable, optional): receives a line every ``log_every`` steps and
            after every epoch. Default: print.
        log_every (int, optional): steps between progress lines. Default: 50.

    Returns:
        TextClassifier: the trained classifier in eval mode; ``metrics`` has the
        per-epoch ``history``, ``best_epoch``, ``validation_accuracy`` and, with a
        teacher, ``teacher_validation_accuracy`` (both with ``validation``), and
        ``train_seconds``.

    Examples::

        >>> train, validation = train_validation_split(data.examples, 0.1, seed=0)
        >>> classifier = train_classifier(train, tokenizer, ClassifierSetup(),
        ...                               data.label_names, validation)
    """
    num_labels = len(label_names)
    _check(num_labels >= 2, f"a classifier needs at least 2 classes, got {list(label_names)}")
    _check(len(train) > 0, "train_classifier needs at least one training example")
    for example in (*train, *validation):
        _check(
            0 <= example.label < num_labels,
            f"label {example.label} of {example.text[:40]!r} is outside 0..{num_labels - 1}; "
            f"fix the data or pass all label_names",
        )
    start = time.perf_counter()
    texts = tokenize(tokenizer, [e.text for e in train], setup)
    counts = Counter(token for text in texts for token in text)
    vocabulary = sorted(t for t, count in counts.items() if count >= setup.min_token_count)
    generator = torch.Generator().manual_seed(setup.seed)
    labels = torch.tensor([e.label for e in train])
    targets, phrases, teacher = _training_targets(train, labels, num_labels, setup, generator)
    texts += tokenize(tokenizer, [" ".join(phrase) for phrase in phrases], setup)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(setup.seed)
        model = build_model(setup, vocabulary, tokenizer, num_labels)
    # A_log keeps its S4D-real initial value (see the module docstring).
    for block in model.backbone.layers:
        block.mixer.A_log.requires_grad_(False)
    optimiser = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=setup.learning_rate,
        weight_decay=setup.weight_decay,
    )
    steps_per_epoch = math.ceil(len(texts) / setup.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: max(0.0, 1 - step / (setup.epochs * steps_per_epoch))
    )
    embedding = model.get_input_embeddings()
    rows = [embedding.row_ids(torch.tensor(text)).tolist() for text in texts]
    class_weights = _class_weights(labels, num_labels) if setup.balance_classes else None
    validation_texts = tokenize(tokenizer, [e.text for e in validation], setup)
    validation_labels = torch.tensor([e.label for e in validation])
    progress(
        f"training a {setup.describe()} classifier on {len(train)} texts and "
        f"{len(phrases)} phrases ({len(vocabulary)} distinct tokens, "
        f"{steps_per_epoch} steps per epoch)"
    )
    metrics: dict[str, Any] = {}
    if teacher is not None and validation:
        predicted = teacher.logits([text_words(e.text, setup) for e in validation]).argmax(-1)
        metrics["teacher_validation_accuracy"] = float(
            (predicted == validation_labels).double().mean()
        )
        progress(f"teacher's validation accuracy {metrics['teacher_validation_accuracy']:.3f}")
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    for epoch in range(1, setup.epochs + 1):
        model.train()
        total = 0.0
        with fast_forward(model):
            batches = _batches([len(row) for row in rows], setup.batch_size, generator)
            for step, batch in enumerate(batches, 1):
                ids, mask = pad_left([rows[i] for i in batch], PADDING_ROW)
                loss = classifier_loss(
                    model, ids, mask, targets[batch], setup, class_weights, generator
                )
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                total += loss.item() * len(batch)
                if step % log_every == 0:
                    progress(
                        f"  epoch {epoch}/{setup.epochs} step {step}/{steps_per_epoch}: "
                        f"loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)"
                    )
        model.eval()
        record = {"epoch": epoch, "loss": total / len(texts)}
        line = f"epoch {epoch}/{setup.epochs}: loss {record['loss']:.4f}"
        if validation:
            predicted = _logits(model, validation_texts, 256).argmax(-1)
            record["validation_accuracy"] = float((predicted == validation_labels).float().mean())
            line += f", validation accuracy {record['validation_accuracy']:.3f}"
            if best is None or record["validation_accuracy"] > best[0]:
                best = (record["validation_accuracy"], epoch, copy.deepcopy(model.state_dict()))
        history.append(record)
        progress(f"{line} ({time.perf_counter() - start:.0f} s)")
        if best is not None and epoch - best[1] >= setup.patience:
            progress(f"no better validation accuracy for {setup.patience} epoch(s): stopping")
            break
    metrics.update(history=history, best_epoch=len(history))
    if best is not None:
        model.load_state_dict(best[2])
        metrics.update(best_epoch=best[1], validation_accuracy=best[0])
    model.zero_grad(set_to_none=True)
    metrics["train_seconds"] = round(time.perf_counter() - start, 1)
    return TextClassifier(model.eval(), tokenizer, setup, tuple(label_names), metrics)


def default_cache_dir() -> Path:
    """``$CAPTUM_MAMBA_CACHE`` if set, else ``~/.cache/captum-mamba``."""
    return Path(os.environ.get("CAPTUM_MAMBA_CACHE", Path.home() / ".cache" / "captum-mamba"))


def cache_key(
    setup: ClassifierSetup,
    data: LabelledData,
    tokenizer: Tokenizer,
    test: LabelledData | None = None,
) -> str:
    """Hash of everything a cached classifier depends on: every setup field, the
    training data (texts, labels, class names), the tokenizer and the test data whose
    accuracy the checkpoint records.

    Args:
        setup (ClassifierSetup): the setup.
        data (LabelledData): the training file's data.
        tokenizer (Tokenizer): the tokenizer.
        test (LabelledData, optional): the held-out test data. Default: None.

    Returns:
        str: 16 hex digits.
    """
    parts = {
        "format": CHECKPOINT_FORMAT,
        "setup": asdict(setup),
        "data": data.fingerprint(),
        "tokenizer": hashlib.sha256(tokenizer.to_str().encode()).hexdigest(),
        "test": None if test is None else test.fingerprint(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def load_or_train(
    data: LabelledData,
    tokenizer: Tokenizer,
    setup: ClassifierSetup,
    cache_dir: str | os.PathLike[str] | None = None,
    test: LabelledData | None = None,
    progress: Progress = print,
) -> TextClassifier:
    """Load a cached classifier of ``data``, or train it (with a seeded validation
    split for early stopping), measure it on ``test`` and cache it.

    Args:
        data (LabelledData): training file's data (split into train and validation).
        tokenizer (Tokenizer): the tokenizer.
        setup (ClassifierSetup): model size, text handling and schedule.
        cache_dir (str or PathLike, optional): checkpoint folder. Default:
            :func:`default_cache_dir`.
        test (LabelledData, optional): held-out data whose accuracy is recorded as
            ``metrics["test_accuracy"]``; never used for training or selection.
        progress (Callable, optional): receives progress lines. Default: print.

    Returns:
        TextClassifier: the classifier (eval mode).

    Examples::

        >>> data = read_labelled("reviews.csv", label_names=("bad", "ok", "good"))
        >>> classifier = load_or_train(data, tokenizer, ClassifierSetup(epochs=4))
    """
    if test is not None and test.label_names != data.label_names:
        raise ValueError(
            f"the test classes {test.label_names} differ from the training classes "
            f"{data.label_names}; pass the same label_names to both readers"
        )
    path = Path(cache_dir or default_cache_dir()) / (
        f"classifier-{cache_key(setup, data, tokenizer, test)}.ckpt"
    )
    if path.is_file():
        try:
            return TextClassifier.load(path)
        except CheckpointError as error:
            progress(f"{error}; training again")
    train, validation = train_validation_split(data.examples, setup.validation_fraction, setup.seed)
    progress(f"no cached classifier at {path}: training one")
    classifier = train_classifier(train, tokenizer, setup, data.label_names, validation, progress)
    classifier.metrics["train_file"] = data.source
    if test is not None:
        classifier.metrics["test_file"] = test.source
        classifier.metrics["test_accuracy"] = classifier.accuracy(test.examples)
        progress(
            f"accuracy on {Path(test.source).name}: {classifier.metrics['test_accuracy']:.3f} "
            f"({len(test.examples)} texts, held out)"
        )
    classifier.save(path)
    return classifier


def load_or_train_classifier(
    data_dir: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    setup: ClassifierSetup | None = None,
    progress: Progress = print,
) -> TextClassifier:
    """The sentiment classifier: trained on ``rotten_tomatoes.csv``, measured on the
    SST-2 validation set (``metrics["test_accuracy"]``), cached.

    Args:
        data_dir (str or PathLike): folder with ``rotten_tomatoes.csv``,
            ``sst2_validation.jsonl`` and ``gpt-neox-20b-tokenizer.json``.
        cache_dir (str or PathLike, optional): checkpoint folder. Default:
            :func:`default_cache_dir` (``$CAPTUM_MAMBA_CACHE``).
        setup (ClassifierSetup, optional): Default: ``ClassifierSetup()`` (the
            study's classifier); ``ClassifierSetup.quick()`` is the demo's.
        progress (Callable, optional): receives progress lines. Default: print.

    Returns:
        TextClassifier: the classifier (eval mode).

    Examples::

        >>> classifier = load_or_train_classifier("../shared/data")
        >>> classifier.metrics["test_accuracy"]
    """
    data_dir = Path(data_dir)
    return load_or_train(
        read_labelled(data_dir / ROTTEN_TOMATOES_FILE, label_names=SENTIMENT_LABELS),
        load_tokenizer(data_dir / TOKENIZER_FILE),
        setup or ClassifierSetup(),
        cache_dir,
        read_labelled(data_dir / SST2_FILE, text_column="sentence", label_names=SENTIMENT_LABELS),
        progress,
    )


def from_classifier(
    classifier: TextClassifier,
    source: str,
    max_length: int | None = None,
    truncation: str | None = None,
) -> ExplainedModel:
    """An :class:`~captum_mamba.apps.loading.ExplainedModel` of a :class:`TextClassifier`.

    Args:
        classifier (TextClassifier): the classifier.
        source (str): where it came from (for captions).
        max_length (int, optional): tokens kept per text. Default: None (the
            classifier's setting).
        truncation (str, optional): what happens to a longer text, one of
            :data:`~captum_mamba.apps.loading.LONG_TEXTS`. Default: None (the
            classifier's setting).

    Returns:
        ExplainedModel: the classifier with its own tokenization (normalisation and
        truncation as in training, unless ``truncation`` says otherwise).
    """
    setup = classifier.setup
    if max_length is not None:
        setup = setup.replace(max_length=max_length)
    if truncation in TRUNCATIONS:
        setup = setup.replace(truncation=truncation)

    def encode(texts: Sequence[str]) -> list[list[int]]:
        if truncation != "refuse":
            return tokenize(classifier.tokenizer, texts, setup, classifier.padding_id)
        whole = setup.replace(max_length=sys.maxsize)
        rows = tokenize(classifier.tokenizer, texts, whole, classifier.padding_id)
        return [keep_tokens(row, setup.max_length, "refuse") for row in rows]

    model = classifier.model
    return ExplainedModel(
        model,
        classifier.tokenizer,
        encode,
        default_forward(model, "inputs_embeds"),
        classifier.padding_id,
        classifier.label_names,
        f"captum-mamba text classifier {Path(source).name} ({setup.describe()}; "
        f"classes {class_list(classifier.label_names)})",
        source,
    )


def _is_checkpoint(source: str) -> bool:
    path = Path(source)
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(len(CHECKPOINT_FORMAT)) == CHECKPOINT_FORMAT.encode()


def _load_checkpoint(
    source: str, tokenizer: Any, max_length: int | None, truncation: str | None = None
) -> ExplainedModel:
    """A checkpoint as :func:`~captum_mamba.apps.loading.load_explained` loads it (its
    own tokenizer: ``tokenizer`` is not used)."""
    try:
        return from_classifier(TextClassifier.load(source), source, max_length, truncation)
    except CheckpointError as error:
        raise ModelLoadError(str(error)) from None


register_loader(ModelLoader("captum-mamba classifier checkpoint", _is_checkpoint, _load_checkpoint))

r"""What does my model rely on? A report that explains a classifier on a whole data set.

:func:`explain_dataset` explains every text of a labelled (or unlabelled) data set with
:func:`~captum_mamba.apps.dataset.attribute_dataset` (batched, sharded, resumable) and
turns the relevances into a :class:`DatasetExplanation`: a plain-language summary,
provenance, model performance, the words each class relies on, shortcut alerts checked by
counterfactual removal, a group bias probe with a counterfactual swap, the long-range
profile, how far to trust the explanations (perturbation faithfulness against sanity
baselines, via :func:`~captum_mamba.apps.study.run_study`), and an example gallery.

Output folder::

    report.html                     self-contained page (no scripts, no network)
    report.json                     every number of the page (keys in docs/report.md)
    attributions/attributions.parquet   per-example token relevances (one row per text)
    trust/                          the faithfulness study (results.csv, examples.csv, ...)

Words are merged from word pieces (:func:`~captum_mamba.visualization.merge_word_pieces`)
and keyed by their lower-case form without surrounding punctuation (a word of punctuation
only keeps its characters). Classes are the *explained* classes: the predicted class of each
text by default. Relevance shows what the model used, not causes in the world.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import random
import re
import sys
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from captum_mamba.apps.dataset import (
    attribute_dataset,
    model_kind,
    model_outputs,
    read_attributions,
)
from captum_mamba.apps.doctor import report as doctor_report
from captum_mamba.apps.loading import ExplainedModel
from captum_mamba.apps.methods import method_slug, resolve_methods
from captum_mamba.apps.report_html import render_html
from captum_mamba.apps.study import run_study
from captum_mamba.baselines.captum_methods import RANDOM, RECENCY, MethodSettings
from captum_mamba.metrics import conservation_stats
from captum_mamba.rules import MambaRules
from captum_mamba.visualization import merge_word_pieces

#: Version of the ``report.json`` layout (``format`` key); bumped on any change of keys.
REPORT_FORMAT = "captum-mamba report 1"
#: The standing caveat, in every summary.
CAVEAT = (
    "Relevance shows which parts of the input the model used for its output; it does not "
    "show causes in the world, and a word the model relies on may be a legitimate cue or a "
    "shortcut."
)
#: Files of the output folder.
HTML_FILE, JSON_FILE, ATTRIBUTIONS_DIR, TRUST_DIR = (
    "report.html",
    "report.json",
    "attributions",
    "trust",
)


@dataclass(frozen=True)
class ReportOptions:
    """Thresholds and sizes of the report (documented in docs/report.md).

    Args:
        top_k (int): features listed per class. Default: 10.
        min_count (int): occurrences a word needs in a class to be ranked. Default: 3.
        bootstrap (int): bootstrap resamples of the confidence intervals. Default: 200.
        shortcut_share (float): share of an example's positive relevance that a word
            must carry (median over the class's examples that contain it) to be flagged.
            Default: 0.5.
        shortcut_min_examples (int): examples of the class in which the word must carry
            at least ``shortcut_share`` to be flagged. Default: 5.
        long_range (int): distance (tokens from the explained position) beyond which
            relevance counts as long-range. Default: 32.
        snippets (int): snippets shown per ranked word. Default: 2.
        gallery (int): examples per gallery list. Default: 3.
        trust_examples (int): examples of the faithfulness study (0 leaves it out).
            Default: 50.
        seed (int): seed of the bootstrap and of the study's sample. Default: 0.
    """

    top_k: int = 10
    min_count: int = 3
    bootstrap: int = 200
    shortcut_share: float = 0.5
    shortcut_min_examples: int = 5
    long_range: int = 32
    snippets: int = 2
    gallery: int = 3
    trust_examples: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("top_k", "min_count", "bootstrap", "shortcut_min_examples", "long_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("snippets", "gallery", "trust_examples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        if not 0 < self.shortcut_share <= 1:
            raise ValueError(f"shortcut_share must be in (0, 1], got {self.shortcut_share!r}")


@dataclass
class DatasetExplanation:
    """The report of :func:`explain_dataset`.

    Args:
        data (dict): every section's numbers and texts (the content of ``report.json``).
        directory (Path, optional): the output folder, if written.
    """

    data: dict[str, Any]
    directory: Path | None = None

    def to_json(self) -> str:
        """``report.json``: the report as JSON (NaN written as null)."""
        return json.dumps(_plain(self.data), indent=1, allow_nan=False)

    def to_html(self) -> str:
        """``report.html``: a self-contained page (no scripts, fonts or requests)."""
        return render_html(_plain(self.data))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``report.html`` and ``report.json`` to ``directory``; return the HTML."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / JSON_FILE).write_text(self.to_json(), encoding="utf-8")
        path = directory / HTML_FILE
        path.write_text(self.to_html(), encoding="utf-8")
        return path


def _plain(value: Any) -> Any:
    """JSON-ready copy: NaN and infinities as None, numpy scalars as Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def parse_groups(spec: str | Mapping[str, Sequence[str]] | None) -> dict[str, list[str]]:
    """Groups of the bias probe from ``"female=she,her;male=he,him"`` or a mapping.

    Args:
        spec (str or Mapping, optional): ``name=term,term;name=term,...`` or
            ``{name: [terms]}``; terms are matched as whole words, in any case.

    Returns:
        dict: group name -> lower-case terms (at least two groups, or empty).

    Raises:
        ValueError: for a malformed spec, fewer than two groups, or a term in two groups.
    """
    if not spec:
        return {}
    if isinstance(spec, str):
        groups: dict[str, list[str]] = {}
        for part in spec.split(";"):
            if not part.strip():
                continue
            name, sep, terms = part.partition("=")
            if not sep or not name.strip():
                raise ValueError(
                    f"group {part.strip()!r} is not 'name=term,term'; e.g. "
                    f"'female=she,her,woman;male=he,him,man'"
                )
            groups[name.strip()] = [t for t in terms.split(",") if t.strip()]
    else:
        groups = {str(k): list(v) for k, v in spec.items()}
    result = {name: [word_key(t) for t in terms] for name, terms in groups.items()}
    if len(result) < 2 or any(not terms for terms in result.values()):
        raise ValueError("the group probe needs at least two groups, each with terms")
    seen: dict[str, str] = {}
    for name, terms in result.items():
        for term in terms:
            if term in seen and seen[term] != name:
                raise ValueError(f"term {term!r} is in groups {seen[term]!r} and {name!r}")
            seen[term] = name
    return result


def word_key(word: str) -> str:
    """The feature a word counts as: lower case, whitespace and surrounding punctuation
    removed (a word of punctuation only keeps its characters).

    Args:
        word (str): a word as merged from word pieces (e.g. ``" Film,"``).

    Returns:
        str: e.g. ``"film"``.
    """
    text = word.strip().lower()
    stripped = text
    while stripped and unicodedata.category(stripped[0])[0] in "PS":
        stripped = stripped[1:]
    while stripped and unicodedata.category(stripped[-1])[0] in "PS":
        stripped = stripped[:-1]
    return stripped or text


@dataclass
class _Example:
    """One explained text: its words (keys), their token spans and relevances."""

    example_id: int
    text: str
    label: int | None
    target: int
    position: int
    token_ids: list[int]
    tokens: list[str]
    relevance: np.ndarray
    keys: list[str] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)
    word_relevance: np.ndarray = field(default_factory=lambda: np.zeros(0))


def _words(example: _Example) -> None:
    """Fill in the words of an example (pieces merged as the heatmaps merge them)."""
    words, sums = merge_word_pieces(example.tokens, example.relevance)
    spans, start = [], 0
    for word in words:
        stop, length = start, 0
        while stop < len(example.tokens) and length < len(word):
            length += len(example.tokens[stop])
            stop += 1
        while stop < len(example.tokens) and not example.tokens[stop] and length == len(word):
            stop += 1  # empty pieces (a character split over tokens) join the word
        spans.append((start, max(stop, start + 1)))
        start = stop
    example.keys = [word_key(w) for w in words]
    example.spans = spans
    example.word_relevance = sums


def _bootstrap_ci(
    sums: np.ndarray, counts: np.ndarray, resamples: int, rng: np.random.Generator
) -> tuple[float, float]:
    """95% percentile interval of ``sum(sums) / sum(counts)`` over documents resampled
    with replacement."""
    if len(sums) < 2:
        value = float(sums.sum() / counts.sum())
        return value, value
    picks = rng.integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[picks].sum(1) / counts[picks].sum(1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def _snippet(example: _Example, word: int, radius: int = 10) -> dict[str, Any]:
    start, stop = example.spans[word]
    first, last = max(0, start - radius), min(len(example.tokens), stop + radius)
    return {
        "example_id": example.example_id,
        "tokens": example.tokens[first:last],
        "relevance": example.relevance[first:last].tolist(),
        "cut_before": first > 0,
        "cut_after": last < len(example.tokens),
    }


def _class_features(
    examples: Sequence[_Example], options: ReportOptions, rng: np.random.Generator
) -> dict[str, Any]:
    """Ranked words of the examples of one class, with the shortcut evidence."""
    per_doc: dict[str, dict[int, list[float]]] = {}
    total_abs = 0.0
    for index, example in enumerate(examples):
        total_abs += float(np.abs(example.word_relevance).sum())
        for key, value in zip(example.keys, example.word_relevance, strict=True):
            entry = per_doc.setdefault(key, {}).setdefault(index, [0.0, 0.0, 0])
            entry[0] += float(value)
            entry[1] += 1
    positive = [float(np.clip(e.word_relevance, 0, None).sum()) for e in examples]
    features = []
    for key, docs in per_doc.items():
        sums = np.array([v[0] for v in docs.values()])
        counts = np.array([v[1] for v in docs.values()])
        count = int(counts.sum())
        shares = np.array(
            [max(v[0], 0.0) / positive[i] if positive[i] > 0 else 0.0 for i, v in docs.items()]
        )
        feature = {
            "word": key,
            "count": count,
            "documents": len(docs),
            "document_frequency": len(docs) / len(examples),
            "mean_relevance": float(sums.sum() / count),
            "share_of_class_relevance": float(sums.sum() / total_abs) if total_abs else 0.0,
            "median_example_share": float(np.median(shares)),
            "examples_over_share": int((shares >= options.shortcut_share).sum()),
            "ranked": count >= options.min_count,
        }
        if feature["ranked"]:
            low, high = _bootstrap_ci(sums, counts.astype(float), options.bootstrap, rng)
            feature["ci_low"], feature["ci_high"] = low, high
        features.append(feature)
    ranked = sorted(
        (f for f in features if f["ranked"]),
        key=lambda f: (-f["ci_low"], -f["mean_relevance"], f["word"]),
    )
    for rank, feature in enumerate(ranked, 1):
        feature["rank"] = rank
    frequent = sorted(features, key=lambda f: (-f["count"], f["word"]))[: options.top_k]
    top = ranked[: options.top_k]
    for feature in top:
        docs = per_doc[feature["word"]]
        best = sorted(docs, key=lambda i: -docs[i][0])[: options.snippets]
        feature["snippets"] = []
        for i in best:
            example = examples[i]
            values = [
                (v, w)
                for w, (k, v) in enumerate(zip(example.keys, example.word_relevance, strict=True))
                if k == feature["word"]
            ]
            feature["snippets"].append(_snippet(example, max(values)[1]))
    alerts = [
        f
        for f in ranked
        if f["median_example_share"] >= options.shortcut_share
        and f["examples_over_share"] >= options.shortcut_min_examples
        and f["mean_relevance"] > 0
    ]
    return {
        "examples": len(examples),
        "total_abs_relevance": total_abs,
        "distinct_words": len(features),
        "ranked_words": len(ranked),
        "top": top,
        "most_frequent": [
            {k: f[k] for k in ("word", "count", "document_frequency", "mean_relevance")}
            | {"rank": f.get("rank")}
            for f in frequent
        ],
        "alert_words": [f["word"] for f in alerts],
    }


@torch.no_grad()
def _logits_of(
    explained: ExplainedModel, ids: Sequence[Sequence[int]], batch_size: int
) -> torch.Tensor:
    """``(texts, classes)`` float64 logits of token id lists (empty lists get the pad id)."""
    embedding = explained.model.get_input_embeddings()
    device = next(explained.model.parameters()).device
    sequences = [
        embedding(torch.tensor(list(row) or [explained.pad_id], device=device)) for row in ids
    ]
    outputs = model_outputs(explained, sequences, batch_size, None)
    return torch.stack(outputs).double().cpu()


def _without_word(example: _Example, key: str) -> list[int]:
    drop = {
        position
        for k, (start, stop) in zip(example.keys, example.spans, strict=True)
        if k == key
        for position in range(start, stop)
    }
    return [t for position, t in enumerate(example.token_ids) if position not in drop]


def _term_pattern(terms: Sequence[str]) -> re.Pattern[str]:
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)({alternatives})(?!\w)", re.IGNORECASE)


def _train_frequencies(
    key: str, texts: Sequence[str], labels: Sequence[int], names: Sequence[str]
) -> list[dict[str, Any]]:
    pattern = _term_pattern([key])
    rows = []
    for index, name in enumerate(names):
        of_class = [t for t, y in zip(texts, labels, strict=True) if y == index]
        hits = sum(bool(pattern.search(t)) for t in of_class)
        rows.append(
            {
                "class": name,
                "texts": len(of_class),
                "containing": hits,
                "share": hits / len(of_class) if of_class else math.nan,
            }
        )
    return rows


def _shortcut_alerts(
    explained: ExplainedModel,
    examples: Sequence[_Example],
    logits: torch.Tensor,
    features: Sequence[dict[str, Any]],
    names: Sequence[str],
    train: tuple[Sequence[str], Sequence[int]] | None,
    batch_size: int,
) -> list[dict[str, Any]]:
    """Each flagged word, checked by removing it from every text that contains it."""
    alerts = []
    for index, (name, section) in enumerate(zip(names, features, strict=True)):
        by_word = {f["word"]: f for f in section["top"]}
        for word in section["alert_words"]:
            feature = by_word.get(word) or {"word": word}
            containing = [i for i, e in enumerate(examples) if word in e.keys]
            removed = _logits_of(
                explained, [_without_word(examples[i], word) for i in containing], batch_size
            )
            before = logits[containing]
            changed = removed.argmax(1) != before.argmax(1)
            of_class = [j for j, i in enumerate(containing) if examples[i].target == index]
            drop = (before[of_class, index] - removed[of_class, index]) if of_class else None
            alert = {
                "class": name,
                "word": word,
                "rank": feature.get("rank"),
                "median_example_share": feature.get("median_example_share"),
                "examples_over_share": feature.get("examples_over_share"),
                "document_frequency": feature.get("document_frequency"),
                "examples_containing": len(containing),
                "examples_containing_of_class": len(of_class),
                "predictions_changed": int(changed.sum()),
                "share_changed": float(changed.double().mean()) if containing else math.nan,
                "mean_logit_drop": float(drop.mean()) if drop is not None else math.nan,
                "train_frequencies": None,
            }
            if train is not None:
                alert["train_frequencies"] = _train_frequencies(word, *train, names)
            alert["next_steps"] = _next_steps(alert)
            alerts.append(alert)
    return alerts


def _next_steps(alert: dict[str, Any]) -> str:
    word, name = alert["word"], alert["class"]
    steps = (
        f"Check whether '{word}' is a legitimate cue for '{name}' or an artefact of how the "
        f"data was collected or labelled. "
    )
    if alert["train_frequencies"]:
        shares = ", ".join(
            f"{row['class']} {row['share']:.0%}"
            for row in alert["train_frequencies"]
            if not math.isnan(row["share"])
        )
        steps += f"In the training data it occurs in these shares of each class's texts: {shares}. "
    else:
        steps += (
            "Count how often it occurs in each class of the training data (pass the training "
            "data with --train-dataset). "
        )
    return steps + (
        "If it is an artefact: remove it from the training texts or balance it across the "
        "classes and retrain, or handle texts that contain it in the operating rules (e.g. "
        "send them to a person)."
    )


def _group_probe(
    explained: ExplainedModel,
    examples: Sequence[_Example],
    logits: torch.Tensor,
    groups: dict[str, list[str]],
    names: Sequence[str],
    totals: Sequence[float],
    batch_size: int,
) -> dict[str, Any]:
    """Relevance share of each group per class, and the counterfactual swap."""
    member = {term: name for name, terms in groups.items() for term in terms}
    shares = []
    for index, name in enumerate(names):
        of_class = [e for e in examples if e.target == index]
        for group in groups:
            values = [
                float(v)
                for e in of_class
                for k, v in zip(e.keys, e.word_relevance, strict=True)
                if member.get(k) == group
            ]
            docs = sum(any(member.get(k) == group for k in e.keys) for e in of_class)
            shares.append(
                {
                    "class": name,
                    "group": group,
                    "occurrences": len(values),
                    "documents": docs,
                    "relevance": float(sum(values)),
                    "share_of_class_relevance": float(sum(values)) / totals[index]
                    if totals[index]
                    else 0.0,
                    "mean_relevance": float(np.mean(values)) if values else math.nan,
                }
            )
    order = list(groups)
    swap: dict[str, str] = {}
    for position, group in enumerate(order):
        other = groups[order[(position + 1) % len(order)]]
        for i, term in enumerate(groups[group]):
            swap[term] = other[i % len(other)]
    pattern = _term_pattern(list(swap))

    def replace(match: re.Match[str]) -> str:
        new = swap[match.group(0).lower()]
        return new.capitalize() if match.group(0)[:1].isupper() else new

    containing = [i for i, e in enumerate(examples) if pattern.search(e.text)]
    result: dict[str, Any] = {
        "groups": groups,
        "swap_map": swap,
        "shares": shares,
        "swap": {"examples": len(containing)},
    }
    if containing:
        texts = [pattern.sub(replace, examples[i].text) for i in containing]
        swapped = _logits_of(explained, explained.encode(texts), batch_size)
        before = logits[containing]
        predicted = before.argmax(1)
        changed = swapped.argmax(1) != predicted
        change = swapped.gather(1, predicted[:, None]) - before.gather(1, predicted[:, None])
        result["swap"] |= {
            "predictions_changed": int(changed.sum()),
            "share_changed": float(changed.double().mean()),
            "mean_logit_change": float(change.mean()),
            "mean_abs_logit_change": float(change.abs().mean()),
        }
    return result


def _long_range(examples: Sequence[_Example], beyond: int) -> dict[str, Any]:
    """Share of each example's absolute relevance by distance from the explained
    position, in doubling bins, and quantiles of the relevance-weighted distance."""
    longest = max(e.position + 1 for e in examples)
    edges = [0, 1, 2]
    while edges[-1] < longest:
        edges.append(edges[-1] * 2)
    bins = np.zeros(len(edges) - 1)
    quantiles, beyond_shares = [], []
    counted = 0
    for example in examples:
        magnitude = np.abs(example.relevance[: example.position + 1])
        total = magnitude.sum()
        if not np.isfinite(total) or total <= 0:
            continue
        counted += 1
        distance = example.position - np.arange(example.position + 1)
        share = magnitude / total
        for b in range(len(bins)):
            bins[b] += share[(distance >= edges[b]) & (distance < edges[b + 1])].sum()
        order = np.argsort(distance)
        cumulative = np.cumsum(share[order])
        quantiles.append(
            [float(distance[order][np.searchsorted(cumulative, q)]) for q in (0.25, 0.5, 0.75)]
        )
        beyond_shares.append(float(share[distance > beyond].sum()))
    if not counted:
        return {"examples": 0}
    q = np.median(np.array(quantiles), axis=0)
    return {
        "examples": counted,
        "bins": [
            {"from": edges[b], "to": edges[b + 1] - 1, "mean_share": float(bins[b] / counted)}
            for b in range(len(bins))
        ],
        "distance_quantiles": {"q25": float(q[0]), "median": float(q[1]), "q75": float(q[2])},
        "beyond": beyond,
        "share_beyond": float(np.mean(beyond_shares)),
        "examples_with_tokens_beyond": sum(e.position > beyond for e in examples),
        "longest": longest,
    }


def _performance(
    labels: Sequence[int] | None, predicted: Sequence[int], names: Sequence[str]
) -> dict[str, Any]:
    if labels is None:
        return {"labelled": False}
    k = len(names)
    confusion = np.zeros((k, k), dtype=int)
    for y, p in zip(labels, predicted, strict=True):
        confusion[y, p] += 1
    per_class = []
    for c, name in enumerate(names):
        tp = confusion[c, c]
        predicted_c, true_c = confusion[:, c].sum(), confusion[c].sum()
        per_class.append(
            {
                "class": name,
                "precision": float(tp / predicted_c) if predicted_c else math.nan,
                "recall": float(tp / true_c) if true_c else math.nan,
                "support": int(true_c),
                "predicted": int(predicted_c),
            }
        )
    return {
        "labelled": True,
        "accuracy": float(np.trace(confusion) / confusion.sum()),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


def _gallery(
    examples: Sequence[_Example], probabilities: torch.Tensor, names: Sequence[str], size: int
) -> dict[str, list[dict[str, Any]]]:
    confidence = probabilities.max(1).values
    predicted = probabilities.argmax(1)

    def entry(i: int) -> dict[str, Any]:
        example = examples[i]
        return {
            "example_id": example.example_id,
            "label": None if example.label is None else names[example.label],
            "predicted": names[int(predicted[i])],
            "explained": names[example.target],
            "probability": float(confidence[i]),
            "tokens": example.tokens,
            "relevance": example.relevance.tolist(),
        }

    everyone = range(len(examples))
    correct = [i for i in everyone if examples[i].label == int(predicted[i])]
    wrong = [i for i in everyone if examples[i].label is not None and i not in set(correct)]
    by_confidence = sorted(everyone, key=lambda i: -float(confidence[i]))
    lists = {
        "confident_correct": [i for i in by_confidence if i in set(correct)][:size],
        "confident_wrong": [i for i in by_confidence if i in set(wrong)][:size],
        "uncertain": sorted(everyone, key=lambda i: float(confidence[i]))[:size],
    }
    return {name: [entry(i) for i in chosen] for name, chosen in lists.items()}


def _trust(
    explained: ExplainedModel,
    examples: Sequence[_Example],
    rows: Sequence[dict[str, Any]],
    methods: Sequence[str],
    settings: MethodSettings,
    options: ReportOptions,
    directory: Path,
    overwrite: bool,
    progress: bool,
) -> dict[str, Any]:
    """Faithfulness (Delta A^F) of the methods and the sanity baselines on a seeded
    sample (the study of :func:`~captum_mamba.apps.study.run_study`), and conservation of
    the signed methods on every example."""
    conservation = []
    for method in methods:
        slug = method_slug(method)
        deltas = [r[f"delta_{slug}"] for r in rows]
        if any(d is None for d in deltas):
            continue
        outputs = torch.tensor([r["output"] for r in rows], dtype=torch.float64)
        sums = outputs - torch.tensor(deltas, dtype=torch.float64)
        stats = conservation_stats(sums, outputs) if len(rows) > 1 else None
        conservation.append(
            {
                "method": method,
                "examples": len(rows),
                "max_abs_error": float((outputs - sums).abs().max()),
                "mean_relative_error": stats.mean_relative_error if stats else math.nan,
                "correlation": stats.correlation if stats else math.nan,
            }
        )
    result: dict[str, Any] = {"conservation": conservation, "study": None}
    if not options.trust_examples:
        return result
    count = min(options.trust_examples, len(examples))
    chosen = sorted(random.Random(options.seed).sample(range(len(examples)), count))
    studied = list(dict.fromkeys([*methods, RANDOM, RECENCY]))
    study = run_study(
        explained.model,
        lambda text: torch.tensor([explained.encode([text])[0]]),
        [(examples[i].text, examples[i].target) for i in chosen],
        studied,
        directory,
        forward_func=explained.forward,
        target="predicted",
        settings=settings,
        progress=progress,
        caption="faithfulness of the report's explanations",
        overwrite=overwrite,
        rank=0,
        world_size=1,
        example_ids=[examples[i].example_id for i in chosen],
    )
    result["study"] = {
        "examples": count,
        "protocol": "tokens removed by relevance (zero embedding), Delta A^F = A(LeRF) - A(MoRF)",
        "rows": [
            {
                "method": row["method"],
                "sanity_baseline": row["method"] in (RANDOM, RECENCY),
                "delta_af": row["delta_af"],
                "delta_af_sem": row["delta_af_sem"],
                "ms_per_example": row["ms_per_example"],
            }
            for row in study.rows
        ],
    }
    return result


def _file_hash(path: str | os.PathLike[str] | None) -> str | None:
    if path is None or not Path(path).exists():
        return None
    files = [Path(path)] if Path(path).is_file() else sorted(Path(path).rglob("*"))
    digest = hashlib.sha256()
    for file in files:
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _summary(data: dict[str, Any]) -> list[str]:
    """Plain-language sentences from the numbers of the report."""
    lines = []
    performance = data["performance"]
    if performance["labelled"]:
        lines.append(
            f"The model labels {performance['accuracy']:.0%} of the {data['provenance']['rows']} "
            f"texts correctly."
        )
    for section in data["global"]:
        words = [f"'{f['word']}'" for f in section["top"][:3]]
        if words:
            lines.append(
                f"For class '{section['class']}' the model relies most on "
                f"{', '.join(words)} ({section['examples']} texts)."
            )
    alerts = data["shortcuts"]["alerts"]
    if alerts:
        first = alerts[0]
        lines.append(
            f"{len(alerts)} shortcut alert(s): e.g. '{first['word']}' for class "
            f"'{first['class']}'; removing it changes {first['predictions_changed']} of "
            f"{first['examples_containing']} predictions that contain it."
        )
    else:
        lines.append("No shortcut alerts at the chosen thresholds.")
    profile = data["long_range"]
    if profile.get("examples"):
        lines.append(
            f"Half of each text's relevance lies within "
            f"{profile['distance_quantiles']['median']:g} "
            f"tokens of the explained position (median); {profile['share_beyond']:.0%} lies "
            f"more than {profile['beyond']} tokens back."
        )
    study = data["trust"]["study"]
    if study:
        scores = {row["method"]: row["delta_af"] for row in study["rows"]}
        main = data["provenance"]["methods"][0]
        sanity = max(
            (v for r, v in scores.items() if r in (RANDOM, RECENCY) and v is not None),
            default=None,
        )
        if scores.get(main) is not None and sanity is not None:
            verdict = "beats" if scores[main] > sanity else "does NOT beat"
            lines.append(
                f"Explanation quality on this data: {main} {verdict} the sanity baselines "
                f"(Delta A^F {scores[main]:.3g} against at best {sanity:.3g})."
            )
    lines.append(CAVEAT)
    return lines


def explain_dataset(
    explained: ExplainedModel,
    texts: Sequence[str],
    output_dir: str | os.PathLike[str],
    labels: Sequence[int] | None = None,
    methods: str | Sequence[str] = ("MambaLRP",),
    groups: str | Mapping[str, Sequence[str]] | None = None,
    train_texts: Sequence[str] | None = None,
    train_labels: Sequence[int] | None = None,
    options: ReportOptions | None = None,
    settings: MethodSettings | None = None,
    shard_size: int = 64,
    batch_size: int = 8,
    max_tokens: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    data_file: str | os.PathLike[str] | None = None,
    command_line: Sequence[str] | None = None,
    example_ids: Sequence[int] | None = None,
) -> DatasetExplanation | None:
    r"""Explain a classifier on a whole data set and write the report.

    The first method explains (its relevances make the sections on words, shortcuts,
    groups, long range and the gallery); every method, with the sanity baselines
    ``Random`` and ``Recency``, is scored in the trust section. Relevances of every method
    are written per example to ``attributions/attributions.parquet`` (resumable, sharded
    as :func:`~captum_mamba.apps.dataset.attribute_dataset`).

    Args:
        explained (ExplainedModel): a classifier
            (:func:`~captum_mamba.apps.loading.load_explained`).
        texts (sequence of str): the texts.
        output_dir (str or PathLike): output folder (created).
        labels (sequence of int, optional): class index of each text (for performance
            and the gallery). Default: None.
        methods (str or sequence of str, optional): method names; the first explains,
            the others are compared in the trust section. Default: MambaLRP.
        groups (str or Mapping, optional): groups of the bias probe
            (:func:`parse_groups`), e.g. ``"female=she,her;male=he,him"``. Default: None.
        train_texts (sequence of str, optional): the training texts, for the per-class
            frequencies of flagged words. Default: None.
        train_labels (sequence of int, optional): their class indices.
        options (ReportOptions, optional): thresholds and sizes.
        settings (MethodSettings, optional): method hyper-parameters and seed.
        shard_size (int, optional): texts per shard file. Default: 64.
        batch_size (int, optional): texts per batched call. Default: 8.
        max_tokens (int, optional): most padded tokens per batch. Default: None.
        rank (int, optional): this process's rank (with ``world_size``). Default: None.
        world_size (int, optional): number of processes. Default: None.
        device (str, optional): ``"cpu"`` or ``"cuda"``. Default: ``"cpu"``.
        overwrite (bool, optional): replace a run with other settings. Default: False.
        progress (bool, optional): progress bars. Default: True.
        data_file (str or PathLike, optional): the data file, hashed for provenance.
        command_line (sequence of str, optional): the command, for provenance.
            Default: ``sys.argv``.
        example_ids (sequence of int, optional): id of each text (its row in the file).

    Returns:
        DatasetExplanation: the report, also written to ``output_dir`` (None in the
        processes other than rank 0 of a multi-process run).

    Raises:
        ValueError: for a language model, bad labels or options, or bad groups.

    Examples::

        >>> explained = load_explained("sentiment.ckpt")
        >>> report = explain_dataset(explained, texts, "report", labels=labels,
        ...                          methods="MambaLRP,Integrated Gradients",
        ...                          groups="female=she,her;male=he,him")
        >>> report.data["shortcuts"]["alerts"]
    """
    options = options or ReportOptions()
    settings = settings or MethodSettings()
    names = resolve_methods(methods)
    group_terms = parse_groups(groups)
    if (train_texts is None) != (train_labels is None):
        raise ValueError("pass train_texts and train_labels together")
    label_names = list(explained.label_names)
    if texts:
        with torch.no_grad():
            first = torch.tensor(explained.encode([texts[0]])[0])
            device = next(explained.model.parameters()).device
            sample = explained.model.get_input_embeddings()(first.to(device))
        if model_kind(explained, sample)[0] != "classifier":
            raise ValueError(
                "the report explains classifiers (outputs of shape (batch, classes)); explain "
                "a language model's texts with captum-mamba attribute"
            )
    directory = Path(output_dir)
    run = attribute_dataset(
        explained,
        texts,
        directory / ATTRIBUTIONS_DIR,
        names,
        labels,
        "predicted",
        settings,
        shard_size,
        batch_size,
        max_tokens,
        rank,
        world_size,
        device,
        overwrite,
        progress,
        {"dataset": str(data_file) if data_file else None},
        example_ids=example_ids,
    )
    if run.merged is None:
        return None
    rows = read_attributions(directory / ATTRIBUTIONS_DIR).to_pylist()
    slug = method_slug(names[0])
    examples = []
    for row in rows:
        example = _Example(
            row["example_id"],
            row["text"],
            row["label"],
            row["target"],
            row["position"],
            row["token_ids"],
            row["tokens"],
            np.asarray(row[f"relevance_{slug}"], dtype=np.float64),
        )
        _words(example)
        examples.append(example)
    explained.model.eval()
    logits = _logits_of(explained, [e.token_ids for e in examples], batch_size)
    width = logits.shape[1]  # classes without a name are named by their index
    label_names = [*label_names, *map(str, range(len(label_names), width))][:width]
    probabilities = logits.softmax(1)
    rng = np.random.default_rng(options.seed)
    sections = []
    for index, name in enumerate(label_names):
        of_class = [e for e in examples if e.target == index]
        section = {"class": name, "examples": 0, "top": [], "most_frequent": [], "alert_words": []}
        if of_class:
            section = {"class": name} | _class_features(of_class, options, rng)
        sections.append(section)
    train = None
    if train_texts is not None and train_labels is not None:
        train = (list(train_texts), [int(y) for y in train_labels])
    alerts = _shortcut_alerts(explained, examples, logits, sections, label_names, train, batch_size)
    kept_labels = None if labels is None else [e.label for e in examples]
    data: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "summary": [],
        "provenance": {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command_line": list(sys.argv if command_line is None else command_line),
            "model": explained.description,
            "model_source": explained.source,
            "model_fingerprint": explained.fingerprint(),
            "data_file": None if data_file is None else str(data_file),
            "data_sha256": _file_hash(data_file),
            "rows": len(examples),
            "label_names": label_names,
            "methods": list(names),
            "settings": asdict(settings),
            "rules": repr(MambaRules()),
            "options": asdict(options),
            "environment": doctor_report(),
            "attributions": str(Path(ATTRIBUTIONS_DIR) / "attributions.parquet"),
        },
        "performance": _performance(kept_labels, [int(p) for p in logits.argmax(1)], label_names),
        "global": sections,
        "shortcuts": {
            "thresholds": {
                "shortcut_share": options.shortcut_share,
                "shortcut_min_examples": options.shortcut_min_examples,
                "min_count": options.min_count,
            },
            "alerts": alerts,
        },
        "groups": None,
        "long_range": _long_range(examples, options.long_range),
        "trust": _trust(
            explained,
            examples,
            rows,
            names,
            settings,
            options,
            directory / TRUST_DIR,
            overwrite,
            progress,
        ),
        "gallery": _gallery(examples, probabilities, label_names, options.gallery),
    }
    if group_terms:
        totals = [s.get("total_abs_relevance", 0.0) for s in sections]
        data["groups"] = _group_probe(
            explained, examples, logits, group_terms, label_names, totals, batch_size
        )
    data["summary"] = _summary(data)
    report = DatasetExplanation(data, directory)
    report.save(directory)
    return report

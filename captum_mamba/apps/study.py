r"""Comparative study: faithfulness, conservation and cost of attribution methods on a
labelled text data set.

For every example the runner embeds the tokens, explains the target logit (the
predicted class by default) with every method, and records the token-perturbation
curves (:mod:`captum_mamba.metrics.perturbation`), ``Delta A^F = A(LeRF) - A(MoRF)``,
the insertion area, the sum of relevances next to the explained logit, and the
wall-clock time of the attribution call. Every study includes the position-only sanity
baselines of :mod:`captum_mamba.apps.methods` (``Recency``, ``Read position, then random``)
next to ``Random``: a method must beat them for its score to mean anything.

Perturbation protocols: removed tokens are replaced by the zero embedding, the mean
embedding or a token's embedding (``replacement``); with ``keep_last=True`` the last
token (the position a last-token classifier head or a next-token prediction reads) is
never removed, and the curves run over the other tokens. Under zero replacement a
last-token head collapses when its own token is removed (``RMSNorm(0) = 0`` and
``SiLU(0) = 0`` make that position's features exactly zero), so removing the last
token first scores well whatever the explanation; keeping the last token, or a head on
the mean over positions, avoids that.

The work is sharded like :func:`captum_mamba.apps.dataset.attribute_dataset`: the records of
``shard_size`` examples go to ``shards/shard-*.jsonl`` as each shard finishes; the
tables are rewritten after every shard (partial results survive an interruption); a
re-run computes only the missing shards, and under ``torchrun`` each process takes its
share. It writes:

- ``results.csv`` and ``results.md``: one row per method (means over examples);
- ``examples.csv``: one row per method and example;
- ``curves.png``: mean MoRF / LeRF / insertion curves per method;
- ``conservation.png``: sum of relevances vs explained logit (signed methods).

Command line: ``captum-mamba study run`` (see :mod:`captum_mamba.apps.cli`)::

    captum-mamba study run --data-dir ../shared/data --num-examples 200
    captum-mamba study run --model news.ckpt --dataset news.csv --text-column body \
        --label-column topic
    captum-mamba study memory --length 1024     # peak memory, 130M shape
    captum-mamba study memory --length 16384 --methods mambalrp-lean
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba.adapters import rules_applied
from captum_mamba.apps.loading import model_fingerprint
from captum_mamba.apps.methods import ALL_METHODS, Explainer, method_explainers
from captum_mamba.apps.sharding import (
    ShardLayout,
    barrier,
    check_once,
    current_process,
    discard_bad_shards,
    finish,
    prepare_directory,
    write_atomic,
)
from captum_mamba.attr import LayerMambaLRP, MambaLRP, uses_lean
from captum_mamba.attr.forward import default_forward, fast_forward
from captum_mamba.baselines import MambaAttentionRollout
from captum_mamba.baselines.captum_methods import (
    SALIENCY,
    MethodSettings,
    TokenScorer,
    build_method,
)
from captum_mamba.metrics import (
    conservation_stats,
    curve_area,
    mean_sem,
    perturbation_curves,
    replacement_embedding,
    resample_curve,
)
from captum_mamba.models import mamba_config, random_mamba_lm
from captum_mamba.rules import MambaRules
from captum_mamba.visualization.styles import method_styles

Tokenize = Callable[[str], Tensor]
#: Result files of a study (besides the shards).
OUTPUT_FILES = ("results.csv", "results.md", "examples.csv", "curves.png", "conservation.png")
#: Curve kinds recorded per example.
KINDS = ("morf", "lerf", "insertion")


@dataclass
class MethodRecord:
    """Per-example measurements of one method (faithfulness values are NaN for
    examples without a curve: one token with ``keep_last``)."""

    name: str
    signed: bool
    delta: list[float] = field(default_factory=list)
    area_morf: list[float] = field(default_factory=list)
    area_lerf: list[float] = field(default_factory=list)
    area_insertion: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    relevance_sum: list[float] = field(default_factory=list)
    output: list[float] = field(default_factory=list)
    curves: dict[str, list[Tensor]] = field(default_factory=dict)


@dataclass
class StudyResult:
    """Outcome of :func:`run_study`.

    Args:
        rows (list of dict): one summary row per method (also in ``results.csv``).
        records (list of MethodRecord): the per-example measurements.
        accuracy (float): accuracy of the model on the studied examples.
        files (dict): name -> path of every written file.
        examples (int): examples in the tables (all, once the run is complete).
        complete (bool): whether every shard of the run exists.
    """

    rows: list[dict[str, Any]]
    records: list[MethodRecord]
    accuracy: float
    files: dict[str, Path]
    examples: int = 0
    complete: bool = True


def _text_and_label(example: Any) -> tuple[str, int]:
    if hasattr(example, "text"):
        return example.text, int(example.label)
    text, label = example
    return text, int(label)


def _mean_sem(values: Sequence[float]) -> tuple[float, float]:
    """:func:`mean_sem` of the values that are not NaN (NaN for none)."""
    kept = [v for v in values if not math.isnan(v)]
    return mean_sem(kept) if kept else (math.nan, math.nan)


def _summary(record: MethodRecord, accuracy: float) -> dict[str, Any]:
    delta, delta_sem = _mean_sem(record.delta)
    stats = None
    if record.signed:
        stats = conservation_stats(
            torch.tensor(record.relevance_sum, dtype=torch.float64),
            torch.tensor(record.output, dtype=torch.float64),
        )
    return {
        "method": record.name,
        "accuracy": accuracy,
        "delta_af": delta,
        "delta_af_sem": delta_sem,
        "area_morf": _mean_sem(record.area_morf)[0],
        "area_lerf": _mean_sem(record.area_lerf)[0],
        "area_insertion": _mean_sem(record.area_insertion)[0],
        "conservation_corr": stats.correlation if stats else math.nan,
        "conservation_rel_error": stats.mean_relative_error if stats else math.nan,
        "conservation_median_rel_error": stats.median_relative_error if stats else math.nan,
        "ms_per_example": 1000 * _mean_sem(record.seconds)[0],
        "examples": sum(not math.isnan(v) for v in record.delta),
    }


def _format(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the summary rows of a study, best ``Delta A^F`` first.

    Args:
        rows (sequence of dict): rows as in :attr:`StudyResult.rows`.

    Returns:
        str: the table.
    """
    header = (
        "| method | accuracy | ΔA^F (± s.e.) | A MoRF | A LeRF "
        "| conservation r | median rel. error | ms / example |"
    )
    lines = [header, "|" + "---|" * 8]
    ranked = sorted(rows, key=lambda r: -r["delta_af"] if not math.isnan(r["delta_af"]) else 0)
    for row in ranked:
        lines.append(
            f"| {row['method']} | {_format(row['accuracy'])} "
            f"| {_format(row['delta_af'])} ± {_format(row['delta_af_sem'])} "
            f"| {_format(row['area_morf'])} | {_format(row['area_lerf'])} "
            f"| {_format(row['conservation_corr'])} "
            f"| {_format(row['conservation_median_rel_error'])} "
            f"| {_format(row['ms_per_example'], 1)} |"
        )
    return "\n".join(lines)


def _plot(records: Sequence[MethodRecord], fractions: Tensor, directory: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {"curves": directory / "curves.png", "conservation": directory / "conservation.png"}
    titles = {"morf": "deletion, MoRF", "lerf": "deletion, LeRF", "insertion": "insertion"}
    styles = method_styles(record.name for record in records)
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for axis, (kind, title) in zip(axes, titles.items(), strict=True):
        for record in records:
            if record.curves.get(kind):
                mean = torch.stack(record.curves[kind]).mean(0)
                style = styles[record.name].line(len(mean))
                axis.plot(fractions.numpy(), mean.numpy(), label=record.name, **style)
        axis.set_title(title)
        axis.set_xlabel("fraction of tokens perturbed")
    axes[0].set_ylabel("explained logit (mean)")
    axes[-1].legend(fontsize=7)
    figure.tight_layout()
    write_atomic(files["curves"], lambda path: figure.savefig(path, dpi=120, format="png"))
    plt.close(figure)

    signed = [r for r in records if r.signed]
    columns = max(1, min(3, len(signed)))
    rows = max(1, math.ceil(len(signed) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 4 * rows), squeeze=False)
    for axis in axes.flat[len(signed) :]:
        axis.axis("off")
    for axis, record in zip(axes.flat, signed, strict=False):
        axis.scatter(record.output, record.relevance_sum, s=8, **styles[record.name].scatter())
        low = min(record.output + record.relevance_sum)
        high = max(record.output + record.relevance_sum)
        axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
        axis.set_title(record.name, fontsize=9)
        axis.set_xlabel("explained logit")
        axis.set_ylabel("sum of relevance")
    figure.tight_layout()
    write_atomic(files["conservation"], lambda path: figure.savefig(path, dpi=120, format="png"))
    plt.close(figure)
    return files


def _write_tables(
    records: Sequence[MethodRecord],
    rows: Sequence[dict[str, Any]],
    example_ids: Sequence[int],
    directory: Path,
    caption: str,
) -> dict[str, Path]:
    files = {
        "results_csv": directory / "results.csv",
        "results_md": directory / "results.md",
        "examples_csv": directory / "examples.csv",
    }

    def results(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    def examples(path: Path) -> None:
        columns = ["delta", "area_morf", "area_lerf", "area_insertion", "seconds"]
        columns += ["relevance_sum", "output"]
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["method", "example", *columns])
            for record in records:
                for index, example in enumerate(example_ids):
                    values = [getattr(record, name)[index] for name in columns]
                    writer.writerow([record.name, example, *values])

    write_atomic(files["results_csv"], results)
    write_atomic(
        files["results_md"], lambda path: path.write_text(f"{caption}\n\n{markdown_table(rows)}\n")
    )
    write_atomic(files["examples_csv"], examples)
    return files


def _filler(embedding: nn.Module, replacement: str, token_id: int | None) -> Tensor:
    """The replacement vector; a token's is its embedding through the module (so
    embeddings that map ids to rows, like CompactEmbedding, get the right row)."""
    if replacement != "token":
        return replacement_embedding(embedding, replacement, token_id)
    if token_id is None:
        raise ValueError("replacement='token' needs replacement_token_id (e.g. the padding id)")
    size = getattr(embedding, "num_embeddings", None)
    if size is not None and not 0 <= token_id < size:
        raise ValueError(f"replacement_token_id must be in [0, {size}), got {token_id}")
    with torch.no_grad():
        return embedding(torch.tensor([token_id])).detach()[0]


def _curves(
    forward: Callable[..., Tensor],
    embeds: Tensor,
    scores: Tensor,
    explained: int,
    filler: Tensor,
    keep_last: bool,
) -> dict[str, Tensor] | None:
    """Perturbation curves of one example; with ``keep_last`` over every token but
    the last, which stays in place (None for a one-token example)."""
    if not keep_last:
        return perturbation_curves(forward, embeds, scores, explained, filler)
    if embeds.shape[1] < 2:
        return None
    last = embeds[:, -1:]

    def with_last(perturbed: Tensor) -> Tensor:
        return forward(torch.cat([perturbed, last.expand(perturbed.shape[0], -1, -1)], 1))

    return perturbation_curves(with_last, embeds[:, :-1], scores[:, :-1], explained, filler)


def _example_record(
    model: nn.Module,
    forward: Callable[..., Tensor],
    embeds: Tensor,
    label: int,
    target: str,
    explainers: Sequence[tuple[str, bool, Explainer]],
    example_id: int,
    filler: Tensor,
    fractions: Tensor,
    keep_last: bool,
    warm_up: bool,
) -> dict[str, Any]:
    """The measurements of one example (a JSON-serialisable dict); the forward passes
    of the curves run on the fast path."""
    with torch.no_grad(), fast_forward(model):
        logits = forward(embeds)
    predicted = int(logits[0].argmax())
    explained = predicted if target == "predicted" else label
    record: dict[str, Any] = {
        "example": example_id,
        "label": label,
        "predicted": predicted,
        "explained": explained,
        "length": embeds.shape[1],
        "methods": {},
    }
    for name, _, explain in explainers:
        if warm_up:
            explain(embeds, explained, example_id)  # not timed
        start = time.perf_counter()
        scores = explain(embeds, explained, example_id)
        seconds = time.perf_counter() - start
        with fast_forward(model):
            curves = _curves(forward, embeds, scores, explained, filler, keep_last)
        values: dict[str, Any] = {
            "seconds": seconds,
            "relevance_sum": float(scores.double().sum()),
            "output": float(logits[0, explained]),
            "curves": None,
        }
        for kind in KINDS:
            values[f"area_{kind}"] = None
        if curves is not None:
            for kind, curve in curves.items():
                values[f"area_{kind}"] = float(curve_area(curve.double())[0])
            values["curves"] = {
                kind: resample_curve(curve[0].double(), fractions).tolist()
                for kind, curve in curves.items()
            }
        record["methods"][name] = values
    return record


def _number(value: float | None) -> float:
    return math.nan if value is None else value


def _load_records(
    layout: ShardLayout, names: Sequence[tuple[str, bool]]
) -> tuple[list[MethodRecord], list[int], int]:
    """Records of every shard written so far: per-method lists, example ids, correct."""
    records = [MethodRecord(name, signed) for name, signed in names]
    example_ids: list[int] = []
    correct = 0
    for shard in range(layout.num_shards):
        path = layout.path(shard)
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            example = json.loads(line)
            example_ids.append(example["example"])
            correct += example["predicted"] == example["label"]
            for record in records:
                values = example["methods"][record.name]
                delta = None
                if values["area_lerf"] is not None:
                    delta = values["area_lerf"] - values["area_morf"]
                record.delta.append(_number(delta))
                for kind in KINDS:
                    getattr(record, f"area_{kind}").append(_number(values[f"area_{kind}"]))
                record.seconds.append(values["seconds"])
                record.relevance_sum.append(values["relevance_sum"])
                record.output.append(values["output"])
                if values["curves"] is not None:
                    for kind in KINDS:
                        curve = torch.tensor(values["curves"][kind], dtype=torch.float64)
                        record.curves.setdefault(kind, []).append(curve)
    check_once(example_ids, len(example_ids), f"{layout.directory} shards")
    return records, example_ids, correct


def run_study(
    model: nn.Module,
    tokenize: Tokenize,
    examples: Sequence[Any],
    methods: Sequence[str | TokenScorer] = ALL_METHODS,
    output_dir: str | os.PathLike[str] = "study_results",
    forward_func: Callable[..., Tensor] | None = None,
    replacement: str = "zero",
    replacement_token_id: int | None = None,
    target: str = "predicted",
    settings: MethodSettings | None = None,
    num_fractions: int = 21,
    progress: bool = True,
    caption: str = "",
    keep_last: bool = False,
    shard_size: int = 25,
    rank: int | None = None,
    world_size: int | None = None,
    overwrite: bool = False,
    run_info: dict[str, Any] | None = None,
    on_shard: Callable[[int], None] | None = None,
    example_ids: Sequence[int] | None = None,
) -> StudyResult:
    r"""Run the comparative study of attribution methods on a labelled text data set.

    Each example is explained on its own (batch of one, no padding, so that the
    times are per example); the explained output is one class logit of
    ``(1, classes)`` outputs, for any number of classes.

    Args:
        model (nn.Module): the classifier (with ``get_input_embeddings()`` and
            supported Mamba blocks), in eval mode.
        tokenize (Callable): ``tokenize(text) -> (1, seq)`` long token ids.
        examples (sequence): labelled examples, objects with ``text`` and ``label``
            (e.g. :class:`captum_mamba.apps.data.LabelledText`) or ``(text, label)`` pairs;
            an example's id (its seed, its row in ``examples.csv``) is its index here.
        methods (sequence, optional): method names of
            :data:`~captum_mamba.apps.methods.ALL_METHODS` (any case) or built
            :class:`TokenScorer` objects. Default: all methods, sanity
            baselines included.
        output_dir (str or PathLike, optional): folder for tables, plots and shards
            (created). Default: ``"study_results"``.
        forward_func (Callable, optional): ``forward(embeds) -> (batch, classes)``.
            Default: ``model(inputs_embeds=embeds)`` via the Hugging Face convention.
        replacement (str, optional): ``"zero"``, ``"mean"`` or ``"token"``
            embedding for removed tokens. Default: ``"zero"``.
        replacement_token_id (int, optional): token id for ``replacement="token"``
            (embedded by the model's embedding module).
        target (str, optional): ``"predicted"`` (arg-max class) or ``"label"``.
            Default: ``"predicted"``.
        settings (MethodSettings, optional): method hyper-parameters and seed.
        num_fractions (int, optional): points of the averaged curves. Default: 21.
        progress (bool, optional): show a tqdm progress bar. Default: True.
        caption (str, optional): first line of ``results.md``. Default: ``""``.
        keep_last (bool, optional): never remove the last token (curves over the
            others). Default: False.
        shard_size (int, optional): examples per shard file. Default: 25.
        rank (int, optional): this process's rank (with ``world_size``). Default:
            None (``torchrun``'s, else 0 of 1).
        world_size (int, optional): number of processes. Default: None.
        overwrite (bool, optional): replace a study with other settings in
            ``output_dir``. Default: False (refuse; same settings resume).
        run_info (dict, optional): further settings recorded in ``run.json``.
        on_shard (Callable, optional): called with each shard number written.
        example_ids (sequence of int, optional): id of each example (e.g. its row in
            the file when ``examples`` is a sample). Default: ``0..len(examples)-1``.

    Returns:
        StudyResult: summary rows, per-example records, accuracy and written files
        (of the examples done so far if other processes are still running).

    Raises:
        ValueError: for bad settings, before anything is computed.
        RunSettingsError: if ``output_dir`` holds a study with other settings.

    Examples::

        >>> result = run_study(classifier, tokenize, examples[:50], output_dir="out")
        >>> print(markdown_table(result.rows))
    """
    from tqdm.auto import tqdm

    if target not in ("predicted", "label"):
        raise ValueError(f"target must be 'predicted' or 'label', got {target!r}")
    if not examples:
        raise ValueError("run_study needs at least one example")
    for value, what, least in ((num_fractions, "num_fractions", 2), (shard_size, "shard_size", 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{what} must be an integer >= {least}, got {value!r}")
    settings = settings or MethodSettings()
    forward = forward_func or default_forward(model, "inputs_embeds")
    explainers = method_explainers(methods, model, forward, settings)
    names = [(name, signed) for name, signed, _ in explainers]
    embedding = model.get_input_embeddings()
    filler = _filler(embedding, replacement, replacement_token_id)
    fractions = torch.linspace(0, 1, num_fractions, dtype=torch.float64)
    pairs = [_text_and_label(example) for example in examples]
    ids = list(range(len(pairs))) if example_ids is None else [int(i) for i in example_ids]
    if len(ids) != len(pairs) or len(set(ids)) != len(ids):
        raise ValueError(f"example_ids must be {len(pairs)} distinct integers, one per example")
    digest = hashlib.sha256(json.dumps([pairs, ids]).encode()).hexdigest()[:16]
    description = {
        "format": "captum-mamba study 1",
        "model_fingerprint": model_fingerprint(model),
        "methods": [name for name, _ in names],
        "examples": len(pairs),
        "examples_fingerprint": digest,
        "replacement": replacement,
        "replacement_token_id": replacement_token_id,
        "keep_last": keep_last,
        "target": target,
        "settings": asdict(settings),
        "num_fractions": num_fractions,
        "shard_size": shard_size,
        **(run_info or {}),
    }
    process = current_process(rank, world_size)
    try:
        directory = prepare_directory(output_dir, description, overwrite, OUTPUT_FILES)
        layout = ShardLayout(directory, len(pairs), shard_size, ".jsonl")
        mine = process.shards(layout.num_shards)
        discard_bad_shards(
            layout,
            mine,
            lambda path: [json.loads(line)["example"] for line in path.read_text().splitlines()],
            lambda shard: [ids[i] for i in layout.examples(shard)],
        )
        todo = layout.missing(mine)
        bar = tqdm(
            total=sum(len(layout.examples(k)) for k in todo), desc="study", disable=not progress
        )
        warm_up = True
        with bar:
            for shard in todo:
                lines = []
                for index in layout.examples(shard):
                    text, label = pairs[index]
                    embeds = embedding(tokenize(text)).detach()
                    record = _example_record(
                        model,
                        forward,
                        embeds,
                        label,
                        target,
                        explainers,
                        ids[index],
                        filler,
                        fractions,
                        keep_last,
                        warm_up,
                    )
                    warm_up = False
                    lines.append(json.dumps(record) + "\n")
                    bar.update(1)
                content = "".join(lines)
                write_atomic(layout.path(shard), lambda p, t=content: p.write_text(t))
                _summarise(layout, names, directory, caption, fractions, plots=False)
                if on_shard is not None:
                    on_shard(shard)
        barrier(process)
        complete = not layout.missing()
        final = complete and (process.rank == 0 or not process.group)
        return _summarise(layout, names, directory, caption, fractions, plots=final)
    finally:
        finish(process)


def _summarise(
    layout: ShardLayout,
    names: Sequence[tuple[str, bool]],
    directory: Path,
    caption: str,
    fractions: Tensor,
    plots: bool,
) -> StudyResult:
    """Tables (and plots) of every shard written so far."""
    records, example_ids, correct = _load_records(layout, names)
    complete = len(example_ids) == layout.count
    accuracy = correct / len(example_ids) if example_ids else math.nan
    rows = [_summary(record, accuracy) for record in records]
    if not complete:
        caption = f"{caption}\n\n(partial: {len(example_ids)} of {layout.count} examples)".strip()
    files = _write_tables(records, rows, example_ids, directory, caption) if example_ids else {}
    if plots and example_ids:
        files.update(_plot(records, fractions, directory))
    return StudyResult(rows, records, accuracy, files, len(example_ids), complete)


#: Methods of :func:`measure_peak_memory`: a no-grad forward returning every position's
#: logits (reference), no-grad forwards to the last position's logits (under the
#: MambaLRP rules with this package's scans; transformers' own CPU path), attention
#: rollout, MambaLRP on the automatic, fast and lean paths, MambaLRP with a forward that
#: returns the logits of every position and no recomputation (the path before the lean
#: one existed), LayerMambaLRP on token ids, and Captum's Saliency through this package's
#: forward.
MEMORY_METHODS = (
    "forward",
    "forward-rules",
    "forward-hf",
    "rollout",
    "mambalrp",
    "mambalrp-fast",
    "mambalrp-lean",
    "mambalrp-full-logits",
    "layer-mambalrp",
    "saliency",
)
#: Named model shapes of :func:`measure_peak_memory`: ``mamba-130m`` and a tiny one.
MEMORY_SHAPES = {"130m": (768, 24, 16, 50280), "tiny": (16, 2, 4, 64)}


def parse_shape(shape: str) -> tuple[int, int, int, int]:
    """``(hidden, layers, state, vocab)`` of a shape name of :data:`MEMORY_SHAPES` or of
    ``"hidden,layers,state,vocab"``.

    Raises:
        ValueError: for anything else.
    """
    if shape in MEMORY_SHAPES:
        return MEMORY_SHAPES[shape]
    try:
        hidden, layers, state, vocab = (int(v) for v in shape.split(","))
    except ValueError:
        raise ValueError(
            f"shape must be one of {sorted(MEMORY_SHAPES)} or 'hidden,layers,state,vocab', "
            f"got {shape!r}"
        ) from None
    return hidden, layers, state, vocab


def _memory_model(shape: str, seed: int) -> nn.Module:
    hidden, layers, state, vocab = parse_shape(shape)
    config = mamba_config(
        hidden_size=hidden, num_hidden_layers=layers, state_size=state, vocab_size=vocab
    )
    return random_mamba_lm(config, seed=seed)


def _memory_call(method: str, model: nn.Module, ids: Tensor) -> Callable[[], Any]:
    """The measured call of ``method`` on ``ids`` ``(1, length)``."""
    embeds = model.get_input_embeddings()(ids).detach()
    target = (-1, int(ids[0, -1]))
    forward = default_forward(model, "inputs_embeds")

    def all_logits(x: Tensor) -> Tensor:
        return forward(x)  # a plain function: no head at the explained position only

    def last_logits(x: Tensor) -> Tensor:
        return forward.last_logits(x)

    def forward_rules() -> Tensor:
        with rules_applied(model, MambaRules()):
            return forward.last_logits(embeds)

    calls: dict[str, Callable[[], Any]] = {
        "forward": lambda: forward(embeds),
        "forward-rules": forward_rules,
        "forward-hf": lambda: model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1),
        "rollout": lambda: MambaAttentionRollout(model).attribute(embeds),
        "mambalrp": lambda: MambaLRP(model).attribute(embeds, target=target),
        "mambalrp-fast": lambda: MambaLRP(model, lean=False).attribute(embeds, target=target),
        "mambalrp-lean": lambda: MambaLRP(model, lean=True).attribute(embeds, target=target),
        "mambalrp-full-logits": lambda: MambaLRP(model, all_logits, lean=False).attribute(
            embeds, target=target
        ),
        "layer-mambalrp": lambda: LayerMambaLRP(model, model.get_input_embeddings()).attribute(
            ids, target=target
        ),
        "saliency": lambda: build_method(SALIENCY, model, last_logits)(embeds, target[1]),
    }
    if method not in calls:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(MEMORY_METHODS)}")
    if method.startswith("forward"):
        return lambda: _no_grad(calls[method])
    return calls[method]


def _no_grad(call: Callable[[], Any]) -> Any:
    with torch.no_grad():
        return call()


def proc_status(field: str) -> int | None:
    """A ``/proc/self/status`` field of this process in KiB (``"VmRSS"``: resident set,
    ``"VmHWM"``: its peak), or None where there is none (not Linux).

    Args:
        field (str): the field name.

    Returns:
        int or None: the value in KiB.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset this process's peak resident set (Linux ``clear_refs``).

    Returns:
        bool: False where that is impossible (the peak then keeps earlier use).
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return proc_status("VmHWM") is not None


def _memory_worker(
    method: str, length: int, seed: int, shape: str = "130m", repeats: int = 1
) -> dict[str, Any]:
    """Build the model, warm ``method`` up on 8 tokens, run it ``repeats`` times at
    ``length`` and report the median time and the peak resident set above the resident
    set before the first run."""
    model = _memory_model(shape, seed)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)
    _memory_call(method, model, ids[:, :8])()
    call = _memory_call(method, model, ids)
    exact = reset_peak()
    # ru_maxrss is in KiB on Linux; it cannot be reset, so it is the fallback only.
    before = proc_status("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    peak = proc_status("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "method": method,
        "length": length,
        "shape": shape,
        "threads": torch.get_num_threads(),
        "lean": uses_lean(None, length),
        "seconds": round(sorted(times)[len(times) // 2], 3),
        "peak_rss_mib": round(peak / 1024, 1),
        "before_call_rss_mib": round(before / 1024, 1),
        "increase_mib": round((peak - before) / 1024, 1),
        "mib_per_token": round((peak - before) / 1024 / length, 4),
        "peak_reset": exact,
    }


def measure_peak_memory(
    method: str,
    length: int,
    seed: int = 0,
    threads: int | None = None,
    shape: str = "130m",
    timeout: float | None = None,
    repeats: int = 1,
) -> dict[str, Any]:
    """Peak resident memory of one attribution, measured in a fresh subprocess.

    The subprocess builds the model and inputs, warms the method up on 8 tokens, resets
    the peak resident set (Linux ``/proc/self/clear_refs``; elsewhere the unresettable
    ``ru_maxrss`` is used) and runs the method once.

    Args:
        method (str): one of :data:`MEMORY_METHODS`.
        length (int): sequence length (batch 1).
        seed (int, optional): model and input seed. Default: 0.
        threads (int, optional): torch CPU threads of the subprocess. Default: torch's.
        shape (str, optional): a name of :data:`MEMORY_SHAPES` (``"130m"``: the shape of
            ``mamba-130m``) or ``"hidden,layers,state,vocab"``; float32, random weights.
            Default: ``"130m"``.
        timeout (float, optional): seconds before the subprocess is stopped
            (``subprocess.TimeoutExpired``). Default: None.
        repeats (int, optional): runs after the warm-up; ``seconds`` is their median.
            Default: 1.

    Returns:
        dict: ``seconds``, ``peak_rss_mib`` (whole process), ``before_call_rss_mib``,
        ``increase_mib``, ``mib_per_token``, ``lean`` (whether MambaLRP chooses the lean
        path at this length) and ``peak_reset`` (whether the peak was reset before the
        call).

    Raises:
        RuntimeError: with the subprocess's error output if it fails.
    """
    if method not in MEMORY_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(MEMORY_METHODS)}")
    command = [sys.executable, "-m", "captum_mamba", "study", "memory-worker"]
    command += ["--method", method, "--length", str(length), "--seed", str(seed)]
    command += ["--shape", shape, "--repeats", str(repeats)]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        raise RuntimeError(
            f"the memory worker ({method}, {length} tokens) failed: {lines[-1].strip()}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])

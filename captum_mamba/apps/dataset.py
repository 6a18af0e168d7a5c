r"""Attributing a whole data set: sharded Parquet results, resumable, on many processes.

:func:`attribute_dataset` explains every text of a data set with one or more methods
(:mod:`captum_mamba.apps.methods`) and writes one row per text:

==================  ==========================================================
column              content
==================  ==========================================================
``example_id``      row of the text in the data set (0-based)
``text``            the text
``label``           its class index (null without labels)
``predicted``       arg-max class (classifier) or next token (language model)
``target``          the explained class or token id
``target_name``     its class name or token text
``position``        the explained sequence position (the last token)
``output``          the explained logit
``token_ids``       the token ids (list)
``tokens``          the token texts (list)
``relevance_<m>``   per-token scores of method ``m`` (list, float64)
``delta_<m>``       ``output - sum(relevance)`` for signed methods (else null)
``seconds_<m>``     wall time of the method for this text (a batch's time is
                    shared equally by its texts)
==================  ==========================================================

``<m>`` is the method's slug (:func:`~captum_mamba.apps.methods.method_slug`, e.g.
``mambalrp``, ``integrated_gradients``). The run's settings are in ``run.json`` and in
the Parquet schema metadata (key ``captum_mamba``).

Files: ``shards/shard-00000-of-000NN.parquet`` (written atomically as each shard
finishes) and, once every shard exists, ``attributions.parquet`` (all rows in example
order). Both load directly::

    pandas.read_parquet("out/attributions.parquet")
    datasets.load_dataset("parquet", data_files="out/attributions.parquet")

Resuming: a run in a folder that already holds some shards computes only the missing
ones (settings must match). Processes: under ``torchrun`` (or with ``rank`` and
``world_size``) each process takes the shards ``k % world_size == rank``
(:mod:`captum_mamba.apps.sharding`); rank 0 merges after all have finished.

Inside a process, texts of similar length are explained together in left-padded
batches (with the attention mask) by the methods whose batched scores equal the
single-text scores (``batchable`` in the catalogue
:data:`~captum_mamba.baselines.captum_methods.METHODS`); the seeded and
hidden-attention methods explain one text at a time.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from captum_mamba.apps.data import require_pyarrow
from captum_mamba.apps.loading import ExplainedModel
from captum_mamba.apps.methods import MethodRunner, build_runners, method_slug, resolve_methods
from captum_mamba.apps.sharding import (
    ShardLayout,
    barrier,
    check_once,
    current_process,
    device_for,
    discard_bad_shards,
    finish,
    prepare_directory,
    write_atomic,
)
from captum_mamba.attr.batches import length_buckets, pad_sequences
from captum_mamba.attr.forward import fast_forward
from captum_mamba.baselines.captum_methods import MethodSettings
from captum_mamba.visualization import token_texts

#: Merged results file in the output folder.
MERGED_FILE = "attributions.parquet"
#: Schema metadata key of the run's description.
METADATA_KEY = b"captum_mamba"


def _pyarrow() -> Any:
    return require_pyarrow("writing Parquet results")


@dataclass
class DatasetRun:
    """Outcome of :func:`attribute_dataset` in this process.

    Args:
        directory (Path): the output folder.
        computed (list of int): shards this process computed.
        skipped (list of int): shards of this process that were already there.
        missing (list of int): shards of the run still without a file.
        merged (Path, optional): the merged file, if written (or already there).
    """

    directory: Path
    computed: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)
    merged: Path | None = None

    @property
    def complete(self) -> bool:
        """Whether every shard of the run exists."""
        return not self.missing


def explain_in_batches(
    method: MethodRunner,
    sequences: Sequence[Tensor],
    targets: Sequence[Any],
    example_ids: Sequence[int],
    batch_size: int = 8,
    max_tokens: int | None = None,
) -> tuple[list[Tensor], list[float]]:
    """Token scores of many embedded texts, in length-bucketed left-padded batches.

    This is the one place that batches explanations; it buckets and pads as
    :func:`captum_mamba.attr.attribute_batches` does (with
    :func:`~captum_mamba.attr.batches.length_buckets` and
    :func:`~captum_mamba.attr.batches.pad_sequences`; left padding, targets counted
    from the end of each text).

    Args:
        method (MethodRunner): the method (seeded or unbatchable methods get batches
            of one).
        sequences (sequence of Tensor): ``(seq, hidden)`` embeddings of each text.
        targets (sequence): each text's target: a class index, or
            ``(-1, token)`` for a language model's last position.
        example_ids (sequence of int): each text's id.
        batch_size (int, optional): most texts per call. Default: 8.
        max_tokens (int, optional): most padded tokens per call. Default: None.

    Returns:
        tuple: the ``(seq,)`` scores of each text (padding removed) and each text's
        share of the wall time, in input order.
    """
    size = batch_size if method.batchable else 1
    lengths = [s.shape[0] for s in sequences]
    scores: list[Tensor | None] = [None] * len(sequences)
    seconds = [0.0] * len(sequences)
    for batch in length_buckets(lengths, size, max_tokens):
        embeds, mask = pad_sequences([sequences[i] for i in batch], 0.0, left=True)
        target = [targets[i] for i in batch] if len(batch) > 1 else targets[batch[0]]
        start = time.perf_counter()
        ids = [example_ids[i] for i in batch]
        result = method(embeds, target, mask if len(batch) > 1 else None, ids)
        elapsed = (time.perf_counter() - start) / len(batch)
        for row, index in enumerate(batch):
            scores[index] = result[row, embeds.shape[1] - lengths[index] :]
            seconds[index] = elapsed
    return [s for s in scores if s is not None], seconds


@torch.no_grad()
def model_outputs(
    explained: ExplainedModel,
    sequences: Sequence[Tensor],
    batch_size: int,
    max_tokens: int | None,
    pad: Tensor | float = 0.0,
) -> list[Tensor]:
    """The model's output for each text: ``(classes,)`` or the last position's
    ``(vocab,)`` logits, computed in the same length buckets as the explanations.

    Args:
        explained (ExplainedModel): the model.
        sequences (sequence of Tensor): ``(seq, hidden)`` embeddings of the texts.
        batch_size (int): texts per forward pass.
        max_tokens (int, optional): token budget of one bucket (None: no budget).
        pad (Tensor or float, optional): embedding that left-pads shorter texts.
            Default: 0.0.

    Returns:
        list of Tensor: one detached output per text, in the order of ``sequences``.
    """
    lengths = [s.shape[0] for s in sequences]
    outputs: list[Tensor | None] = [None] * len(sequences)
    with fast_forward(explained.model):
        for batch in length_buckets(lengths, batch_size, max_tokens):
            embeds, mask = pad_sequences([sequences[i] for i in batch], pad, left=True)
            logits = explained.forward(embeds, mask if len(batch) > 1 else None)
            if logits.dim() == 3:
                logits = logits[:, -1]
            for row, index in enumerate(batch):
                outputs[index] = logits[row].detach()
    return [o for o in outputs if o is not None]


def check_padding(explained: ExplainedModel, sequences: Sequence[Tensor]) -> None:
    """Check that left padding with the attention mask leaves the model's outputs
    unchanged (needed for batches): two texts of different length, alone and padded
    with random embeddings (which a model that honours the mask never sees).

    Args:
        explained (ExplainedModel): the model.
        sequences (sequence of Tensor): ``(seq, hidden)`` embeddings of some texts.

    Raises:
        ValueError: if the padded outputs differ (the model ignores the mask).
    """
    by_length = {s.shape[0]: s for s in sequences}
    if len(by_length) < 2:
        return
    short, long = by_length[min(by_length)], by_length[max(by_length)]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(short.shape[-1], generator=generator, dtype=torch.float64)
    pad = (noise * float(long.double().std()) + float(long.double().mean())).to(long)
    alone = model_outputs(explained, [short, long], 1, None)
    together = model_outputs(explained, [short, long], 2, None, pad)
    tolerance = 1e-9 if short.dtype == torch.float64 else 1e-4
    for a, b in zip(alone, together, strict=True):
        scale = float(a.abs().max()) + 1e-6
        if float((a - b).abs().max()) > tolerance * scale:
            raise ValueError(
                "the model's outputs change when a shorter text is left-padded with an "
                "attention mask (does its forward ignore attention_mask?); pass batch_size=1 "
                "(--batch-size 1)"
            )


def _resolve_target(
    target: str | int, kind: str, output: Tensor, label: int | None, token_target: int | None
) -> int:
    if target == "predicted":
        return int(output.argmax())
    if target == "label":
        if label is None:
            raise ValueError("target 'label' needs labels; pass a label column or another target")
        return label
    if token_target is not None:
        return token_target
    return int(target)


def _target_token(explained: ExplainedModel, target: str | int) -> int | None:
    """The token id of a ``"token:TEXT"`` target (one token), else None."""
    if not isinstance(target, str) or not target.startswith("token:"):
        return None
    text = target[len("token:") :]
    ids = explained.encode([text])[0]
    if len(ids) != 1 or not text:
        raise ValueError(
            f"target {target!r} is {len(ids)} tokens; name one token (e.g. 'token: Paris'), "
            f"or pass its id as the target"
        )
    return ids[0]


def _check_target(target: str | int, kind: str, width: int, labels: Any) -> None:
    if target in ("predicted", "label"):
        if target == "label" and kind == "language model":
            raise ValueError(
                "target 'label' is for classifiers; explain a language model's 'predicted' "
                "next token, a token id, or 'token:TEXT'"
            )
        if target == "label" and labels is None:
            raise ValueError("target 'label' needs labels; pass a label column or another target")
        return
    if isinstance(target, str) and target.startswith("token:"):
        if kind != "language model":
            raise ValueError("a 'token:TEXT' target is for language models; pass a class index")
        return
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < width:
        what = "class index" if kind == "classifier" else "token id"
        raise ValueError(
            f"target must be 'predicted', 'label', 'token:TEXT' or a {what} in 0..{width - 1}, "
            f"got {target!r}"
        )


def _schema(pyarrow: Any, slugs: Sequence[str], metadata: dict[str, Any]) -> Any:
    columns = [
        ("example_id", pyarrow.int64()),
        ("text", pyarrow.string()),
        ("label", pyarrow.int64()),
        ("predicted", pyarrow.int64()),
        ("target", pyarrow.int64()),
        ("target_name", pyarrow.string()),
        ("position", pyarrow.int64()),
        ("output", pyarrow.float64()),
        ("token_ids", pyarrow.list_(pyarrow.int64())),
        ("tokens", pyarrow.list_(pyarrow.string())),
    ]
    for slug in slugs:
        columns += [
            (f"relevance_{slug}", pyarrow.list_(pyarrow.float64())),
            (f"delta_{slug}", pyarrow.float64()),
            (f"seconds_{slug}", pyarrow.float64()),
        ]
    return pyarrow.schema(columns, metadata={METADATA_KEY: json.dumps(metadata).encode()})


def _target_name(explained: ExplainedModel, kind: str, target: int) -> str:
    if kind == "classifier":
        names = explained.label_names
        return names[target] if target < len(names) else str(target)
    return token_texts(explained.tokenizer, [target])[0]


def _shard_rows(
    explained: ExplainedModel,
    runners: Sequence[MethodRunner],
    texts: Sequence[str],
    labels: Sequence[int] | None,
    ids: Sequence[int],
    indices: Sequence[int],
    target: str | int,
    token_target: int | None,
    kind: str,
    device: torch.device,
    batch_size: int,
    max_tokens: int | None,
) -> dict[str, list[Any]]:
    """The result columns of one shard."""
    tokens = explained.encode([texts[i] for i in indices])
    embedding = explained.model.get_input_embeddings()
    with torch.no_grad():
        sequences = [embedding(torch.tensor(row, device=device)).detach() for row in tokens]
    outputs = model_outputs(explained, sequences, batch_size, max_tokens)
    columns: dict[str, list[Any]] = {name: [] for name in ("example_id", "text", "label")}
    for name in ("predicted", "target", "target_name", "position", "output"):
        columns[name] = []
    columns["token_ids"], columns["tokens"] = list(tokens), []
    targets = []
    for index, output, row in zip(indices, outputs, tokens, strict=True):
        label = None if labels is None else labels[index]
        chosen = _resolve_target(target, kind, output, label, token_target)
        targets.append(chosen if kind == "classifier" else (-1, chosen))
        columns["example_id"].append(ids[index])
        columns["text"].append(texts[index])
        columns["label"].append(label)
        columns["predicted"].append(int(output.argmax()))
        columns["target"].append(chosen)
        columns["target_name"].append(_target_name(explained, kind, chosen))
        columns["position"].append(len(row) - 1)
        columns["output"].append(float(output[chosen]))
        columns["tokens"].append(token_texts(explained.tokenizer, row))
    for runner in runners:
        slug = method_slug(runner.name)
        scores, seconds = explain_in_batches(
            runner, sequences, targets, [ids[i] for i in indices], batch_size, max_tokens
        )
        columns[f"relevance_{slug}"] = [s.double().cpu().tolist() for s in scores]
        columns[f"delta_{slug}"] = [
            output - float(s.double().sum()) if runner.signed else None
            for output, s in zip(columns["output"], scores, strict=True)
        ]
        columns[f"seconds_{slug}"] = seconds
    return columns


def merge_shards(directory: str | os.PathLike[str], layout: ShardLayout | None = None) -> Path:
    """Write ``attributions.parquet``: every shard's rows, in example order.

    Args:
        directory (str or PathLike): the output folder of a complete run.
        layout (ShardLayout, optional): the run's shards. Default: every
            ``shards/shard-*.parquet`` in name order.

    Returns:
        Path: the merged file.

    Raises:
        FileNotFoundError: if a shard is missing (naming it).
    """
    pyarrow = _pyarrow()
    directory = Path(directory)
    if layout is not None:
        missing = layout.missing()
        if missing:
            raise FileNotFoundError(
                f"{layout.path(missing[0])} is missing ({len(missing)} shards in all); "
                f"run the same command again to compute them"
            )
        files = [layout.path(k) for k in range(layout.num_shards)]
    else:
        files = sorted((directory / "shards").glob("shard-*.parquet"))
    target = directory / MERGED_FILE

    def write(path: Path) -> None:
        writer, found = None, []
        try:
            for file in files:
                table = pyarrow.parquet.read_table(file)
                found.extend(table.column("example_id").to_pylist())
                if writer is None:
                    writer = pyarrow.parquet.ParquetWriter(path, table.schema)
                writer.write_table(table)
        finally:
            if writer is not None:
                writer.close()
        check_once(found, len(found) if layout is None else layout.count, f"{directory} shards")

    write_atomic(target, write)
    return target


def read_attributions(directory: str | os.PathLike[str]) -> Any:
    """The results of a run as one ``pyarrow.Table``: the merged file, or the shards
    written so far (in example order).

    Args:
        directory (str or PathLike): the output folder.

    Returns:
        pyarrow.Table: the rows.
    """
    pyarrow = _pyarrow()
    directory = Path(directory)
    if (directory / MERGED_FILE).is_file():
        return pyarrow.parquet.read_table(directory / MERGED_FILE)
    files = sorted((directory / "shards").glob("shard-*.parquet"))
    if not files:
        raise FileNotFoundError(f"{directory} holds no results; run captum-mamba attribute first")
    return pyarrow.concat_tables([pyarrow.parquet.read_table(f) for f in files])


def model_kind(explained: ExplainedModel, sample: Tensor) -> tuple[str, int]:
    """``("classifier", classes)`` or ``("language model", vocab)`` from the shape of
    the model's output for one embedded text ``(seq, hidden)``."""
    with torch.no_grad(), fast_forward(explained.model):
        logits = explained.forward(sample[None], None)
    if logits.dim() == 2:
        return "classifier", logits.shape[-1]
    if logits.dim() == 3:
        return "language model", logits.shape[-1]
    raise ValueError(
        f"the model returns outputs of shape {tuple(logits.shape)}; expected (batch, classes) "
        f"logits or (batch, seq, vocab) language-model logits"
    )


def attribute_dataset(
    explained: ExplainedModel,
    texts: Sequence[str],
    output_dir: str | os.PathLike[str],
    methods: str | Sequence[str] = ("MambaLRP",),
    labels: Sequence[int] | None = None,
    target: str | int = "predicted",
    settings: MethodSettings | None = None,
    shard_size: int = 64,
    batch_size: int = 8,
    max_tokens: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    run_info: dict[str, Any] | None = None,
    on_shard: Callable[[int], None] | None = None,
    example_ids: Sequence[int] | None = None,
) -> DatasetRun:
    r"""Explain every text of a data set and write the results as sharded Parquet.

    See the module docstring for the columns and files. The work is split into
    shards of ``shard_size`` texts; shards that already have a file are skipped
    (resume); under ``torchrun`` each process takes its share of the shards.

    Args:
        explained (ExplainedModel): model, encoder and forward
            (:func:`captum_mamba.apps.loading.load_explained`).
        texts (sequence of str): the texts; ``example_id`` is the index here.
        output_dir (str or PathLike): output folder (created).
        methods (str or sequence of str, optional): method names (any case) or
            ``"all"``, see :func:`captum_mamba.apps.methods.resolve_methods`.
            Default: MambaLRP.
        labels (sequence of int, optional): class index of each text.
        target (str or int, optional): ``"predicted"`` (arg-max class, or next
            token), ``"label"`` (classifiers), a class index / token id, or
            ``"token:TEXT"`` (language models). Default: ``"predicted"``.
        settings (MethodSettings, optional): method hyper-parameters and seed.
        shard_size (int, optional): texts per shard file. Default: 64.
        batch_size (int, optional): texts per batched call. Default: 8.
        max_tokens (int, optional): most padded tokens per batch. Default: None.
        rank (int, optional): this process's rank (with ``world_size``), e.g. to
            re-run a failed rank alone. Default: None (``torchrun``'s, else 0 of 1).
        world_size (int, optional): number of processes. Default: None.
        device (str, optional): ``"cpu"``, ``"cuda"`` (``cuda:<local rank>``) or
            ``"cuda:N"``. Default: ``"cpu"``.
        overwrite (bool, optional): replace a run with other settings in
            ``output_dir``. Default: False (refuse).
        progress (bool, optional): tqdm progress bar. Default: True.
        run_info (dict, optional): further settings recorded in ``run.json`` (e.g.
            the data file); resuming requires them equal. Default: None.
        on_shard (Callable, optional): called with each shard number this process
            has written.
        example_ids (sequence of int, optional): the id of each text (e.g. its row
            in the file when ``texts`` is a sample); seeds the seeded methods.
            Default: ``0..len(texts)-1``.

    Returns:
        DatasetRun: the shards computed, skipped and missing, and the merged file.

    Raises:
        ValueError: for bad settings (before anything is computed).
        RunSettingsError: if ``output_dir`` holds a run with other settings.

    Examples::

        >>> explained = load_explained("sentiment.ckpt")
        >>> table = read_texts("reviews.csv", "review", label_column="stars")
        >>> run = attribute_dataset(explained, table.texts, "out", "mambalrp,random",
        ...                         labels=table.labels)
        >>> pandas.read_parquet(run.merged)
    """
    from tqdm.auto import tqdm

    pyarrow = _pyarrow()
    names = resolve_methods(methods)
    if not texts:
        raise ValueError("attribute_dataset needs at least one text")
    for value, what in ((shard_size, "shard_size"), (batch_size, "batch_size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"{len(labels)} labels for {len(texts)} texts; pass one label per text")
    ids = list(range(len(texts))) if example_ids is None else [int(i) for i in example_ids]
    if len(ids) != len(texts) or len(set(ids)) != len(ids):
        raise ValueError(f"example_ids must be {len(texts)} distinct integers, one per text")
    settings = settings or MethodSettings()
    process = current_process(rank, world_size, device)
    try:
        torch_device = device_for(process, device)
        explained.model.to(torch_device)
        embedding = explained.model.get_input_embeddings()
        with torch.no_grad():
            first = explained.encode([texts[0]])[0]
            sample = embedding(torch.tensor(first, device=torch_device))
        kind, width = model_kind(explained, sample)
        _check_target(target, kind, width, labels)
        token_target = _target_token(explained, target)
        if token_target is not None and not 0 <= token_target < width:
            raise ValueError(f"target {target!r} is token {token_target}, outside the vocabulary")
        layout = ShardLayout(Path(output_dir), len(texts), shard_size, ".parquet")
        description = {
            "format": "captum-mamba attributions 1",
            "package_version": _package_version(),
            "model": explained.description,
            "model_fingerprint": explained.fingerprint(),
            "kind": kind,
            "label_names": list(explained.label_names),
            "methods": list(names),
            "settings": asdict(settings),
            "target": target,
            "examples": len(texts),
            "texts_fingerprint": _texts_fingerprint(texts, labels, ids),
            "shard_size": shard_size,
            "batch_size": batch_size,
            "max_tokens": max_tokens,
            "dtype": str(sample.dtype),
            **(run_info or {}),
        }
        directory = prepare_directory(output_dir, description, overwrite, (MERGED_FILE,))
        runners = build_runners(names, explained.model, explained.forward, settings)
        schema = _schema(pyarrow, [method_slug(n) for n in names], description)
        mine = process.shards(layout.num_shards)
        discard_bad_shards(
            layout,
            mine,
            lambda path: (
                pyarrow.parquet.read_table(path, columns=["example_id"])
                .column("example_id")
                .to_pylist()
            ),
            lambda shard: [ids[i] for i in layout.examples(shard)],
        )
        todo = layout.missing(mine)
        run = DatasetRun(directory, skipped=[k for k in mine if k not in todo])
        if batch_size > 1 and todo:
            head = [texts[i] for i in layout.examples(todo[0])][:16]
            with torch.no_grad():
                rows = explained.encode(head)
                check_padding(
                    explained, [embedding(torch.tensor(r, device=torch_device)) for r in rows]
                )
        bar = tqdm(
            total=sum(len(layout.examples(k)) for k in todo),
            desc=f"attribute (rank {process.rank}/{process.world_size})",
            disable=not progress,
        )
        with bar:
            for shard in todo:
                columns = _shard_rows(
                    explained,
                    runners,
                    texts,
                    labels,
                    ids,
                    list(layout.examples(shard)),
                    target,
                    token_target,
                    kind,
                    torch_device,
                    batch_size,
                    max_tokens,
                )
                table = pyarrow.Table.from_pydict(columns, schema=schema)
                write_atomic(
                    layout.path(shard), lambda path, t=table: pyarrow.parquet.write_table(t, path)
                )
                run.computed.append(shard)
                bar.update(len(layout.examples(shard)))
                if on_shard is not None:
                    on_shard(shard)
        barrier(process)
        run.missing = layout.missing()
        merged = directory / MERGED_FILE
        if run.complete and (process.rank == 0 or not process.group):
            newest = max(layout.path(k).stat().st_mtime_ns for k in range(layout.num_shards))
            if not merged.is_file() or merged.stat().st_mtime_ns < newest:
                merge_shards(directory, layout)
            run.merged = merged
        return run
    finally:
        finish(process)


def _package_version() -> str:
    from importlib.metadata import version

    return version("captum-mamba")


def _texts_fingerprint(
    texts: Sequence[str], labels: Sequence[int] | None, example_ids: Sequence[int]
) -> str:
    import hashlib

    head = [None if labels is None else list(labels), list(example_ids)]
    digest = hashlib.sha256(json.dumps(head).encode())
    for text in texts:
        digest.update(json.dumps(text).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]

r"""The ``captum-mamba`` command line: one entry point, one set of flags.

::

    captum-mamba demo       [--data-dir DIR] [--count N] [--hub-model ID]
    captum-mamba train      --dataset FILE [--text-column C] [--label-column C] --output M.ckpt
    captum-mamba attribute  --model M --dataset FILE [--methods ...] --output-dir OUT
    captum-mamba study run  [--model M | --train-dataset FILE] [--dataset FILE] ...
    captum-mamba study run  --suite ground-truth [--tasks copy,...] [--architectures ...]
    captum-mamba study run  --suite families [--families mamba,...] [--tasks planted]
    captum-mamba study memory [--length N]
    captum-mamba report     [--model M --dataset FILE] [--groups SPEC] --output-dir OUT
    captum-mamba benchmark  [--quick] [--lengths N ...] [--generation] [--throughput] ...
    captum-mamba render-readme [--data-dir DIR] [--output DIR]
    captum-mamba signals    train | attribute | study  --dataset basic-motions|planted

``python -m captum_mamba`` is the same program. Common flags: ``--data-dir`` (the shared
data folder), ``--dataset`` (a CSV, TSV, JSONL or Parquet file, or a saved Hugging Face
data set), ``--text-column`` (repeat it to join several columns), ``--label-column``,
``--label-names``, ``--model``, ``--tokenizer``, ``--output-dir``, ``--cache-dir``,
``--seed``, ``--threads``.

Every argument is checked before any work; an error is one line on stderr (naming the
file, the row and the fix) with exit code 2 for a bad argument and 1 for bad data or
a model that cannot be loaded, and no traceback. An interrupted ``attribute`` or
``study run`` keeps its finished shards; the same command resumes. Launch either under
``torchrun`` to share the work between processes (see docs/datasets.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from captum_mamba.apps import benchmark, demo, doctor, family_tasks, ground_truth, render_readme
from captum_mamba.apps.data import (
    MAX_CLASSES,
    ROTTEN_TOMATOES_FILE,
    SENTIMENT_LABELS,
    SST2_FILE,
    TOKENIZER_FILE,
    DataFormatError,
    LabelledData,
    LabelledText,
    class_list,
    default_data_dir,
    load_tokenizer,
    read_texts,
    split_indices,
)
from captum_mamba.apps.dataset import attribute_dataset
from captum_mamba.apps.loading import LongTextError, ModelLoadError, load_explained
from captum_mamba.apps.methods import ALL_METHODS, resolve_methods
from captum_mamba.apps.report import HTML_FILE, JSON_FILE, ReportOptions, explain_dataset
from captum_mamba.apps.sentiment import (
    CheckpointError,
    ClassifierSetup,
    from_classifier,
    load_or_train,
    load_or_train_classifier,
)
from captum_mamba.apps.sharding import RunSettingsError
from captum_mamba.apps.signals_cli import add_signals
from captum_mamba.apps.study import (
    MEMORY_METHODS,
    _memory_worker,
    markdown_table,
    measure_peak_memory,
    parse_shape,
    run_study,
)
from captum_mamba.attr import AttributionInputError
from captum_mamba.baselines.captum_methods import MethodSettings

#: Default torch CPU threads: one per two cores, at most four; one on a 2-core machine,
#: where a second thread competes with everything else that runs there.
MAX_DEFAULT_THREADS = 4
EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130


class CommandError(Exception):
    """A one-line error of a command, printed without a traceback."""


def default_threads() -> int:
    """Torch CPU threads used when ``--threads`` is not given: ``$CAPTUM_MAMBA_THREADS``,
    else half the cores (at least 1, at most 4)."""
    value = os.environ.get("CAPTUM_MAMBA_THREADS")
    if value is not None and value.isdigit() and int(value) > 0:
        return int(value)
    return max(1, min(MAX_DEFAULT_THREADS, (os.cpu_count() or 1) // 2))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``prog: error: message``."""

    def error(self, message: str) -> NoReturn:
        line = " ".join(message.split())
        self.exit(EXIT_USAGE, f"{self.prog}: error: {line} (see {self.prog} --help)\n")


def plain_text(doc: str) -> str:
    """A docstring as plain text for ``--help``: reStructuredText roles, literals and
    ``::`` markers removed.

    Args:
        doc (str): the docstring.

    Returns:
        str: e.g. ``"Run captum-mamba benchmark (options: BenchmarkSettings)."``.
    """
    text = re.sub(r":\w+:`~?([^`<]*?)(?:\s*<[^>]*>)?`", r"\1", doc)  # :func:`name <target>`
    text = text.replace("``", "")
    text = re.sub(r"\n\s*::\s*\n", "\n\n", text)  # a paragraph that is only "::"
    text = re.sub(r"::(\s*\n)", r":\1", text)  # "text::" ends with a colon
    return text.strip() + "\n"


def _ranged(kind: Callable[[str], Any], low: float | None, high: float | None = None) -> Any:
    """An argparse type: ``kind(text)`` within ``[low, high]``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if kind is float and value != value:  # NaN
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = _ranged(int, 1)
non_negative_int = _ranged(int, 0)
fraction = _ranged(float, 0.0, 1.0)


def _open_fraction(text: str) -> float:
    value = fraction(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def _positive_float(text: str) -> float:
    value = _ranged(float, 0.0)(text)
    if value <= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


SHAPE_HELP = "130m, tiny or hidden,layers,state,vocab"


def _shape(text: str) -> str:
    """A model shape of ``study memory``, checked (see
    :func:`captum_mamba.apps.study.parse_shape`)."""
    try:
        parse_shape(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _label_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if not all(names) or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct comma-separated class names, e.g. negative,positive; got {text!r}"
        )
    return names


def _methods(text: str) -> tuple[str, ...]:
    try:
        return resolve_methods(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _target(text: str) -> str | int:
    if text in ("predicted", "label") or text.startswith("token:"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected predicted, label, a class index / token id, or token:TEXT; got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"a class index / token id is >= 0, got {value}")
    return value


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help=f"torch CPU threads (default: $CAPTUM_MAMBA_THREADS, else half the cores, at "
        f"most {MAX_DEFAULT_THREADS}; now {default_threads()})",
    )


def _add_data(parser: argparse.ArgumentParser, prefix: str = "", required: bool = False) -> None:
    """``--dataset`` and its column options (``--train-dataset`` with prefix ``train-``)."""
    group = parser.add_argument_group(f"{prefix or 'data set '}columns")
    name = prefix.replace("-", "_")
    group.add_argument(
        f"--{prefix}dataset",
        required=required,
        help="CSV, TSV, JSONL or Parquet file, or a folder saved by datasets' save_to_disk",
    )
    group.add_argument(
        f"--{prefix}text-column",
        action="append",
        dest=f"{name}text_columns",
        help="text column (repeat to join several, e.g. premise and hypothesis)"
        + ("; default: --text-column" if prefix else "; default: text"),
    )
    group.add_argument(
        f"--{prefix}label-column",
        dest=f"{name}label_column",
        help="label column" + ("; default: --label-column" if prefix else ""),
    )
    group.add_argument(f"--{prefix}split", help="split of a saved DatasetDict")
    if not prefix:
        group.add_argument(
            "--max-classes",
            type=positive_int,
            help=f"allow this many classes in the label column (default: {MAX_CLASSES}, and "
            f"fewer than half as many as the rows)",
        )
    group.add_argument(
        f"--{prefix}format",
        choices=("csv", "tsv", "jsonl", "parquet", "arrow"),
        help="file format (default: from the suffix)",
    )


def _add_output(parser: argparse.ArgumentParser, default: str | None, *aliases: str) -> None:
    parser.add_argument(
        "--output-dir",
        *aliases,
        dest="output_dir",
        default=default,
        help=f"output folder (default: {default})",
    )


def _add_setup(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("classifier training (default: ClassifierSetup())")
    group.add_argument("--epochs", type=positive_int, help="most passes over the data")
    group.add_argument("--learning-rate", type=_positive_float, help="peak AdamW learning rate")
    group.add_argument("--hidden-size", type=positive_int, help="width of the Mamba blocks")
    group.add_argument("--num-layers", type=positive_int, help="number of Mamba blocks")
    group.add_argument("--state-size", type=positive_int, help="SSM state size N")
    group.add_argument("--train-max-length", type=positive_int, help="tokens kept per text")
    group.add_argument(
        "--pooling", choices=("last", "mean"), help="classify the last token or the mean"
    )
    group.add_argument("--train-batch-size", type=positive_int, help="texts per training step")
    group.add_argument(
        "--validation-fraction", type=_open_fraction, help="held out for early stopping"
    )
    group.add_argument(
        "--balance-classes",
        action=argparse.BooleanOptionalAction,
        help="weight the loss so that every class counts as much (default: on)",
    )
    group.add_argument(
        "--teacher-weight",
        type=fraction,
        help="share of the naive Bayes teacher in the training targets, 0 = labels only",
    )
    group.add_argument(
        "--phrases-per-text",
        type=non_negative_int,
        help="teacher-labelled phrases drawn from each training text",
    )
    group.add_argument("--train-seed", type=int, help="seed of the classifier (default: 0)")


def _add_model(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        help="classifier checkpoint, transformers or mamba-ssm folder, hub id, or module:function",
    )
    group.add_argument("--tokenizer", help="tokenizer.json, tokenizer folder or hub id")
    group.add_argument(
        "--max-length",
        type=positive_int,
        help="tokens the model reads per text (default: the classifier's setting; all "
        "tokens of other models)",
    )
    group.add_argument(
        "--long-texts",
        choices=("keep-tail", "keep-head", "refuse"),
        help="a text longer than --max-length: explain its last or first tokens, or stop "
        "with an error naming it (default: the classifier's setting, else keep-tail)",
    )
    group.add_argument(
        "--cache-dir",
        default=None,
        help="classifier checkpoints (default: $CAPTUM_MAMBA_CACHE or ~/.cache/captum-mamba)",
    )
    group.add_argument(
        "--train-fraction",
        type=_open_fraction,
        help="train on a seeded, stratified share of --dataset and use the rest",
    )


def _add_methods(parser: argparse.ArgumentParser, default: str) -> None:
    group = parser.add_argument_group("methods")
    group.add_argument(
        "--methods",
        type=_methods,
        default=_methods(default),
        help=f"comma-separated method names (any case) or 'all' (default: {default}); "
        f"one of: {'; '.join(ALL_METHODS)}",
    )
    group.add_argument(
        "--ig-steps", type=positive_int, default=32, help="Integrated Gradients steps (32)"
    )
    group.add_argument(
        "--smoothgrad-samples", type=positive_int, default=10, help="SmoothGrad samples (10)"
    )
    group.add_argument("--seed", type=int, default=0, help="seed of sampling and noise (0)")


def _add_processes(parser: argparse.ArgumentParser, shard_size: int) -> None:
    group = parser.add_argument_group("shards and processes")
    group.add_argument(
        "--shard-size",
        type=positive_int,
        default=shard_size,
        help=f"examples per result shard, the unit of resuming ({shard_size})",
    )
    group.add_argument("--rank", type=non_negative_int, help="re-run one rank alone")
    group.add_argument("--world-size", type=positive_int, help="with --rank")
    group.add_argument("--overwrite", action="store_true", help="replace a run with other settings")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


PROG = "captum-mamba"


def _name(command: str) -> str:
    """Name of a (sub)command in messages, e.g. ``captum-mamba study run``."""
    return f"{PROG} {command}"


#: What the subcommands are added to (``parser.add_subparsers()``).
Commands = argparse._SubParsersAction


def _command(
    commands: Commands,
    name: str,
    help: str | None,
    handler: Callable[[argparse.Namespace], None],
    parent: str = "",
    sets_threads: bool = True,
    **options: Any,
) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` (of ``parent``, e.g. ``study``) run by ``handler``.

    Args:
        commands (Commands): the subcommands it joins.
        name (str): its name.
        help (str, optional): one line for the list of commands; None hides it.
        handler (Callable): runs it with the parsed arguments.
        parent (str, optional): the command it belongs to. Default: none.
        sets_threads (bool, optional): whether torch's CPU threads are set (``--threads``)
            before it runs. Default: True.
        **options (Any): further ``add_parser`` options.

    Returns:
        argparse.ArgumentParser: its parser, to add its arguments to.
    """
    full = f"{parent} {name}".strip()
    if help is not None:
        options["help"] = help
    parser = commands.add_parser(name, prog=_name(full), **options)
    parser.set_defaults(handler=handler, command_name=_name(full), sets_threads=sets_threads)
    return parser


# --------------------------------------------------------------------------- checks


def check_output_dir(path: str | os.PathLike[str], option: str = "--output-dir") -> Path:
    """Refuse an output folder that is a file or cannot be written (one line)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CommandError(f"{option} {path} is a file; pass a folder")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise CommandError(f"{option} {path}: {existing} is a file; pass a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path}: {existing} is not writable; pass another folder")
    return path


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) if getattr(args, "data_dir", None) else default_data_dir()


#: The files of the shared data folder that the sentiment commands read.
SENTIMENT_FILES = (ROTTEN_TOMATOES_FILE, SST2_FILE, TOKENIZER_FILE)


def _data_files(args: argparse.Namespace, *names: str) -> Path:
    """The data folder, checked to hold ``names``; a missing file is one line that says
    where the folder came from (``--data-dir``, ``$CAPTUM_MAMBA_DATA`` or the default)."""
    folder = _data_dir(args)
    for name in names:
        if (folder / name).is_file():
            continue
        if getattr(args, "data_dir", None):
            origin = "--data-dir"
        elif os.environ.get("CAPTUM_MAMBA_DATA"):
            origin = "the data folder of $CAPTUM_MAMBA_DATA"
        else:
            origin = "the default data folder (../shared/data from here)"
        raise CommandError(
            f"{name} not found in {origin} {folder}; pass --data-dir with the folder that "
            f"holds it, or set CAPTUM_MAMBA_DATA"
        )
    return folder


def _read(args: argparse.Namespace, prefix: str, label_names: Any = None, labels: bool = True):
    """The texts of ``--dataset`` (or ``--train-dataset``/``--test-dataset``)."""
    name = prefix.replace("-", "_")
    path = getattr(args, f"{name}dataset")
    columns = getattr(args, f"{name}text_columns") or getattr(args, "text_columns", None)
    label = getattr(args, f"{name}label_column") or getattr(args, "label_column", None)
    return read_texts(
        path,
        tuple(columns or ("text",)),
        label if labels else None,
        label_names,
        getattr(args, f"{name}format"),
        getattr(args, f"{name}split"),
        max_classes=getattr(args, "max_classes", None),
    )


def _setup(args: argparse.Namespace) -> Any:
    changes = {
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "hidden_size": args.hidden_size,
        "num_layers": args.num_layers,
        "state_size": args.state_size,
        "max_length": args.train_max_length,
        "pooling": args.pooling,
        "batch_size": args.train_batch_size,
        "validation_fraction": args.validation_fraction,
        "balance_classes": args.balance_classes,
        "teacher_weight": args.teacher_weight,
        "phrases_per_text": args.phrases_per_text,
        "seed": args.train_seed,
    }
    return ClassifierSetup().replace(**changes)


def _tokenizer(args: argparse.Namespace) -> Any:
    if args.tokenizer:
        path = Path(args.tokenizer)
        if not path.is_file():
            raise CommandError(f"--tokenizer {path}: no such file; pass a tokenizer.json file")
    else:
        path = _data_files(args, TOKENIZER_FILE) / TOKENIZER_FILE
    try:
        return load_tokenizer(path)
    except Exception as error:  # tokenizers raises its own exception types
        raise CommandError(
            f"{path} is not a readable tokenizer.json ({type(error).__name__}); pass another "
            f"--tokenizer"
        ) from None


def _train(args: argparse.Namespace, data: Any, test: Any = None) -> Any:
    setup = _setup(args)
    tokenizer = _tokenizer(args)
    return load_or_train(data, tokenizer, setup, args.cache_dir, test, progress=_log)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _set_threads(args: argparse.Namespace) -> None:
    threads = getattr(args, "threads", None)
    if threads is None and "OMP_NUM_THREADS" in os.environ:
        return  # the launcher (e.g. torchrun) chose
    torch.set_num_threads(threads or default_threads())


# ------------------------------------------------------------------------- commands


def _add_demo(commands: Commands) -> None:
    parser = _command(commands, "demo", "explain sentiment predictions (trains once)", _demo)
    parser.add_argument(
        "--data-dir", "--data", dest="data_dir", default=None, help="shared data folder"
    )
    _add_output(parser, "outputs/demo", "--out")
    parser.add_argument("--count", type=positive_int, default=4, help="SST-2 sentences to explain")
    parser.add_argument("--cache-dir", default=None, help="classifier checkpoints")
    parser.add_argument("--hub-model", help="e.g. state-spaces/mamba-130m-hf (needs internet)")
    parser.add_argument(
        "--prompt",
        default="The Eiffel Tower is located in the city of",
        help="text whose next token --hub-model explains",
    )
    _add_threads(parser)


def _demo(args: argparse.Namespace) -> None:
    check_output_dir(args.output_dir)
    if args.hub_model:
        demo.explain_hub_model(args.hub_model, args.prompt)
    else:
        data_dir = _data_files(args, *SENTIMENT_FILES)
        demo.explain_sentiment(data_dir, args.output_dir, args.count, args.cache_dir)


def _add_train(commands: Commands) -> None:
    train = _command(
        commands, "train", "train (or load from the cache) a text classifier", _train_command
    )
    _add_data(train, required=True)
    train.add_argument("--label-names", type=_label_names, help="class names, comma-separated")
    train.add_argument("--tokenizer", help="tokenizer.json (default: the shared GPT-NeoX one)")
    train.add_argument("--data-dir", default=None, help="shared data folder (the tokenizer)")
    _add_data(train, "test-")
    train.add_argument("--output", help="write the checkpoint here too")
    train.add_argument("--cache-dir", default=None, help="classifier checkpoints")
    _add_setup(train)
    _add_threads(train)


def _train_command(args: argparse.Namespace) -> None:
    if args.output:
        output = Path(args.output)
        if output.is_dir():
            raise CommandError(f"--output {output} is a folder; pass a checkpoint file name")
        check_output_dir(output.parent, "--output")
    if not args.label_column:
        raise CommandError("train needs labels; pass --label-column")
    _tokenizer(args)  # checked before reading and training
    _setup(args)
    data = _read(args, "", args.label_names).labelled()
    test = None
    if args.test_dataset:
        test = _read(args, "test-", data.label_names).labelled()
    classifier = _train(args, data, test)
    if args.output:
        classifier.save(args.output)
    metrics = classifier.metrics
    line = f"classifier: classes {class_list(classifier.label_names)}"
    if "validation_accuracy" in metrics:
        line += f", validation accuracy {metrics['validation_accuracy']:.3f}"
    if "test_accuracy" in metrics:
        line += f", accuracy on {Path(args.test_dataset).name} {metrics['test_accuracy']:.3f}"
    print(line)
    if args.output:
        print(f"checkpoint: {args.output}")


def _add_attribute(commands: Commands) -> None:
    attribute = _command(
        commands,
        "attribute",
        "explain every text of a data set; sharded Parquet results",
        _attribute,
    )
    _add_model(attribute)
    _add_data(attribute, required=True)
    attribute.add_argument("--label-names", type=_label_names, help="class names of the labels")
    _add_data(attribute, "train-")
    attribute.add_argument("--data-dir", default=None, help="shared data folder (the tokenizer)")
    _add_setup(attribute)
    attribute.add_argument(
        "--target",
        type=_target,
        default="predicted",
        help="predicted (class or next token), label, a class index / token id, or token:TEXT",
    )
    attribute.add_argument(
        "--num-examples", type=positive_int, help="a seeded sample of this many texts"
    )
    _add_methods(attribute, "MambaLRP")
    attribute.add_argument(
        "--batch-size", type=positive_int, default=8, help="texts explained together (8)"
    )
    attribute.add_argument("--max-tokens", type=positive_int, help="padded tokens per batch")
    attribute.add_argument("--device", default="cpu", help="cpu, cuda (cuda:<local rank>), cuda:N")
    _add_output(attribute, "attributions")
    _add_processes(attribute, 64)
    _add_threads(attribute)


def _explained_and_data(args: argparse.Namespace) -> tuple[Any, Any, list[int]]:
    """The model to explain and the data set to explain it on (training first if
    asked), with the rows to use; data and settings are read and checked before any
    training."""
    given = [args.model is not None, args.train_dataset is not None, bool(args.train_fraction)]
    if sum(given) != 1:
        raise CommandError(
            "pass exactly one of --model (a model to explain), --train-dataset (train a "
            "classifier on it first) or --train-fraction (train on a share of --dataset)"
        )
    if args.model is not None:
        explained = load_explained(args.model, args.tokenizer, args.max_length, _long(args))
        names = args.label_names or explained.label_names or None
        table = _read(args, "", names, labels=bool(args.label_column))
        return explained, table, list(range(len(table.texts)))
    _tokenizer(args)
    _setup(args)
    if args.train_dataset is not None:
        train = _read(args, "train-", args.label_names).labelled()
        table = _read(args, "", train.label_names, labels=bool(args.label_column))
        rows = list(range(len(table.texts)))
        source = args.train_dataset
    else:
        if not args.label_column:
            raise CommandError("--train-fraction needs labels; pass --label-column")
        table = _read(args, "", args.label_names)
        kept, rows = split_indices(table.labels, 1 - args.train_fraction, args.seed)
        examples = tuple(LabelledText(table.texts[i], table.labels[i]) for i in kept)
        train = LabelledData(examples, table.label_names, table.source)
        source = f"{table.source} (seeded {args.train_fraction:g} share, seed {args.seed})"
    classifier = _train(args, train)
    return from_classifier(classifier, source, args.max_length, _long(args)), table, rows


def _long(args: argparse.Namespace) -> str | None:
    """``--long-texts`` as a :data:`~captum_mamba.apps.loading.LONG_TEXTS` policy."""
    return args.long_texts.replace("-", "_") if args.long_texts else None


def _check_lengths(args: argparse.Namespace, explained: Any, table: Any, rows: list[int]) -> None:
    """With ``--long-texts refuse``, stop before any work at the first text longer than
    the model reads, naming its row."""
    if args.long_texts != "refuse":
        return
    for row in rows:
        try:
            explained.encode([table.texts[row]])
        except LongTextError as error:
            raise CommandError(f"{table.source} row {row + 1}: {error}") from None


def _attribute(args: argparse.Namespace) -> None:
    check_output_dir(args.output_dir)
    explained, table, rows = _explained_and_data(args)
    if args.num_examples and args.num_examples < len(rows):
        rows = sorted(random.Random(args.seed).sample(rows, args.num_examples))
    _check_lengths(args, explained, table, rows)
    texts = [table.texts[i] for i in rows]
    labels = None if table.labels is None else [table.labels[i] for i in rows]
    settings = MethodSettings(
        ig_steps=args.ig_steps, smoothgrad_samples=args.smoothgrad_samples, seed=args.seed
    )
    run = attribute_dataset(
        explained,
        texts,
        args.output_dir,
        args.methods,
        labels,
        args.target,
        settings,
        args.shard_size,
        args.batch_size,
        args.max_tokens,
        args.rank,
        args.world_size,
        args.device,
        args.overwrite,
        not args.no_progress,
        {"dataset": str(table.source)},
        example_ids=rows,
    )
    ending = f"results: {run.merged}" if run.merged else "the other ranks finish the rest"
    if not run.merged and not run.missing:
        ending = "complete"
    print(
        f"{run.directory}: {len(run.computed)} shard(s) computed, {len(run.skipped)} already "
        f"there, {len(run.missing)} missing; {ending}"
    )


def _add_study(commands: Commands) -> None:
    study = commands.add_parser(
        "study", help="comparative study, memory measurements", prog=_name("study")
    )
    studies = study.add_subparsers(dest="study_command", required=True, parser_class=_Parser)
    run = _command(
        studies, "run", "faithfulness, conservation and cost of the methods", _study_run, "study"
    )
    run.add_argument("--data-dir", default=None, help="shared data folder (SST-2 default set)")
    _add_model(run)
    _add_data(run)
    run.add_argument("--label-names", type=_label_names, help="class names of the labels")
    _add_data(run, "train-")
    _add_setup(run)
    run.add_argument(
        "--num-examples",
        type=positive_int,
        help="a seeded sample of this many labelled texts is studied (200; ground-truth "
        "and families suites: 40 per task)",
    )
    _add_methods(run, "all")
    suite = run.add_argument_group("ground-truth suite (captum_mamba.apps.ground_truth)")
    suite.add_argument(
        "--suite",
        choices=("ground-truth", "families"),
        help="generated tasks with known evidence (families: one tiny model per model "
        "family, captum_mamba.apps.family_tasks)",
    )
    suite.add_argument(
        "--tasks",
        type=_task_names,
        help=f"comma-separated tasks of the suite ({','.join(ground_truth.TASKS)}; "
        "default: all, families: planted)",
    )
    suite.add_argument(
        "--architectures",
        type=_architectures,
        default=("mamba", "mamba2", "bamba"),
        help="comma-separated model kinds of the suite (mamba,mamba2,bamba)",
    )
    suite.add_argument(
        "--families",
        type=_family_names,
        default=tuple(family_tasks.FAMILIES),
        help="comma-separated model families of --suite families (default: all of "
        f"{','.join(family_tasks.FAMILIES)})",
    )
    run.add_argument(
        "--replacement",
        choices=("zero", "mean", "token"),
        default="zero",
        help="what a removed token becomes: a zero embedding, the mean embedding or the "
        "embedding of --replacement-token (zero)",
    )
    run.add_argument("--replacement-token", type=non_negative_int, help="id for 'token'")
    run.add_argument("--keep-last", action="store_true", help="never remove the last (read) token")
    run.add_argument(
        "--target",
        choices=("predicted", "label"),
        default="predicted",
        help="explain the logit of the predicted class or of the label (predicted)",
    )
    _add_output(run, "study_results")
    _add_processes(run, 25)
    _add_threads(run)

    memory = _command(
        studies,
        "memory",
        "peak memory and time of attribution methods, 130M shape",
        _study_memory,
        "study",
    )
    memory.add_argument("--length", type=positive_int, default=1024, help="tokens (1024)")
    memory.add_argument(
        "--methods",
        default="forward,rollout,mambalrp",
        help=f"comma-separated, from: {', '.join(MEMORY_METHODS)} (forward,rollout,mambalrp)",
    )
    memory.add_argument("--seed", type=int, default=0, help="seed of the random model (0)")
    memory.add_argument("--shape", type=_shape, default="130m", help=SHAPE_HELP)
    memory.add_argument("--repeats", type=positive_int, default=1, help="runs, median (1)")
    _add_threads(memory)
    worker = _command(studies, "memory-worker", None, _study_memory_worker, "study")
    worker.add_argument("--method", required=True)
    worker.add_argument("--length", type=positive_int, required=True)
    worker.add_argument("--seed", type=int, default=0)
    worker.add_argument("--threads", type=positive_int, default=None)
    worker.add_argument("--shape", type=_shape, default="130m")
    worker.add_argument("--repeats", type=positive_int, default=1)


def _names(value: str, known: Sequence[str], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or value!r}; choose from {', '.join(known)}"
        )
    return names


def _task_names(value: str) -> tuple[str, ...]:
    return _names(value, tuple(ground_truth.TASKS), "task")


def _architectures(value: str) -> tuple[str, ...]:
    return _names(value, ground_truth.ARCHITECTURES, "architecture")


def _family_names(value: str) -> tuple[str, ...]:
    return _names(value, tuple(family_tasks.FAMILIES), "family")


def _families_run(args: argparse.Namespace) -> None:
    """``study run --suite families``: the families x methods tables."""
    result = family_tasks.run_families(
        args.output_dir,
        args.families,
        args.tasks or ("planted",),
        count=args.num_examples or 40,
        settings=MethodSettings(ig_steps=args.ig_steps, seed=args.seed),
        cache_dir=args.cache_dir,
        progress=_log,
    )
    print(result.files["markdown"].read_text())
    print(f"tables: {result.files['markdown']}")


def _ground_truth_run(args: argparse.Namespace) -> None:
    """``study run --suite ground-truth``: the tables of the ground-truth suite."""
    result = ground_truth.run_suite(
        args.output_dir,
        args.tasks or tuple(ground_truth.TASKS),
        args.architectures,
        args.methods,
        count=args.num_examples or 40,
        settings=MethodSettings(
            ig_steps=args.ig_steps, smoothgrad_samples=args.smoothgrad_samples, seed=args.seed
        ),
        cache_dir=args.cache_dir,
        progress=_log,
    )
    for key, rows in result.tables.items():
        print(f"\n{key}: {result.captions[key]}\n{ground_truth.markdown(rows)}")
    for architecture, rows in result.diagnoses.items():
        print(
            f"\ncopy/{architecture}, MambaLRP diagnosis:\n{ground_truth.diagnosis_markdown(rows)}"
        )
    print(f"\ntables: {result.files['markdown']}")


def _study_run(args: argparse.Namespace) -> None:
    check_output_dir(args.output_dir)
    if args.suite == "ground-truth":
        _ground_truth_run(args)
        return
    if args.suite == "families":
        _families_run(args)
        return
    args.num_examples = args.num_examples or 200
    if args.replacement == "token" and args.replacement_token is None:
        raise CommandError("--replacement token needs --replacement-token ID (e.g. the pad id)")
    if args.target == "label" and args.dataset and not args.label_column:
        raise CommandError("--target label needs --label-column")
    sentiment = not (args.dataset or args.model or args.train_dataset or args.train_fraction)
    if sentiment:
        explained, table, rows, caption = _sentiment_setup(args)
    else:
        if not args.dataset:
            raise CommandError("pass --dataset (the labelled texts to study)")
        if not args.label_column:
            raise CommandError("the study needs labels (for accuracy); pass --label-column")
        explained, table, rows = _explained_and_data(args)
        caption = f"{explained.description}; data set {table.source}"
    if table.labels is None:
        raise CommandError("the study needs labels; pass --label-column")
    count = min(args.num_examples, len(rows))
    rows = sorted(random.Random(args.seed).sample(rows, count))
    _check_lengths(args, explained, table, rows)
    examples = [(table.texts[i], table.labels[i]) for i in rows]

    def tokenize(text: str) -> Any:
        return torch.tensor([explained.encode([text])[0]])

    protocol = f"replacement '{args.replacement}'" + (", last token kept" if args.keep_last else "")
    caption += (
        f"; {count} examples studied (seed {args.seed}), {protocol}, explained logit: "
        f"{args.target} class."
    )
    result = run_study(
        explained.model,
        tokenize,
        examples,
        args.methods,
        args.output_dir,
        replacement=args.replacement,
        replacement_token_id=args.replacement_token,
        target=args.target,
        settings=MethodSettings(
            ig_steps=args.ig_steps, smoothgrad_samples=args.smoothgrad_samples, seed=args.seed
        ),
        progress=not args.no_progress,
        caption=caption,
        keep_last=args.keep_last,
        shard_size=args.shard_size,
        rank=args.rank,
        world_size=args.world_size,
        overwrite=args.overwrite,
        run_info={"dataset": str(table.source)},
        example_ids=rows,
    )
    if not result.complete:
        print(f"{result.examples} of {count} examples done; the other ranks finish the rest")
        return
    print(caption)
    print(markdown_table(result.rows))
    for name, path in result.files.items():
        print(f"{name}: {path}")


def _sentiment_setup(args: argparse.Namespace) -> tuple[Any, Any, list[int], str]:
    """The default study: the sentiment classifier on SST-2 validation."""
    data_dir = _data_files(args, *SENTIMENT_FILES)
    setup = _setup(args)
    table = read_texts(data_dir / SST2_FILE, "sentence", "label", SENTIMENT_LABELS)
    classifier = load_or_train_classifier(data_dir, args.cache_dir, setup, progress=_log)
    metrics = classifier.metrics
    caption = (
        f"Mamba sentiment classifier ({setup.describe()}; best epoch "
        f"{metrics['best_epoch']}, validation accuracy "
        f"{metrics['validation_accuracy']:.3f} on a held-out "
        f"{setup.validation_fraction:.0%} of rotten_tomatoes.csv), SST-2 validation accuracy "
        f"{metrics['test_accuracy']:.3f} (all {len(table.texts)} sentences)"
    )
    explained = from_classifier(classifier, "sentiment classifier", args.max_length, _long(args))
    return explained, table, list(range(len(table.texts))), caption


def _study_memory_worker(args: argparse.Namespace) -> None:
    worker = _memory_worker(args.method, args.length, args.seed, args.shape, args.repeats)
    print(json.dumps(worker))


def _study_memory(args: argparse.Namespace) -> None:
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in methods if m not in MEMORY_METHODS]
    if unknown:
        raise CommandError(
            f"unknown --methods {unknown[0]!r}; choose from {', '.join(MEMORY_METHODS)}"
        )
    for method in methods:
        result = measure_peak_memory(
            method, args.length, args.seed, args.threads, args.shape, repeats=args.repeats
        )
        print(json.dumps(result), flush=True)


def _vocab(text: str) -> int:
    value = positive_int(text)
    if value <= benchmark.TARGET_TOKEN:
        raise argparse.ArgumentTypeError(
            f"must be larger than the explained token id {benchmark.TARGET_TOKEN}, got {value}"
        )
    return value


def _add_benchmark(commands: Commands) -> None:
    parser = _command(
        commands,
        "benchmark",
        "MambaLRP time vs forward and Saliency",
        _benchmark,
        sets_threads=False,
        description=plain_text(benchmark.__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,  # given options replace BenchmarkSettings'
    )
    lengths = {"type": positive_int, "nargs": "*"}
    parser.add_argument("--lengths", **lengths, help="default: 128 512 2048")
    parser.add_argument("--long-lengths", **lengths, help="default: none")
    parser.add_argument("--repeats", type=positive_int, help="runs per length up to 4096")
    parser.add_argument(
        "--saliency-cap", type=_ranged(float, 0.0), help="seconds; 0 skips Saliency"
    )
    parser.add_argument(
        "--hf-max-length", type=non_negative_int, help="0 skips transformers' own forward"
    )
    parser.add_argument("--compare-length", type=non_negative_int, help="0 skips the comparison")
    parser.add_argument("--generation", action="store_true", help="explain generated tokens")
    parser.add_argument("--gen-prompt", type=positive_int, help="prompt tokens (1024)")
    parser.add_argument("--gen-tokens", type=positive_int, help="generated tokens (256)")
    parser.add_argument(
        "--gen-explain-steps",
        type=non_negative_int,
        help="explain only this many tokens and extrapolate (0: explain all)",
    )
    parser.add_argument(
        "--targets", type=positive_int, nargs="+", help="many targets per pass: K values"
    )
    parser.add_argument("--targets-length", type=positive_int, help="tokens of the K table")
    parser.add_argument(
        "--targets-per-pass",
        type=positive_int,
        help="targets per batched backward pass (default: automatic, memory-bounded)",
    )
    parser.add_argument("--throughput", action="store_true", help="texts per second, batched")
    parser.add_argument("--texts", type=positive_int, help="texts of the throughput (64)")
    parser.add_argument(
        "--text-lengths", type=positive_int, nargs=2, help="shortest and longest text (16 256)"
    )
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", help="(1 4 16)")
    parser.add_argument("--thread-counts", type=positive_int, nargs="+", help="(1 2)")
    parser.add_argument(
        "--hybrids", nargs="+", choices=sorted(benchmark.HYBRIDS), help="default: bamba jamba"
    )
    parser.add_argument(
        "--hybrid-lengths", **lengths, help="lengths of the hybrids (default: none)"
    )
    parser.add_argument(
        "--families",
        nargs="+",
        choices=sorted([*benchmark.FAMILY_MODELS, *benchmark.MAMBA_SSM_FAMILIES]),
        help="default: none",
    )
    parser.add_argument("--family-lengths", **lengths, help="lengths of the families (512 2048)")
    parser.add_argument("--threads", type=positive_int, help="torch threads of the runs")
    parser.add_argument("--out", type=Path, help="folder for json, md and plot")
    parser.add_argument("--quick", action="store_true", help="tiny model, small sizes")
    parser.add_argument("--hidden", type=positive_int, help="model width (768)")
    parser.add_argument("--layers", type=positive_int, help="Mamba blocks (24)")
    parser.add_argument("--state", type=positive_int, help="SSM state size (16)")
    parser.add_argument("--vocab", type=_vocab, help="vocabulary size (50280)")
    parser.add_argument("--saliency-worker", type=positive_int, help=argparse.SUPPRESS)
    parser.add_argument("--generation-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--hybrid-worker", nargs=3, help=argparse.SUPPRESS)


def benchmark_settings(args: argparse.Namespace) -> benchmark.BenchmarkSettings:
    """The benchmark's settings from its parsed options: those given replace the
    defaults (the quick ones with ``--quick``).

    Args:
        args (argparse.Namespace): the options of ``captum-mamba benchmark``.

    Returns:
        BenchmarkSettings: what to measure.
    """
    fields = {field.name for field in dataclasses.fields(benchmark.BenchmarkSettings)}
    given = {name: value for name, value in vars(args).items() if name in fields}
    for name, value in given.items():
        if isinstance(value, list):
            given[name] = tuple(value)
    quick = getattr(args, "quick", False)
    settings = benchmark.BenchmarkSettings.quick() if quick else benchmark.BenchmarkSettings()
    return settings.replace(**given)


def _benchmark(args: argparse.Namespace) -> None:
    settings = benchmark_settings(args)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    if getattr(args, "saliency_worker", None) is not None:
        print(f"{benchmark.saliency_worker(settings, args.saliency_worker):.6f}")
        return
    if getattr(args, "generation_worker", False):
        print(f"{benchmark.generation_worker(settings):.1f}")
        return
    if getattr(args, "hybrid_worker", None) is not None:
        family, method, length = args.hybrid_worker
        print(json.dumps(benchmark.hybrid_worker(family, method, int(length))))
        return
    results = benchmark.run(settings, progress=_log)
    machine = results["machine"]
    model = (
        f"random Mamba ({machine['shape']}: hidden, layers, state, vocab), float32, batch 1; "
        if results["lengths"] or results["compare"]
        else ""
    )
    print(
        f"{model}torch {machine['torch']}, {machine['threads']} threads; load average "
        f"{machine['load_before'][0]:.2f} before, {machine['load_after'][0]:.2f} after"
    )
    print(benchmark.markdown_tables(results))


def _add_report(commands: Commands) -> None:
    report = _command(
        commands,
        "report",
        "what the model relies on across a data set: report.html, report.json, Parquet",
        _report,
    )
    report.add_argument("--data-dir", default=None, help="shared data folder (SST-2 default set)")
    _add_model(report)
    _add_data(report)
    report.add_argument("--label-names", type=_label_names, help="class names of the labels")
    _add_data(report, "train-")
    _add_setup(report)
    report.add_argument(
        "--num-examples", type=positive_int, help="a seeded sample of this many texts"
    )
    _add_methods(report, "MambaLRP")
    group = report.add_argument_group("report (thresholds: see docs/report.md)")
    group.add_argument("--groups", help='bias probe, e.g. "female=she,her,woman;male=he,him,man"')
    defaults = ReportOptions()
    group.add_argument(
        "--top-k",
        type=positive_int,
        default=defaults.top_k,
        help=f"words listed per class ({defaults.top_k})",
    )
    group.add_argument(
        "--min-count",
        type=positive_int,
        default=defaults.min_count,
        help=f"occurrences a word needs in a class to be ranked ({defaults.min_count})",
    )
    group.add_argument(
        "--bootstrap",
        type=positive_int,
        default=defaults.bootstrap,
        help=f"bootstrap resamples of the confidence intervals ({defaults.bootstrap})",
    )
    group.add_argument(
        "--shortcut-share",
        type=_open_fraction,
        default=defaults.shortcut_share,
        help="share of an example's positive relevance that flags a word "
        f"({defaults.shortcut_share})",
    )
    group.add_argument(
        "--shortcut-min-examples",
        type=positive_int,
        default=defaults.shortcut_min_examples,
        help="examples of a class in which a word must reach that share "
        f"({defaults.shortcut_min_examples})",
    )
    group.add_argument(
        "--long-range",
        type=positive_int,
        default=defaults.long_range,
        help=f"tokens from the explained position beyond which relevance is long-range "
        f"({defaults.long_range})",
    )
    group.add_argument(
        "--trust-examples",
        type=non_negative_int,
        default=defaults.trust_examples,
        help="texts of the faithfulness study (0: leave it out)",
    )
    report.add_argument("--batch-size", type=positive_int, default=8, help="texts per batch (8)")
    report.add_argument("--max-tokens", type=positive_int, help="padded tokens per batch")
    report.add_argument("--device", default="cpu", help="cpu, cuda (cuda:<local rank>), cuda:N")
    _add_output(report, "report")
    _add_processes(report, 64)
    _add_threads(report)


def _report(args: argparse.Namespace) -> None:
    check_output_dir(args.output_dir)
    train = None
    sentiment = not (args.dataset or args.model or args.train_dataset or args.train_fraction)
    if sentiment:
        explained, table, rows, _ = _sentiment_setup(args)
        ratings = _data_dir(args) / ROTTEN_TOMATOES_FILE
        train = read_texts(ratings, "text", "label", SENTIMENT_LABELS)
    elif not args.dataset:
        raise CommandError("pass --dataset (the texts to report on)")
    elif args.model is not None and args.train_dataset is not None:
        # a given model: --train-dataset only counts the flagged words per class
        given, args.train_dataset = args.train_dataset, None
        explained, table, rows = _explained_and_data(args)
        args.train_dataset = given
        train = _read(args, "train-", args.label_names or explained.label_names or None)
    else:
        explained, table, rows = _explained_and_data(args)
        if args.train_dataset is not None:
            train = _read(args, "train-", args.label_names or explained.label_names or None)
    if args.num_examples and args.num_examples < len(rows):
        rows = sorted(random.Random(args.seed).sample(rows, args.num_examples))
    options = ReportOptions(
        top_k=args.top_k,
        min_count=args.min_count,
        bootstrap=args.bootstrap,
        shortcut_share=args.shortcut_share,
        shortcut_min_examples=args.shortcut_min_examples,
        long_range=args.long_range,
        trust_examples=args.trust_examples,
        seed=args.seed,
    )
    report = explain_dataset(
        explained,
        [table.texts[i] for i in rows],
        args.output_dir,
        None if table.labels is None else [table.labels[i] for i in rows],
        args.methods,
        args.groups,
        None if train is None or train.labels is None else train.texts,
        None if train is None or train.labels is None else train.labels,
        options,
        MethodSettings(
            ig_steps=args.ig_steps, smoothgrad_samples=args.smoothgrad_samples, seed=args.seed
        ),
        args.shard_size,
        args.batch_size,
        args.max_tokens,
        args.rank,
        args.world_size,
        args.device,
        args.overwrite,
        not args.no_progress,
        table.source,
        [PROG, *sys.argv[1:]],
        rows,
    )
    if report is None:
        print("the other ranks finish the rest; rank 0 writes the report")
        return
    print("\n".join(report.data["summary"]))
    print(f"report: {Path(args.output_dir) / HTML_FILE} and {JSON_FILE}")


def _add_render_readme(commands: Commands) -> None:
    parser = _command(
        commands,
        "render-readme",
        "the README pictures (heatmap, curves, conservation)",
        _render_readme,
        sets_threads=False,
    )
    parser.add_argument("--data-dir", default=None, help="shared data folder")
    parser.add_argument(
        "--output", type=Path, default=Path("docs") / "images", help="folder (docs/images)"
    )
    parser.add_argument(
        "--num-sentences", type=positive_int, default=24, help="SST-2 sentences plotted (24)"
    )


def _render_readme(args: argparse.Namespace) -> None:
    data_dir = _data_files(args, *SENTIMENT_FILES)
    for path in render_readme.render(data_dir, args.output, args.num_sentences):
        print("wrote", path)


def _add_doctor(commands: Commands) -> None:
    _command(
        commands,
        "doctor",
        "versions, device and model families of this installation (for bug reports)",
        _doctor,
        sets_threads=False,
    )


def _doctor(args: argparse.Namespace) -> None:
    print("\n".join(doctor.report()))


# ---------------------------------------------------------------------------- main

#: Every command, as the function that adds it; a new command is one more function here.
COMMANDS: tuple[Callable[[Commands], None], ...] = (
    _add_demo,
    _add_train,
    _add_attribute,
    _add_study,
    _add_report,
    _add_benchmark,
    _add_render_readme,
    _add_doctor,
    lambda commands: add_signals(commands, PROG),
)


def parser() -> _Parser:
    """The parser of ``captum-mamba`` and its subcommands (:data:`COMMANDS`).

    Returns:
        argparse.ArgumentParser: the parser; its errors are one line.
    """
    main_parser = _Parser(
        prog=PROG,
        description=plain_text(__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = main_parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in COMMANDS:
        add(commands)
    return main_parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run a ``captum-mamba`` command (see the module docstring).

    Args:
        argv (sequence of str, optional): the arguments. Default: ``sys.argv[1:]``.
    """
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.sets_threads:
        _set_threads(args)
    _run(lambda: args.handler(args), args.command_name)


def _run(work: Callable[[], None], name: str) -> None:
    """Run a command; user errors become one line on stderr and an exit code."""
    expected = (
        CommandError,
        DataFormatError,
        ModelLoadError,
        CheckpointError,
        RunSettingsError,
        AttributionInputError,
        OSError,
        ImportError,
        ValueError,
        RuntimeError,
    )
    try:
        work()
    except KeyboardInterrupt:
        _fail(name, "interrupted; finished shards are kept, run the same command to resume")
        sys.exit(EXIT_INTERRUPTED)
    except expected as error:
        if os.environ.get("CAPTUM_MAMBA_TRACEBACK"):
            raise
        _fail(name, _one_line(error))
        sys.exit(EXIT_FAILED)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in text:
        text = f"{error.filename}: {text}"
    return text


def _fail(name: str, message: str) -> None:
    print(f"{name}: error: {message}", file=sys.stderr, flush=True)

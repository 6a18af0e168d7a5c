r"""The ``captum-mamba`` command line: one entry point, one set of flags.

::

    captum-mamba demo       [--data-dir DIR] [--count N] [--hub-model ID]
    captum-mamba train      --dataset FILE [--text-column C] [--label-column C] --output M.ckpt
    captum-mamba attribute  --model M --dataset FILE [--methods ...] --output-dir OUT
    captum-mamba study run  [--model M | --train-dataset FILE] [--dataset FILE] ...
    captum-mamba study memory [--length N]
    captum-mamba benchmark  [the benchmark's options]

``captum-mamba-demo``, ``captum-mamba-study`` and ``captum-mamba-benchmark`` are the
same commands. Common flags: ``--data-dir`` (the shared data folder), ``--dataset``
(a CSV, TSV, JSONL or Parquet file, or a saved Hugging Face data set), ``--text-column``
(repeat it to join several columns), ``--label-column``, ``--label-names``, ``--model``,
``--tokenizer``, ``--output-dir``, ``--cache-dir``, ``--seed``, ``--threads``.

Every argument is checked before any work; an error is one line on stderr (naming the
file, the row and the fix) with exit code 2 for a bad argument and 1 for bad data or
a model that cannot be loaded, and no traceback. An interrupted ``attribute`` or
``study run`` keeps its finished shards; the same command resumes. Launch either under
``torchrun`` to share the work between processes (see the README).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

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
    """A model shape of ``study memory``, checked (see :func:`captum_mamba.study.parse_shape`)."""
    from captum_mamba.study import parse_shape

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
    from captum_mamba.methods import resolve_methods

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
    group.add_argument("--epochs", type=positive_int)
    group.add_argument("--learning-rate", type=_positive_float)
    group.add_argument("--hidden-size", type=positive_int)
    group.add_argument("--num-layers", type=positive_int)
    group.add_argument("--state-size", type=positive_int)
    group.add_argument("--train-max-length", type=positive_int, help="tokens kept per text")
    group.add_argument("--pooling", choices=("last", "mean"))
    group.add_argument("--train-batch-size", type=positive_int)
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
        "--max-length", type=positive_int, help="tokens kept per text (the last ones)"
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
        help=f"comma-separated names (any case) or 'all' (default: {default})",
    )
    group.add_argument("--ig-steps", type=positive_int, default=32)
    group.add_argument("--smoothgrad-samples", type=positive_int, default=10)
    group.add_argument("--seed", type=int, default=0)


def _add_processes(parser: argparse.ArgumentParser, shard_size: int) -> None:
    group = parser.add_argument_group("shards and processes")
    group.add_argument("--shard-size", type=positive_int, default=shard_size)
    group.add_argument("--rank", type=non_negative_int, help="re-run one rank alone")
    group.add_argument("--world-size", type=positive_int, help="with --rank")
    group.add_argument("--overwrite", action="store_true", help="replace a run with other settings")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")


#: The alias programs and the command each stands for.
ALIASES = {
    "captum-mamba-demo": "demo",
    "captum-mamba-study": "study",
    "captum-mamba-benchmark": "benchmark",
}


def _name(prog: str, command: str) -> str:
    """Name of a (sub)command in messages: ``captum-mamba study run``, or with an
    alias ``captum-mamba-study run``."""
    first, _, rest = command.partition(" ")
    if ALIASES.get(prog) == first:
        return f"{prog} {rest}".strip()
    return f"captum-mamba {command}"


def _parser(prog: str = "captum-mamba") -> _Parser:
    parser = _Parser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub = commands.add_parser

    def add(name: str, help: str, **options: Any) -> argparse.ArgumentParser:
        return sub(name, help=help, prog=_name(prog, name), **options)

    demo = add("demo", "explain sentiment predictions (trains once)")
    demo.add_argument(
        "--data-dir", "--data", dest="data_dir", default=None, help="shared data folder"
    )
    _add_output(demo, "outputs/demo", "--out")
    demo.add_argument("--count", type=positive_int, default=4, help="SST-2 sentences to explain")
    demo.add_argument("--cache-dir", default=None, help="classifier checkpoints")
    demo.add_argument("--hub-model", help="e.g. state-spaces/mamba-130m-hf (needs internet)")
    demo.add_argument("--prompt", default="The Eiffel Tower is located in the city of")
    _add_threads(demo)

    train = add("train", "train (or load from the cache) a text classifier")
    _add_data(train, required=True)
    train.add_argument("--label-names", type=_label_names, help="class names, comma-separated")
    train.add_argument("--tokenizer", help="tokenizer.json (default: the shared GPT-NeoX one)")
    train.add_argument("--data-dir", default=None, help="shared data folder (the tokenizer)")
    _add_data(train, "test-")
    train.add_argument("--output", help="write the checkpoint here too")
    train.add_argument("--cache-dir", default=None, help="classifier checkpoints")
    _add_setup(train)
    _add_threads(train)

    attribute = add("attribute", "explain every text of a data set; sharded Parquet results")
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
    attribute.add_argument("--batch-size", type=positive_int, default=8)
    attribute.add_argument("--max-tokens", type=positive_int, help="padded tokens per batch")
    attribute.add_argument("--device", default="cpu", help="cpu, cuda (cuda:<local rank>), cuda:N")
    _add_output(attribute, "attributions")
    _add_processes(attribute, 64)
    _add_threads(attribute)

    study = add("study", "comparative study, memory measurements")
    studies = study.add_subparsers(dest="study_command", required=True, parser_class=_Parser)

    def add_study(name: str, help: str | None) -> argparse.ArgumentParser:
        options = {} if help is None else {"help": help}
        return studies.add_parser(name, prog=_name(prog, f"study {name}"), **options)

    run = add_study("run", "faithfulness, conservation and cost of the methods")
    run.add_argument("--data-dir", default=None, help="shared data folder (SST-2 default set)")
    _add_model(run)
    _add_data(run)
    run.add_argument("--label-names", type=_label_names, help="class names of the labels")
    _add_data(run, "train-")
    _add_setup(run)
    run.add_argument("--num-examples", type=positive_int, default=200)
    _add_methods(run, "all")
    run.add_argument("--replacement", choices=("zero", "mean", "token"), default="zero")
    run.add_argument("--replacement-token", type=non_negative_int, help="id for 'token'")
    run.add_argument("--keep-last", action="store_true", help="never remove the last (read) token")
    run.add_argument("--target", choices=("predicted", "label"), default="predicted")
    _add_output(run, "study_results")
    _add_processes(run, 25)
    _add_threads(run)

    memory = add_study("memory", "peak memory and time of attribution methods, 130M shape")
    memory.add_argument("--length", type=positive_int, default=1024)
    memory.add_argument("--methods", default="forward,rollout,mambalrp")
    memory.add_argument("--seed", type=int, default=0)
    memory.add_argument("--shape", type=_shape, default="130m", help=SHAPE_HELP)
    memory.add_argument("--repeats", type=positive_int, default=1)
    _add_threads(memory)
    worker = add_study("memory-worker", None)
    worker.add_argument("--method", required=True)
    worker.add_argument("--length", type=positive_int, required=True)
    worker.add_argument("--seed", type=int, default=0)
    worker.add_argument("--threads", type=positive_int, default=None)
    worker.add_argument("--shape", type=_shape, default="130m")
    worker.add_argument("--repeats", type=positive_int, default=1)

    add("benchmark", "MambaLRP time vs forward and Saliency", add_help=False).add_argument(
        "arguments", nargs=argparse.REMAINDER
    )
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
    from captum_mamba.data import default_data_dir

    return Path(args.data_dir) if getattr(args, "data_dir", None) else default_data_dir()


def _read(args: argparse.Namespace, prefix: str, label_names: Any = None, labels: bool = True):
    """The texts of ``--dataset`` (or ``--train-dataset``/``--test-dataset``)."""
    from captum_mamba.data import read_texts

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
    )


def _setup(args: argparse.Namespace) -> Any:
    from captum_mamba.sentiment import ClassifierSetup

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
    from captum_mamba.data import TOKENIZER_FILE, load_tokenizer

    path = Path(args.tokenizer) if args.tokenizer else _data_dir(args) / TOKENIZER_FILE
    if not path.is_file():
        raise CommandError(
            f"{path} not found; pass --tokenizer (a tokenizer.json file) or --data-dir"
        )
    try:
        return load_tokenizer(path)
    except Exception as error:  # tokenizers raises its own exception types
        raise CommandError(
            f"{path} is not a readable tokenizer.json ({type(error).__name__}); pass another "
            f"--tokenizer"
        ) from None


def _train(args: argparse.Namespace, data: Any, test: Any = None) -> Any:
    from captum_mamba.sentiment import load_or_train

    setup = _setup(args)
    tokenizer = _tokenizer(args)
    return load_or_train(data, tokenizer, setup, args.cache_dir, test, progress=_log)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _set_threads(args: argparse.Namespace) -> None:
    import torch

    threads = getattr(args, "threads", None)
    if threads is None and "OMP_NUM_THREADS" in os.environ:
        return  # the launcher (e.g. torchrun) chose
    torch.set_num_threads(threads or default_threads())


# ------------------------------------------------------------------------- commands


def _demo(args: argparse.Namespace) -> None:
    import captum_mamba.demo as demo

    check_output_dir(args.output_dir)
    args.data_dir = str(_data_dir(args))
    if args.hub_model:
        demo.explain_hub_model(args)
    else:
        demo.explain_sentiment(args)


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
    line = f"classifier: classes {', '.join(classifier.label_names)}"
    if "validation_accuracy" in metrics:
        line += f", validation accuracy {metrics['validation_accuracy']:.3f}"
    if "test_accuracy" in metrics:
        line += f", accuracy on {Path(args.test_dataset).name} {metrics['test_accuracy']:.3f}"
    print(line)
    if args.output:
        print(f"checkpoint: {args.output}")


def _explained_and_data(args: argparse.Namespace) -> tuple[Any, Any, list[int]]:
    """The model to explain and the data set to explain it on (training first if
    asked), with the rows to use; data and settings are read and checked before any
    training."""
    from captum_mamba.data import LabelledData, LabelledText, split_indices
    from captum_mamba.loading import from_classifier, load_explained

    given = [args.model is not None, args.train_dataset is not None, bool(args.train_fraction)]
    if sum(given) != 1:
        raise CommandError(
            "pass exactly one of --model (a model to explain), --train-dataset (train a "
            "classifier on it first) or --train-fraction (train on a share of --dataset)"
        )
    if args.model is not None:
        explained = load_explained(args.model, args.tokenizer, args.max_length)
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
    return from_classifier(classifier, source, args.max_length), table, rows


def _attribute(args: argparse.Namespace) -> None:
    from captum_mamba.baselines.captum_methods import MethodSettings
    from captum_mamba.dataset import attribute_dataset

    check_output_dir(args.output_dir)
    explained, table, rows = _explained_and_data(args)
    if args.num_examples and args.num_examples < len(rows):
        rows = sorted(random.Random(args.seed).sample(rows, args.num_examples))
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


def _study_run(args: argparse.Namespace) -> None:
    from captum_mamba.baselines.captum_methods import MethodSettings
    from captum_mamba.study import markdown_table, run_study

    check_output_dir(args.output_dir)
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
    examples = [(table.texts[i], table.labels[i]) for i in rows]

    def tokenize(text: str) -> Any:
        import torch

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
    from captum_mamba.data import SENTIMENT_LABELS, SST2_FILE, read_texts
    from captum_mamba.loading import from_classifier
    from captum_mamba.sentiment import load_or_train_classifier

    data_dir = _data_dir(args)
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
    explained = from_classifier(classifier, "sentiment classifier", args.max_length)
    return explained, table, list(range(len(table.texts))), caption


def _study_memory(args: argparse.Namespace) -> None:
    import json

    from captum_mamba.study import MEMORY_METHODS, _memory_worker, measure_peak_memory

    if args.study_command == "memory-worker":
        worker = _memory_worker(args.method, args.length, args.seed, args.shape, args.repeats)
        print(json.dumps(worker))
        return
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


#: Lower bounds of the benchmark's numeric options (by destination), checked before it runs.
BENCHMARK_MINIMUM = {
    "lengths": 1,
    "long_lengths": 1,
    "repeats": 1,
    "hidden": 1,
    "layers": 1,
    "state": 1,
    "saliency_cap": 0,
    "hf_max_length": 1,
    "compare_length": 0,
    "gen_prompt": 1,
    "gen_tokens": 1,
    "gen_explain_steps": 0,
    "texts": 1,
    "text_lengths": 1,
    "batch_sizes": 1,
    "thread_counts": 1,
    "threads": 1,
}


def check_benchmark_arguments(argv: Sequence[str], prog: str) -> argparse.Namespace:
    """Parse the benchmark's arguments with its own parser and check their ranges (and
    that ``--vocab`` holds the benchmark's target token) before it runs.

    Args:
        argv (sequence of str): the benchmark's arguments.
        prog (str): program name for messages.

    Returns:
        argparse.Namespace: the parsed arguments.
    """
    import captum_mamba.benchmark as benchmark

    parser = benchmark._parser()
    parser.prog = prog
    parser.error = _Parser.error.__get__(parser)  # type: ignore[method-assign]
    args = parser.parse_args(list(argv))
    for name, low in BENCHMARK_MINIMUM.items():
        value = getattr(args, name, None)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if item is not None and (item != item or item < low):
                option = "--" + name.replace("_", "-")
                parser.error(f"argument {option}: must be at least {low}, got {item}")
    token = getattr(benchmark, "TARGET_TOKEN", None)
    vocab = getattr(args, "vocab", None)
    if token is not None and vocab is not None and vocab <= token:
        parser.error(
            f"argument --vocab: must be larger than the explained token id {token}, got {vocab}"
        )
    return args


def _benchmark(arguments: Sequence[str], prog: str) -> None:
    import captum_mamba.benchmark as benchmark

    check_benchmark_arguments(arguments, prog)
    benchmark.main(list(arguments))


# ---------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None, prog: str = "captum-mamba") -> None:
    """Run a ``captum-mamba`` command (see the module docstring).

    Args:
        argv (sequence of str, optional): the arguments. Default: ``sys.argv[1:]``.
        prog (str, optional): program name in messages. Default: ``"captum-mamba"``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(prog)
    if argv[:1] == ["benchmark"]:
        name = _name(prog, "benchmark")
        return _run(lambda: _benchmark(argv[1:], name), name)
    args = parser.parse_args(argv)
    command = args.command if args.command != "study" else f"study {args.study_command}"
    name = _name(prog, command)
    _set_threads(args)
    handlers: dict[str, Callable[[argparse.Namespace], None]] = {
        "demo": _demo,
        "train": _train_command,
        "attribute": _attribute,
        "study run": _study_run,
        "study memory": _study_memory,
        "study memory-worker": _study_memory,
    }
    return _run(lambda: handlers[command](args), name)


def _run(work: Callable[[], None], name: str) -> None:
    """Run a command; user errors become one line on stderr and an exit code."""
    from captum_mamba.attr import AttributionInputError
    from captum_mamba.data import DataFormatError
    from captum_mamba.loading import ModelLoadError
    from captum_mamba.sentiment import CheckpointError
    from captum_mamba.sharding import RunSettingsError

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


def demo_main() -> None:
    """``captum-mamba-demo``: ``captum-mamba demo``."""
    main(["demo", *sys.argv[1:]], prog="captum-mamba-demo")


def study_main() -> None:
    """``captum-mamba-study``: ``captum-mamba study``."""
    main(["study", *sys.argv[1:]], prog="captum-mamba-study")


def benchmark_main() -> None:
    """``captum-mamba-benchmark``: ``captum-mamba benchmark`` (arguments checked first)."""
    main(["benchmark", *sys.argv[1:]], prog="captum-mamba-benchmark")


if __name__ == "__main__":
    main()

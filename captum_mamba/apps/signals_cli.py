r"""``captum-mamba signals``: train, attribute and study on the sensor data sets of
:mod:`captum_mamba.apps.signals`.

::

    captum-mamba signals train     --dataset basic-motions
    captum-mamba signals attribute --dataset basic-motions --index 0 --output-dir OUT
    captum-mamba signals study     --dataset planted --num-examples 40 --output-dir OUT

The classifier is trained once per data set and setup and cached (``--cache-dir``,
default ``$CAPTUM_MAMBA_CACHE`` or ``~/.cache/captum-mamba``). ``attribute`` writes,
per method, the relevance ``(time, channels)`` of the example as ``.npy``, the lanes
(``lanes-<method>.png``, ``lanes-<method>.html``) and the time x channel heatmap with
10-step windows and the channel groups (``heatmap-<method>.png``). ``study`` writes
``results.md`` and ``results.json`` (``Delta A^F`` per protocol with s.e., evidence
share on the planted task).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import torch

from captum_mamba.apps.signals import (
    SIGNAL_DATASETS,
    SIGNAL_METHODS,
    SignalClassifier,
    SignalDataset,
    SignalSetup,
    accuracy,
    load_or_train_signal_classifier,
    load_signal_dataset,
    signal_scores,
    signal_study,
    study_markdown,
)
from captum_mamba.baselines.captum_methods import MethodSettings
from captum_mamba.visualization.signals import (
    SignalView,
    signal_heatmap_figure,
    signal_relevance_figure,
)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        choices=SIGNAL_DATASETS,
        default="basic-motions",
        help="BasicMotions (needs the signals extra: aeon) or the planted-pulse task "
        "(basic-motions)",
    )
    parser.add_argument("--cache-dir", default=None, help="classifier cache folder")
    parser.add_argument(
        "--epochs",
        type=_positive,
        default=SignalSetup.epochs,
        help=f"training epochs of the classifier ({SignalSetup.epochs})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the task")
    parser.add_argument("--threads", type=_positive, default=None, help="torch CPU threads")


def _classifier(args: argparse.Namespace) -> tuple[SignalDataset, SignalClassifier]:
    data = load_signal_dataset(args.dataset, args.seed)
    setup = SignalSetup(epochs=args.epochs, seed=args.seed)
    return data, load_or_train_signal_classifier(data, setup, args.cache_dir)


def _output_dir(text: str) -> Path:
    path = Path(text)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _train(args: argparse.Namespace) -> None:
    data, model = _classifier(args)
    print(
        f"{data.name}: test accuracy {accuracy(model, data.test_x, data.test_y):.3f} "
        f"({len(data.test_x)} signals, {len(data.classes)} classes)"
    )


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _attribute(args: argparse.Namespace) -> None:
    data, model = _classifier(args)
    if not 0 <= args.index < len(data.test_x):
        raise ValueError(f"--index {args.index} is outside the {len(data.test_x)} test signals")
    out = _output_dir(args.output_dir)
    x = data.test_x[args.index : args.index + 1]
    with torch.no_grad():
        target = int(model(x).argmax(-1))
    title = f"{data.name} #{args.index}: true {data.classes[int(data.test_y[args.index])]}, "
    title += f"predicted {data.classes[target]}"
    settings = MethodSettings(seed=args.seed)
    for method in args.methods:
        relevance = signal_scores(method, model, x, target, settings).detach()[0]
        slug = _slug(method)
        np.save(out / f"relevance-{slug}.npy", relevance.numpy())
        names = data.channel_names
        signal_relevance_figure(x[0], relevance, names, f"{title} ({method})").savefig(
            out / f"lanes-{slug}.png", dpi=120
        )
        SignalView(x[0], relevance, names, f"{title} ({method})").save(out / f"lanes-{slug}.html")
        heatmap = signal_heatmap_figure(
            relevance, names, window=10, groups=data.groups or None, title=method
        )
        heatmap.savefig(out / f"heatmap-{slug}.png", dpi=120)
        print(f"{method}: wrote {out}/*-{slug}.*")


def _study(args: argparse.Namespace) -> None:
    data, model = _classifier(args)
    out = _output_dir(args.output_dir)
    settings = MethodSettings(seed=args.seed)
    rows = signal_study(model, data, args.methods, args.num_examples, settings=settings)
    blind = None if data.test_evidence is None else float(data.test_evidence.double().mean())
    table = study_markdown(rows, blind)
    (out / "results.md").write_text(table, encoding="utf-8")
    (out / "results.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print(table, end="")


def add_signals(commands: argparse._SubParsersAction, prog: str) -> None:
    """Add ``signals train | attribute | study`` to the ``captum-mamba`` subcommands.

    Args:
        commands (argparse._SubParsersAction): the top-level subcommands.
        prog (str): the program name, for messages.
    """
    signals = commands.add_parser(
        "signals", help="sensor signals: train, attribute and study (BasicMotions, planted task)"
    )
    children = signals.add_subparsers(dest="signals_command", required=True)
    for name, handler, help_text in (
        ("train", _train, "train (or load the cached) classifier and print its test accuracy"),
        ("attribute", _attribute, "explain one test signal: lanes, heatmaps, .npy"),
        ("study", _study, "Delta A^F per protocol (s.e.) and evidence share per method"),
    ):
        parser = children.add_parser(name, help=help_text, prog=f"{prog} signals {name}")
        parser.set_defaults(
            handler=handler, command_name=f"{prog} signals {name}", sets_threads=True
        )
        _common(parser)
        if name == "train":
            continue
        parser.add_argument(
            "--methods",
            nargs="+",
            choices=SIGNAL_METHODS,
            default=SIGNAL_METHODS,
            help="methods compared (all)",
        )
        parser.add_argument("--output-dir", required=True, help="folder of the results")
        if name == "attribute":
            parser.add_argument("--index", type=int, default=0, help="test signal to explain")
        else:
            parser.add_argument(
                "--num-examples", type=_positive, default=None, help="test signals (all)"
            )

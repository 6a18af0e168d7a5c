r"""Comparative study: faithfulness, conservation and cost of attribution methods on a
labelled text data set.

For every example the runner embeds the tokens, explains the target logit (the
predicted class by default) with every method, and records the token-perturbation
curves (:mod:`captum_mamba.metrics.perturbation`), ``Delta A^F = A(LeRF) - A(MoRF)``,
the insertion area, the sum of relevances next to the explained logit, and the
wall-clock time of the attribution call. It writes:

- ``results.csv`` and ``results.md``: one row per method (means over examples);
- ``examples.csv``: one row per method and example;
- ``curves.png``: mean MoRF / LeRF / insertion curves per method;
- ``conservation.png``: sum of relevances vs explained logit (signed methods).

Command line (the sentiment classifier of :mod:`captum_mamba.sentiment` on SST-2)::

    python -m captum_mamba.study run --data-dir ../shared/data --num-examples 200
    python -m captum_mamba.study memory --length 1024     # peak memory, 130M shape
    python -m captum_mamba.study memory --length 16384 --methods mambalrp-lean
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from captum_mamba.attr._forward import default_forward
from captum_mamba.baselines.captum_methods import (
    METHOD_NAMES,
    MethodSettings,
    TokenAttribution,
    build_methods,
)
from captum_mamba.metrics import (
    conservation_stats,
    curve_area,
    perturbation_curves,
    replacement_embedding,
    resample_curve,
)
from captum_mamba.rules import MambaRules

if TYPE_CHECKING:
    from captum_mamba.sentiment import ClassifierSetup

Tokenize = Callable[[str], Tensor]


@dataclass
class MethodRecord:
    """Per-example measurements of one method."""

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
    """

    rows: list[dict[str, Any]]
    records: list[MethodRecord]
    accuracy: float
    files: dict[str, Path]


def _text_and_label(example: Any) -> tuple[str, int]:
    if hasattr(example, "text"):
        return example.text, int(example.label)
    text, label = example
    return text, int(label)


def _mean_sem(values: Sequence[float]) -> tuple[float, float]:
    data = torch.tensor(values, dtype=torch.float64)
    if data.numel() == 0:
        return math.nan, math.nan
    sem = float(data.std() / math.sqrt(data.numel())) if data.numel() > 1 else math.nan
    return float(data.mean()), sem


def _summary(record: MethodRecord, accuracy: float) -> dict[str, Any]:
    delta, delta_sem = _mean_sem(record.delta)
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
        "conservation_corr": stats.correlation if record.signed else math.nan,
        "conservation_rel_error": stats.mean_relative_error if record.signed else math.nan,
        "conservation_median_rel_error": (
            stats.median_relative_error if record.signed else math.nan
        ),
        "ms_per_example": 1000 * _mean_sem(record.seconds)[0],
        "examples": len(record.delta),
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
    for row in sorted(rows, key=lambda r: -r["delta_af"]):
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
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5), sharey=True)
    for axis, (kind, title) in zip(axes, titles.items(), strict=True):
        for record in records:
            mean = torch.stack(record.curves[kind]).mean(0)
            axis.plot(fractions.numpy(), mean.numpy(), label=record.name)
        axis.set_title(title)
        axis.set_xlabel("fraction of tokens perturbed")
    axes[0].set_ylabel("explained logit (mean)")
    axes[-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(files["curves"], dpi=120)
    plt.close(figure)

    signed = [r for r in records if r.signed]
    columns = max(1, min(3, len(signed)))
    rows = max(1, math.ceil(len(signed) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 4 * rows), squeeze=False)
    for axis in axes.flat[len(signed) :]:
        axis.axis("off")
    for axis, record in zip(axes.flat, signed, strict=False):
        axis.scatter(record.output, record.relevance_sum, s=8)
        low = min(record.output + record.relevance_sum)
        high = max(record.output + record.relevance_sum)
        axis.plot([low, high], [low, high], color="grey", linewidth=0.8)
        axis.set_title(record.name, fontsize=9)
        axis.set_xlabel("explained logit")
        axis.set_ylabel("sum of relevance")
    figure.tight_layout()
    figure.savefig(files["conservation"], dpi=120)
    plt.close(figure)
    return files


def _write_tables(
    records: Sequence[MethodRecord], rows: Sequence[dict[str, Any]], directory: Path, caption: str
) -> dict[str, Path]:
    files = {
        "results_csv": directory / "results.csv",
        "results_md": directory / "results.md",
        "examples_csv": directory / "examples.csv",
    }
    with files["results_csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    files["results_md"].write_text(f"{caption}\n\n{markdown_table(rows)}\n")
    columns = ["delta", "area_morf", "area_lerf", "area_insertion", "seconds"]
    columns += ["relevance_sum", "output"]
    with files["examples_csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "example", *columns])
        for record in records:
            for index in range(len(record.delta)):
                values = [getattr(record, name)[index] for name in columns]
                writer.writerow([record.name, index, *values])
    return files


def run_study(
    model: nn.Module,
    tokenize: Tokenize,
    examples: Sequence[Any],
    methods: Sequence[str | TokenAttribution] = METHOD_NAMES,
    output_dir: str | os.PathLike[str] = "study_results",
    forward_func: Callable[..., Tensor] | None = None,
    replacement: str = "zero",
    replacement_token_id: int | None = None,
    target: str = "predicted",
    settings: MethodSettings | None = None,
    num_fractions: int = 21,
    progress: bool = True,
    caption: str = "",
) -> StudyResult:
    r"""Run the comparative study of attribution methods on a labelled text data set.

    Each example is explained on its own (batch of one, no padding); the explained
    output is one class logit of ``(1, classes)`` outputs.

    Args:
        model (nn.Module): the classifier (with ``get_input_embeddings()`` and
            supported Mamba blocks), in eval mode.
        tokenize (Callable): ``tokenize(text) -> (1, seq)`` long token ids.
        examples (sequence): labelled examples, objects with ``text`` and ``label``
            (e.g. :class:`captum_mamba.data.LabelledText`) or ``(text, label)`` pairs.
        methods (sequence, optional): method names of
            :data:`~captum_mamba.baselines.captum_methods.METHOD_NAMES` or built
            :class:`TokenAttribution` objects. Default: all methods.
        output_dir (str or PathLike, optional): folder for tables and plots (created).
            Default: ``"study_results"``.
        forward_func (Callable, optional): ``forward(embeds) -> (batch, classes)``.
            Default: ``model(inputs_embeds=embeds)`` via the Hugging Face convention.
        replacement (str, optional): ``"zero"``, ``"mean"`` or ``"token"``
            embedding for removed tokens. Default: ``"zero"``.
        replacement_token_id (int, optional): token for ``replacement="token"``.
        target (str, optional): ``"predicted"`` (arg-max class) or ``"label"``.
            Default: ``"predicted"``.
        settings (MethodSettings, optional): method hyper-parameters.
        num_fractions (int, optional): points of the averaged curves. Default: 21.
        progress (bool, optional): show a tqdm progress bar. Default: True.
        caption (str, optional): first line of ``results.md``. Default: ``""``.

    Returns:
        StudyResult: summary rows, per-example records, accuracy and written files.

    Examples::

        >>> result = run_study(classifier, tokenize, examples[:50], output_dir="out")
        >>> print(markdown_table(result.rows))
    """
    from tqdm.auto import tqdm

    if target not in ("predicted", "label"):
        raise ValueError(f"target must be 'predicted' or 'label', got {target!r}")
    if not examples:
        raise ValueError("run_study needs at least one example")
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    forward = forward_func or default_forward(model, "inputs_embeds")
    built = [
        m if isinstance(m, TokenAttribution) else build_methods([m], model, forward, settings)[0]
        for m in methods
    ]
    embedding = model.get_input_embeddings()
    filler = replacement_embedding(embedding, replacement, replacement_token_id)
    fractions = torch.linspace(0, 1, num_fractions, dtype=torch.float64)
    records = [MethodRecord(m.name, m.signed) for m in built]
    correct = 0
    for number, example in enumerate(tqdm(examples, desc="study", disable=not progress)):
        text, label = _text_and_label(example)
        ids = tokenize(text)
        embeds = embedding(ids).detach()
        with torch.no_grad():
            logits = forward(embeds)
        predicted = int(logits[0].argmax())
        correct += predicted == label
        explained = predicted if target == "predicted" else label
        for method, record in zip(built, records, strict=True):
            if number == 0:
                method(embeds, explained)  # warm-up, not timed
            start = time.perf_counter()
            scores = method(embeds, explained)
            record.seconds.append(time.perf_counter() - start)
            curves = perturbation_curves(forward, embeds, scores, explained, filler)
            areas = {kind: float(curve_area(curve.double())[0]) for kind, curve in curves.items()}
            record.area_morf.append(areas["morf"])
            record.area_lerf.append(areas["lerf"])
            record.area_insertion.append(areas["insertion"])
            record.delta.append(areas["lerf"] - areas["morf"])
            record.relevance_sum.append(float(scores.double().sum()))
            record.output.append(float(logits[0, explained]))
            for kind, curve in curves.items():
                resampled = resample_curve(curve[0].double(), fractions)
                record.curves.setdefault(kind, []).append(resampled)
    accuracy = correct / len(examples)
    rows = [_summary(record, accuracy) for record in records]
    files = _write_tables(records, rows, directory, caption)
    files.update(_plot(records, fractions, directory))
    return StudyResult(rows, records, accuracy, files)


def _sentiment_study(args: argparse.Namespace) -> StudyResult:
    from captum_mamba.data import SST2_FILE, default_data_dir, load_sst2
    from captum_mamba.sentiment import load_or_train_classifier

    data_dir = Path(args.data_dir or default_data_dir())
    torch.manual_seed(args.seed)
    setup = _classifier_setup(args)
    classifier = load_or_train_classifier(data_dir, args.cache_dir, setup)
    model = classifier.model
    examples = load_sst2(data_dir / SST2_FILE)
    count = min(args.num_examples, len(examples))
    chosen = sorted(random.Random(args.seed).sample(range(len(examples)), count))
    subset = [examples[i] for i in chosen]

    def tokenize(text: str) -> Tensor:
        return classifier.encode([text])[0]

    names = METHOD_NAMES if args.methods == "all" else tuple(args.methods.split(","))
    settings = MethodSettings(
        ig_steps=args.ig_steps, smoothgrad_samples=args.smoothgrad_samples, seed=args.seed
    )
    caption = (
        f"Mamba sentiment classifier ({setup.describe()}; best epoch "
        f"{classifier.metrics['best_epoch']}, validation accuracy "
        f"{classifier.metrics['validation_accuracy']:.3f} on a held-out 10 % of "
        f"rotten_tomatoes.csv), SST-2 validation accuracy "
        f"{classifier.metrics['test_accuracy']:.3f} (all {len(examples)} sentences); "
        f"{count} sentences studied (seed {args.seed}), replacement '{args.replacement}', "
        f"explained logit: {args.target} class."
    )
    token_id = classifier.padding_id if args.replacement == "token" else None
    result = run_study(
        model,
        tokenize,
        subset,
        names,
        args.output_dir,
        replacement=args.replacement,
        replacement_token_id=token_id,
        target=args.target,
        settings=settings,
        caption=caption,
    )
    print(caption)
    print(markdown_table(result.rows))
    for name, path in result.files.items():
        print(f"{name}: {path}")
    return result


def _classifier_setup(args: argparse.Namespace) -> ClassifierSetup:
    """The study's classifier setup with the command line's overrides (checked)."""
    from captum_mamba.sentiment import ClassifierSetup

    return ClassifierSetup().replace(
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        hidden_size=args.hidden_size,
        num_layers=args.num_layers,
    )


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
    from captum_mamba.models import mamba_config, random_mamba_lm

    hidden, layers, state, vocab = parse_shape(shape)
    config = mamba_config(
        hidden_size=hidden, num_hidden_layers=layers, state_size=state, vocab_size=vocab
    )
    return random_mamba_lm(config, seed=seed)


def _memory_call(method: str, model: nn.Module, ids: Tensor) -> Callable[[], Any]:
    """The measured call of ``method`` on ``ids`` ``(1, length)``."""
    from captum_mamba.adapters import rules_applied
    from captum_mamba.attr import LayerMambaLRP, MambaLRP
    from captum_mamba.baselines import MambaAttentionRollout
    from captum_mamba.baselines.captum_methods import SALIENCY, build_method

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


def _proc_status(field: str) -> int | None:
    """A ``/proc/self/status`` field in KiB, or None where there is none (not Linux)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the process's peak resident set (Linux ``clear_refs``); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return _proc_status("VmHWM") is not None


def _memory_worker(
    method: str, length: int, seed: int, shape: str = "130m", repeats: int = 1
) -> dict[str, Any]:
    """Build the model, warm ``method`` up on 8 tokens, run it ``repeats`` times at
    ``length`` and report the median time and the peak resident set above the resident
    set before the first run."""
    from captum_mamba.attr import uses_lean

    model = _memory_model(shape, seed)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=generator)
    _memory_call(method, model, ids[:, :8])()
    call = _memory_call(method, model, ids)
    exact = _reset_peak()
    # ru_maxrss is in KiB on Linux; it cannot be reset, so it is the fallback only.
    before = _proc_status("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    peak = _proc_status("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
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
    command = [sys.executable, "-m", "captum_mamba.study", "memory-worker"]
    command += ["--method", method, "--length", str(length), "--seed", str(seed)]
    command += ["--shape", shape, "--repeats", str(repeats)]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker {method} at {length} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m captum_mamba.study",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the study on SST-2 with the sentiment classifier")
    run.add_argument("--data-dir", default=None, help="folder of the shared data")
    run.add_argument("--cache-dir", default=None, help="classifier checkpoint folder")
    run.add_argument("--output-dir", default="study_results")
    run.add_argument("--num-examples", type=int, default=200)
    run.add_argument("--methods", default="all", help="comma-separated names, or 'all'")
    run.add_argument("--replacement", choices=("zero", "mean", "token"), default="zero")
    run.add_argument("--target", choices=("predicted", "label"), default="predicted")
    run.add_argument("--ig-steps", type=int, default=32)
    run.add_argument("--smoothgrad-samples", type=int, default=10)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    setup = run.add_argument_group("classifier (default: ClassifierSetup() defaults)")
    setup.add_argument("--epochs", type=int, default=None)
    setup.add_argument("--learning-rate", type=float, default=None)
    setup.add_argument("--hidden-size", type=int, default=None)
    setup.add_argument("--num-layers", type=int, default=None)
    memory = commands.add_parser("memory", help="peak memory of attribution methods, 130M shape")
    memory.add_argument("--length", type=int, default=1024)
    memory.add_argument(
        "--methods",
        default="forward,rollout,mambalrp",
        help=f"comma-separated, from {','.join(MEMORY_METHODS)}",
    )
    memory.add_argument("--seed", type=int, default=0)
    memory.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    memory.add_argument("--shape", default="130m", help="130m, tiny or hidden,layers,state,vocab")
    memory.add_argument("--repeats", type=int, default=1)
    worker = commands.add_parser("memory-worker", help=argparse.SUPPRESS)
    worker.add_argument("--method", required=True)
    worker.add_argument("--length", type=int, required=True)
    worker.add_argument("--seed", type=int, default=0)
    worker.add_argument("--threads", type=int, default=None)
    worker.add_argument("--shape", default="130m")
    worker.add_argument("--repeats", type=int, default=1)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point, see the module docstring."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        for name in ("num_examples", "ig_steps", "smoothgrad_samples"):
            if getattr(args, name) < 1:
                option = "--" + name.replace("_", "-")
                parser.error(f"{option} must be at least 1, got {getattr(args, name)}")
        try:
            _classifier_setup(args)
        except ValueError as error:
            parser.error(str(error))
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "run":
        _sentiment_study(args)
    elif args.command == "memory":
        for method in args.methods.split(","):
            result = measure_peak_memory(
                method, args.length, args.seed, args.threads, args.shape, repeats=args.repeats
            )
            print(json.dumps(result), flush=True)
    else:
        worker = _memory_worker(args.method, args.length, args.seed, args.shape, args.repeats)
        print(json.dumps(worker))


if __name__ == "__main__":
    main()

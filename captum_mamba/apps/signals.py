r"""Sensor signals end to end: data sets, a small Mamba classifier, the compared
methods per time step and channel, and the faithfulness / localisation study.

Data sets (``(examples, time, channels)`` float signals, z-scored per channel with the
training set's statistics):

- ``"basic-motions"``: aeon's bundled *BasicMotions* (4 activities: standing, walking,
  running, badminton; 6 channels: a smartwatch's 3-axis accelerometer and 3-axis
  gyroscope; 100 steps; 40 training and 40 test recordings). Needs the ``signals``
  extra (``pip install 'captum-mamba[signals]'``, which installs ``aeon``); the data
  ship inside aeon's wheel and load offline;
- ``"planted"``: a generated task with planted evidence (:func:`planted_pulses`): a
  pulse in channel 0 at a random time decides the class by its sign; every other
  channel carries a distractor pulse of random sign at another random time. The
  evidence (the pulse's time window in channel 0) is known per example.

The classifier (:class:`SignalClassifier`) is a bias-free ``Linear`` stem over the
channels, a transformers ``MambaModel`` fed through ``inputs_embeds`` (no biases in
its projections and convolution), the mean over time and a bias-free ``Linear`` head,
declared a container: ``MambaLRP(model)`` (or ``MambaLRP(model.backbone,
forward_func=model)``) explains the whole network (stem and head are linear maps, LRP-0)
and the relevances of a signal sum to the explained logit.

Methods (:data:`SIGNAL_METHODS`) are those of
:data:`~captum_mamba.baselines.captum_methods.METHODS`, run on the raw signal:
signed relevances (MambaLRP, Integrated Gradients) are kept per time step and channel,
gradients (Saliency, SmoothGrad) as absolute values, time-step scores (attention
rollout) are spread evenly over the channels, and Random draws one score per time step
and channel.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import MambaConfig, MambaModel

from captum_mamba.adapters import register_container, rules_applied
from captum_mamba.apps.sentiment import default_cache_dir
from captum_mamba.baselines.captum_methods import (
    INTEGRATED_GRADIENTS,
    MAMBA_LRP,
    METHODS,
    RANDOM,
    ROLLOUT,
    SALIENCY,
    SMOOTHGRAD,
    MethodSettings,
)
from captum_mamba.metrics import delta_area, evidence_share, mean_sem
from captum_mamba.metrics.signals import signal_perturbation_curves
from captum_mamba.rules import MambaRules

#: The data sets :func:`load_signal_dataset` knows.
SIGNAL_DATASETS: tuple[str, ...] = ("basic-motions", "planted")
#: The compared methods, in table order.
SIGNAL_METHODS: tuple[str, ...] = (
    MAMBA_LRP,
    INTEGRATED_GRADIENTS,
    SALIENCY,
    SMOOTHGRAD,
    ROLLOUT,
    RANDOM,
)
#: BasicMotions' channels (the data set's order: accelerometer x, y, z, gyroscope x, y, z).
BASIC_MOTIONS_CHANNELS: tuple[str, ...] = (
    "acc x",
    "acc y",
    "acc z",
    "gyro x",
    "gyro y",
    "gyro z",
)
#: BasicMotions' channel groups.
SENSOR_GROUPS: dict[str, list[int]] = {"accelerometer": [0, 1, 2], "gyroscope": [3, 4, 5]}

Progress = Callable[[str], None]


@dataclass
class SignalDataset:
    """A labelled multichannel signal data set.

    Args:
        name (str): data set name.
        train_x (Tensor): ``(n, time, channels)`` float64 training signals.
        train_y (Tensor): ``(n,)`` long labels.
        test_x (Tensor): ``(m, time, channels)`` test signals.
        test_y (Tensor): ``(m,)`` labels.
        classes (list of str): class names by label.
        channel_names (list of str): a name per channel.
        groups (dict): channel group name -> channel indices (may be empty).
        test_evidence (Tensor, optional): ``(m, time, channels)`` boolean masks of the
            known evidence of each test example. Default: None.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: list[str]
    channel_names: list[str]
    groups: dict[str, list[int]] = field(default_factory=dict)
    test_evidence: Tensor | None = None

    def fingerprint(self) -> str:
        """Hash of the signals, labels and names (16 hex digits)."""
        digest = hashlib.sha256()
        for tensor in (self.train_x, self.train_y, self.test_x, self.test_y):
            digest.update(tensor.contiguous().numpy().tobytes())
        digest.update(json.dumps([self.name, self.classes, self.channel_names]).encode())
        return digest.hexdigest()[:16]


def _standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor]:
    mean = train.mean((0, 1))
    std = train.std((0, 1)).clamp(min=1e-8)
    return (train - mean) / std, (test - mean) / std


def load_basic_motions() -> SignalDataset:
    """aeon's bundled BasicMotions, z-scored per channel (training statistics).

    Returns:
        SignalDataset: 40 training and 40 test recordings, 100 steps, 6 channels.

    Raises:
        ImportError: without aeon (the ``signals`` extra).
    """
    try:
        from aeon.datasets import load_basic_motions as load  # optional extra
    except ImportError as error:
        raise ImportError(
            "the basic-motions data set ships with aeon: pip install 'captum-mamba[signals]'"
        ) from error
    parts = []
    for split in ("train", "test"):
        x, y = load(split=split)
        parts.append((torch.from_numpy(np.asarray(x, dtype=np.float64)).transpose(1, 2), y))
    classes = sorted({str(label) for label in parts[0][1]})
    labels = [torch.tensor([classes.index(str(label)) for label in y]) for _, y in parts]
    train_x, test_x = _standardise(parts[0][0], parts[1][0])
    return SignalDataset(
        "basic-motions",
        train_x.contiguous(),
        labels[0],
        test_x.contiguous(),
        labels[1],
        classes,
        list(BASIC_MOTIONS_CHANNELS),
        dict(SENSOR_GROUPS),
    )


def _pulses(
    count: int, time: int, channels: int, width: int, noise: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    shape = torch.hann_window(width + 2, periodic=False, dtype=torch.float64)[1:-1]
    x = noise * torch.randn(count, time, channels, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 2, (count,), generator=generator)
    evidence = torch.zeros(count, time, channels, dtype=torch.bool)
    starts = torch.randint(0, time - width + 1, (count, channels), generator=generator)
    signs = torch.randint(0, 2, (count, channels), generator=generator) * 2 - 1
    signs[:, 0] = labels * 2 - 1
    for index in range(count):
        for channel in range(channels):
            start = int(starts[index, channel])
            x[index, start : start + width, channel] += signs[index, channel] * shape
        evidence[index, int(starts[index, 0]) : int(starts[index, 0]) + width, 0] = True
    return x, labels, evidence


def planted_pulses(
    num_train: int = 200,
    num_test: int = 100,
    time: int = 100,
    channels: int = 4,
    width: int = 10,
    noise: float = 0.2,
    seed: int = 0,
) -> SignalDataset:
    """Generated sensor task with planted evidence.

    Every example carries, in each channel, one Hann-shaped pulse of ``width`` steps
    at a random time, over Gaussian noise. The sign of the pulse in channel 0 is the
    class (``"down"`` = 0, ``"up"`` = 1); the pulses of the other channels have random
    signs and carry no information. The evidence of an example is its channel-0 pulse:
    ``width`` time steps of one channel, a share ``width / (time * channels)`` of the
    signal (2.5% by default), which is what a score blind to the evidence expects.

    Args:
        num_train (int, optional): training examples. Default: 200.
        num_test (int, optional): test examples. Default: 100.
        time (int, optional): time steps. Default: 100.
        channels (int, optional): channels, at least 2. Default: 4.
        width (int, optional): pulse width in steps. Default: 10.
        noise (float, optional): noise standard deviation (pulse height 1). Default: 0.2.
        seed (int, optional): seed. Default: 0.

    Returns:
        SignalDataset: with ``test_evidence`` masks.
    """
    if channels < 2 or not 1 <= width <= time:
        raise ValueError("planted_pulses needs channels >= 2 and 1 <= width <= time")
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y, _ = _pulses(num_train, time, channels, width, noise, generator)
    test_x, test_y, evidence = _pulses(num_test, time, channels, width, noise, generator)
    names = ["evidence"] + [f"distractor {c}" for c in range(1, channels)]
    return SignalDataset(
        "planted", train_x, train_y, test_x, test_y, ["down", "up"], names, {}, evidence
    )


def load_signal_dataset(name: str, seed: int = 0) -> SignalDataset:
    """A data set of :data:`SIGNAL_DATASETS` by name (``seed`` seeds ``"planted"``)."""
    if name == "basic-motions":
        return load_basic_motions()
    if name == "planted":
        return planted_pulses(seed=seed)
    raise ValueError(f"unknown signal data set {name!r}; choose from {', '.join(SIGNAL_DATASETS)}")


@register_container
class SignalClassifier(nn.Module):
    """Bias-free ``Linear`` stem -> ``MambaModel`` (``inputs_embeds``) -> mean over
    time -> bias-free ``Linear`` head (declared a container: its forward only wires its
    children together and takes a mean over time).

    Args:
        channels (int): input channels.
        classes (int): output classes.
        hidden (int, optional): model width. Default: 16.
        layers (int, optional): Mamba layers. Default: 2.
        state (int, optional): SSM state size. Default: 8.
    """

    def __init__(
        self, channels: int, classes: int, hidden: int = 16, layers: int = 2, state: int = 8
    ) -> None:
        super().__init__()
        self.stem = nn.Linear(channels, hidden, bias=False)
        config = MambaConfig(
            vocab_size=2,
            hidden_size=hidden,
            state_size=state,
            num_hidden_layers=layers,
            expand=2,
            conv_kernel=4,
            use_bias=False,
            use_conv_bias=False,
            use_cache=False,
        )
        self.backbone = MambaModel(config)
        self.head = nn.Linear(hidden, classes, bias=False)

    def forward(self, signal: Tensor) -> Tensor:
        """``(batch, time, channels)`` signals -> ``(batch, classes)`` logits."""
        hidden = self.backbone(inputs_embeds=self.stem(signal)).last_hidden_state
        return self.head(hidden.mean(1))


@dataclass(frozen=True)
class SignalSetup:
    """Model size and training schedule of :func:`train_signal_classifier`.

    Args:
        hidden (int): model width. Default: 16.
        layers (int): Mamba layers. Default: 2.
        state (int): SSM state size. Default: 8.
        epochs (int): passes over the training set. Default: 40.
        batch_size (int): examples per step. Default: 20.
        lr (float): Adam learning rate. Default: 0.005.
        seed (int): seed of the initialisation and the batches. Default: 0.
    """

    hidden: int = 16
    layers: int = 2
    state: int = 8
    epochs: int = 40
    batch_size: int = 20
    lr: float = 0.005
    seed: int = 0


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Share of ``x`` that ``model`` classifies as ``y``."""
    with torch.no_grad():
        return float((model(x.to(next(model.parameters()).dtype)).argmax(-1) == y).double().mean())


def train_signal_classifier(
    data: SignalDataset, setup: SignalSetup | None = None, progress: Progress = print
) -> SignalClassifier:
    """Train a :class:`SignalClassifier` on ``data.train_x`` (float32, Adam), with the
    backbone computed by this package's scans with every rule off (the same function and
    its true gradient, faster on CPU than transformers' per-time-step loop).

    Args:
        data (SignalDataset): the data set.
        setup (SignalSetup, optional): size and schedule. Default: ``SignalSetup()``.
        progress (Callable, optional): receives progress lines. Default: print.

    Returns:
        SignalClassifier: the trained model in float64, eval mode.
    """
    setup = setup or SignalSetup()
    torch.manual_seed(setup.seed)
    model = SignalClassifier(
        data.train_x.shape[-1], len(data.classes), setup.hidden, setup.layers, setup.state
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=setup.lr)
    generator = torch.Generator().manual_seed(setup.seed)
    x, y = data.train_x.float(), data.train_y
    start = time.perf_counter()
    for epoch in range(setup.epochs):
        model.train()
        for batch in torch.randperm(len(x), generator=generator).split(setup.batch_size):
            optimiser.zero_grad()
            with rules_applied(model.backbone, MambaRules.gradient_x_input()):
                nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
        if (epoch + 1) % 20 == 0 or epoch + 1 == setup.epochs:
            model.eval()
            progress(
                f"epoch {epoch + 1}/{setup.epochs}: train accuracy {accuracy(model, x, y):.3f} "
                f"({time.perf_counter() - start:.0f} s)"
            )
    return model.double().eval()


def load_or_train_signal_classifier(
    data: SignalDataset,
    setup: SignalSetup | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Progress = print,
) -> SignalClassifier:
    """Load the cached classifier of ``data`` and ``setup``, or train and cache it
    (under :func:`~captum_mamba.apps.sentiment.default_cache_dir`, key = hash of the
    data and the setup).

    Returns:
        SignalClassifier: float64, eval mode.
    """
    setup = setup or SignalSetup()
    key = hashlib.sha256(
        json.dumps([data.fingerprint(), asdict(setup)], sort_keys=True).encode()
    ).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / f"signal-{data.name}-{key}.pt"
    model = SignalClassifier(
        data.train_x.shape[-1], len(data.classes), setup.hidden, setup.layers, setup.state
    ).double()
    if path.is_file():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    progress(f"no cached signal classifier at {path}: training one")
    trained = train_signal_classifier(data, setup, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(trained.state_dict(), path)
    progress(f"test accuracy {accuracy(trained, data.test_x, data.test_y):.3f}; saved {path}")
    return trained


def signal_scores(
    name: str,
    model: SignalClassifier,
    signal: Tensor,
    target: Tensor | int,
    settings: MethodSettings | None = None,
) -> Tensor:
    """Scores of one of :data:`SIGNAL_METHODS` per time step and channel.

    Args:
        name (str): method name.
        model (SignalClassifier): the classifier.
        signal (Tensor): ``(batch, time, channels)`` signals in the model's dtype.
        target (Tensor or int): explained class per example (or one for all).
        settings (MethodSettings, optional): hyper-parameters. Default:
            ``MethodSettings()``.

    Returns:
        Tensor: ``(batch, time, channels)`` scores: signed relevance for MambaLRP and
        Integrated Gradients, ``|gradient|`` for Saliency and SmoothGrad, time-step
        scores divided evenly over the channels for rollout, uniform random numbers for
        Random.
    """
    spec = METHODS.get(name)
    if spec is None or name not in SIGNAL_METHODS:
        raise ValueError(f"unknown signal method {name!r}; choose from {', '.join(SIGNAL_METHODS)}")
    run = spec.build(model.backbone, model, settings or MethodSettings())
    batch, steps, channels = signal.shape
    if name == RANDOM:  # one random score per element: the elements as "tokens"
        return run(signal.reshape(batch, steps * channels, 1), target, ()).reshape(signal.shape)
    if spec.reduction == "none":  # (batch, time) scores, one row per example
        rows = [run(signal[i : i + 1], _row(target, i), ()) for i in range(batch)]
        return torch.cat(rows)[..., None].expand_as(signal) / channels
    scores = run(signal, target, ())
    return scores.abs() if spec.reduction == "abs_sum" else scores


def _row(target: Tensor | int, index: int) -> int:
    return int(target[index]) if isinstance(target, Tensor) and target.dim() else int(target)


#: The perturbation protocols of :func:`signal_study`: (unit, window, replacement).
PROTOCOLS: tuple[tuple[str, int, str], ...] = (
    ("time", 10, "zero"),
    ("time", 10, "mean"),
    ("time", 10, "hold"),
    ("channel", 1, "zero"),
    ("channel", 1, "mean"),
)


def protocol_name(unit: str, window: int, replacement: str) -> str:
    """``"time/10 hold"``, ``"channel zero"``: a protocol's column name."""
    return f"{unit}/{window} {replacement}" if unit == "time" else f"{unit} {replacement}"


def signal_study(
    model: SignalClassifier,
    data: SignalDataset,
    methods: Sequence[str] = SIGNAL_METHODS,
    num_examples: int | None = None,
    protocols: Sequence[tuple[str, int, str]] = PROTOCOLS,
    settings: MethodSettings | None = None,
    progress: Progress = print,
) -> list[dict[str, Any]]:
    """Faithfulness (``Delta A^F`` per protocol) and localisation (evidence share) of
    each method on the first ``num_examples`` test signals, explaining the predicted
    class.

    Args:
        model (SignalClassifier): the classifier (float64).
        data (SignalDataset): the data set.
        methods (sequence of str, optional): methods. Default: :data:`SIGNAL_METHODS`.
        num_examples (int, optional): test examples. Default: None (all).
        protocols (sequence of tuple, optional): ``(unit, window, replacement)``.
            Default: :data:`PROTOCOLS`.
        settings (MethodSettings, optional): method hyper-parameters. Default: None.
        progress (Callable, optional): receives a line per method. Default: print.

    Returns:
        list of dict: one row per method: ``method``, ``seconds`` (attribution time per
        example), per protocol ``delta[<name>]`` and ``delta_sem[<name>]``, and with
        evidence ``evidence_share`` and ``evidence_share_sem``; for signed methods
        ``conservation_error`` (largest ``|sum R - logit|``).
    """
    count = len(data.test_x) if num_examples is None else min(num_examples, len(data.test_x))
    x = data.test_x[:count].to(next(model.parameters()).dtype)
    with torch.no_grad():
        logits = model(x)
    target = logits.argmax(-1)
    rows = []
    for name in methods:
        start = time.perf_counter()
        scores = signal_scores(name, model, x, target, settings).detach()
        row: dict[str, Any] = {"method": name, "seconds": (time.perf_counter() - start) / count}
        for unit, window, replacement in protocols:
            curves = signal_perturbation_curves(model, x, scores, target, unit, window, replacement)
            delta = delta_area(curves["morf"], curves["lerf"])
            key = protocol_name(unit, window, replacement)
            row.setdefault("delta", {})[key], row.setdefault("delta_sem", {})[key] = mean_sem(delta)
        if data.test_evidence is not None:
            share = evidence_share(scores, data.test_evidence[:count])
            row["evidence_share"], row["evidence_share_sem"] = mean_sem(share)
        if METHODS[name].signed:
            explained = logits.gather(1, target[:, None])[:, 0]
            row["conservation_error"] = float((scores.sum((1, 2)) - explained).abs().max())
        rows.append(row)
        progress(f"{name}: {row['seconds']:.2f} s per example")
    return rows


def study_markdown(rows: Sequence[dict[str, Any]], evidence_share_expected: float | None) -> str:
    """The study as a Markdown table: ``Delta A^F`` mean ± s.e. per protocol, and the
    evidence share (with the share a score blind to the evidence expects)."""
    protocols = list(rows[0]["delta"])
    header = ["method", *[f"ΔA^F {p}" for p in protocols]]
    if "evidence_share" in rows[0]:
        header.append(
            "evidence share"
            + (
                ""
                if evidence_share_expected is None
                else f" (blind: {evidence_share_expected:.3f})"
            )
        )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["method"]]
        cells += [f"{row['delta'][p]:.3f} ± {row['delta_sem'][p]:.3f}" for p in protocols]
        if "evidence_share" in row:
            cells.append(f"{row['evidence_share']:.3f} ± {row['evidence_share_sem']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

"""Sensor signals end to end: the planted-evidence task (evidence masks, a trained
classifier whose MambaLRP relevance falls in the planted window far above Random's),
conservation of MambaLRP through stem, backbone and head (float64, bias-free), the
BasicMotions loader (skipped without aeon) and ``captum-mamba signals``."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from captum_mamba.apps.cli import main
from captum_mamba.apps.signals import (
    RANDOM,
    SIGNAL_METHODS,
    SignalClassifier,
    SignalSetup,
    accuracy,
    load_basic_motions,
    planted_pulses,
    signal_scores,
    train_signal_classifier,
)
from captum_mamba.baselines.captum_methods import MAMBA_LRP
from captum_mamba.metrics import evidence_share


def test_planted_evidence_decides_the_class():
    data = planted_pulses(num_train=20, num_test=30, time=40, channels=3, width=6, seed=1)
    assert data.test_x.shape == (30, 40, 3)
    evidence = data.test_evidence
    assert evidence.shape == data.test_x.shape
    assert (evidence.sum((1, 2)) == 6).all() and not evidence[..., 1:].any()
    for index in range(30):
        steps = torch.nonzero(evidence[index, :, 0]).reshape(-1).tolist()
        assert steps == list(range(steps[0], steps[0] + 6))
        inside = sum(float(data.test_x[index, t, 0]) for t in steps)
        assert (inside > 0) == bool(data.test_y[index])


@pytest.mark.parametrize("seed", [0, 1])
def test_mambalrp_conserves_through_stem_backbone_and_head(seed):
    torch.manual_seed(seed)
    model = SignalClassifier(channels=5, classes=3, hidden=8, layers=2).double().eval()
    x = torch.randn(2, 17, 5, dtype=torch.float64)
    target = torch.tensor([0, 2])
    relevance = signal_scores(MAMBA_LRP, model, x, target)
    assert relevance.shape == x.shape
    logits = model(x).detach()
    # to float32 rounding: transformers' MambaRMSNorm computes the variance in float32
    torch.testing.assert_close(
        relevance.sum((1, 2)), logits[torch.arange(2), target], rtol=1e-6, atol=1e-9
    )
    for name in SIGNAL_METHODS:
        assert signal_scores(name, model, x, target).shape == x.shape


@pytest.fixture(scope="module")
def planted_model():
    data = planted_pulses(num_train=120, num_test=20, time=60, channels=3, width=8, seed=0)
    setup = SignalSetup(hidden=16, layers=1, epochs=25)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is the fastest on a shared machine
    try:
        return data, train_signal_classifier(data, setup, progress=lambda line: None)
    finally:
        torch.set_num_threads(threads)


def test_mambalrp_finds_the_planted_pulse(planted_model):
    data, model = planted_model
    assert accuracy(model, data.test_x, data.test_y) >= 0.85
    x = data.test_x
    target = model(x).argmax(-1)
    blind = float(data.test_evidence.double().mean())  # 8 / (60 * 3)
    shares = {
        name: float(
            evidence_share(signal_scores(name, model, x, target), data.test_evidence).mean()
        )
        for name in (MAMBA_LRP, RANDOM)
    }
    assert shares[RANDOM] == pytest.approx(blind, abs=0.03)
    assert shares[MAMBA_LRP] > 3 * shares[RANDOM]


@pytest.mark.skipif(
    importlib.util.find_spec("aeon") is None
    and os.environ.get("CAPTUM_MAMBA_REQUIRE_SIGNALS") != "1",  # .ci/run: aeon must be there
    reason="aeon is not installed (pip install 'captum-mamba[signals]')",
)
def test_basic_motions_loads_offline_from_aeon():
    data = load_basic_motions()
    assert data.train_x.shape == (40, 100, 6) and data.test_x.shape == (40, 100, 6)
    assert data.classes == ["badminton", "running", "standing", "walking"]
    torch.testing.assert_close(data.train_x.mean((0, 1)), torch.zeros(6, dtype=torch.float64))
    assert sorted(data.groups) == ["accelerometer", "gyroscope"]


def test_signals_command_line(tmp_path, capsys):
    common = ["--dataset", "planted", "--epochs", "1", "--cache-dir", str(tmp_path / "cache")]
    main(["signals", "train", *common])
    assert "planted: test accuracy" in capsys.readouterr().out
    out = tmp_path / "out"
    main(["signals", "attribute", *common, "--methods", "MambaLRP", "--output-dir", str(out)])
    relevance = np.load(out / "relevance-mambalrp.npy")
    assert relevance.shape == (100, 4)
    assert (out / "lanes-mambalrp.html").read_text().count("<svg") == 4
    assert (out / "heatmap-mambalrp.png").is_file()
    main(
        [
            "signals",
            "study",
            *common,
            "--methods",
            "MambaLRP",
            "Random",
            "--num-examples",
            "2",
            "--output-dir",
            str(out),
        ]
    )
    table = (out / "results.md").read_text()
    assert "| MambaLRP |" in table and "evidence share (blind: 0.025)" in table

"""Interoperability: MambaLRP's ``(batch, time, channels)`` relevance fed to a metric of
the ``time-interpret`` package (``tint.metrics.comprehensiveness``), checked against the
metric's definition computed here (the change of the explained class's probability when
the top 20% of the elements of each signal are set to zero)."""

from __future__ import annotations

import os

import pytest
import torch

from captum_mamba.apps.signals import SignalClassifier, signal_scores
from captum_mamba.baselines.captum_methods import MAMBA_LRP

if os.environ.get("CAPTUM_MAMBA_REQUIRE_SIGNALS") == "1":  # .ci/run: it must be installed
    import tint.metrics as tint_metrics
else:
    tint_metrics = pytest.importorskip(
        "tint.metrics", reason="time-interpret is not installed (pip install 'captum-mamba[tint]')"
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_tint_comprehensiveness_reads_our_relevance(seed):
    torch.manual_seed(seed)
    model = SignalClassifier(channels=3, classes=2, hidden=8, layers=1).double().eval()
    x = torch.randn(4, 20, 3, dtype=torch.float64)
    with torch.no_grad():
        target = model(x).argmax(-1)
    relevance = signal_scores(MAMBA_LRP, model, x, target).detach()
    value = tint_metrics.comprehensiveness(model, x, relevance, target=target, topk=0.2)
    masked = x.clone()
    for example in range(4):
        flat = masked[example].reshape(-1)
        flat[relevance[example].reshape(-1).argsort(descending=True)[:12]] = 0.0
    with torch.no_grad():
        before = model(x).softmax(-1)[torch.arange(4), target]
        after = model(masked).softmax(-1)[torch.arange(4), target]
    assert value == pytest.approx(float((before - after).mean()), abs=1e-12)

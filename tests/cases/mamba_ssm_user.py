"""Conformance case and independent float64 reference: a user's own signal classifier on
mamba-ssm, ``Conv1d`` stem over time -> mamba-ssm ``Block``s of ``Mamba2`` mixers (the
block's residual stream and pre-norm) -> mamba-ssm's residual-adding ``RMSNorm`` ->
average over time -> MLP head (``Linear``, ``GELU``, ``Linear``), declared with
``register_container``.

Runs in the mamba-ssm subprocess (see :mod:`cases.mamba_ssm`, whose Mamba-2 reference
it reuses); mamba-ssm's own forward needs CUDA, so the "own output" is the reference with
every rule off. The stem's convolution and the head are written out here.
"""

from __future__ import annotations

import math
from functools import partial

import torch
from mamba_ssm_subprocess import IN_SUBPROCESS
from mamba_ssm_subprocess import SKIP_REASON as SKIP_REASON
from torch import Tensor, nn

from captum_mamba import MambaRules
from captum_mamba.adapters import register_container
from cases import ArchitectureCase

CHANNELS, CLASSES, WIDTH = 3, 3, 8


@register_container
class ConvMamba2Classifier(nn.Module):
    """``(batch, time, channels)`` signals -> class logits."""

    def __init__(self, blocks: nn.ModuleList, norm: nn.Module, bias: bool) -> None:
        super().__init__()
        self.stem = nn.Conv1d(CHANNELS, WIDTH, 3, padding=1, bias=bias)
        self.blocks = blocks
        self.norm = norm
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Sequential(
            nn.Linear(WIDTH, 6, bias=bias), nn.GELU(), nn.Linear(6, CLASSES, bias=bias)
        )

    def forward(self, signals: Tensor) -> Tensor:
        hidden, residual = self.stem(signals.transpose(1, 2)).transpose(1, 2), None
        for block in self.blocks:
            hidden, residual = block(hidden, residual)
        hidden = self.norm(hidden, residual=residual, prenorm=False)
        return self.head(self.pool(hidden.transpose(1, 2))[..., 0])


CONFIGS = {
    "mamba2-2-layers": dict(layers=2, ngroups=1, seq=7, batch=2),
    "mamba2-groups": dict(layers=1, ngroups=2, seq=9, batch=3),
}


def build(config: str, seed: int, zero_biases: bool) -> ConvMamba2Classifier:
    from mamba_ssm.models.mixer_seq_simple import Block
    from mamba_ssm.modules.mamba2 import Mamba2
    from mamba_ssm.ops.triton.layer_norm import RMSNorm

    settings = CONFIGS[config]
    torch.manual_seed(seed)
    mixer = partial(Mamba2, d_state=4, headdim=4, ngroups=settings["ngroups"])
    norm = partial(RMSNorm, eps=1e-5)
    blocks = nn.ModuleList(
        Block(WIDTH, mixer, nn.Identity, norm_cls=norm, fused_add_norm=False)
        for _ in range(settings["layers"])
    )
    model = ConvMamba2Classifier(blocks, norm(WIDTH), not zero_biases).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if zero_biases and name.endswith("bias") and "dt_" not in name:
                parameter.zero_()
            elif not name.endswith(("A_log", "dt_bias")):
                parameter.add_(0.2 * torch.randn_like(parameter))
    return model


def inputs(model: nn.Module, config: str, seed: int) -> tuple[Tensor, list[int]]:
    length, batch = CONFIGS[config]["seq"], CONFIGS[config]["batch"]
    generator = torch.Generator().manual_seed(1000 + seed)
    signals = torch.randn(batch, length, CHANNELS, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, CLASSES, (batch,), generator=generator).tolist()
    return signals, targets


def _stem(conv: nn.Conv1d, signals: Tensor) -> Tensor:
    """``out[t] = sum_k W[:, :, k] x[t + k - 1]`` (zero outside), by a loop over time."""
    length = signals.shape[1]
    steps = []
    for t in range(length):
        acc = 0
        for k in range(3):
            if 0 <= t + k - 1 < length:
                acc = acc + signals[:, t + k - 1] @ conv.weight[:, :, k].T
        steps.append(acc if conv.bias is None else acc + conv.bias)
    return torch.stack(steps, 1)


def _dense(x: Tensor, layer: nn.Linear) -> Tensor:
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def reference(model: ConvMamba2Classifier, signals: Tensor, rules: MambaRules) -> Tensor:
    """The classifier's logits with the rules written as ``detach`` calls."""
    from cases.mamba_ssm import _mamba2, _norm

    hidden = _stem(model.stem, signals)
    residual = torch.zeros_like(hidden)
    for block in model.blocks:
        residual = hidden + residual
        hidden = _mamba2(block.mixer, _norm(residual, block.norm, rules.norm), rules)
    final = _norm(hidden + residual, model.norm, rules.norm)
    pooled = final.sum(1) / final.shape[1]
    x = _dense(pooled, model.head[0])
    phi = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    return _dense(x * (phi.detach() if rules.activation else phi), model.head[2])


ADAPTER = "mamba-ssm"

CASE = (
    ArchitectureCase(
        name="mamba_ssm_user",
        adapter=ADAPTER,
        configs=tuple(CONFIGS),
        build=build,
        inputs=inputs,
        reference=reference,
        own_output=lambda model, signals: reference(model, signals, MambaRules.gradient_x_input()),
        layer="head.0",
        num_layers=lambda model: len(model.blocks),
        rule_kinds=("norm", "silu", "ssm", "gate", "activation"),
        isolated=True,
    )
    if IN_SUBPROCESS
    else None
)

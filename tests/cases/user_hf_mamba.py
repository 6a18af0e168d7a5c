"""Conformance case and independent float64 reference: a user's own signal classifier,
``Linear`` stem over the channels -> transformers ``MambaModel`` (``inputs_embeds``) ->
average over time -> MLP head (``Linear``, ``GELU``, ``Dropout``, ``Linear``).

The class is declared once with ``register_container`` (its forward only routes tensors
between its children). Inputs are ``(batch, time, channels)`` float signals; the
explained output is a class logit. The reference reuses the Mamba-1 block reference of
:mod:`cases.hf_mamba` and writes the stem, the average and the head out by hand, GELU's
identity rule as a detached ``Phi``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from transformers import MambaModel

from captum_mamba import MambaRules
from captum_mamba.adapters import register_container
from cases import ArchitectureCase
from cases.hf_mamba import ReferenceRules, _mixer, _rms, build_lm

CHANNELS, CLASSES = 3, 3


@register_container
class SignalClassifier(nn.Module):
    """``(batch, time, channels)`` signals -> class logits, through a Mamba backbone."""

    def __init__(self, backbone: MambaModel, channels: int, classes: int, bias: bool) -> None:
        super().__init__()
        width = backbone.config.hidden_size
        self.stem = nn.Linear(channels, width, bias=bias)
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Sequential(
            nn.Linear(width, 6, bias=bias), nn.GELU(), nn.Dropout(0.1), nn.Linear(6, classes)
        )
        if not bias:
            self.head[3].bias = None

    def forward(self, signals: Tensor, mask: Tensor | None = None) -> Tensor:
        hidden = self.backbone(
            inputs_embeds=self.stem(signals), attention_mask=mask, use_cache=False
        ).last_hidden_state
        return self.head(self.pool(hidden.transpose(1, 2))[..., 0])


CONFIGS = {
    "h8-l1-s9": dict(hidden_size=8, num_hidden_layers=1, state_size=4, seq=9, batch=2),
    "h16-l2-s17": dict(hidden_size=16, num_hidden_layers=2, state_size=8, seq=17, batch=3),
}


def build(config: str, seed: int, zero_biases: bool) -> SignalClassifier:
    settings = {k: v for k, v in CONFIGS[config].items() if k not in ("seq", "batch")}
    backbone = build_lm(seed=seed, zero_biases=zero_biases, **settings).backbone
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SignalClassifier(backbone, CHANNELS, CLASSES, not zero_biases).double().eval()
    return model


def inputs(model: nn.Module, config: str, seed: int) -> tuple[Tensor, list[int]]:
    length, batch = CONFIGS[config]["seq"], CONFIGS[config]["batch"]
    generator = torch.Generator().manual_seed(1000 + seed)
    signals = torch.randn(batch, length, CHANNELS, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, CLASSES, (batch,), generator=generator).tolist()
    return signals, targets


def _dense(x: Tensor, layer: nn.Linear) -> Tensor:
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def _gelu(x: Tensor, rule: bool) -> Tensor:
    phi = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    return x * (phi.detach() if rule else phi)


def reference(model: SignalClassifier, signals: Tensor, rules: MambaRules) -> Tensor:
    """The classifier's logits with the rules written as ``detach`` calls."""
    block_rules = ReferenceRules(rules.norm, rules.silu, rules.ssm, rules.gate)
    h = _dense(signals, model.stem)
    for block in model.backbone.layers:
        h = h + _mixer(_rms(h, block.norm, rules.norm), block.mixer, block_rules, None)
    h = _rms(h, model.backbone.norm_f, rules.norm)
    pooled = h.sum(1) / h.shape[1]
    hidden = _gelu(_dense(pooled, model.head[0]), rules.activation)
    return _dense(hidden, model.head[3])


ADAPTER = "transformers Mamba"

CASE = ArchitectureCase(
    name="user_hf_mamba",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build,
    inputs=inputs,
    reference=reference,
    own_output=lambda model, signals: model(signals),
    layer="head.0",
    num_layers=lambda model: len(model.backbone.layers),
    rule_kinds=("norm", "silu", "ssm", "gate", "activation"),
)

"""Conformance case and independent float64 reference: a home-made hybrid on
``(batch, time, channels)`` signals, ``Linear`` stem -> transformers ``MambaBlock`` ->
``nn.TransformerEncoderLayer`` (post-norm or pre-norm, GELU) -> ``MambaBlock`` ->
RMSNorm -> average over time -> ``Linear`` head, declared with ``register_container``.

The reference reuses the Mamba-1 block reference of :mod:`cases.hf_mamba` and writes
the encoder layer out: the projections of ``nn.MultiheadAttention`` as matrix products,
softmax attention one query and head at a time with AttnLRP's uniform rule on both
products or CP-LRP's constant weights, LayerNorm with the LN-rule, the activation with
the identity rule.
"""

from __future__ import annotations

import math

import torch
from helpers import half_product
from torch import Tensor, nn

from captum_mamba import MambaRules
from captum_mamba.adapters import register_container
from cases import ArchitectureCase
from cases.hf_mamba import ReferenceRules, _mixer, _rms, build_lm

CHANNELS, CLASSES, WIDTH, HEADS = 3, 3, 8, 2


@register_container
class HybridNet(nn.Module):
    """Mamba blocks around a transformer encoder layer, on signals."""

    def __init__(self, mamba: nn.Module, encoder: nn.TransformerEncoderLayer, bias: bool):
        super().__init__()
        self.stem = nn.Linear(CHANNELS, WIDTH, bias=bias)
        self.blocks = nn.ModuleList([mamba.layers[0], encoder, mamba.layers[1]])
        self.norm = mamba.norm_f
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(WIDTH, CLASSES, bias=bias)

    def forward(self, signals: Tensor) -> Tensor:
        hidden = self.stem(signals)
        for block in self.blocks:
            hidden = block(hidden)
        return self.head(self.pool(self.norm(hidden).transpose(1, 2))[..., 0])


CONFIGS = {
    # GELU in both: with ReLU (homogeneous) the identity rule equals the gradient, so
    # switching it off could not break conservation (ReLU: tests/test_torch_nn_layers.py)
    "post-norm-gelu": dict(norm_first=False, activation="gelu", seq=7, batch=2),
    "pre-norm-gelu": dict(norm_first=True, activation="gelu", seq=9, batch=3),
}


def build(config: str, seed: int, zero_biases: bool) -> HybridNet:
    settings = CONFIGS[config]
    mamba = build_lm(seed=seed, zero_biases=zero_biases, hidden_size=WIDTH,
                     num_hidden_layers=2, state_size=4).backbone  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = nn.TransformerEncoderLayer(
            WIDTH, HEADS, 16, dropout=0.0, activation=settings["activation"],
            batch_first=True, norm_first=settings["norm_first"], bias=not zero_biases,
        )  # fmt: skip
        model = HybridNet(mamba, encoder, not zero_biases).double().eval()
        with torch.no_grad():
            for name, parameter in encoder.named_parameters():
                if "norm" in name and name.endswith("weight"):
                    parameter.add_(0.3 * torch.randn_like(parameter))
                elif name.endswith("bias"):
                    parameter.copy_(0.1 * torch.randn_like(parameter))
                else:
                    parameter.mul_(2.0)
    return model


def inputs(model: nn.Module, config: str, seed: int) -> tuple[Tensor, list[int]]:
    length, batch = CONFIGS[config]["seq"], CONFIGS[config]["batch"]
    generator = torch.Generator().manual_seed(1000 + seed)
    signals = torch.randn(batch, length, CHANNELS, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, CLASSES, (batch,), generator=generator).tolist()
    return signals, targets


def _dense(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    out = x @ weight.T
    return out if bias is None else out + bias


def _layer_norm(x: Tensor, norm: nn.LayerNorm, rule: bool) -> Tensor:
    centred = x - x.mean(-1, keepdim=True)
    factor = 1.0 / torch.sqrt((centred * centred).mean(-1, keepdim=True) + norm.eps)
    out = centred * (factor.detach() if rule else factor) * norm.weight
    return out if norm.bias is None else out + norm.bias


def _self_attention(x: Tensor, attention: nn.MultiheadAttention, rule: bool | str) -> Tensor:
    """Softmax attention over all positions, one query and head at a time."""
    weights = attention.in_proj_weight.chunk(3)
    biases = [None] * 3 if attention.in_proj_bias is None else attention.in_proj_bias.chunk(3)
    q, k, v = (_dense(x, w, b) for w, b in zip(weights, biases, strict=True))
    dim = WIDTH // HEADS
    uniform = rule is True
    rows = []
    for i in range(x.shape[1]):
        heads = []
        for h in range(HEADS):
            part = slice(h * dim, (h + 1) * dim)
            scores = half_product(k[:, :, part], q[:, i, None, part], uniform).sum(-1)
            scores = scores / math.sqrt(dim)
            p = torch.exp(scores - scores.max(-1, keepdim=True).values.detach())
            p = p / p.sum(-1, keepdim=True)
            if rule == "cp_lrp":
                p = p.detach()
            heads.append(half_product(p[..., None], v[:, :, part], uniform).sum(1))
        rows.append(torch.cat(heads, -1))
    out = torch.stack(rows, 1)
    return _dense(out, attention.out_proj.weight, attention.out_proj.bias)


def _gelu(x: Tensor, rule: bool) -> Tensor:
    phi = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
    return x * (phi.detach() if rule else phi)


def _encoder(x: Tensor, layer: nn.TransformerEncoderLayer, rules: MambaRules) -> Tensor:
    def attend(h: Tensor) -> Tensor:
        return _self_attention(h, layer.self_attn, rules.attention)

    def feed_forward(h: Tensor) -> Tensor:
        hidden = _gelu(_dense(h, layer.linear1.weight, layer.linear1.bias), rules.activation)
        return _dense(hidden, layer.linear2.weight, layer.linear2.bias)

    if layer.norm_first:
        x = x + attend(_layer_norm(x, layer.norm1, rules.norm))
        return x + feed_forward(_layer_norm(x, layer.norm2, rules.norm))
    x = _layer_norm(x + attend(x), layer.norm1, rules.norm)
    return _layer_norm(x + feed_forward(x), layer.norm2, rules.norm)


def reference(model: HybridNet, signals: Tensor, rules: MambaRules) -> Tensor:
    """The hybrid's logits with the rules written as ``detach`` calls."""
    block_rules = ReferenceRules(rules.norm, rules.silu, rules.ssm, rules.gate)
    h = _dense(signals, model.stem.weight, model.stem.bias)
    for block in model.blocks:
        if isinstance(block, nn.TransformerEncoderLayer):
            h = _encoder(h, block, rules)
        else:
            h = h + _mixer(_rms(h, block.norm, rules.norm), block.mixer, block_rules, None)
    pooled = _rms(h, model.norm, rules.norm).sum(1) / h.shape[1]
    return _dense(pooled, model.head.weight, model.head.bias)


ADAPTER = "torch.nn"

CASE = ArchitectureCase(
    name="user_hybrid",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build,
    inputs=inputs,
    reference=reference,
    own_output=lambda model, signals: model(signals),
    layer="blocks.1.linear2",
    num_layers=lambda model: len(model.blocks),
    rule_kinds=("norm", "silu", "ssm", "gate", "activation", "attention"),
    conserving="cp_lrp",
)

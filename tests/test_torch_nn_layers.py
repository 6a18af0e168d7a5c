"""One conformance case per ordinary ``torch.nn`` layer on the relevance path of a user's
network: ``Linear`` stem -> transformers ``MambaModel`` -> the layer -> average over time
-> ``Linear`` head, on ``(batch, time, channels)`` signals.

For each layer, in float64 and on several seeds:

- MambaLRP equals Gradient x Input of an independent reference forward written here,
  the rule written as ``detach`` (LN-rule: ``1 / std``; identity rule: ``f(x) / x``;
  max pooling: the winner's one-hot), with every rule on and with every rule off;
- with bias-free layers (and zero running means) relevance is conserved to 1e-10;
- Captum's ``LRP`` on the prepared copy equals MambaLRP, also with Captum's own
  ``EpsilonRule``/``GammaRule`` (an independent implementation) where the layer takes
  the linear rule;
- the forward under the rules equals the layer's own forward.

Embeddings (where relevance stops at token ids) are covered by the conformance suite's
token-id tests; ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` by the
case ``tests/cases/user_hybrid.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from captum.attr import LRP
from cases.hf_mamba import ReferenceRules, _mixer, _rms, build_lm
from helpers import relative_error
from torch import Tensor, nn

from captum_mamba import MambaLRP, MambaRules, rules_applied
from captum_mamba.adapters import register_container
from captum_mamba.lrp import prepare_captum_lrp
from captum_mamba.rules import Epsilon, Gamma

WIDTH, CHANNELS, LENGTH = 8, 3, 7


@register_container
class LayerNet(nn.Module):
    """Stem, Mamba backbone, the layer under test (fed ``(batch, time, width)``, or
    ``(batch, width, time)`` for the layers over time), average over time, head."""

    def __init__(self, backbone: nn.Module, layer: nn.Module, over_time: bool, out: int):
        super().__init__()
        self.stem = nn.Linear(CHANNELS, WIDTH)
        self.backbone = backbone
        self.layer = nn.Sequential(layer)
        self.over_time = over_time
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(out, 2)

    def forward(self, signals: Tensor) -> Tensor:
        hidden = self.backbone(inputs_embeds=self.stem(signals)).last_hidden_state
        if self.over_time:  # (batch, width, time) in and out
            features = self.layer(hidden.transpose(1, 2))
        else:
            features = self.layer(hidden).transpose(1, 2)
        return self.head(self.pool(features)[..., 0])


def _ratio_rule(f: Callable[[Tensor], Tensor], x: Tensor, rule: bool) -> Tensor:
    """``x * [f(x) / x]`` (the identity rule) or ``f(x)``."""
    return x * (f(x) / x).detach() if rule else f(x)


def _std_rule(centred: Tensor, dims: tuple[int, ...], eps: float, rule: bool) -> Tensor:
    factor = 1.0 / torch.sqrt((centred * centred).mean(dims, keepdim=True) + eps)
    return centred * (factor.detach() if rule else factor)


def _linear(layer: nn.Linear, x: Tensor, rules: MambaRules) -> Tensor:
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def _conv1d(layer: nn.Conv1d, x: Tensor, rules: MambaRules) -> Tensor:
    kernel, pad = layer.kernel_size[0], layer.padding[0]
    padded = torch.cat([x.new_zeros(*x.shape[:2], pad), x, x.new_zeros(*x.shape[:2], pad)], -1)
    steps = padded.shape[-1] - kernel + 1
    out = torch.stack(
        [
            torch.einsum("ock,bck->bo", layer.weight, padded[..., t : t + kernel])
            for t in range(steps)
        ],
        -1,
    )
    return out if layer.bias is None else out + layer.bias[:, None]


def _conv2d(layer: nn.Conv2d, x: Tensor, rules: MambaRules) -> Tensor:
    # (batch, 1, time, width) images, kernel (2, 3) without padding
    kt, kw = layer.kernel_size
    rows = []
    for t in range(x.shape[2] - kt + 1):
        cols = []
        for w in range(x.shape[3] - kw + 1):
            patch = x[:, :, t : t + kt, w : w + kw]
            cols.append(torch.einsum("ocij,bcij->bo", layer.weight, patch))
        rows.append(torch.stack(cols, -1))
    out = torch.stack(rows, -2)
    return out if layer.bias is None else out + layer.bias[:, None, None]


def _batch_norm(layer: nn.Module, x: Tensor, rules: MambaRules) -> Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
    return (x - layer.running_mean.view(shape)) * scale.view(shape) + layer.bias.view(shape)


def _layer_norm(layer: nn.LayerNorm, x: Tensor, rules: MambaRules) -> Tensor:
    out = _std_rule(x - x.mean(-1, keepdim=True), (-1,), layer.eps, rules.norm)
    return out * layer.weight + layer.bias


def _rms_norm(layer: nn.RMSNorm, x: Tensor, rules: MambaRules) -> Tensor:
    return _std_rule(x, (-1,), layer.eps, rules.norm) * layer.weight


def _group_norm(layer: nn.GroupNorm, x: Tensor, rules: MambaRules) -> Tensor:
    groups = x.reshape(x.shape[0], layer.num_groups, -1, x.shape[-1])  # (b, g, c/g, t)
    centred = groups - groups.mean((2, 3), keepdim=True)
    out = _std_rule(centred, (2, 3), layer.eps, rules.norm).reshape(x.shape)
    return out * layer.weight[:, None] + layer.bias[:, None]


def _activation(f: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    return lambda layer, x, rules: _ratio_rule(f, x, rules.activation)


def _gelu(x: Tensor) -> Tensor:
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _average_pool(layer: nn.Module, x: Tensor, rules: MambaRules) -> Tensor:
    return x.mean(-1, keepdim=True)


def _max_pool(layer: nn.MaxPool1d, x: Tensor, rules: MambaRules) -> Tensor:
    """Windows of 2 with stride 2; the winner's value, its one-hot as a constant."""
    windows = x[..., : x.shape[-1] // 2 * 2].unflatten(-1, (-1, 2))  # (b, c, t/2, 2)
    winner = nn.functional.one_hot(windows.argmax(-1), 2).to(x.dtype)
    return (windows * winner).sum(-1)


@dataclass(frozen=True)
class LayerCase:
    """A layer, how it is fed (``over_time``: ``(batch, width, time)``), its output width
    and its reference ``reference(layer, x, rules)``; ``linear_rule``: it takes the
    linear rule (epsilon, gamma)."""

    make: Callable[[], nn.Module]
    reference: Callable[..., Tensor]
    over_time: bool = False
    out: int = WIDTH
    linear_rule: bool = False


def _image(layer: nn.Module) -> nn.Module:
    """``layer`` on ``(batch, 1, time, width)`` images, back to ``(batch, time, width')``."""
    return nn.Sequential(nn.Unflatten(1, (1, -1)), layer, nn.Flatten(1, 2))


LAYERS: dict[str, LayerCase] = {
    "Linear": LayerCase(lambda: nn.Linear(WIDTH, 5), _linear, out=5, linear_rule=True),
    "Conv1d": LayerCase(
        lambda: nn.Conv1d(WIDTH, 4, 3, padding=1), _conv1d, over_time=True, out=4, linear_rule=True
    ),
    "Conv2d": LayerCase(
        lambda: _image(nn.Conv2d(1, 2, (2, 3))),
        lambda layer, x, rules: _conv2d(layer[1], x[:, None], rules).flatten(1, 2),
        over_time=True,
        out=14,
        linear_rule=True,
    ),
    "BatchNorm2d": LayerCase(
        lambda: nn.Sequential(nn.Unflatten(-1, (-1, 1)), nn.BatchNorm2d(WIDTH), nn.Flatten(-2)),
        lambda layer, x, rules: _batch_norm(layer[1], x[..., None], rules)[..., 0],
        over_time=True,
        linear_rule=True,
    ),
    "Dropout": LayerCase(lambda: nn.Dropout(0.3), lambda layer, x, rules: x),
    "Identity": LayerCase(nn.Identity, lambda layer, x, rules: x),
    "Flatten": LayerCase(
        lambda: nn.Sequential(nn.Unflatten(-1, (2, 4)), nn.Flatten(-2)), lambda layer, x, rules: x
    ),
    "GELU": LayerCase(nn.GELU, _activation(_gelu)),
    "ReLU": LayerCase(nn.ReLU, _activation(lambda x: torch.where(x > 0, x, 0.0))),
    "LeakyReLU": LayerCase(
        lambda: nn.LeakyReLU(0.2), _activation(lambda x: torch.where(x > 0, x, 0.2 * x))
    ),
    "SiLU": LayerCase(nn.SiLU, _activation(lambda x: x / (1.0 + torch.exp(-x)))),
    "Tanh": LayerCase(
        nn.Tanh, _activation(lambda x: (torch.exp(2 * x) - 1) / (torch.exp(2 * x) + 1))
    ),
    "Sigmoid": LayerCase(nn.Sigmoid, _activation(lambda x: 1.0 / (1.0 + torch.exp(-x)))),
    "LayerNorm": LayerCase(lambda: nn.LayerNorm(WIDTH), _layer_norm),
    "RMSNorm": LayerCase(lambda: nn.RMSNorm(WIDTH, eps=1e-5), _rms_norm),
    "GroupNorm": LayerCase(lambda: nn.GroupNorm(2, WIDTH), _group_norm, over_time=True),
    "AdaptiveAvgPool1d": LayerCase(lambda: nn.AdaptiveAvgPool1d(1), _average_pool, over_time=True),
    "MaxPool1d": LayerCase(lambda: nn.MaxPool1d(2), _max_pool, over_time=True),
}
#: the SiLU's identity rule is governed by the setting ``silu``
SETTING = {"SiLU": "silu"}


def build(name: str, seed: int, zero_biases: bool) -> LayerNet:
    case = LAYERS[name]
    backbone = build_lm(seed=seed, zero_biases=zero_biases, hidden_size=WIDTH,
                        num_hidden_layers=1, state_size=4).backbone  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LayerNet(backbone, case.make(), case.over_time, case.out).double().eval()
        model.case = name
        with torch.no_grad():
            for module in model.layer.modules():
                for name_, tensor in (*module.named_parameters(recurse=False),
                                      *module.named_buffers(recurse=False)):  # fmt: skip
                    if name_ == "running_var":
                        tensor.copy_(0.5 + torch.rand_like(tensor))
                    elif name_ in ("running_mean", "bias"):
                        tensor.copy_(0 if zero_biases else 0.3 * torch.randn_like(tensor))
                    elif tensor.is_floating_point():
                        tensor.add_(0.3 * torch.randn_like(tensor))
            if zero_biases:
                for linear in (model.stem, model.head):
                    linear.bias.zero_()
    return model


def reference(model: LayerNet, signals: Tensor, rules: MambaRules) -> Tensor:
    """The network's output with the rules written as ``detach`` calls."""
    block_rules = ReferenceRules(rules.norm, rules.silu, rules.ssm, rules.gate)
    name = model.case
    h = signals @ model.stem.weight.T + model.stem.bias
    for block in model.backbone.layers:
        h = h + _mixer(_rms(h, block.norm, rules.norm), block.mixer, block_rules, None)
    h = _rms(h, model.backbone.norm_f, rules.norm)
    layer_rules = rules
    if name in SETTING:
        layer_rules = MambaRules(activation=getattr(rules, SETTING[name]))
    if model.over_time:
        features = LAYERS[name].reference(model.layer[0], h.transpose(1, 2), layer_rules)
    else:
        features = LAYERS[name].reference(model.layer[0], h, layer_rules).transpose(1, 2)
    pooled = features.mean(-1)
    return pooled @ model.head.weight.T + model.head.bias


def _inputs(seed: int) -> tuple[Tensor, list[int]]:
    generator = torch.Generator().manual_seed(100 + seed)
    signals = torch.randn(2, LENGTH, CHANNELS, generator=generator, dtype=torch.float64)
    return signals, [0, 1]


def _reference_relevance(model: LayerNet, signals: Tensor, targets: list[int], rules):
    leaf = signals.clone().requires_grad_()
    out = reference(model, leaf, rules)
    explained = out[torch.arange(len(targets)), targets]
    (grad,) = torch.autograd.grad(explained.sum(), leaf)
    return leaf.detach() * grad, explained.detach()


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_reference_and_conserves(name: str, seed: int) -> None:
    model = build(name, seed, False)
    signals, targets = _inputs(seed)
    for rules in (MambaRules(), MambaRules.gradient_x_input()):
        relevance = MambaLRP(model, rules=rules).attribute(signals, target=targets)
        expected, _ = _reference_relevance(model, signals, targets, rules)
        assert relative_error(relevance, expected) <= 1e-10
        with torch.no_grad(), rules_applied(model, rules):
            ruled = model(signals)
        with torch.no_grad():
            plain = reference(model, signals, MambaRules.gradient_x_input())
            own = model(signals)
        assert relative_error(ruled, plain) <= 1e-12
        assert relative_error(ruled, own) <= 1e-6  # transformers computes parts in float32
    bias_free = build(name, seed, True)
    relevance, delta = MambaLRP(bias_free).attribute(
        signals, target=targets, return_convergence_delta=True
    )
    _, explained = _reference_relevance(bias_free, signals, targets, MambaRules())
    scale = relevance.abs().flatten(1).sum(1)
    assert ((relevance.flatten(1).sum(1) - explained).abs() / scale).max() <= 1e-10
    assert (delta.abs() / scale).max() <= 1e-10


@pytest.mark.parametrize("name", list(LAYERS))
def test_captum_lrp_equals_mamba_lrp(name: str) -> None:
    model = build(name, 2, False)
    signals, targets = _inputs(2)
    linear_rules = [Epsilon(1e-3), Gamma(0.25)] if LAYERS[name].linear_rule else []
    for rules in [MambaRules()] + [MambaRules().override("layer", linear=r) for r in linear_rules]:
        expected = MambaLRP(model, rules=rules).attribute(signals, target=targets)
        actual = LRP(prepare_captum_lrp(model, rules)).attribute(signals, target=targets)
        assert relative_error(actual, expected) <= 1e-10, rules


MASKS = {
    "none": lambda length: {},
    "causal-bool": lambda length: {
        "attn_mask": torch.ones(length, length, dtype=torch.bool).triu(1)
    },
    "float": lambda length: {
        "attn_mask": torch.randn(length, length, dtype=torch.float64).clamp(max=0)
    },
    "padding": lambda length: {
        "key_padding_mask": torch.tensor([[False] * length, [False] * (length - 2) + [True] * 2])
    },
}


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", list(MASKS))
def test_multihead_attention_computes_its_own_forward(mask: str, batch_first: bool) -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(WIDTH, 2, batch_first=batch_first, bias=False)
    attention = attention.double().eval()
    x, memory = torch.randn(2, 5, WIDTH, dtype=torch.float64), torch.randn(2, 5, WIDTH).double()
    if not batch_first:
        x, memory = x.transpose(0, 1), memory.transpose(0, 1)
    kwargs = MASKS[mask](5)
    own, own_weights = attention(x, memory, memory, **kwargs)
    for rules in (MambaRules(), MambaRules.cp_lrp(), MambaRules.gradient_x_input()):
        with rules_applied(attention, rules):
            out, weights = attention(x, memory, memory, **kwargs)
        assert relative_error(out, own) <= 1e-12
        assert relative_error(weights, own_weights) <= 1e-12
    # CP-LRP: the weights are constants, relevance reaches the values only, conserved
    leaves = x.clone().requires_grad_(), memory.clone().requires_grad_()
    with rules_applied(attention, MambaRules.cp_lrp()):
        out = attention(leaves[0], leaves[1], leaves[1], need_weights=False, **kwargs)[0]
    grads = torch.autograd.grad(out.sum(), leaves, allow_unused=True)
    assert grads[0] is None  # the queries get no relevance
    relevance = (leaves[1] * grads[1]).sum()
    assert abs(float(relevance - out.sum())) <= 1e-10 * float(out.abs().sum())

"""Shared test helpers: relative errors, Gradient x Input of reference forwards, the
primitives of the independent references, and snapshots of everything an attribution
could leave behind on a model."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as torch_module

from captum_mamba._captum import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``max |actual - expected| / max |expected|``."""
    actual, expected = actual.detach(), expected.detach()
    return float((actual - expected).abs().max() / expected.abs().max())


def select(output: Tensor, targets: Sequence[Any]) -> Tensor:
    """``output[i, *target_i]`` for every example ``i`` (an int or a tuple of indices)."""
    rows = [output[(i, *(t if isinstance(t, tuple) else (t,)))] for i, t in enumerate(targets)]
    return torch.stack(rows)


def gradient_x_input(
    forward: Callable[[Tensor], Tensor], inputs: Tensor, targets: Sequence[Any]
) -> tuple[Tensor, Tensor]:
    """Gradient x Input of ``forward`` (a reference with the rules written as ``detach``
    calls) for the selected outputs.

    Returns:
        ``(relevance, explained)``: relevance with the shape of ``inputs`` and the
        ``(batch,)`` explained outputs.
    """
    leaf = inputs.detach().clone().requires_grad_()
    explained = select(forward(leaf), targets)
    (grad,) = torch.autograd.grad(explained.sum(), leaf)
    return leaf.detach() * grad, explained.detach()


# --- primitives of the independent references (the rules as ``detach`` calls) ---------


def linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """``x W^T + b``."""
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def rms(x: Tensor, weight: Tensor | None, eps: float, rule: bool) -> Tensor:
    """RMSNorm; the LN-rule detaches ``1 / rms``."""
    scale = 1.0 / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    out = x * (scale.detach() if rule else scale)
    return out if weight is None else out * weight


def silu(x: Tensor, rule: bool) -> Tensor:
    """SiLU; the identity rule detaches the sigmoid."""
    sigmoid = 1.0 / (1.0 + torch.exp(-x))
    return x * (sigmoid.detach() if rule else sigmoid)


def gate(a: Tensor, b: Tensor, rule: bool) -> Tensor:
    """``a * b``; the half rule gives each factor half of the relevance."""
    if rule:
        return 0.5 * (a * b.detach() + a.detach() * b)
    return a * b


def causal_conv(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """Depthwise causal conv over time, tap by tap: ``x`` is ``(batch, length, channels)``."""
    kernel = conv.weight.shape[-1]
    out = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for k in range(kernel):
            source = t - (kernel - 1) + k
            if source >= 0:
                out[:, t] = out[:, t] + conv.weight[:, 0, k] * x[:, source]
    return out if conv.bias is None else out + conv.bias


# --- snapshots ------------------------------------------------------------------------


def _tensor_state(t: Tensor | None) -> Any:
    if t is None:
        return None
    return (id(t), t.dtype, t.device, t.requires_grad, t.detach().clone(), _tensor_state(t.grad))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return isinstance(a, Tensor) and isinstance(b, Tensor) and torch.equal(a, b)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything an attribution could leave behind: per module its class, attributes (by
    identity; an instance ``forward`` would show here), hook tables, training flag,
    parameters and buffers (identity, dtype, device, requires_grad, values, grad);
    torch's global module hooks and grad modes; Captum's global LRP rule tables."""
    modules = {}
    for name, module in model.named_modules():
        modules[name] = {
            "type": type(module),
            "training": module.training,
            "attributes": {k: id(v) for k, v in vars(module).items()},
            "hooks": {
                k: list(v.items())
                for k, v in vars(module).items()
                if "hook" in k and isinstance(v, dict)
            },
            "parameters": {k: _tensor_state(p) for k, p in module._parameters.items()},
            "buffers": {k: _tensor_state(b) for k, b in module._buffers.items()},
        }
    global_hooks = {
        k: list(v.items())
        for k, v in vars(torch_module).items()
        if k.startswith("_global") and isinstance(v, dict)
    }
    captum_tables = {
        "layers": copy.copy(SUPPORTED_LAYERS_WITH_RULES),
        "non_linear": list(SUPPORTED_NON_LINEAR_LAYERS),
    }
    modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
    return {"modules": modules, "global": global_hooks, "captum": captum_tables, "modes": modes}


def assert_unchanged(before: dict[str, Any], model: nn.Module) -> None:
    """Assert that ``model`` (and the global state) matches the snapshot ``before``."""
    after = snapshot(model)
    for key in ("global", "captum", "modes"):
        assert _same(before[key], after[key]), key
    assert before["modules"].keys() == after["modules"].keys()
    for name, state in before["modules"].items():
        for field, value in state.items():
            assert _same(value, after["modules"][name][field]), f"{name or '<model>'}.{field}"


def half_product(a: Tensor, b: Tensor, uniform_rule: bool, product=torch.mul) -> Tensor:
    """``product(a, b)``; the uniform rule gives each factor half of the relevance
    (``0.5 (a [b] + [a] b)``, brackets constant)."""
    if uniform_rule:
        return 0.5 * (product(a, b.detach()) + product(a.detach(), b))
    return product(a, b)


def rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of ``(batch, heads, length, dim)``, pair by pair: channels ``m`` and
    ``m + r / 2`` (``r = 2 * half``, ``cos``/``sin`` ``(length, half)`` give each pair's
    angle) rotate; channels from ``r`` on pass unchanged."""
    half = cos.shape[-1]
    out = x.clone()
    for position in range(x.shape[2]):
        for m in range(half):
            c, s = cos[position, m], sin[position, m]
            first, second = x[:, :, position, m], x[:, :, position, m + half]
            out[:, :, position, m] = first * c - second * s
            out[:, :, position, m + half] = second * c + first * s
    return out


def rope_table(rotary: nn.Module, length: int) -> tuple[Tensor, Tensor]:
    """``cos`` and ``sin`` ``(length, half)`` of a transformers rotary embedding module at
    positions ``0..length-1`` (its own table: transformers computes it in float32), one
    angle per channel pair."""
    positions = torch.arange(length)[None]
    cos, sin = rotary(torch.zeros(1, length, 1, dtype=torch.float64), positions)
    half = cos.shape[-1] // 2
    return cos[0, :, :half].double(), sin[0, :, :half].double()


def softmax_attention(
    q: Tensor, k: Tensor, v: Tensor, scaling: float, window: int | None, rule: Any
) -> Tensor:
    """Causal softmax attention, one query position at a time: query ``i`` attends to the
    keys ``j <= i`` (and ``j > i - window``); key/value head ``h // (heads / kv_heads)``
    serves query head ``h``. ``rule``: True (AttnLRP: uniform rule on ``q k`` and
    ``weights v``), ``"cp_lrp"`` (constant weights) or False.

    Returns:
        ``(batch, length, heads * dim)``.
    """
    heads, length = q.shape[1], q.shape[2]
    group = heads // k.shape[1]
    uniform = rule is True
    rows = []
    for i in range(length):
        start = 0 if window is None else max(0, i - window + 1)
        outputs = []
        for h in range(heads):
            keys, values = k[:, h // group, start : i + 1], v[:, h // group, start : i + 1]
            scores = half_product(keys, q[:, h, i, None, :], uniform).sum(-1) * scaling
            weights = torch.exp(scores - scores.max(-1, keepdim=True).values.detach())
            weights = weights / weights.sum(-1, keepdim=True)
            if rule == "cp_lrp":
                weights = weights.detach()
            outputs.append(half_product(weights[..., None], values, uniform).sum(1))
        rows.append(torch.cat(outputs, -1))
    return torch.stack(rows, 1)


def activation(x: Tensor, function: str, rule: bool) -> Tensor:
    """SiLU, GELU (erf) or squared ReLU with the identity rule written per function: the
    SiLU's sigmoid and GELU's ``Phi`` constant, the squared ReLU as ``relu * relu`` with
    the uniform rule."""
    if function == "silu":
        return silu(x, rule)
    if function == "gelu":
        phi = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
        return x * (phi.detach() if rule else phi)
    if function == "relu2":
        positive = torch.where(x > 0, x, torch.zeros_like(x))
        return half_product(positive, positive, rule)
    raise ValueError(function)


def gated_mlp(x: Tensor, gate_w: Tensor, up_w: Tensor, down_w: Tensor, function: str, rules):
    """``down(act(gate x) * up x)`` with the identity and half rules (weights as matrices)."""
    activated = activation(x @ gate_w.T, function, rules.activation)
    return half_product(activated, x @ up_w.T, rules.gate) @ down_w.T


def sigmoid(x: Tensor, rule: bool) -> Tensor:
    """``sigmoid(x)``; the identity rule keeps ``sigmoid(x) / x`` constant."""
    value = 1.0 / (1.0 + torch.exp(-x))
    return x * (value / x).detach() if rule else value


def l2_normalised(x: Tensor, rule: bool) -> Tensor:
    """``x / sqrt(sum x^2 + 1e-6)``; the LN-rule keeps the normaliser constant."""
    scale = 1.0 / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)
    return x * (scale.detach() if rule else scale)


def delta_loop(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, decay: Tensor, rule) -> Tensor:
    """The gated delta rule step by step on the state ``S`` (``dk x dv`` per head):
    ``S = decay S; S = S - beta k (k^T S); S = S + k (beta v)^T; o = S^T q``.
    ``q``, ``k``: ``(batch, heads, length, dk)``; ``v``: ``(..., dv)``; ``beta``:
    ``(batch, heads, length)``; ``decay``: ``(batch, heads, length)`` or
    ``(..., dk)`` (per key channel). ``rule``: True (uniform rule on writes and reads),
    ``"cp_lrp"`` (constant queries and keys) or False."""
    if rule:
        beta, decay = beta.detach(), decay.detach()
    if decay.dim() == 3:
        decay = decay[..., None].expand(*k.shape)
    batch, heads, length, dk = k.shape
    state = torch.zeros(batch, heads, dk, v.shape[-1], dtype=v.dtype)
    outputs = []
    for t in range(length):
        kt, qt = k[:, :, t], q[:, :, t]
        state = decay[:, :, t, :, None] * state
        erase_key = kt.detach() if rule else kt
        erased = torch.einsum("bhk,bhkv->bhv", erase_key, state)
        state = state - beta[:, :, t, None, None] * erase_key[..., None] * erased[:, :, None]
        written = beta[:, :, t, None] * v[:, :, t]
        if rule == "cp_lrp":
            state = state + kt.detach()[..., None] * written[:, :, None]
            outputs.append(torch.einsum("bhk,bhkv->bhv", qt.detach(), state))
            continue
        outer = lambda a, b: a[..., None] * b[:, :, None]  # noqa: E731
        state = state + half_product(kt, written, rule is True, outer)
        read = lambda s, u: torch.einsum("bhkv,bhk->bhv", s, u)  # noqa: E731
        outputs.append(half_product(state, qt, rule is True, read))
    return torch.stack(outputs, 2)


def rms_norm_float64(norm: nn.Module, h: Tensor) -> Tensor:
    """transformers' MambaRMSNorm in float64 (transformers rounds it through float32)."""
    return norm.weight * h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)


def mamba2_model(seed: int, groups: int, layers: int, biases: bool) -> nn.Module:
    """A tiny float64 transformers Mamba-2 LM with random biases and norm weights."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(seed)
    config = Mamba2Config(
        hidden_size=16, num_heads=4, head_dim=8, n_groups=groups, state_size=4,
        num_hidden_layers=layers, vocab_size=32, use_bias=biases, use_conv_bias=biases,
        chunk_size=4,
    )  # fmt: skip
    model = Mamba2ForCausalLM(config).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") and "dt_bias" not in name:
                parameter.copy_(0.2 * torch.randn_like(parameter))
            elif name.endswith("norm.weight") or name.endswith(".D"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def mamba2_reference(mixer: nn.Module, a: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Loops over time for a transformers ``Mamba2Mixer`` in float64: the output,
    ``Omega``, the values and the conv-bias term, as :func:`_reference` (the gated
    RMSNorm's normaliser held at its forward value)."""
    batch, length, _ = a.shape
    heads, head_dim = mixer.num_heads, mixer.head_dim
    channels, groups, state = heads * head_dim, mixer.n_groups, mixer.ssm_state_size
    projected = mixer.in_proj(a)
    z = projected[..., :channels]
    xbc = projected[..., channels : channels + mixer.conv_dim]
    dt = F.softplus(projected[..., channels + mixer.conv_dim :] + mixer.dt_bias)
    kernel = mixer.conv1d.weight[:, 0]
    width = kernel.shape[1]
    conv = torch.zeros_like(xbc)
    for t in range(length):
        for k in range(width):
            source = t - (width - 1) + k
            if source >= 0:
                conv[:, t] = conv[:, t] + kernel[:, k] * xbc[:, source]
    conv_bias = mixer.conv1d.bias if mixer.conv1d.bias is not None else torch.zeros(conv.shape[-1])
    conv = conv + conv_bias
    s = torch.sigmoid(conv)[..., :channels]
    act = F.silu(conv)
    u = act[..., :channels]
    B = act[..., channels : channels + groups * state].unflatten(-1, (groups, state))
    C = act[..., channels + groups * state :].unflatten(-1, (groups, state))
    head = torch.arange(channels) // head_dim  # head of each channel
    group = head // (heads // groups)
    A = -torch.exp(mixer.A_log)
    # the scan, per channel: scalar decay of its head, B and C of its group
    h = torch.zeros(batch, channels, state, dtype=a.dtype)
    ys = []
    for t in range(length):
        step = dt[:, t, head]
        h = torch.exp(step * A[head])[..., None] * h + (step * u[:, t])[..., None] * B[:, t, group]
        ys.append((h * C[:, t, group]).sum(-1) + mixer.D[head] * u[:, t])
    y = torch.stack(ys, 1)
    v = y * F.silu(z)
    rms = v.unflatten(-1, (groups, -1)).pow(2).mean(-1, keepdim=True)
    inverse = (rms + mixer.norm.variance_epsilon).rsqrt().expand(-1, -1, -1, channels // groups)
    gate = mixer.norm.weight * F.silu(z) * inverse.flatten(-2)
    out = mixer.out_proj(gate * y)
    P = torch.zeros(batch, channels, length, length, dtype=a.dtype)
    for i in range(length):
        for t in range(i + 1):
            decay = torch.ones(batch, channels, dtype=a.dtype)
            for k in range(t + 1, i + 1):
                decay = decay * torch.exp(dt[:, k, head] * A[head])
            weight = (C[:, i, group] * B[:, t, group]).sum(-1) * decay * dt[:, t, head]
            P[:, :, i, t] = weight + (mixer.D[head] if t == i else 0)
    omega = torch.zeros_like(P)
    beta = torch.zeros_like(u)
    for i in range(length):
        for j in range(i + 1):
            for t in range(j, min(i, j + width - 1) + 1):
                omega[:, :, i, j] += (
                    P[:, :, i, t] * s[:, t] * kernel[:channels, width - 1 - (t - j)]
                )
            omega[:, :, i, j] *= gate[:, i]
        for t in range(i + 1):
            beta[:, i] += gate[:, i] * P[:, :, i, t] * s[:, t] * conv_bias[:channels]
    return out, omega, xbc[..., :channels], beta

"""Shared test helpers: relative errors, Gradient x Input of reference forwards, the
primitives of the independent references, and snapshots of everything an attribution
could leave behind on a model."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
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


def rms(x: Tensor, weight: Tensor | None, eps: float, ln_rule: bool) -> Tensor:
    """RMSNorm; the LN-rule detaches ``1 / rms``."""
    scale = 1.0 / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    out = x * (scale.detach() if ln_rule else scale)
    return out if weight is None else out * weight


def silu(x: Tensor, identity_rule: bool) -> Tensor:
    """SiLU; the identity rule detaches the sigmoid."""
    sigmoid = 1.0 / (1.0 + torch.exp(-x))
    return x * (sigmoid.detach() if identity_rule else sigmoid)


def gate(a: Tensor, b: Tensor, half_rule: bool) -> Tensor:
    """``a * b``; the half rule gives each factor half of the relevance."""
    if half_rule:
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

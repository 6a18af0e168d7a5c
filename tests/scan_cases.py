"""Random scan inputs and comparison helpers shared by the scan tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

#: Argument names of the selective and SSD scans.
NAMES = ("x", "dt", "A", "B", "C")


def selective_inputs(
    batch: int,
    length: int,
    channels: int,
    state: int,
    seed: int,
    dt_range: tuple[float, float] = (0.05, 1.05),
    a_range: tuple[float, float] = (0.2, 2.2),
) -> list[Tensor]:
    """Float64 ``x, dt, A, B, C`` of a Mamba-1 scan, ``dt`` and ``-A`` uniform in the ranges."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand(*shape, generator=gen, dtype=torch.float64)

    x = torch.randn(batch, length, channels, generator=gen, dtype=torch.float64)
    dt = uniform(*dt_range, batch, length, channels)
    A = -uniform(*a_range, channels, state)
    B, C = torch.randn(2, batch, length, state, generator=gen, dtype=torch.float64)
    return [x, dt, A, B, C]


def ssd_inputs(
    batch: int, length: int, heads: int, head_dim: int, groups: int, state: int, seed: int
) -> list[Tensor]:
    """Float64 ``x, dt, A, B, C`` of a Mamba-2 (SSD) scan."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, heads, head_dim, generator=gen, dtype=torch.float64)
    dt = 0.05 + torch.rand(batch, length, heads, generator=gen, dtype=torch.float64)
    A = -(0.2 + 2 * torch.rand(heads, generator=gen, dtype=torch.float64))
    B, C = torch.randn(2, batch, length, groups, state, generator=gen, dtype=torch.float64)
    return [x, dt, A, B, C]


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """Largest absolute difference over the largest magnitude of ``expected`` (finite)."""
    assert torch.isfinite(actual).all()
    scale = expected.abs().max().clamp_min(torch.finfo(expected.dtype).tiny)
    return ((actual.to(expected.dtype) - expected).abs().max() / scale).item()


def values_and_gradients(
    scan: Callable[..., Tensor], inputs: Sequence[Tensor], weight: Tensor, requires: Sequence[str]
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``scan(*inputs)`` and the gradients of ``(scan * weight).sum()`` for the inputs named
    in ``requires`` (the others are passed detached, as the SSM rule does)."""
    leaves = [
        t.detach().clone().requires_grad_(name in requires)
        for name, t in zip(NAMES, inputs, strict=True)
    ]
    y = scan(*leaves)
    wanted = [leaf for leaf in leaves if leaf.requires_grad]
    grads = torch.autograd.grad((y * weight.to(y.device, y.dtype)).sum(), wanted)
    return y.detach(), grads

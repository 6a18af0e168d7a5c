"""Tests: the chunked state-space-duality (SSD) scan of Mamba-2 against a sequential loop.

The model-level checks of the Mamba-2 adapter are in the conformance suite
(``tests/cases/hf_mamba2.py``).
"""

from __future__ import annotations

import pytest
import torch
from cases.hf_mamba2 import sequential_ssd

from captum_mamba.ops.ssd_scan import ssd_scan


@pytest.mark.parametrize("chunk", [1, 3, 4, 16])
def test_ssd_scan_matches_sequential_scan(chunk: int) -> None:
    generator = torch.Generator().manual_seed(chunk)
    batch, length, heads, head_dim, groups, state = 2, 11, 6, 3, 2, 5

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    x, grad_y = rand(batch, length, heads, head_dim), rand(batch, length, heads, head_dim)
    dt = torch.rand(batch, length, heads, generator=generator, dtype=torch.float64)
    A = -2 * torch.rand(heads, generator=generator, dtype=torch.float64)
    B, C = rand(batch, length, groups, state), rand(batch, length, groups, state)
    expected = sequential_ssd(x, dt, A, B, C)
    torch.testing.assert_close(ssd_scan(x, dt, A, B, C, chunk), expected, rtol=1e-12, atol=1e-12)

    # Only x requires a gradient: the transposed (reverse-time) scan.
    x_leaf, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(ssd_scan(x_leaf, dt, A, B, C, chunk), x_leaf, grad_y)
    (grad_ref,) = torch.autograd.grad(sequential_ssd(x_ref, dt, A, B, C), x_ref, grad_y)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)

    # Every input requires a gradient (SSM rule off).
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C)]
    grads = torch.autograd.grad(ssd_scan(*leaves, chunk), leaves, grad_y)
    ref_grads = torch.autograd.grad(sequential_ssd(*ref_leaves), ref_leaves, grad_y)
    for name, actual, wanted in zip(["x", "dt", "A", "B", "C"], grads, ref_grads, strict=True):
        torch.testing.assert_close(actual, wanted, rtol=1e-10, atol=1e-12, msg=name)


def test_ssd_scan_rejects_mismatched_groups() -> None:
    x, dt, A = torch.randn(1, 3, 4, 2), torch.rand(1, 3, 4), -torch.rand(4)
    B = torch.randn(1, 3, 3, 2)
    with pytest.raises(ValueError, match="divisible"):
        ssd_scan(x, dt, A, B, B)

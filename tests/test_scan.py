"""The chunked selective scan against a sequential loop: values and gradients."""

from __future__ import annotations

import pytest
import torch
from cases.hf_mamba import sequential_scan

from captum_mamba.ops import selective_scan

BATCH, CHANNELS, STATE = 2, 3, 2
STEP = BATCH * CHANNELS * STATE  # elements of one time step of the work buffer
NAMES = ("x", "dt", "A", "B", "C")


def scan_inputs(length: int, seed: int, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64).to(dtype)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    x = randn(BATCH, length, CHANNELS)
    dt = 0.05 + rand(BATCH, length, CHANNELS)
    A = -(0.2 + 2 * rand(CHANNELS, STATE))
    B = randn(BATCH, length, STATE)
    C = randn(BATCH, length, STATE)
    return x, dt, A, B, C


# chunk lengths 1, 3 (splits 7 and 10 unevenly), 4, whole sequence, and longer than it
CHUNK_ELEMENTS = [1, STEP, 3 * STEP, 3 * STEP + 5, 4 * STEP, 1 << 22]


@pytest.mark.parametrize("length", [1, 7, 10])
@pytest.mark.parametrize("chunk_elements", CHUNK_ELEMENTS)
def test_forward_matches_sequential_loop(length: int, chunk_elements: int) -> None:
    x, dt, A, B, C = scan_inputs(length, seed=length)
    expected = sequential_scan(x, dt, A, B, C)
    actual = selective_scan(x, dt, A, B, C, chunk_elements=chunk_elements)
    assert actual.shape == (BATCH, length, CHANNELS)
    torch.testing.assert_close(actual, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("length", [1, 7, 10])
@pytest.mark.parametrize("chunk_elements", CHUNK_ELEMENTS)
def test_gradients_match_sequential_loop(length: int, chunk_elements: int) -> None:
    inputs = [t.requires_grad_() for t in scan_inputs(length, seed=100 + length)]
    weight = torch.randn(BATCH, length, CHANNELS, dtype=torch.float64)
    expected = torch.autograd.grad((sequential_scan(*inputs) * weight).sum(), inputs)
    actual = torch.autograd.grad(
        (selective_scan(*inputs, chunk_elements=chunk_elements) * weight).sum(), inputs
    )
    for name, a, e in zip(NAMES, actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12, msg=f"gradient of {name}")


@pytest.mark.parametrize("chunk_elements", [STEP, 2 * STEP, 3 * STEP, 1 << 22])
def test_gradcheck_all_inputs(chunk_elements: int) -> None:
    inputs = tuple(t.requires_grad_() for t in scan_inputs(7, seed=7))

    def scan(*args):
        return selective_scan(*args, chunk_elements=chunk_elements)

    assert torch.autograd.gradcheck(scan, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("requires", ["x", "dt", "A", "B", "C", "x,C", "dt,A"])
@pytest.mark.parametrize("chunk_elements", [STEP, 3 * STEP])
def test_gradcheck_subsets_of_inputs(requires: str, chunk_elements: int) -> None:
    """Only the inputs that require grad get one (the SSM rule detaches dt, B, C)."""
    names = requires.split(",")
    inputs = tuple(
        t.requires_grad_(name in names)
        for name, t in zip(NAMES, scan_inputs(10, seed=3), strict=True)
    )

    def scan(*args):
        return selective_scan(*args, chunk_elements=chunk_elements)

    assert torch.autograd.gradcheck(scan, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)
    out = scan(*inputs).sum()
    grads = torch.autograd.grad(out, [t for t in inputs if t.requires_grad])
    assert len(grads) == len(names)


def test_float32_matches_float64_loop() -> None:
    x, dt, A, B, C = scan_inputs(33, seed=5, dtype=torch.float32)
    expected = sequential_scan(*(t.double() for t in (x, dt, A, B, C)))
    actual = selective_scan(x, dt, A, B, C, chunk_elements=5 * STEP)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-5)


def test_mixed_dtypes_are_rejected() -> None:
    x, dt, A, B, C = scan_inputs(4, seed=0)
    with pytest.raises(TypeError, match="one dtype"):
        selective_scan(x.float(), dt, A, B, C)


def test_non_contiguous_inputs() -> None:
    x, dt, A, B, C = scan_inputs(6, seed=9)
    x_t = x.transpose(0, 1).contiguous().transpose(0, 1)
    B_t = B.transpose(0, 1).contiguous().transpose(0, 1)
    assert not x_t.is_contiguous()
    torch.testing.assert_close(
        selective_scan(x_t, dt, A, B_t, C, chunk_elements=2 * STEP),
        sequential_scan(x, dt, A, B, C),
        rtol=1e-13,
        atol=1e-13,
    )

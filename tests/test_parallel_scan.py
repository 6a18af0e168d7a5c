"""The chunked parallel selective scan against a sequential float64 loop and against the
sequential chunked scan: values and the gradients of every input."""

from __future__ import annotations

import pytest
import torch
from cases.hf_mamba import sequential_scan
from scan_cases import NAMES, relative_error, selective_inputs, values_and_gradients

from captum_mamba.ops import parallel_selective_scan, selective_scan
from captum_mamba.ops.parallel_scan import plan_chunks

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# (batch, length, channels, state, chunk_size, chunk_elements): length 1, lengths that are
# not multiples of the chunk, one chunk per group (tiny budget), budgets too small for the
# chunk size (shortened chunks), and everything in one group.
SHAPES = [
    (2, 1, 3, 2, 16, 1 << 20),
    (2, 7, 3, 2, 3, 1 << 20),
    (2, 10, 3, 2, 4, 2 * 4 * 4 * 3 * 2),
    (1, 33, 5, 4, 8, 1),
    (3, 37, 2, 3, 5, 3 * 5 * 5 * 2 * 3 * 3),
    (2, 64, 4, 3, 16, 1 << 22),
]
SEEDS = (0, 1, 2)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", SEEDS)
def test_forward_and_all_gradients_match_sequential_loop(shape, seed: int) -> None:
    batch, length, channels, state, chunk_size, budget = shape
    inputs = selective_inputs(batch, length, channels, state, seed)
    weight = torch.randn(batch, length, channels, dtype=torch.float64)

    def parallel(*args):
        return parallel_selective_scan(*args, chunk_size=chunk_size, chunk_elements=budget)

    y, grads = values_and_gradients(parallel, inputs, weight, NAMES)
    y_ref, grads_ref = values_and_gradients(sequential_scan, inputs, weight, NAMES)
    assert relative_error(y, y_ref) <= 1e-10
    for name, grad, grad_ref in zip(NAMES, grads, grads_ref, strict=True):
        assert relative_error(grad, grad_ref) <= 1e-10, f"gradient of {name}"


@pytest.mark.parametrize("shape", SHAPES)
def test_x_gradient_with_the_ssm_rule_matches_sequential_loop(shape) -> None:
    """``dt``, ``A``, ``B``, ``C`` detached (the SSM rule): the adjoint scan gives ``x``'s."""
    batch, length, channels, state, chunk_size, budget = shape
    inputs = selective_inputs(batch, length, channels, state, seed=7)
    weight = torch.randn(batch, length, channels, dtype=torch.float64)

    def parallel(*args):
        return parallel_selective_scan(*args, chunk_size=chunk_size, chunk_elements=budget)

    (grad,) = values_and_gradients(parallel, inputs, weight, ("x",))[1]
    (grad_ref,) = values_and_gradients(sequential_scan, inputs, weight, ("x",))[1]
    assert relative_error(grad, grad_ref) <= 1e-10


@pytest.mark.parametrize("requires", ["dt", "A", "B", "C", "x,C", "dt,A", "A,B"])
def test_subsets_of_inputs_get_exactly_their_gradients(requires: str) -> None:
    names = tuple(requires.split(","))
    inputs = selective_inputs(2, 23, 3, 2, seed=11)
    weight = torch.randn(2, 23, 3, dtype=torch.float64)

    def parallel(*args):
        return parallel_selective_scan(*args, chunk_size=4, chunk_elements=4 * 4 * 2 * 3 * 2 * 2)

    grads = values_and_gradients(parallel, inputs, weight, names)[1]
    grads_ref = values_and_gradients(sequential_scan, inputs, weight, names)[1]
    assert len(grads) == len(names)
    for name, grad, grad_ref in zip(names, grads, grads_ref, strict=True):
        assert relative_error(grad, grad_ref) <= 1e-10, f"gradient of {name}"


@pytest.mark.parametrize(
    ("dt_range", "a_range", "length"),
    [
        ((1e-3, 1e-2), (0.01, 0.1), 300),  # slow decay: the state lives over all steps
        ((0.5, 5.0), (5.0, 30.0), 40),  # exponents down to -150 per step: underflow to 0
    ],
    ids=["long-memory", "strong-decay"],
)
def test_long_and_strong_decays(dt_range, a_range, length: int) -> None:
    inputs = selective_inputs(2, length, 3, 2, seed=3, dt_range=dt_range, a_range=a_range)
    weight = torch.randn(2, length, 3, dtype=torch.float64)

    def parallel(*args):
        return parallel_selective_scan(*args, chunk_size=16, chunk_elements=2 * 16 * 16 * 6 * 4)

    y, grads = values_and_gradients(parallel, inputs, weight, NAMES)
    y_ref, grads_ref = values_and_gradients(sequential_scan, inputs, weight, NAMES)
    assert relative_error(y, y_ref) <= 1e-10
    for name, grad, grad_ref in zip(NAMES, grads, grads_ref, strict=True):
        assert relative_error(grad, grad_ref) <= 1e-10, f"gradient of {name}"


def test_zero_state_matrix_entries_do_not_decay() -> None:
    """``A = 0`` (no decay) is the edge of ``A <= 0``: no NaN from the masked exponents."""
    x, dt, A, B, C = selective_inputs(2, 9, 3, 2, seed=5)
    A[0] = 0.0
    weight = torch.randn(2, 9, 3, dtype=torch.float64)
    inputs = [x, dt, A, B, C]

    def parallel(*args):
        return parallel_selective_scan(*args, chunk_size=4)

    y, grads = values_and_gradients(parallel, inputs, weight, NAMES)
    y_ref, grads_ref = values_and_gradients(sequential_scan, inputs, weight, NAMES)
    assert relative_error(y, y_ref) <= 1e-10
    for name, grad, grad_ref in zip(NAMES, grads, grads_ref, strict=True):
        assert relative_error(grad, grad_ref) <= 1e-10, f"gradient of {name}"


@pytest.mark.parametrize("requires", [("x",), NAMES])
def test_matches_the_sequential_chunked_scan(requires) -> None:
    inputs = selective_inputs(2, 45, 6, 4, seed=21)
    weight = torch.randn(2, 45, 6, dtype=torch.float64)

    def sequential(*args):
        return selective_scan(*args, chunk_elements=2 * 6 * 4 * 7, impl="sequential")

    def parallel(*args):
        return selective_scan(*args, impl="parallel")

    y, grads = values_and_gradients(parallel, inputs, weight, requires)
    y_seq, grads_seq = values_and_gradients(sequential, inputs, weight, requires)
    torch.testing.assert_close(y, y_seq, rtol=1e-12, atol=1e-12)
    for name, grad, grad_seq in zip(requires, grads, grads_seq, strict=True):
        torch.testing.assert_close(grad, grad_seq, rtol=1e-11, atol=1e-12, msg=name)


def test_gradcheck_all_inputs() -> None:
    inputs = tuple(t.requires_grad_() for t in selective_inputs(1, 9, 2, 2, seed=4))

    def scan(*args):
        return parallel_selective_scan(*args, chunk_size=3, chunk_elements=2 * 2 * 9 * 2)

    assert torch.autograd.gradcheck(scan, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_float32_matches_float64_loop() -> None:
    inputs = selective_inputs(2, 70, 8, 4, seed=6)
    expected = sequential_scan(*inputs)
    actual = parallel_selective_scan(*(t.float() for t in inputs))
    assert actual.dtype == torch.float32
    assert relative_error(actual.double(), expected) <= 1e-5


@pytest.mark.parametrize("budget", [1, 100, 5_000, 1 << 20])
@pytest.mark.parametrize("length", [1, 19, 300])
def test_plan_respects_the_element_budget(budget: int, length: int) -> None:
    batch, channels, state = 2, 3, 4
    chunk, group = plan_chunks(batch, length, channels, state, 16, budget)
    pair = batch * channels * state
    assert 1 <= chunk <= min(16, length)
    assert group >= 1
    assert group * chunk <= max(length, chunk) + chunk - 1  # no group past the end
    if budget >= pair * chunk * chunk:  # otherwise one chunk of length 1 is the minimum
        assert group * chunk * chunk * pair <= budget
        assert group * group * pair <= budget  # the chunk-level decay matrix
    else:
        assert chunk == 1 and group == 1


def test_runs_on_the_meta_device() -> None:
    """No tensor is created on the CPU inside the numerics: shapes only, on ``meta``."""
    inputs = [t.to("meta").requires_grad_() for t in selective_inputs(2, 21, 3, 2, seed=0)]
    y = parallel_selective_scan(*inputs, chunk_size=4, chunk_elements=4 * 4 * 2 * 3 * 2 * 2)
    assert y.device.type == "meta" and y.shape == (2, 21, 3)
    grads = torch.autograd.grad(y.sum(), inputs)
    assert [g.shape for g in grads] == [t.shape for t in inputs]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("requires", [("x",), NAMES])
def test_on_cuda_matches_cpu_float64_loop(dtype: torch.dtype, requires) -> None:
    inputs = selective_inputs(2, 300, 24, 16, seed=8)
    weight = torch.randn(2, 300, 24, dtype=torch.float64)
    y_ref, grads_ref = values_and_gradients(sequential_scan, inputs, weight, requires)

    def on_cuda(*args):
        return parallel_selective_scan(*args, chunk_size=16, chunk_elements=1 << 16)

    cuda_inputs = [t.to("cuda", dtype) for t in inputs]
    y, grads = values_and_gradients(on_cuda, cuda_inputs, weight.to("cuda", dtype), requires)
    tolerance = 1e-10 if dtype == torch.float64 else 1e-5
    assert relative_error(y.cpu().double(), y_ref) <= tolerance
    for name, grad, grad_ref in zip(requires, grads, grads_ref, strict=True):
        assert relative_error(grad.cpu().double(), grad_ref) <= tolerance, name

"""Scan ops: the selective-scan recurrence of Mamba-1 with a hand-written backward, and
the dispatch of :func:`selective_scan` to its implementations.

The recurrence, per batch element ``b``, channel ``d`` and state ``n``::

    h[t] = exp(dt[t, d] * A[d, n]) * h[t-1] + dt[t, d] * B[t, n] * x[t, d]
    y[t, d] = sum_n C[t, n] * h[t, d, n]

Autograd through a Python loop over time builds a graph with one node per step and
is very slow to differentiate (minutes at 512 tokens for a 130M-parameter model on
a CPU). :class:`SelectiveScan` instead runs the loop without autograd, in chunks of
time steps whose discretised coefficients are materialised with vectorised ops, and
implements the backward as the adjoint recurrence (a reverse scan of the same
shape). Only chunk-boundary states are kept for the backward; memory is
``O(batch * chunk * channels * state)`` on top of the inputs.

Gradients are computed only for the inputs that require them. Passing ``dt``,
``B`` and ``C`` detached is exactly the SSM rule of MambaLRP: the backward then
reduces to one reverse scan for ``x``.

This loop is fast on a CPU but launch-bound on a GPU, where :func:`selective_scan`
runs mamba-ssm's fused kernel or the chunked parallel scan of
:mod:`captum_mamba.ops.parallel_scan` instead (see :mod:`captum_mamba.ops.backends`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from captum_mamba.ops._common import check_one_dtype
from captum_mamba.ops.backends import choose
from captum_mamba.ops.fused import fused_selective_scan
from captum_mamba.ops.parallel_scan import DEFAULT_CHUNK_ELEMENTS as PARALLEL_CHUNK_ELEMENTS
from captum_mamba.ops.parallel_scan import parallel_selective_scan

#: Elements of one ``(batch, chunk, channels, state)`` work buffer.
DEFAULT_CHUNK_ELEMENTS = 1 << 18


def _chunk_length(batch: int, channels: int, state: int, budget: int) -> int:
    return max(1, budget // max(1, batch * channels * state))


def _scan_chunk(decay: Tensor, drive: Tensor, h: Tensor, reverse: bool = False) -> Tensor:
    """Run ``h[t] = decay[t] * h[t-1] + drive[t]`` in place over dim 1 of ``drive``.

    Args:
        decay (Tensor): ``(batch, T, channels, state)`` multiplicative coefficients.
        drive (Tensor): ``(batch, T, channels, state)`` additive inputs, overwritten
            with the states.
        h (Tensor): ``(batch, channels, state)`` state before the chunk.
        reverse (bool, optional): run from the last step to the first, i.e.
            ``h[t] = decay[t] * h[t+1] + drive[t]``. Default: False.

    Returns:
        Tensor: ``drive``, now holding the states of the chunk.
    """
    steps = range(drive.shape[1] - 1, -1, -1) if reverse else range(drive.shape[1])
    for t in steps:
        drive[:, t].addcmul_(decay[:, t], h)
        h = drive[:, t]
    return drive


class _ChunkBuffers:
    """Reusable ``(batch, chunk, channels, state)`` work buffers of one scan."""

    def __init__(self, like: Tensor, chunk: int, state: int) -> None:
        batch, _, channels = like.shape
        shape = (batch, chunk, channels, state)
        self.decay = like.new_empty(shape)
        self.states = like.new_empty(shape)

    def fill(
        self, dt: Tensor, A: Tensor, u: Tensor, vec: Tensor, start: int, stop: int
    ) -> tuple[Tensor, Tensor]:
        """``exp(dt[t] A)`` and ``u[t] (x) vec[t]`` for the steps ``start:stop``."""
        steps = stop - start
        decay = torch.mul(dt[:, start:stop, :, None], A, out=self.decay[:, :steps]).exp_()
        states = torch.mul(
            u[:, start:stop, :, None], vec[:, start:stop, None, :], out=self.states[:, :steps]
        )
        return decay, states


def _chunk_starts(length: int, chunk: int) -> list[int]:
    return list(range(0, length, chunk))


def _forward_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk: int,
    keep_boundaries: bool,
    initial: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    batch, length, channels = x.shape
    starts = _chunk_starts(length, chunk)
    buffers = _ChunkBuffers(x, min(chunk, length), A.shape[1])
    y = x.new_empty(batch, length, channels)
    h = x.new_zeros(batch, channels, A.shape[1]) if initial is None else initial.clone()
    boundaries = x.new_empty(batch, len(starts), *h.shape[1:]) if keep_boundaries else None
    dtx = dt * x
    for index, start in enumerate(starts):
        stop = min(start + chunk, length)
        if boundaries is not None:
            boundaries[:, index] = h
        decay, states = buffers.fill(dt, A, dtx, B, start, stop)
        _scan_chunk(decay, states, h)
        y[:, start:stop] = torch.einsum("btdn,btn->btd", states, C[:, start:stop])
        h = states[:, -1].clone()
    return y, boundaries, h


class SelectiveScan(torch.autograd.Function):
    """Selective scan ``y = scan(x; dt, A, B, C)`` with a chunked adjoint backward."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, chunk):
        full = any(ctx.needs_input_grad[1:5])
        y, boundaries, _ = _forward_scan(x, dt, A, B, C, chunk, keep_boundaries=full)
        ctx.chunk = chunk
        ctx.save_for_backward(x, dt, A, B, C, boundaries)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, dt, A, B, C, boundaries = ctx.saved_tensors
        need_x, need_dt, need_A, need_B, need_C = ctx.needs_input_grad[:5]
        full = need_dt or need_A or need_B or need_C
        chunk = ctx.chunk
        batch, length, channels = x.shape
        grad_y = grad_y.contiguous()

        grad_x = torch.empty_like(x) if need_x else None
        grad_dt = torch.empty_like(dt) if need_dt else None
        grad_A = torch.zeros_like(A) if need_A else None
        grad_B = torch.empty_like(B) if need_B else None
        grad_C = torch.empty_like(C) if need_C else None

        # The adjoint state g[t] = dL/dh[t] obeys the reverse recurrence
        # g[t] = exp(dt[t+1] A) g[t+1] + C[t] grad_y[t].
        dt_next = torch.cat([dt[:, 1:], dt.new_zeros(batch, 1, channels)], dim=1)
        adjoint_buffers = _ChunkBuffers(x, min(chunk, length), A.shape[1])
        state_buffers = _ChunkBuffers(x, min(chunk, length), A.shape[1]) if full else None
        g = x.new_zeros(batch, channels, A.shape[1])
        dtx = dt * x
        starts = _chunk_starts(length, chunk)
        for index in reversed(range(len(starts))):
            start = starts[index]
            stop = min(start + chunk, length)
            adj_decay, adj = adjoint_buffers.fill(dt_next, A, grad_y, C, start, stop)
            _scan_chunk(adj_decay, adj, g, reverse=True)
            g = adj[:, 0].clone()
            if need_x:
                grad_x[:, start:stop] = dt[:, start:stop] * torch.einsum(
                    "btdn,btn->btd", adj, B[:, start:stop]
                )
            if not full:
                continue
            decay, states = state_buffers.fill(dt, A, dtx, B, start, stop)
            _scan_chunk(decay, states, boundaries[:, index])
            previous = torch.cat([boundaries[:, index, None], states[:, :-1]], dim=1)
            # dL/d(decay[t]) = g[t] * h[t-1]; d decay / d dt = A * decay.
            grad_decay = adj * previous * decay
            if need_dt:
                grad_dt[:, start:stop] = torch.einsum("btdn,dn->btd", grad_decay, A) + x[
                    :, start:stop
                ] * torch.einsum("btdn,btn->btd", adj, B[:, start:stop])
            if need_A:
                grad_A += torch.einsum("btdn,btd->dn", grad_decay, dt[:, start:stop])
            if need_B:
                grad_B[:, start:stop] = torch.einsum("btdn,btd->btn", adj, dtx[:, start:stop])
            if need_C:
                grad_C[:, start:stop] = torch.einsum("btdn,btd->btn", states, grad_y[:, start:stop])
        return grad_x, grad_dt, grad_A, grad_B, grad_C, None


def selective_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_elements: int | None = None,
    impl: str | None = None,
) -> Tensor:
    r"""Selective scan of Mamba-1 without the skip term, differentiable in every input.

    Args:
        x (Tensor): ``(batch, length, channels)`` scan input (after conv and SiLU).
        dt (Tensor): ``(batch, length, channels)`` positive time steps (after softplus).
        A (Tensor): ``(channels, state)`` continuous-time state matrix (negative).
        B (Tensor): ``(batch, length, state)`` input projection.
        C (Tensor): ``(batch, length, state)`` output projection.
        chunk_elements (int, optional): memory budget of the sequential and parallel
            implementations in elements of one work buffer: the sequential scan runs
            ``chunk_elements // (batch * channels * state)`` time steps per chunk, the
            parallel one sizes its groups of chunks with it. Default: None, i.e.
            ``2**18`` (sequential; fits in a core's cache at 130M scale) and ``2**26``
            (parallel).
        impl (str, optional): ``"auto"``, ``"sequential"``, ``"parallel"`` or ``"fused"``
            (see :mod:`captum_mamba.ops.backends`); None for the setting of
            :func:`captum_mamba.ops.implementation`, by default ``"auto"``: the
            sequential scan on a CPU, on CUDA mamba-ssm's kernel if it imports and
            takes the dtype, else the parallel scan. Default: None.

    Returns:
        Tensor: ``y`` of shape ``(batch, length, channels)``.

    Examples::

        >>> x, dt = torch.randn(2, 8, 4), torch.rand(2, 8, 4)
        >>> A, B, C = -torch.rand(4, 3), torch.randn(2, 8, 3), torch.randn(2, 8, 3)
        >>> # SSM rule: the input-dependent coefficients are constants for the backward
        >>> y = selective_scan(x, dt.detach(), A, B.detach(), C.detach())
    """
    check_one_dtype("selective_scan", x, dt, A, B, C)
    batch, _, channels = x.shape
    state = A.shape[1]
    unsuitable = f"mamba-ssm takes state sizes up to 256, got {state}" if state > 256 else None
    chosen = choose("selective_scan", impl, x, unsuitable)
    if chosen == "fused":
        return fused_selective_scan(x, dt, A, B, C)
    if chosen == "parallel":
        budget = PARALLEL_CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
        return parallel_selective_scan(x, dt, A, B, C, chunk_elements=budget)
    budget = DEFAULT_CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    chunk = _chunk_length(batch, channels, state, budget)
    return SelectiveScan.apply(
        x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(), chunk
    )


@torch.no_grad()
def selective_scan_with_state(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    state: Tensor | None = None,
    chunk_elements: int | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Selective scan of Mamba-1 continued from a state, returning the final state.

    For generation token by token: scanning a sequence in pieces, each from the final
    state of the previous piece, gives the scan of the whole sequence. Runs the
    sequential implementation without autograd (no gradients).

    Args:
        x (Tensor): ``(batch, length, channels)`` scan input.
        dt (Tensor): ``(batch, length, channels)`` positive time steps.
        A (Tensor): ``(channels, state)`` continuous-time state matrix.
        B (Tensor): ``(batch, length, state)`` input projection.
        C (Tensor): ``(batch, length, state)`` output projection.
        state (Tensor, optional): ``(batch, channels, state)`` state before the first
            step; None for zeros. Default: None.
        chunk_elements (int, optional): work-buffer budget as for
            :func:`selective_scan`. Default: None (``2**18``).

    Returns:
        tuple: ``y`` ``(batch, length, channels)`` and the state after the last step
        ``(batch, channels, state)``.

    Examples::

        >>> y1, h = selective_scan_with_state(x[:, :5], dt[:, :5], A, B[:, :5], C[:, :5])
        >>> y2, h = selective_scan_with_state(x[:, 5:], dt[:, 5:], A, B[:, 5:], C[:, 5:], h)
    """
    check_one_dtype("selective_scan_with_state", x, dt, A, B, C)
    batch, _, channels = x.shape
    budget = DEFAULT_CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    chunk = _chunk_length(batch, channels, A.shape[1], budget)
    tensors = (t.contiguous() for t in (x, dt, A, B, C))
    y, _, final = _forward_scan(*tensors, chunk, keep_boundaries=False, initial=state)
    return y, final

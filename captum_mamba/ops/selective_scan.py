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

from captum_mamba.ops._common import ScanFunction, batched_cotangents, check_one_dtype
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


#: The differentiable inputs of :class:`SelectiveScan`, in order.
_INPUTS = ("x", "dt", "A", "B", "C")


def _scan_backward(
    grad_y: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    boundaries: Tensor,
    chunk: int,
    needs: tuple[bool, ...],
) -> tuple[Tensor, ...]:
    """Gradients of :class:`SelectiveScan` for ``K`` cotangents ``grad_y`` ``(K, batch,
    length, channels)`` at once: the ``K`` adjoint scans run as one scan over ``K``
    times the channels (each copy with its channel's ``dt`` and ``A``), in chunks of
    ``chunk // K`` steps so that the work buffers keep their size when only ``x`` needs
    a gradient. Returns the needed gradients of ``(x, dt, A, B, C)``, each ``(K, ...)``."""
    need_x, need_dt, need_A, need_B, need_C = needs
    full = need_dt or need_A or need_B or need_C
    count = grad_y.shape[0]
    batch, length, channels = x.shape
    state = A.shape[1]
    # The adjoint state g[t] = dL/dh[t] obeys the reverse recurrence
    # g[t] = exp(dt[t+1] A) g[t+1] + C[t] grad_y[t]; copy k of channel d is channel k D + d.
    folded = grad_y.permute(1, 2, 0, 3).reshape(batch, length, count * channels)
    dt_next = torch.cat([dt[:, 1:], dt.new_zeros(batch, 1, channels)], dim=1).repeat(1, 1, count)
    A_folded = A.repeat(count, 1)
    # With dt, A, B or C, the states are recomputed from the forward's chunk boundaries.
    steps = chunk if full else max(1, chunk // count)
    adjoint_buffers = _ChunkBuffers(folded, min(steps, length), state)
    state_buffers = _ChunkBuffers(x, min(steps, length), state) if full else None
    parts: dict[str, list[Tensor]] = {
        name: [] for name, need in zip(_INPUTS, needs, strict=True) if need and name != "A"
    }
    grad_A = None
    g = x.new_zeros(batch, count * channels, state)
    dtx = dt * x
    starts = _chunk_starts(length, steps)
    for index in reversed(range(len(starts))):
        start = starts[index]
        stop = min(start + steps, length)
        adj_decay, adj = adjoint_buffers.fill(dt_next, A_folded, folded, C, start, stop)
        _scan_chunk(adj_decay, adj, g, reverse=True)
        g = adj[:, 0].clone()
        adj = adj.unflatten(2, (count, channels))  # (b, t, k, d, n)
        adj_B = torch.einsum("btkdn,btn->kbtd", adj, B[:, start:stop])
        if need_x:
            parts["x"].append(dt[:, start:stop] * adj_B)
        if not full:
            continue
        decay, states = state_buffers.fill(dt, A, dtx, B, start, stop)
        _scan_chunk(decay, states, boundaries[:, index])
        previous = torch.cat([boundaries[:, index, None], states[:, :-1]], dim=1)
        # dL/d(decay[t]) = g[t] * h[t-1]; d decay / d dt = A * decay.
        grad_decay = adj * (previous * decay)[:, :, None]
        if need_dt:
            parts["dt"].append(
                torch.einsum("btkdn,dn->kbtd", grad_decay, A) + x[:, start:stop] * adj_B
            )
        if need_A:
            part = torch.einsum("btkdn,btd->kdn", grad_decay, dt[:, start:stop])
            grad_A = part if grad_A is None else grad_A + part
        if need_B:
            parts["B"].append(torch.einsum("btkdn,btd->kbtn", adj, dtx[:, start:stop]))
        if need_C:
            parts["C"].append(torch.einsum("btdn,kbtd->kbtn", states, grad_y[:, :, start:stop]))
    grads = {name: torch.cat(pieces[::-1], dim=2) for name, pieces in parts.items()}
    if need_A:
        grads["A"] = grad_A
    return tuple(grads[name] for name, need in zip(_INPUTS, needs, strict=True) if need)


class SelectiveScan(ScanFunction):
    """Selective scan ``y = scan(x; dt, A, B, C)`` with a chunked adjoint backward.

    Its backward takes a batch of cotangents (many targets, :func:`batched_cotangents`).
    ``keep_boundaries`` keeps the state at each chunk boundary (returned as the second,
    non-differentiable output), which the gradients of ``dt``, ``A``, ``B`` and ``C`` need.
    """

    @staticmethod
    def forward(x, dt, A, B, C, chunk, keep_boundaries):
        y, boundaries, _ = _forward_scan(x, dt, A, B, C, chunk, keep_boundaries)
        return y, x.new_empty(0) if boundaries is None else boundaries

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, dt, A, B, C, chunk, _ = inputs
        ctx.chunk = chunk
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, dt, A, B, C, output[1])

    @staticmethod
    def backward(ctx, grad_y, _):
        needs = tuple(ctx.needs_input_grad[:5])
        found = iter(
            batched_cotangents(
                _scan_backward, grad_y.contiguous(), *ctx.saved_tensors, ctx.chunk, needs
            )
        )
        return (*(next(found) if need else None for need in needs), None, None)


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
    full = torch.is_grad_enabled() and any(t.requires_grad for t in (dt, A, B, C))
    tensors = (t.contiguous() for t in (x, dt, A, B, C))
    return SelectiveScan.apply(*tensors, chunk, full)[0]


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

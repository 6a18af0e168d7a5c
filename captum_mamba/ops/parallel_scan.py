"""Scan ops: a chunked parallel selective scan of Mamba-1, without a loop over time steps.

The recurrence is that of :mod:`captum_mamba.ops.selective_scan`::

    h[t] = exp(dt[t, d] * A[d, n]) * h[t-1] + dt[t, d] * B[t, n] * x[t, d]
    y[t, d] = sum_n C[t, n] * h[t, d, n]

Unrolled as in the state-space-duality form of Mamba-2 (:mod:`captum_mamba.ops.ssd_scan`),
``y[t, d] = sum_{s<=t} sum_n C[t, n] exp(A[d, n] seg[t, s, d]) B[s, n] dt[s, d] x[s, d]``
with the segment sums ``seg[t, s] = sum_{k=s+1..t} dt[k]``. Time is split into chunks:

- inside a chunk, ``seg`` is built by a cumulative sum of masked copies of ``dt`` (no
  difference of two large cumulative sums, so no cancellation) and every exponent is
  ``A * seg <= 0`` for Mamba's ``A = -exp(A_log) < 0`` and ``dt = softplus(.) > 0``: no
  positive number is exponentiated. Unlike Mamba-2, the decay differs per channel and
  state, so a chunk's work tensor has ``chunk**2 * channels * state`` elements per batch
  element.
- across chunks, the end state of each chunk from a zero start is decayed into the
  later chunks with the same segment sums taken over the chunk totals of ``dt``.

Chunks are processed in groups whose largest work tensor holds at most
``chunk_elements`` elements; a Python loop runs over the groups, carrying one state per
group boundary. The backward for ``x`` (all that the SSM rule of MambaLRP needs, with
``dt``, ``B`` and ``C`` detached) is the same parallel scan run backwards in time with
``B`` and ``C`` exchanged. Gradients for ``dt``, ``A``, ``B`` or ``C`` recompute one
group at a time from its saved start state and differentiate it with autograd, so
memory stays bounded by one group also then.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_mamba.ops._common import (
    ScanFunction,
    batched_cotangents,
    check_one_dtype,
    chunked,
    segment_sums,
)

#: Time steps per chunk (fewer when the element budget is small).
DEFAULT_CHUNK_SIZE = 16

#: Elements of the largest work tensor of one group, ``(batch, chunks, L, L, D, N)``.
DEFAULT_CHUNK_ELEMENTS = 1 << 26


def plan_chunks(
    batch: int, length: int, channels: int, state: int, chunk_size: int, chunk_elements: int
) -> tuple[int, int]:
    """Chunk length and chunks per group that fit the element budget.

    Args:
        batch (int): batch size.
        length (int): time steps.
        channels (int): channels ``D``.
        state (int): state size ``N``.
        chunk_size (int): largest chunk length.
        chunk_elements (int): budget of one ``(batch, chunks, L, L, D, N)`` work tensor.

    Returns:
        tuple of int: ``(chunk, group)``, the chunk length and the chunks per group.
    """
    pair = max(1, batch * channels * state)
    chunk = max(1, min(chunk_size, length, math.isqrt(chunk_elements // pair)))
    chunks = -(-length // chunk)
    # The chunk-level matrix has group**2 * pair elements: at most group * chunk**2 * pair.
    group = min(chunks, chunk * chunk, chunk_elements // (pair * chunk * chunk))
    return chunk, max(1, group)


def _decays(segments: Tensor, A: Tensor) -> Tensor:
    """``exp(A * segments)`` on and below the time diagonal, exactly 0 above it.

    Args:
        segments (Tensor): ``(..., L, L, D)`` segment sums (0 on and above the diagonal).
        A (Tensor): ``(D, N)``.

    Returns:
        Tensor: ``(..., L, L, D, N)``.
    """
    length = segments.shape[-2]
    above = torch.ones(length, length, dtype=torch.bool, device=segments.device).triu(1)
    exponent = torch.mul(segments[..., None], A)
    return exponent.masked_fill_(above[:, :, None, None], float("-inf")).exp_()


def _group_scan(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, h: Tensor, chunk: int
) -> tuple[Tensor, Tensor]:
    """Scan ``h[t] = exp(dt[t] A) h[t-1] + u[t] B[t]``, ``y[t] = C[t] . h[t]`` from ``h``.

    Args:
        u (Tensor): ``(batch, T, D)`` scan drive (``dt * x`` in the forward).
        dt (Tensor): ``(batch, T, D)`` non-negative time steps of the decay.
        A (Tensor): ``(D, N)`` non-positive state matrix.
        B (Tensor): ``(batch, T, N)``.
        C (Tensor): ``(batch, T, N)``.
        h (Tensor): ``(batch, D, N)`` state before the first step.
        chunk (int): time steps per chunk.

    Returns:
        tuple of Tensor: ``y`` ``(batch, T, D)`` and the state after the last step.
    """
    batch, length, channels = u.shape
    # b batch, c/x/y chunk, t/s step in chunk, d channel, n state; zero padding is inert.
    u, dt, B, C = (chunked(t, chunk) for t in (u, dt, B, C))
    segments = segment_sums(dt, dim=-2)  # (b, c, t, s, d)
    scores = C[:, :, :, None, :] * B[:, :, None, :, :]  # (b, c, t, s, n)
    kernel = torch.einsum("bctsdn,bctsn->bctsd", _decays(segments, A), scores)
    y = torch.einsum("bctsd,bcsd->bctd", kernel, u)

    to_end = torch.exp(segments[:, :, -1, :, :, None] * A)  # (b, c, s, d, n)
    ends = torch.einsum("bcsdn,bcsn,bcsd->bcdn", to_end, B, u)  # chunk end, zero start
    from_start = dt.cumsum(2)  # (b, c, t, d): sum_{k<=t} dt[k]
    totals = from_start[:, :, -1]  # (b, c, d)
    ends = torch.einsum("bxydn,bydn->bxdn", _decays(segment_sums(totals, dim=-2), A), ends)
    ends = ends + torch.exp(totals.cumsum(1)[..., None] * A) * h[:, None]
    starts = torch.cat([h[:, None], ends[:, :-1]], dim=1)  # state before each chunk
    y = y + torch.einsum("bctn,bctdn,bcdn->bctd", C, torch.exp(from_start[..., None] * A), starts)
    return y.reshape(batch, -1, channels)[:, :length], ends[:, -1]


def _scan(
    u: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk: int,
    group: int,
    starts: list[Tensor] | None = None,
) -> Tensor:
    """:func:`_group_scan` over groups of ``group`` chunks from a zero state; appends the
    state before each group to ``starts`` if given."""
    batch, length, channels = u.shape
    y = u.new_empty(batch, length, channels)
    h = u.new_zeros(batch, channels, A.shape[1])
    span = chunk * group
    for start in range(0, length, span):
        stop = min(start + span, length)
        if starts is not None:
            starts.append(h)
        steps = slice(start, stop)
        y[:, steps], h = _group_scan(
            u[:, steps], dt[:, steps], A, B[:, steps], C[:, steps], h, chunk
        )
    return y


def _recomputed_gradients(
    grad_y: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    starts: Tensor,
    chunk: int,
    group: int,
    need: tuple[bool, ...],
) -> tuple[Tensor, ...]:
    """Gradients of the inputs that need one, for ``K`` cotangents ``grad_y`` ``(K, batch,
    length, channels)``: group by group from the last one, each group recomputed once and
    differentiated for the ``K`` cotangents together (vmapped ``autograd.grad``)."""
    pieces: list[list[Tensor]] = [[] for _ in need]
    A_leaf = A.detach().requires_grad_(need[2])
    span = chunk * group
    grad_h = None
    for index in reversed(range(len(starts))):
        steps = slice(index * span, (index + 1) * span)
        x_g, dt_g, B_g, C_g = (
            t[:, steps].detach().requires_grad_(wanted)
            for t, wanted in zip((x, dt, B, C), (need[0], need[1], need[3], need[4]), strict=True)
        )
        h = starts[index].detach().requires_grad_(index > 0)
        with torch.enable_grad():
            y, h_out = _group_scan(dt_g * x_g, dt_g, A_leaf, B_g, C_g, h, chunk)
        outputs, seeds = [y], [grad_y[:, :, steps]]
        if grad_h is not None and h_out.requires_grad:  # else h_out is independent of them
            outputs.append(h_out)
            seeds.append(grad_h)
        leaves = [x_g, dt_g, A_leaf, B_g, C_g, h]
        wanted = [leaf for leaf in leaves if leaf.requires_grad]

        def backward(*seeds: Tensor, outputs: list[Tensor] = outputs, wanted=wanted):
            return torch.autograd.grad(outputs, wanted, seeds, retain_graph=True)

        found = iter(torch.func.vmap(backward)(*seeds))
        for position, leaf in enumerate(leaves[:5]):
            if leaf.requires_grad:
                pieces[position].append(next(found))
        grad_h = next(found) if h.requires_grad else None
    return tuple(
        sum(parts[1:], parts[0]) if position == 2 else torch.cat(parts[::-1], dim=2)
        for position, parts in enumerate(pieces)
        if need[position]
    )


def _adjoint(
    grad_y: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int, elements: int
) -> tuple[Tensor]:
    """Gradient of :class:`ParallelSelectiveScan` for ``x`` with ``dt``, ``B``, ``C``
    constant, for ``K`` cotangents ``grad_y`` ``(K, batch, length, channels)`` at once,
    folded into the channels (copy ``k`` of channel ``d`` is channel ``k D + d``, with its
    ``dt`` and ``A``); the chunks are planned anew for ``K`` times the channels."""
    count, batch, length, channels = grad_y.shape
    chunk, group = plan_chunks(batch, length, count * channels, A.shape[1], chunk, elements)
    folded = grad_y.permute(1, 2, 0, 3).reshape(batch, length, count * channels)
    # dL/dx[s] = dt[s] sum_{t>=s} sum_n B[s] exp(A seg[t, s]) C[t] grad_y[t]: the same
    # scan backwards in time, with B and C exchanged and the decay of step k+1 at k.
    next_dt = F.pad(dt[:, 1:], (0, 0, 0, 1)).repeat(1, 1, count)
    adjoint = _scan(
        folded.flip(1), next_dt.flip(1), A.repeat(count, 1), C.flip(1), B.flip(1), chunk, group
    ).flip(1)
    return (adjoint.unflatten(2, (count, channels)).permute(2, 0, 1, 3) * dt,)


class ParallelSelectiveScan(ScanFunction):
    """Selective scan ``y = scan(x; dt, A, B, C)``, chunked and parallel over time.

    ``keep_starts`` keeps the state before each group of chunks (the second,
    non-differentiable output), which the gradients of ``dt``, ``A``, ``B`` and ``C``
    need; the backward for ``x`` takes a batch of cotangents (:func:`batched_cotangents`).
    """

    @staticmethod
    def forward(x, dt, A, B, C, chunk, group, elements, keep_starts):
        starts: list[Tensor] | None = [] if keep_starts else None
        y = _scan(dt * x, dt, A, B, C, chunk, group, starts)
        return y, torch.stack(starts) if starts else x.new_empty(0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.chunk, ctx.group, ctx.elements = inputs[5:8]
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(*inputs[:5], output[1])

    @staticmethod
    def backward(ctx, grad_y, _):
        _, dt, A, B, C, _ = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad[:5])
        if any(need[1:]):
            found = iter(
                batched_cotangents(
                    _recomputed_gradients, grad_y, *ctx.saved_tensors, ctx.chunk, ctx.group, need
                )
            )
            return (*(next(found) if n else None for n in need), None, None, None, None)
        (grad_x,) = batched_cotangents(_adjoint, grad_y, dt, A, B, C, ctx.chunk, ctx.elements)
        return grad_x, None, None, None, None, None, None, None, None


def parallel_selective_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Tensor:
    r"""Selective scan of Mamba-1 without the skip term, parallel over time steps.

    Same values and gradients as :func:`captum_mamba.ops.selective_scan` with
    ``impl="sequential"``, computed without a loop over time steps (for GPUs without
    mamba-ssm's kernels). Requires ``dt >= 0`` and ``A <= 0`` (true in every Mamba:
    ``dt`` is a softplus, ``A = -exp(A_log)``); this is not checked, to avoid a device
    synchronisation.

    Args:
        x (Tensor): ``(batch, length, channels)`` scan input.
        dt (Tensor): ``(batch, length, channels)`` non-negative time steps.
        A (Tensor): ``(channels, state)`` non-positive state matrix.
        B (Tensor): ``(batch, length, state)`` input projection.
        C (Tensor): ``(batch, length, state)`` output projection.
        chunk_size (int, optional): largest number of time steps per chunk.
            Default: 16.
        chunk_elements (int, optional): element budget of the largest work tensor,
            ``(batch, chunks, chunk, chunk, channels, state)``; chunks are shortened
            and grouped to fit. Peak memory above the inputs is about 1.6 times this
            for the forward and ``x``-gradient and 4 times with all gradients
            (measured on a CPU). Default: ``2**26``.

    Returns:
        Tensor: ``y`` of shape ``(batch, length, channels)``.

    Examples::

        >>> x, dt = torch.randn(2, 50, 4), torch.rand(2, 50, 4)
        >>> A, B, C = -torch.rand(4, 3), torch.randn(2, 50, 3), torch.randn(2, 50, 3)
        >>> y = parallel_selective_scan(x, dt.detach(), A, B.detach(), C.detach())
    """
    check_one_dtype("parallel_selective_scan", x, dt, A, B, C)
    batch, length, channels = x.shape
    chunk, group = plan_chunks(batch, length, channels, A.shape[1], chunk_size, chunk_elements)
    full = torch.is_grad_enabled() and any(t.requires_grad for t in (dt, A, B, C))
    return ParallelSelectiveScan.apply(x, dt, A, B, C, chunk, group, chunk_elements, full)[0]

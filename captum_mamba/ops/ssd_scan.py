"""Scan ops: the state-space-duality (SSD) scan of Mamba-2, chunked, with a hand-written
backward for the scan input.

The recurrence, per batch element, head ``h`` (of ``heads_per_group`` heads sharing the
group ``g`` of ``B`` and ``C``), head channel ``p`` and state ``n``::

    H[t, h, p, n] = exp(dt[t, h] * A[h]) * H[t-1, h, p, n] + dt[t, h] * B[t, g, n] * x[t, h, p]
    y[t, h, p] = sum_n C[t, g, n] * H[t, h, p, n]

The decay is one scalar per head and time step, so the whole map ``x -> y`` is the
product with a lower-triangular (semiseparable) matrix per head,

    y[t] = sum_{s <= t} (C[t] . B[s]) * exp(sum_{k=s+1..t} dt[k] A) * dt[s] * x[s].

:func:`ssd_scan` evaluates it in chunks of ``chunk_size`` steps: inside a chunk with
dense ``chunk x chunk`` matrices, across chunks by carrying one state per chunk
boundary (a loop over chunks, not over time steps). With ``dt``, ``A``, ``B`` and ``C``
constant (the SSM rule of MambaLRP) the backward for ``x`` is the transposed matrix,
i.e. the same chunked scan run backwards in time with the roles of ``B`` and ``C``
swapped; only the inputs are kept for it. Gradients for ``dt``, ``A``, ``B`` or ``C``
(needed only with the SSM rule off) are obtained by differentiating a recomputed
chunked forward, which is vectorised over the time steps of a chunk.
"""

from __future__ import annotations

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
from captum_mamba.ops.backends import choose
from captum_mamba.ops.fused import fused_ssd_scan

#: Time steps per chunk of :func:`ssd_scan` (Mamba-2 models use 256).
DEFAULT_CHUNK_SIZE = 64


def _log_decays(log_decay: Tensor) -> Tensor:
    """``out[..., t, s] = sum_{k=s+1..t} log_decay[..., k]`` for ``s <= t``, else ``-inf``."""
    length = log_decay.shape[-1]
    lower = torch.ones(length, length, dtype=torch.bool, device=log_decay.device).tril()
    return segment_sums(log_decay).masked_fill(~lower, float("-inf"))


def _ssd_states(
    u: Tensor, log_decay: Tensor, B: Tensor, C: Tensor, chunk: int, initial: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``y[t] = sum_{s<=t} (C[t].B[s]) exp(sum_{k=s+1..t} log_decay[k]) u[s]``, chunked,
    plus the contribution of an initial state, and the final state.

    Args:
        u (Tensor): ``(batch, length, groups, heads_per_group, head_dim)`` inputs.
        log_decay (Tensor): ``(batch, length, groups, heads_per_group)`` log decays.
        B (Tensor): ``(batch, length, groups, state)``.
        C (Tensor): ``(batch, length, groups, state)``.
        chunk (int): time steps per chunk.
        initial (Tensor, optional): ``(batch, groups, heads_per_group, head_dim, state)``
            state before the first step; None for zeros. Default: None.

    Returns:
        tuple: ``y`` with the shape of ``u``, and the state after the last step (zero
        padding of the last chunk leaves it unchanged: its decay is 1, its input 0).
    """
    length = u.shape[1]
    u, log_decay, B, C = (chunked(t, chunk) for t in (u, log_decay, B, C))
    # Layout: b batch, c chunk, t/s time in chunk, g group, j head in group, p head dim, n state.
    log_decay = log_decay.permute(0, 1, 3, 4, 2)  # (b, c, g, j, t)
    cumulative = log_decay.cumsum(-1)
    within = torch.exp(_log_decays(log_decay))  # (b, c, g, j, t, s)
    scores = torch.einsum("bctgn,bcsgn->bcgts", C, B)
    y = torch.einsum("bcgts,bcgjts,bcsgjp->bctgjp", scores, within, u)

    to_end = torch.exp(cumulative[..., -1:] - cumulative)  # decay from s to the chunk end
    chunk_states = torch.einsum("bcsgn,bcgjs,bcsgjp->bcgjpn", B, to_end, u)
    chunk_decay = torch.exp(cumulative[..., -1])  # (b, c, g, j)
    state = torch.zeros_like(chunk_states[:, 0]) if initial is None else initial
    starts = []
    for index in range(chunk_states.shape[1]):
        starts.append(state)
        state = chunk_decay[:, index, ..., None, None] * state + chunk_states[:, index]
    start_states = torch.stack(starts, dim=1)  # state before each chunk
    from_start = torch.exp(cumulative)  # decay from the chunk start to t
    y = y + torch.einsum("bctgn,bcgjpn,bcgjt->bctgjp", C, start_states, from_start)
    return y.reshape(y.shape[0], -1, *y.shape[3:])[:, :length], state


def _ssd(u: Tensor, log_decay: Tensor, B: Tensor, C: Tensor, chunk: int) -> Tensor:
    """:func:`_ssd_states` from a zero state, without the final state."""
    return _ssd_states(u, log_decay, B, C, chunk)[0]


def _grouped(x: Tensor, dt: Tensor, A: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """Scan input ``dt * x`` and log decay ``dt * A`` with the heads split into groups."""
    batch, length, heads, head_dim = x.shape
    per_group = heads // groups
    u = (x * dt[..., None]).reshape(batch, length, groups, per_group, head_dim)
    log_decay = (dt * A).reshape(batch, length, groups, per_group)
    return u, log_decay


def _adjoint(grad_y: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int):
    """Gradient of :class:`SSDScan` for ``x`` with ``dt``, ``A``, ``B``, ``C`` constant, for
    ``K`` cotangents ``grad_y`` ``(K, batch, length, heads, head_dim)`` at once (folded into
    the head dimension, which the scan treats alike)."""
    # y = M x with M[t, s] = (C[t].B[s]) decay(s -> t) dt[s]; the adjoint M^T runs from
    # the last step to the first. Flipping time turns it into the same causal scan, with
    # the decay of step k+1 applied at step k and B, C exchanged.
    count, batch, length, heads, head_dim = grad_y.shape
    split = (batch, length, B.shape[2], heads // B.shape[2])
    folded = grad_y.permute(1, 2, 3, 0, 4).reshape(*split, count * head_dim)
    next_decay = F.pad((dt * A)[:, 1:], (0, 0, 0, 1)).flip(1).reshape(split)
    adjoint = _ssd(folded.flip(1), next_decay, C.flip(1), B.flip(1), chunk).flip(1)
    adjoint = adjoint.reshape(batch, length, heads, count, head_dim).permute(3, 0, 1, 2, 4)
    return (adjoint * dt[..., None],)


def _recomputed(
    grad_y: Tensor,
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk: int,
    need: tuple[bool, ...],
) -> tuple[Tensor, ...]:
    """Gradients of the inputs of :class:`SSDScan` that need one, for ``K`` cotangents
    ``grad_y`` at once: the chunked forward recomputed and differentiated by autograd
    (vmapped over the cotangents)."""
    inputs = [t.detach().requires_grad_(n) for t, n in zip((x, dt, A, B, C), need, strict=True)]
    with torch.enable_grad():
        u, log_decay = _grouped(*inputs[:3], B.shape[2])
        y = _ssd(u, log_decay, inputs[3], inputs[4], chunk).reshape(x.shape)
    wanted = [t for t in inputs if t.requires_grad]
    return torch.func.vmap(lambda seed: torch.autograd.grad(y, wanted, seed, retain_graph=True))(
        grad_y
    )


class SSDScan(ScanFunction):
    """SSD scan ``y = ssd(x; dt, A, B, C)`` with the transposed scan as backward for ``x``
    (taking a batch of cotangents, :func:`batched_cotangents`)."""

    @staticmethod
    def forward(x, dt, A, B, C, chunk):
        u, log_decay = _grouped(x, dt, A, B.shape[2])
        return _ssd(u, log_decay, B, C, chunk).reshape(x.shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.chunk = inputs[5]
        ctx.save_for_backward(*inputs[:5])

    @staticmethod
    def backward(ctx, grad_y):
        x, dt, A, B, C = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad[:5])
        if any(need[1:]):
            found = iter(batched_cotangents(_recomputed, grad_y, x, dt, A, B, C, ctx.chunk, need))
            return (*(next(found) if n else None for n in need), None)
        (grad_x,) = batched_cotangents(_adjoint, grad_y, dt, A, B, C, ctx.chunk)
        return grad_x, None, None, None, None, None


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    impl: str | None = None,
) -> Tensor:
    r"""SSD scan of Mamba-2 without the skip term, differentiable in every input.

    Args:
        x (Tensor): ``(batch, length, heads, head_dim)`` scan input (after conv and SiLU).
        dt (Tensor): ``(batch, length, heads)`` positive time steps.
        A (Tensor): ``(heads,)`` continuous-time decay rates (negative).
        B (Tensor): ``(batch, length, groups, state)`` input projection; head ``h`` uses
            group ``h // (heads // groups)``.
        C (Tensor): ``(batch, length, groups, state)`` output projection.
        chunk_size (int, optional): time steps per chunk. Default: 64.
        impl (str, optional): ``"auto"``, ``"chunked"`` (this module's scan) or
            ``"fused"`` (mamba-ssm's ``mamba_chunk_scan_combined``); None for the
            setting of :func:`captum_mamba.ops.implementation`, by default ``"auto"``:
            the fused kernel on CUDA if it imports and takes the dtype, else the
            chunked scan. Default: None.

    Returns:
        Tensor: ``y`` of shape ``(batch, length, heads, head_dim)``.

    Examples::

        >>> x, dt = torch.randn(2, 8, 4, 3), torch.rand(2, 8, 4)
        >>> A, B, C = -torch.rand(4), torch.randn(2, 8, 2, 5), torch.randn(2, 8, 2, 5)
        >>> # SSM rule: the input-dependent coefficients are constants for the backward
        >>> y = ssd_scan(x, dt.detach(), A, B.detach(), C.detach())
    """
    check_one_dtype("ssd_scan", x, dt, A, B, C)
    heads, groups = x.shape[2], B.shape[2]
    if heads % groups or C.shape != B.shape:
        raise ValueError(
            f"ssd_scan needs heads ({heads}) divisible by groups ({groups}) and B, C of one "
            f"shape, got B {tuple(B.shape)} and C {tuple(C.shape)}"
        )
    if choose("ssd_scan", impl, x) == "fused":
        return fused_ssd_scan(x, dt, A, B, C, chunk_size)
    return SSDScan.apply(
        x.contiguous(), dt.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(), chunk_size
    )


@torch.no_grad()
def ssd_scan_with_state(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    state: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""SSD scan of Mamba-2 continued from a state, returning the final state.

    For generation token by token: scanning a sequence in pieces, each from the final
    state of the previous piece, gives the scan of the whole sequence. Runs the
    chunked implementation without autograd (no gradients).

    Args:
        x (Tensor): ``(batch, length, heads, head_dim)`` scan input.
        dt (Tensor): ``(batch, length, heads)`` positive time steps.
        A (Tensor): ``(heads,)`` continuous-time decay rates.
        B (Tensor): ``(batch, length, groups, state)`` input projection.
        C (Tensor): ``(batch, length, groups, state)`` output projection.
        chunk_size (int, optional): time steps per chunk. Default: 64.
        state (Tensor, optional): ``(batch, heads, head_dim, state)`` state before the
            first step; None for zeros. Default: None.

    Returns:
        tuple: ``y`` ``(batch, length, heads, head_dim)`` and the state after the last
        step ``(batch, heads, head_dim, state)``.

    Examples::

        >>> y1, h = ssd_scan_with_state(x[:, :5], dt[:, :5], A, B[:, :5], C[:, :5])
        >>> y2, h = ssd_scan_with_state(x[:, 5:], dt[:, 5:], A, B[:, 5:], C[:, 5:], state=h)
    """
    check_one_dtype("ssd_scan_with_state", x, dt, A, B, C)
    batch, _, heads, head_dim = x.shape
    groups = B.shape[2]
    u, log_decay = _grouped(x, dt, A, groups)
    grouped = (batch, groups, heads // groups, head_dim, B.shape[-1])
    initial = None if state is None else state.reshape(grouped)
    y, final = _ssd_states(u, log_decay, B, C, chunk_size, initial)
    return y.reshape(x.shape), final.reshape(batch, heads, head_dim, B.shape[-1])

"""Scan ops: the Mamba-3 recurrence (mamba-ssm's ``Mamba3``, mamba-ssm 2.3), computed
as the SSD scan of Mamba-2 it equals.

Per batch element and head ``h`` (``P`` channels, ``N`` states, ``R`` ranks; SISO is
``R = 1``), Mamba-3 discretises with the generalised trapezoid rule::

    alpha[t] = exp(A[t] dt[t]),  beta[t] = (1 - lam[t]) dt[t] alpha[t],  gamma[t] = lam[t] dt[t]
    H[t] = alpha[t] H[t-1] + beta[t] sum_r k[t-1, r] v[t-1, r]^T + gamma[t] sum_r k[t, r] v[t, r]^T
    y[t, r] = q[t, r]^T H[t] + D v[t, r],      v[t, r] = x[t] * W_x[r]   (per channel)

with ``A[t] < 0``, ``dt[t] > 0`` and ``lam[t] in (0, 1)`` input dependent and ``q``, ``k``
the biased ``C``, ``B`` rotated by the data-dependent angles
``theta[t] = sum_{s<=t} pi tanh(angle[s]) dt[s]`` (the complex-valued state as a rotary
embedding). The term of step ``s`` enters the state with ``gamma[s]`` at step ``s`` and
with ``beta[s+1] / alpha[s+1]`` one step later, so for ``s < t`` it reaches ``y[t]``
with the weight ``(gamma[s] + dt[s+1] (1 - lam[s+1])) exp(sum_{u=s+1..t} A[u] dt[u])``:
the SSD scan with log decay ``A dt`` and the key scaled by that weight, whose diagonal
(``s = t``) is corrected from this weight to ``gamma[t]``. The ranks are exact too: the
state is the sum over input ranks, so each pair (input rank, output rank) is one SSD
group and the outputs are summed over input ranks (cost ``R^2`` SISO scans).

:func:`mamba3_scan` computes it so (``"chunked"``, through
:func:`~captum_mamba.ops.ssd_scan`, with its adjoint backward) or by the recurrence
above, one step at a time (``"sequential"``, the reference); both give the same values and
gradients. :func:`mamba3_coefficients` computes the input-dependent coefficients from the
mixer's projections as mamba-ssm's ``Mamba3`` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_mamba.ops.ssd_scan import DEFAULT_CHUNK_SIZE, ssd_scan


def _rotate(vectors: Tensor, theta: Tensor, pairwise: bool) -> Tensor:
    """Rotate pairs of state entries of ``vectors`` ``(b, l, r, h, n)`` by ``theta``
    ``(b, l, h, s)``: pairs ``(2i, 2i+1)`` (``pairwise``) or ``(i, i + n/2)``, for
    ``i < s``; the other entries pass unchanged."""
    angles = theta.shape[-1]
    cos, sin = torch.cos(theta)[:, :, None], torch.sin(theta)[:, :, None]
    if pairwise:
        rotated, rest = vectors[..., : 2 * angles], vectors[..., 2 * angles :]
        first, second = rotated.unflatten(-1, (angles, 2)).unbind(-1)
        pairs = torch.stack([first * cos - second * sin, first * sin + second * cos], -1)
        return torch.cat([pairs.flatten(-2), rest], -1)
    half = vectors.shape[-1] // 2
    first, second = vectors[..., :half], vectors[..., half:]
    pad = (0, half - angles)
    cos, sin = F.pad(cos, pad, value=1.0), F.pad(sin, pad)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], -1)


def mamba3_coefficients(
    B: Tensor,
    C: Tensor,
    dt_raw: Tensor,
    decay_raw: Tensor,
    trap_raw: Tensor,
    angle_raw: Tensor,
    dt_bias: Tensor,
    B_bias: Tensor,
    C_bias: Tensor,
    a_floor: float,
    pairwise: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The input-dependent coefficients of the Mamba-3 recurrence from the mixer's
    projections, as mamba-ssm's ``Mamba3`` computes them.

    Args:
        B (Tensor): ``(batch, length, ranks, groups, state)`` normalised input projection;
            head ``h`` uses group ``h // (heads / groups)``.
        C (Tensor): like ``B``, the output projection.
        dt_raw (Tensor): ``(batch, length, heads)``: ``dt = softplus(dt_raw + dt_bias)``.
        decay_raw (Tensor): ``(batch, length, heads)``:
            ``A = min(-softplus(decay_raw), -a_floor)``.
        trap_raw (Tensor): ``(batch, length, heads)``: ``lam = sigmoid(trap_raw)``.
        angle_raw (Tensor): ``(batch, length, angles)`` rotary angle rates, shared by
            the heads.
        dt_bias (Tensor): ``(heads,)``.
        B_bias (Tensor): ``(heads, ranks, state)``.
        C_bias (Tensor): ``(heads, ranks, state)``.
        a_floor (float): smallest decay rate ``-A``.
        pairwise (bool): rotate pairs ``(2i, 2i+1)`` (SISO) or ``(i, i + state/2)``
            (MIMO).

    Returns:
        tuple of Tensor: ``dt``, ``log_decay = A dt`` and ``lam``, each
        ``(batch, length, heads)``, and the rotated ``q`` and ``k``, each
        ``(batch, length, ranks, heads, state)``.
    """
    heads = dt_bias.shape[0]
    dt = F.softplus(dt_raw + dt_bias)
    log_decay = torch.clamp(-F.softplus(decay_raw), max=-a_floor) * dt
    lam = torch.sigmoid(trap_raw)
    theta = torch.cumsum(torch.tanh(angle_raw)[:, :, None] * math.pi * dt[..., None], dim=1)
    group = torch.arange(heads, device=B.device) // (heads // B.shape[3])
    k = _rotate(B[:, :, :, group] + B_bias.transpose(0, 1), theta, pairwise)
    q = _rotate(C[:, :, :, group] + C_bias.transpose(0, 1), theta, pairwise)
    return dt, log_decay, lam, q, k


def _chunked(
    x: Tensor, dt: Tensor, log_decay: Tensor, lam: Tensor, q: Tensor, k: Tensor, chunk: int
) -> Tensor:
    """Sum over ``D``-free outputs by the SSD scan; ``x`` ``(b, l, r, h, p)`` per rank."""
    batch, length, ranks, heads, width = x.shape
    state = k.shape[-1]
    gamma = dt * lam
    beta_next = F.pad((dt * (1 - lam))[:, 1:], (0, 0, 0, 1))  # dt[t+1] (1 - lam[t+1])
    step = -log_decay  # the SSD's time step for A = -1: its decay is exp(A dt)
    key = k * ((gamma + beta_next) / step)[:, :, None, :, None]
    pairs = (batch, length, ranks, ranks, heads)  # (input rank, output rank, head)
    u = x[:, :, :, None].expand(*pairs, width).reshape(batch, length, -1, width)
    B = key[:, :, :, None].expand(*pairs, state).reshape(batch, length, -1, state)
    C = q[:, :, None].expand(*pairs, state).reshape(batch, length, -1, state)
    steps = step[:, :, None, None].expand(*pairs).reshape(batch, length, -1)
    A = -torch.ones(steps.shape[-1], dtype=x.dtype, device=x.device)
    y = ssd_scan(u, steps, A, B, C, chunk).reshape(*pairs, width).sum(2)
    # the diagonal enters with gamma[t] only: remove the weight of the next step
    scores = torch.einsum("blohn,blihn->bloih", q, k) * beta_next[:, :, None, None]
    return y - torch.einsum("bloih,blihp->blohp", scores, x)


def _sequential(
    x: Tensor, dt: Tensor, log_decay: Tensor, lam: Tensor, q: Tensor, k: Tensor
) -> Tensor:
    """The trapezoid recurrence one step at a time (the reference)."""
    batch, length, _, heads, width = x.shape
    H = x.new_zeros(batch, heads, width, k.shape[-1])
    previous = x.new_zeros(batch, heads, width, k.shape[-1])
    outputs = []
    for t in range(length):
        alpha = torch.exp(log_decay[:, t])[..., None, None]
        beta = ((1 - lam[:, t]) * dt[:, t])[..., None, None] * alpha
        current = torch.einsum("brhp,brhn->bhpn", x[:, t], k[:, t])
        H = alpha * H + beta * previous + (lam[:, t] * dt[:, t])[..., None, None] * current
        previous = current
        outputs.append(torch.einsum("bhpn,brhn->brhp", H, q[:, t]))
    return torch.stack(outputs, 1)


def mamba3_scan(
    x: Tensor,
    dt: Tensor,
    log_decay: Tensor,
    lam: Tensor,
    q: Tensor,
    k: Tensor,
    D: Tensor,
    x_weight: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    impl: str = "chunked",
) -> Tensor:
    r"""The Mamba-3 recurrence (see the module), differentiable in every input.

    Args:
        x (Tensor): ``(batch, length, heads, head_dim)`` the values.
        dt (Tensor): ``(batch, length, heads)`` positive time steps.
        log_decay (Tensor): ``(batch, length, heads)`` negative ``A dt``.
        lam (Tensor): ``(batch, length, heads)`` trapezoid weights in ``(0, 1)``.
        q (Tensor): ``(batch, length, ranks, heads, state)`` rotated output projections.
        k (Tensor): like ``q``, the rotated input projections.
        D (Tensor): ``(heads,)`` skip weights.
        x_weight (Tensor, optional): ``(ranks, heads, head_dim)`` the MIMO up-projection
            of the values; None for SISO (one rank). Default: None.
        chunk_size (int, optional): time steps per chunk of the SSD scan. Default: 64.
        impl (str, optional): ``"chunked"`` (the SSD scan) or ``"sequential"`` (the
            recurrence, one step at a time). Default: ``"chunked"``.

    Returns:
        Tensor: ``(batch, length, ranks, heads, head_dim)`` the output of every rank.

    Examples::

        >>> x, dt, lam = torch.randn(2, 6, 3, 4), torch.rand(2, 6, 3), torch.rand(2, 6, 3)
        >>> q, k = torch.randn(2, 6, 1, 3, 8), torch.randn(2, 6, 1, 3, 8)
        >>> y = mamba3_scan(x, dt, -dt, lam, q, k, torch.ones(3))
    """
    values = x[:, :, None] if x_weight is None else x[:, :, None] * x_weight
    if impl == "chunked":
        y = _chunked(values, dt, log_decay, lam, q, k, chunk_size)
    elif impl == "sequential":
        y = _sequential(values, dt, log_decay, lam, q, k)
    else:
        raise ValueError(f"impl must be 'chunked' or 'sequential', got {impl!r}")
    return y + D[:, None] * values

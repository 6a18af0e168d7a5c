r"""Baselines: the hidden attention matrices of Mamba's selective SSM (Ali et al., 2024).

Unrolling the recurrence ``h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t``,
``y_t = C_t h_t + D x_t`` of one channel ``d`` gives ``y_i = sum_j alpha[d, i, j] x_j
+ D_d x_i`` with the causal *hidden attention*

.. math::

    \alpha[d, i, j] = \sum_n C_i[n] \exp\Big(A[d, n] \sum_{k=j+1}^{i} dt_k[d]\Big)
                      dt_j[d] B_j[n] \qquad (j \le i).

Numerics. With ``S[t, d] = sum_{k <= t} dt_k[d]`` the exponent is
``A[d, n] (S[i, d] - S[j, d])``, never positive for ``j <= i`` because ``A < 0`` and
``dt >= 0``; ``exp(A S[i])`` and ``exp(-A S[j])`` on their own would overflow on long
sequences. The ``(i, j)`` plane is split by recursive bisection: a rectangle of rows
``i > r`` and columns ``j <= r`` factorises through the reference position ``r`` as
``exp(A (S[i] - S[r])) * exp(A (S[r] - S[j]))``, two factors with non-positive
exponents, so the rectangle is one (batched) matrix product over the state (and, for
channel means, over the channels too); the small diagonal leaves are computed
directly with the exponent masked to ``<= 0``. ``S`` is accumulated in float64.
Memory is bounded by ``chunk_elements`` work buffers plus the ``(L, L)`` (or
``(D, L, L)``) result; the ``(L, L, D, N)`` tensor is never formed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

#: Elements of one work buffer of the blocked computation.
DEFAULT_CHUNK_ELEMENTS = 1 << 22
#: Largest diagonal block computed directly (the rest is factorised).
DEFAULT_LEAF_SIZE = 8


@dataclass(frozen=True)
class SelectiveSSMInputs:
    r"""Inputs of one selective SSM ``y = scan(x; exp(dt A), dt B, C) + D x``.

    Mamba-1 has one ``B`` and ``C`` for all channels; Mamba-2 shares them within groups
    of heads, so they carry a group dimension and channel ``d`` uses group
    ``d // (channels / groups)``.

    Args:
        x (Tensor): ``(batch, length, channels)`` scan input.
        dt (Tensor): ``(batch, length, channels)`` non-negative time steps.
        A (Tensor): ``(channels, state)`` negative state matrix.
        B (Tensor): ``(batch, length, state)`` or ``(batch, length, groups, state)``.
        C (Tensor): the same shape as ``B``.
        D (Tensor or None): ``(channels,)`` skip weight.
    """

    x: Tensor
    dt: Tensor
    A: Tensor
    B: Tensor
    C: Tensor
    D: Tensor | None

    def prefix(self, length: int) -> SelectiveSSMInputs:
        """The inputs of the first ``length`` positions (the SSM is causal)."""
        return SelectiveSSMInputs(
            self.x[:, :length],
            self.dt[:, :length],
            self.A,
            self.B[:, :length],
            self.C[:, :length],
            self.D,
        )

    def output(self) -> Tensor:
        """``y`` of the recurrence, by a loop over time (for checks; O(length) steps)."""
        batch, length, channels = self.x.shape
        B, C = _per_channel(self.B, channels), _per_channel(self.C, channels)
        h = self.x.new_zeros(batch, channels, self.A.shape[1])
        ys = []
        for t in range(length):
            drive = self.dt[:, t, :, None] * B[:, t] * self.x[:, t, :, None]
            h = torch.exp(self.dt[:, t, :, None] * self.A) * h + drive
            ys.append((h * C[:, t]).sum(-1))
        y = torch.stack(ys, dim=1)
        return y if self.D is None else y + self.x * self.D


def _per_channel(t: Tensor, channels: int) -> Tensor:
    """``(b, l, state)`` or grouped ``(b, l, groups, state)`` -> per channel
    ``(b, l, channels or 1, state)``."""
    if t.dim() == 3:
        return t[:, :, None, :]
    return t.repeat_interleave(channels // t.shape[2], dim=2)


def ssd_as_selective(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None
) -> SelectiveSSMInputs:
    """The Mamba-2 (multi-head) SSM written as a selective SSM over ``heads * head_dim``
    channels: each head's scalar decay and time step are repeated over its channels.

    Args:
        x (Tensor): ``(batch, length, heads, head_dim)``.
        dt (Tensor): ``(batch, length, heads)``.
        A (Tensor): ``(heads,)``.
        B (Tensor): ``(batch, length, groups, state)``.
        C (Tensor): ``(batch, length, groups, state)``.
        D (Tensor or None): ``(heads,)`` or ``(heads, head_dim)``.

    Returns:
        SelectiveSSMInputs: the same map ``x -> y``.
    """
    batch, length, heads, head_dim = x.shape
    state = B.shape[-1]
    channel_A = A.repeat_interleave(head_dim)[:, None].expand(-1, state)
    if D is not None:
        D = (D[:, None].expand(-1, head_dim) if D.dim() == 1 else D).reshape(-1)
    return SelectiveSSMInputs(
        x.reshape(batch, length, heads * head_dim),
        dt.repeat_interleave(head_dim, dim=-1),
        channel_A,
        B,
        C,
        D,
    )


def _bisect(start: int, stop: int, leaf: int) -> Iterator[tuple[str, int, int, int]]:
    """Cover the causal triangle of ``[start, stop)``: diagonal leaves ``("diag", s, e, -)``
    and rectangles ``("cross", s, m, e)`` = rows ``[m, e)`` x columns ``[s, m)``."""
    if stop - start <= leaf:
        yield "diag", start, stop, stop
        return
    middle = (start + stop) // 2
    yield from _bisect(start, middle, leaf)
    yield from _bisect(middle, stop, leaf)
    yield "cross", start, middle, stop


def _cross_tile(
    ssm: SelectiveSSMInputs, cumdt: Tensor, rows: slice, cols: slice, per_channel: bool
) -> Tensor:
    """Rows strictly after ``cols``; reference position = last column."""
    ref = cumdt[:, cols.stop - 1, None]
    dtype = ssm.x.dtype
    row_gap = (cumdt[:, rows] - ref).to(dtype)
    col_gap = (ref - cumdt[:, cols]).to(dtype)
    channels = ssm.x.shape[2]
    c_factor = _per_channel(ssm.C[:, rows], channels) * torch.exp(row_gap[..., None] * ssm.A)
    b_factor = (ssm.dt[:, cols, :, None] * _per_channel(ssm.B[:, cols], channels)) * torch.exp(
        col_gap[..., None] * ssm.A
    )
    if per_channel:
        return torch.einsum("bidn,bjdn->bdij", c_factor, b_factor)
    return torch.einsum("bidn,bjdn->bij", c_factor, b_factor) / ssm.A.shape[0]


def _diagonal_tile(ssm: SelectiveSSMInputs, cumdt: Tensor, span: slice) -> Tensor:
    """Per-channel ``(batch, channels, l, l)`` attention of a small diagonal block,
    computed on its ``j <= i`` pairs only (exponents ``<= 0``)."""
    size = span.stop - span.start
    rows, cols = torch.tril_indices(size, size, device=cumdt.device)
    gap = (cumdt[:, span][:, rows] - cumdt[:, span][:, cols]).to(ssm.x.dtype)  # (b, P, d)
    channels = ssm.x.shape[2]
    drive = ssm.dt[:, span, :, None] * _per_channel(ssm.B[:, span], channels)  # (b, l, d, n)
    terms = torch.exp(gap[..., None] * ssm.A) * drive[:, cols]
    c = _per_channel(ssm.C[:, span], channels)[:, rows]  # (b, P, d or 1, n)
    pairs = (terms * c).sum(-1).transpose(1, 2)  # (b, d, P)
    tile = pairs.new_zeros(*pairs.shape[:2], size, size)
    tile[:, :, rows, cols] = pairs
    return tile


def _tiles(
    ssm: SelectiveSSMInputs, per_channel: bool, leaf: int, chunk_elements: int
) -> Iterator[tuple[slice, slice, Tensor]]:
    """Yield ``(rows, cols, tile)`` covering the causal triangle of the attention.

    ``tile`` is ``(batch, channels, r, c)`` if ``per_channel`` (or for diagonal
    leaves) and the channel mean ``(batch, r, c)`` otherwise.
    """
    batch, length, channels = ssm.x.shape
    state = ssm.A.shape[1]
    cumdt = torch.cumsum(ssm.dt.to(torch.float64), dim=1)
    side = max(1, chunk_elements // max(1, batch * channels * state))
    if per_channel:
        side = max(1, min(side, int((chunk_elements // max(1, batch * channels)) ** 0.5)))
    for kind, start, middle, stop in _bisect(0, length, leaf):
        if kind == "diag":
            span = slice(start, stop)
            yield span, span, _diagonal_tile(ssm, cumdt, span)
            continue
        for row in range(middle, stop, side):
            for col in range(start, middle, side):
                rows = slice(row, min(row + side, stop))
                cols = slice(col, min(col + side, middle))
                # Reference position: the last column of this tile (<= middle - 1).
                yield rows, cols, _cross_tile(ssm, cumdt, rows, cols, per_channel)


def hidden_attention_matrices(
    ssm: SelectiveSSMInputs,
    leaf_size: int = DEFAULT_LEAF_SIZE,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Tensor:
    r"""Per-channel hidden attention ``alpha[b, d, i, j]`` of one selective SSM.

    Args:
        ssm (SelectiveSSMInputs): the SSM inputs.
        leaf_size (int, optional): largest diagonal block computed directly.
            Default: 8.
        chunk_elements (int, optional): elements of one work buffer. Default: ``2**22``.

    Returns:
        Tensor: ``(batch, channels, length, length)``, zero above the diagonal, such
        that ``y[b, i, d] = sum_j alpha[b, d, i, j] x[b, j, d] + D[d] x[b, i, d]``.

    Examples::

        >>> layers = record_ssm_inputs(model, embeds)
        >>> alpha = hidden_attention_matrices(layers[0].ssms[0].inputs)  # (batch, channels, L, L)
    """
    batch, length, channels = ssm.x.shape
    out = ssm.x.new_zeros(batch, channels, length, length)
    for rows, cols, tile in _tiles(ssm, True, leaf_size, chunk_elements):
        out[:, :, rows, cols] = tile
    return out


def mean_hidden_attention(
    ssm: SelectiveSSMInputs,
    leaf_size: int = DEFAULT_LEAF_SIZE,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> Tensor:
    """Channel mean ``mean_d alpha[b, d, i, j]`` of the hidden attention.

    The off-diagonal blocks contract channels and states in one matrix product, so
    this costs about as much as one ``(L, D*N) x (D*N, L)`` product.

    Args:
        ssm (SelectiveSSMInputs): the SSM inputs.
        leaf_size (int, optional): largest diagonal block computed directly.
            Default: 8.
        chunk_elements (int, optional): elements of one work buffer. Default: ``2**22``.

    Returns:
        Tensor: ``(batch, length, length)`` lower-triangular matrices.
    """
    batch, length, _ = ssm.x.shape
    out = ssm.x.new_zeros(batch, length, length)
    for rows, cols, tile in _tiles(ssm, False, leaf_size, chunk_elements):
        out[:, rows, cols] = tile.mean(1) if tile.dim() == 4 else tile
    return out


def positive_hidden_attention(
    ssm: SelectiveSSMInputs,
    leaf_size: int = DEFAULT_LEAF_SIZE,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Channel mean of the positive part ``mean_d max(alpha[b, d, i, j], 0)``, and its
    largest element per example ``max_{d,i,j} max(alpha, 0)``.

    Args:
        ssm (SelectiveSSMInputs): the SSM inputs.
        leaf_size (int, optional): largest diagonal block computed directly.
            Default: 8.
        chunk_elements (int, optional): elements of one work buffer. Default: ``2**22``.

    Returns:
        tuple: ``(batch, length, length)`` means and ``(batch,)`` maxima.
    """
    batch, length, _ = ssm.x.shape
    out = ssm.x.new_zeros(batch, length, length)
    largest = ssm.x.new_zeros(batch)
    for rows, cols, tile in _tiles(ssm, True, leaf_size, chunk_elements):
        positive = tile.clamp_min(0)
        out[:, rows, cols] = positive.mean(1)
        largest = torch.maximum(largest, positive.amax(dim=(1, 2, 3)))
    return out, largest

r"""Scan ops: the matrix-memory recurrence of xLSTM's mLSTM cell (Beck et al., 2024), as
transformers' ``xLSTMModel`` computes it, with a sequential reference and a chunked fast
path.

Per head, with the queries scaled by ``1 / sqrt(d_qk)``, the input gate
``i[t] = exp(ig[t])`` and the forget gate ``f[t] = sigmoid(fg[t])`` (pre-activations
``ig``, ``fg`` soft-capped by ``cap tanh(x / cap)``), the cell keeps a matrix memory, a
normaliser and a stabiliser, starting from ``C = 0``, ``n = 0``, ``m = 0``::

    m[t] = max(log f[t] + m[t-1], ig[t])
    C[t] = exp(log f[t] + m[t-1] - m[t]) C[t-1] + exp(ig[t] - m[t]) k[t] v[t]^T
    n[t] = exp(log f[t] + m[t-1] - m[t]) n[t-1] + exp(ig[t] - m[t]) k[t]
    h[t] = q[t]^T C[t] / (max(|q[t]^T n[t]|, exp(-m[t])) + eps)

``C`` and ``n`` are the unstabilised sums ``sum_s f[s+1..t] i[s] k[s] v[s]^T`` times
``exp(-m[t])``, so the output is the causal linear attention

.. math::

    h_t = \frac{\sum_{s \le t} (q_t \cdot k_s)\, e^{ig_s + b_t - b_s - m_t}\, v_s}
               {\max\big(|\sum_{s \le t} (q_t \cdot k_s)\, e^{ig_s + b_t - b_s - m_t}|,
                e^{-m_t}\big) + \epsilon},
    \qquad b_t = \sum_{r \le t} \log f_r,
    \qquad m_t = \max\big(b_t, \max_{s \le t} (b_t - b_s + ig_s)\big),

whose matrix :func:`mlstm_attention` returns. The numerator and the denominator's sum are
the same read-out of ``values = [v, 1]`` (:func:`mlstm_scan`), so one scan gives both.
:func:`mlstm_sequential` steps the recurrence above; :func:`mlstm_chunked` computes it
chunk by chunk (the stabilised intra-chunk attention plus the state carried between
chunks, whose stabiliser at a chunk's end is the recurrence's, so values agree to
rounding and gradients too: both are plain differentiable tensor code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mlstm_gates(igate: Tensor, fgate: Tensor, cap: float | None) -> tuple[Tensor, Tensor]:
    """The log input and log forget gates from their pre-activations.

    Args:
        igate (Tensor): ``(batch, heads, length)`` input-gate pre-activations.
        fgate (Tensor): ``(batch, heads, length)`` forget-gate pre-activations.
        cap (float or None): the soft cap ``cap tanh(x / cap)`` of both; None for none.

    Returns:
        tuple of Tensor: ``(log_i, log_f)``: the capped ``igate`` and
        ``logsigmoid`` of the capped ``fgate``.
    """
    if cap is not None:
        igate, fgate = cap * torch.tanh(igate / cap), cap * torch.tanh(fgate / cap)
    return igate, F.logsigmoid(fgate)


def _chunk(
    q: Tensor, k: Tensor, log_i: Tensor, log_f: Tensor, m_start: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The stabilised causal attention of one chunk given the stabiliser before it.

    Returns:
        tuple of Tensor: the scores ``(q_t . k_s) exp(ig_s + b_t - b_s - m_t)``
        ``(batch, heads, c, c)`` (zero above the diagonal), the stabiliser ``m``
        ``(batch, heads, c)`` and the decay ``exp(b_t + m_start - m_t)`` of the state
        carried into the chunk ``(batch, heads, c)``, with ``b`` the cumulative log
        forget gate from the chunk's start.
    """
    length = q.shape[-2]
    cumulative = log_f.cumsum(-1)
    log_decay = cumulative[..., :, None] - cumulative[..., None, :] + log_i[..., None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    log_decay = torch.where(causal, log_decay, -torch.inf)
    carried = cumulative + m_start[..., None]
    m = torch.maximum(carried, log_decay.amax(-1))
    scale = q.shape[-1] ** -0.5
    scores = (q @ k.transpose(-1, -2)) * scale * torch.exp(log_decay - m[..., None])
    return scores, m, torch.exp(carried - m)


def mlstm_sequential(
    q: Tensor, k: Tensor, values: Tensor, log_i: Tensor, log_f: Tensor
) -> tuple[Tensor, Tensor]:
    """The stabilised read-out ``q[t]^T C[t]`` of the mLSTM memory, one time step at a
    time (the reference).

    Args:
        q (Tensor): ``(batch, heads, length, d_qk)`` queries (unscaled).
        k (Tensor): ``(batch, heads, length, d_qk)`` keys.
        values (Tensor): ``(batch, heads, length, d_v)`` values.
        log_i (Tensor): ``(batch, heads, length)`` log input gates.
        log_f (Tensor): ``(batch, heads, length)`` log forget gates.

    Returns:
        tuple of Tensor: ``(batch, heads, length, d_v)`` read-outs and the
        ``(batch, heads, length)`` stabilisers ``m``.
    """
    scale = q.shape[-1] ** -0.5
    memory = q.new_zeros(*q.shape[:2], q.shape[-1], values.shape[-1])
    m = q.new_zeros(q.shape[:2])
    outputs, stabilisers = [], []
    for t in range(q.shape[2]):
        m_next = torch.maximum(log_f[..., t] + m, log_i[..., t])
        forget = torch.exp(log_f[..., t] + m - m_next)[..., None, None]
        write = torch.exp(log_i[..., t] - m_next)[..., None, None]
        memory = forget * memory + write * (k[..., t, :, None] * values[..., t, None, :])
        outputs.append(((q[..., t, :, None] * scale) * memory).sum(-2))
        stabilisers.append(m_next)
        m = m_next
    return torch.stack(outputs, 2), torch.stack(stabilisers, 2)


def mlstm_chunked(
    q: Tensor, k: Tensor, values: Tensor, log_i: Tensor, log_f: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """:func:`mlstm_sequential` computed chunk by chunk: attention inside a chunk, the
    memory carried between chunks (the last chunk may be shorter).

    Args:
        q, k, values, log_i, log_f: see :func:`mlstm_sequential`.
        chunk_size (int): time steps per chunk.

    Returns:
        tuple of Tensor: as :func:`mlstm_sequential`.
    """
    memory = q.new_zeros(*q.shape[:2], q.shape[-1], values.shape[-1])
    m_start = q.new_zeros(q.shape[:2])
    scale = q.shape[-1] ** -0.5
    outputs, stabilisers = [], []
    for start in range(0, q.shape[2], chunk_size):
        part = slice(start, start + chunk_size)
        q_c, k_c, v_c = q[..., part, :], k[..., part, :], values[..., part, :]
        i_c, f_c = log_i[..., part], log_f[..., part]
        scores, m, carried = _chunk(q_c, k_c, i_c, f_c, m_start)
        outputs.append(carried[..., None] * ((q_c * scale) @ memory) + scores @ v_c)
        stabilisers.append(m)
        # the memory at the chunk's end, stabilised by the recurrence's m there
        cumulative = f_c.cumsum(-1)
        total, m_end = cumulative[..., -1], m[..., -1]
        weights = torch.exp(total[..., None] - cumulative + i_c - m_end[..., None])
        decay = torch.exp(total + m_start - m_end)[..., None, None]
        memory = decay * memory + (k_c * weights[..., None]).transpose(-1, -2) @ v_c
        m_start = m_end
    return torch.cat(outputs, 2), torch.cat(stabilisers, 2)


def mlstm_scan(
    q: Tensor,
    k: Tensor,
    values: Tensor,
    log_i: Tensor,
    log_f: Tensor,
    chunk_size: int | None = 64,
) -> tuple[Tensor, Tensor]:
    """The mLSTM read-out: chunked (the fast path) or, with ``chunk_size=None``,
    sequential; both give the same values and gradients.

    Args:
        q, k, values, log_i, log_f: see :func:`mlstm_sequential`.
        chunk_size (int or None, optional): time steps per chunk; None for the
            sequential reference. Default: 64.

    Returns:
        tuple of Tensor: as :func:`mlstm_sequential`.
    """
    if chunk_size is None:
        return mlstm_sequential(q, k, values, log_i, log_f)
    return mlstm_chunked(q, k, values, log_i, log_f, chunk_size)


def mlstm_denominator(read_out: Tensor, m: Tensor, eps: float) -> Tensor:
    """The normaliser ``max(|q^T n|, exp(-m)) + eps`` from the read-out ``q^T n`` of the
    normaliser state (the scan of ``values = 1``) and the stabiliser ``m``."""
    return torch.maximum(read_out.abs(), torch.exp(-m)) + eps


def mlstm_attention(q: Tensor, k: Tensor, log_i: Tensor, log_f: Tensor, eps: float) -> Tensor:
    """The mLSTM's causal attention matrix ``A``: its output is ``h = A v`` exactly.

    Args:
        q, k, log_i, log_f: see :func:`mlstm_sequential`.
        eps (float): the normaliser's epsilon.

    Returns:
        Tensor: ``(batch, heads, length, length)``, row ``t`` the weights of output ``t``
        (zero above the diagonal).
    """
    scores, m, _ = _chunk(q, k, log_i, log_f, q.new_zeros(q.shape[:2]))
    return scores / mlstm_denominator(scores.sum(-1), m, eps)[..., None]

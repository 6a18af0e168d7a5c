"""Scan ops: the gated delta rule (Gated DeltaNet of Qwen3-Next and OLMo-Hybrid; Kimi Delta
Attention with a decay per key channel).

Per batch element and head, with keys and queries of ``dk`` channels and values of
``dv``, the state ``S`` (``dk x dv``) evolves as::

    S[t] = (I - beta[t] k[t] k[t]^T) diag(exp(g[t])) S[t-1] + beta[t] w[t] v[t]^T
    o[t] = S[t]^T q[t]

with the log decay ``g[t] <= 0`` one number per head (broadcast over the key channels) or
one per key channel, the step size ``beta[t]`` and the *write key* ``w[t]``, which equals
the key ``k[t]`` in the model. The key appears twice: in the transition ``I - beta k k^T``
and in the write ``w v^T``. Passing them separately lets the rules keep the transition
constant while relevance flows through the write (:func:`~captum_mamba.rules.functional.
gated_delta_rule`); the values are the same.

:func:`delta_rule_sequential` runs the recurrence one time step at a time (the obvious
form). :func:`delta_rule_chunked` computes the same values (and, by autograd, the same
gradients for every input) in chunks of time steps. Inside a chunk starting from the
state ``S0``, write the state after the decay as ``S'[t]`` and the erased part as
``e[t] = -beta[t] S'[t]^T k[t]``; then ``S[t] = S'[t] + k[t] e[t]^T + beta[t] w[t]
v[t]^T`` and, with ``D[t, s] = exp(G[t] - G[s])`` (``G`` the cumulative log decay in the
chunk, per channel)::

    (I + diag(beta) A_kk) e = -diag(beta) ((k * exp(G)) S0 + A_kw (beta v))
    o = (q * exp(G)) S0 + Q_k e + Q_w (beta v)
    S_end = exp(G_end) * S0 + (k * D_end)^T e + (w * D_end)^T (beta v)

where ``A_kk[t, s] = sum_i k[t, i] D[t, s, i] k[s, i]`` and ``A_kw`` (with ``w[s]``) are
strictly lower triangular, ``Q_k`` and ``Q_w`` (with ``q[t]``) lower triangular with the
diagonal. The unit lower-triangular system is solved for all chunks at once, and the
states are carried across chunks by a loop over chunks. Every pairwise decay is an
``exp`` of a non-positive number, so no intermediate overflows.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Time steps per chunk of :func:`delta_rule_chunked`.
DEFAULT_CHUNK_SIZE = 32


def _decay_channels(log_decay: Tensor) -> Tensor:
    """``(batch, heads, length, 1 or dk)`` log decays from ``(..., length)`` or
    ``(..., length, dk)``."""
    return log_decay[..., None] if log_decay.dim() == 3 else log_decay


def delta_rule_sequential(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_decay: Tensor,
    write_key: Tensor | None = None,
) -> Tensor:
    """The gated delta rule one time step at a time, from a zero state.

    Args:
        q (Tensor): ``(batch, heads, length, dk)`` queries (already normalised and
            scaled).
        k (Tensor): ``(batch, heads, length, dk)`` keys of the transition.
        v (Tensor): ``(batch, heads, length, dv)`` values.
        beta (Tensor): ``(batch, heads, length)`` step sizes.
        log_decay (Tensor): ``(batch, heads, length)`` (one decay per head) or
            ``(batch, heads, length, dk)`` (one per key channel) log decays ``g <= 0``.
        write_key (Tensor, optional): keys of the writes ``beta w v^T``; None for ``k``.
            Default: None.

    Returns:
        Tensor: ``(batch, heads, length, dv)`` outputs ``o``.
    """
    w = k if write_key is None else write_key
    decay = torch.exp(_decay_channels(log_decay))
    state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    outputs = []
    for t in range(q.shape[2]):
        state = decay[:, :, t, :, None] * state
        erased = -beta[:, :, t, None] * torch.einsum("bhk,bhkv->bhv", k[:, :, t], state)
        written = beta[:, :, t, None] * v[:, :, t]
        state = state + k[:, :, t, :, None] * erased[..., None, :]
        state = state + w[:, :, t, :, None] * written[..., None, :]
        outputs.append(torch.einsum("bhk,bhkv->bhv", q[:, :, t], state))
    return torch.stack(outputs, 2)


def _chunks(x: Tensor, chunk: int) -> Tensor:
    """``(batch, heads, length, ...)`` zero-padded to whole chunks, as
    ``(batch, heads, chunks, chunk, ...)``."""
    pad = -x.shape[2] % chunk
    if pad:
        x = torch.cat([x, x.new_zeros(*x.shape[:2], pad, *x.shape[3:])], 2)
    return x.unflatten(2, (-1, chunk))


def _pairwise(left: Tensor, right: Tensor, decays: Tensor) -> Tensor:
    """``out[..., t, s] = sum_i left[..., t, i] decays[..., t, s, i] right[..., s, i]``
    (``decays`` with one channel broadcast over ``i``)."""
    if decays.shape[-1] == 1:
        return (left @ right.transpose(-1, -2)) * decays[..., 0]
    return torch.einsum("...ti,...tsi,...si->...ts", left, decays, right)


def delta_rule_chunked(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_decay: Tensor,
    write_key: Tensor | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """The gated delta rule in chunks of time steps; the values and the gradients of
    :func:`delta_rule_sequential`.

    Args:
        q, k, v, beta, log_decay, write_key: see :func:`delta_rule_sequential`.
        chunk_size (int, optional): time steps per chunk. Default:
            :data:`DEFAULT_CHUNK_SIZE`.

    Returns:
        Tensor: ``(batch, heads, length, dv)`` outputs ``o``.
    """
    length = q.shape[2]
    chunk = max(1, min(chunk_size, length))
    w = k if write_key is None else write_key
    g = _chunks(_decay_channels(log_decay), chunk)  # padded steps: no decay, no write
    q_, k_, w_ = (_chunks(x, chunk) for x in (q, k, w))
    written = _chunks(beta[..., None] * v, chunk)
    b = _chunks(beta, chunk)[..., None]
    cumulative = g.cumsum(3)  # (b, h, n, c, 1 or dk)
    lower = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    exponent = cumulative[..., :, None, :] - cumulative[..., None, :, :]
    exponent = exponent.masked_fill(~lower[..., None], float("-inf"))
    decays = torch.exp(exponent)  # (b, h, n, t, s, 1 or dk), zero above the diagonal
    strict = ~torch.eye(chunk, dtype=torch.bool, device=q.device)
    a_kk = _pairwise(k_, k_, decays).masked_fill(~strict, 0.0)
    a_kw = _pairwise(k_, w_, decays).masked_fill(~strict, 0.0)
    q_k, q_w = _pairwise(q_, k_, decays), _pairwise(q_, w_, decays)
    system = torch.eye(chunk, dtype=q.dtype, device=q.device) + b * a_kk
    start = torch.exp(cumulative)
    solve = lambda rhs: torch.linalg.solve_triangular(  # noqa: E731
        system, rhs, upper=False, unitriangular=True
    )
    u, W = solve(-b * (a_kw @ written)), solve(-b * (k_ * start))  # e = u + W S0 per chunk
    read = q_ * start + q_k @ W  # o = read S0 + local
    local = q_k @ u + q_w @ written
    to_end = torch.exp(cumulative[..., -1:, :] - cumulative)  # (b, h, n, c, 1 or dk)
    carry = (k_ * to_end).transpose(-1, -2)
    transition = start[..., -1, :, None] * torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    transition = transition + carry @ W  # S_end = transition S0 + update
    update = carry @ u + (w_ * to_end).transpose(-1, -2) @ written
    state = q.new_zeros(*q.shape[:2], q.shape[-1], v.shape[-1])
    outputs = []
    for n in range(q_.shape[2]):
        outputs.append(read[:, :, n] @ state + local[:, :, n])
        state = transition[:, :, n] @ state + update[:, :, n]
    return torch.stack(outputs, 2).flatten(2, 3)[:, :, :length]


def delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    log_decay: Tensor,
    write_key: Tensor | None = None,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> Tensor:
    """The gated delta rule, chunked (``chunk_size``) or one step at a time (None).

    Args:
        q, k, v, beta, log_decay, write_key: see :func:`delta_rule_sequential`.
        chunk_size (int or None, optional): time steps per chunk, None for the
            sequential loop. Default: :data:`DEFAULT_CHUNK_SIZE`.

    Returns:
        Tensor: ``(batch, heads, length, dv)`` outputs ``o``.
    """
    if chunk_size is None:
        return delta_rule_sequential(q, k, v, beta, log_decay, write_key)
    return delta_rule_chunked(q, k, v, beta, log_decay, write_key, chunk_size)


def delta_rule_weights(q: Tensor, k: Tensor, beta: Tensor, log_decay: Tensor) -> Tensor:
    """The implicit attention of the gated delta rule: ``o[t] = sum_s W[t, s] v[s]`` with
    ``W[t, s] = beta[s] q[t]^T P(t <- s) k[s]`` and ``P(t <- s)`` the product of the
    transitions after step ``s``.

    Args:
        q, k, beta, log_decay: see :func:`delta_rule_sequential`.

    Returns:
        Tensor: ``(batch, heads, length, length)``, zero above the diagonal.
    """
    length = q.shape[2]
    identity = torch.eye(length, dtype=q.dtype, device=q.device).expand(*q.shape[:2], -1, -1)
    return delta_rule_chunked(q, k, identity, beta, log_decay)

"""Scan ops: the WKV recurrence of RWKV-4 (time mixing).

Per channel, with the decay ``w = exp(time_decay) > 0`` and the bonus ``u = time_first``
of the current token (both parameters, not inputs), the output at position ``t`` is a
weighted mean of the values ``v[s]``, ``s <= t``::

    wkv[t] = sum_s exp(l[t, s]) v[s] / sum_s exp(l[t, s]),
    l[t, s] = k[s] - (t - 1 - s) w   (s < t),    l[t, t] = k[t] + u

that is, causal softmax attention of each channel over its own keys with the position
bias ``-(t - 1 - s) w`` (and ``u`` on the diagonal). transformers computes it as a
recurrence over the numerator and denominator, each stored with a running maximum of
the exponents so that no exponential overflows; :func:`wkv_sequential` is that
recurrence and :func:`wkv_chunked` the same values in blocks of positions (a dense
softmax inside each block, the recurrence's state between blocks). The maxima only
stabilise: the values do not depend on them, so they are constants of the backward and
both implementations have the gradients of the formula above. :func:`wkv_weights`
gives the weights ``exp(l[t, s]) / sum_s exp(l[t, s])`` themselves (the implicit
attention matrix of each channel).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Positions per block of :func:`wkv_chunked`.
CHUNK_SIZE = 16


def wkv_sequential(k: Tensor, v: Tensor, time_decay: Tensor, time_first: Tensor) -> Tensor:
    """The WKV recurrence one position at a time, with transformers' stabilisation.

    Args:
        k (Tensor): ``(batch, length, channels)`` keys.
        v (Tensor): ``(batch, length, channels)`` values.
        time_decay (Tensor): ``(channels,)`` log decay rates (``w = exp(time_decay)``).
        time_first (Tensor): ``(channels,)`` the bonus ``u`` of the current position.

    Returns:
        Tensor: ``(batch, length, channels)``.
    """
    decay = -torch.exp(time_decay)
    numerator = torch.zeros_like(v[:, 0])
    denominator = torch.zeros_like(k[:, 0])
    peak = torch.full_like(k[:, 0], -torch.inf)
    outputs = []
    for t in range(k.shape[1]):
        key, value = k[:, t], v[:, t]
        top = torch.maximum(peak, key + time_first).detach()
        old, new = torch.exp(peak - top), torch.exp(key + time_first - top)
        outputs.append((old * numerator + new * value) / (old * denominator + new))
        top = torch.maximum(peak + decay, key).detach()
        old, new = torch.exp(peak + decay - top), torch.exp(key - top)
        numerator = old * numerator + new * value
        denominator = old * denominator + new
        peak = top
    return torch.stack(outputs, 1)


def _block_logits(k: Tensor, decay: Tensor, time_first: Tensor) -> Tensor:
    """``(batch, n, n, channels)`` exponents ``l[i, j]`` of a block of ``n`` positions
    (``-inf`` above the diagonal)."""
    n = k.shape[1]
    position = torch.arange(n, device=k.device)
    distance = (position[:, None] - 1 - position[None, :]).to(k.dtype)
    logits = k[:, None] - distance[..., None] * decay
    diagonal = torch.eye(n, dtype=torch.bool, device=k.device)[..., None]
    logits = torch.where(diagonal, (k + time_first)[:, :, None], logits)
    later = torch.triu(torch.ones(n, n, dtype=torch.bool, device=k.device), 1)[..., None]
    return logits.masked_fill(later, -torch.inf)


def wkv_chunked(
    k: Tensor,
    v: Tensor,
    time_decay: Tensor,
    time_first: Tensor,
    chunk_size: int = CHUNK_SIZE,
) -> Tensor:
    """The WKV recurrence in blocks of ``chunk_size`` positions: inside a block a dense
    softmax over the block's keys and the state of the earlier blocks; between blocks
    the recurrence's state (numerator, denominator and their common exponent).

    Args:
        k, v, time_decay, time_first (Tensor): see :func:`wkv_sequential`.
        chunk_size (int, optional): positions per block. Default: :data:`CHUNK_SIZE`.

    Returns:
        Tensor: ``(batch, length, channels)``, equal to :func:`wkv_sequential`.
    """
    decay = torch.exp(time_decay)
    state: tuple[Tensor, Tensor, Tensor] | None = None
    outputs = []
    for start in range(0, k.shape[1], chunk_size):
        key, value = k[:, start : start + chunk_size], v[:, start : start + chunk_size]
        n = key.shape[1]
        steps = torch.arange(n, device=k.device).to(k.dtype)[:, None]
        logits = _block_logits(key, decay, time_first)
        top = logits.amax(2)
        if state is not None:
            numerator, denominator, exponent = state
            carried = exponent[:, None] - steps * decay  # the state's exponent at each row
            top = torch.maximum(top, carried)
        top = top.detach()
        weights = torch.exp(logits - top[:, :, None])
        mixed = torch.einsum("bijc,bjc->bic", weights, value)
        total = weights.sum(2)
        if state is not None:
            scale = torch.exp(carried - top)
            mixed = mixed + scale * numerator[:, None]
            total = total + scale * denominator[:, None]
        outputs.append(mixed / total)
        # the state at the end of the block: sum_s exp(k[s] - (end - 1 - s) w) (v[s], 1)
        ends = key - (n - 1 - steps) * decay
        top = ends.amax(1)
        if state is not None:
            top = torch.maximum(top, exponent - n * decay)
        top = top.detach()
        weights = torch.exp(ends - top[:, None])
        new_numerator, new_denominator = (weights * value).sum(1), weights.sum(1)
        if state is not None:
            scale = torch.exp(exponent - n * decay - top)
            new_numerator = new_numerator + scale * numerator
            new_denominator = new_denominator + scale * denominator
        state = (new_numerator, new_denominator, top)
    return torch.cat(outputs, 1)


def wkv_weights(k: Tensor, time_decay: Tensor, time_first: Tensor) -> Tensor:
    """The weights of every channel's WKV: ``exp(l[t, s]) / sum_s exp(l[t, s])``, the
    implicit attention matrix of the recurrence (dense: for short sequences).

    Args:
        k (Tensor): ``(batch, length, channels)`` keys.
        time_decay, time_first (Tensor): see :func:`wkv_sequential`.

    Returns:
        Tensor: ``(batch, channels, length, length)`` weights (queries, keys), rows
        summing to one, zero above the diagonal.
    """
    logits = _block_logits(k, torch.exp(time_decay), time_first)
    return torch.softmax(logits, dim=2).permute(0, 3, 1, 2)

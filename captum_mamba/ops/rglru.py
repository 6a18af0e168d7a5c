"""Scan ops: the Real-Gated Linear Recurrent Unit (RG-LRU) of Griffin / RecurrentGemma, as
the selective scan of Mamba-1 it equals.

The RG-LRU of a sequence that starts at its first position is::

    i[t] = sigmoid(x[t] W_i + b_i),  r[t] = sigmoid(x[t] W_r + b_r)   (per head, block-diagonal)
    a[t] = exp(-rate * r[t])          (rate = c * softplus(Lambda) per channel)
    h[t] = a[t] * h[t-1] + m[t] * i[t] * x[t],  m[t] = sqrt(1 - a[t]^2), m[0] = 1

A diagonal recurrence whose decay is ``exp(dt A)`` with ``dt = r`` and ``A = -rate``: the
selective scan ``h[t] = exp(dt[t] A) h[t-1] + dt[t] B[t] u[t]``, ``y = C h`` with one state
(``B = C = 1``) and the input ``u = x * i * m / r`` computes it (:func:`rglru_as_selective`),
so every implementation of :func:`~captum_mamba.ops.selective_scan` (sequential, parallel,
fused) and its hidden attention apply unchanged. The recurrence's maths is written once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from captum_mamba.ops.selective_scan import selective_scan


def rglru_gates(
    x: Tensor,
    input_weight: Tensor,
    input_bias: Tensor,
    recurrent_weight: Tensor,
    recurrent_bias: Tensor,
) -> tuple[Tensor, Tensor]:
    """The input and recurrence gates ``sigmoid(x_h W_h + b_h)`` of each head ``h``.

    Args:
        x (Tensor): ``(batch, length, channels)`` the unit's input.
        input_weight (Tensor): ``(heads, width, width)`` block-diagonal input-gate weights
            (``channels = heads * width``).
        input_bias (Tensor): ``(heads, width)``.
        recurrent_weight (Tensor): like ``input_weight``, of the recurrence gate.
        recurrent_bias (Tensor): like ``input_bias``.

    Returns:
        tuple of Tensor: ``(input_gate, recurrent_gate)``, each the shape of ``x``.
    """
    heads = input_weight.shape[0]
    blocks = x.unflatten(-1, (heads, -1))

    def gate(weight: Tensor, bias: Tensor) -> Tensor:
        return torch.sigmoid(torch.einsum("blhi,hij->blhj", blocks, weight) + bias).flatten(-2)

    return gate(input_weight, input_bias), gate(recurrent_weight, recurrent_bias)


def rglru_as_selective(
    x: Tensor, input_gate: Tensor, recurrent_gate: Tensor, rate: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The inputs ``(u, dt, A, B, C)`` of the selective scan equal to the RG-LRU.

    Args:
        x (Tensor): ``(batch, length, channels)`` the unit's input.
        input_gate (Tensor): ``(batch, length, channels)`` ``i``.
        recurrent_gate (Tensor): ``(batch, length, channels)`` ``r``, in ``(0, 1)``.
        rate (Tensor): ``(channels,)`` ``c * softplus(Lambda) > 0``.

    Returns:
        tuple of Tensor: ``u = x * i * m / r``, ``dt = r``, ``A = -rate`` as
        ``(channels, 1)``, and ``B = C = 1`` as ``(batch, length, 1)``.
    """
    log_decay = -rate * recurrent_gate
    normaliser = torch.sqrt(1.0 - torch.exp(2.0 * log_decay))
    # the sequence starts at position 0: no decayed state, the input enters unnormalised
    start = torch.zeros_like(normaliser[:, :1]) + 1.0
    normaliser = torch.cat([start, normaliser[:, 1:]], dim=1)
    u = x * (input_gate * normaliser / recurrent_gate)
    ones = torch.ones(*x.shape[:2], 1, dtype=x.dtype, device=x.device)
    return u, recurrent_gate, -rate[:, None], ones, ones


def rglru_scan(x: Tensor, input_gate: Tensor, recurrent_gate: Tensor, rate: Tensor) -> Tensor:
    """The RG-LRU's output ``h`` for gates computed beforehand, differentiable in every
    input (detach the gates and ``rate`` for the rule: the scan is then linear in ``x``).

    Args:
        x (Tensor): ``(batch, length, channels)`` the unit's input.
        input_gate (Tensor): ``(batch, length, channels)``.
        recurrent_gate (Tensor): ``(batch, length, channels)``.
        rate (Tensor): ``(channels,)``.

    Returns:
        Tensor: ``(batch, length, channels)``.
    """
    return selective_scan(*rglru_as_selective(x, input_gate, recurrent_gate, rate))

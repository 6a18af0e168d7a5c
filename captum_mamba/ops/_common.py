"""Scan ops: input checks, time chunking and segment sums shared by the scans."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def check_one_dtype(op: str, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    """Raise TypeError unless the five scan inputs share one dtype."""
    if not (x.dtype == dt.dtype == A.dtype == B.dtype == C.dtype):
        raise TypeError(
            f"{op} needs one dtype for x, dt, A, B and C, got "
            f"{x.dtype}, {dt.dtype}, {A.dtype}, {B.dtype}, {C.dtype}; cast them with .to()"
        )


def chunked(tensor: Tensor, chunk: int) -> Tensor:
    """Pad dim 1 with zeros to a multiple of ``chunk`` and split it into ``(chunks, chunk)``."""
    pad = -tensor.shape[1] % chunk
    if pad:
        tensor = F.pad(tensor, (0, 0) * (tensor.dim() - 2) + (0, pad))
    return tensor.reshape(tensor.shape[0], -1, chunk, *tensor.shape[2:])


def segment_sums(steps: Tensor, dim: int = -1) -> Tensor:
    """``out[..., t, s, ...] = sum_{k=s+1..t} steps[..., k, ...]`` for ``s < t``, else 0.

    Built from a cumulative sum of masked copies rather than a difference of two
    cumulative sums, so that no large numbers cancel.

    Args:
        steps (Tensor): time at dimension ``dim``.
        dim (int, optional): the time dimension, counted from the end (negative).
            Default: -1.

    Returns:
        Tensor: ``steps`` with its time dimension replaced by the two dimensions
        ``(t, s)``.
    """
    length = steps.shape[dim]
    later = torch.ones(length, length, dtype=torch.bool, device=steps.device).tril(-1)
    later = later.view(length, length, *(1,) * (-dim - 1))
    shape = list(steps.shape)
    shape.insert(steps.dim() + dim + 1, length)
    repeated = steps.unsqueeze(dim).expand(shape)
    return repeated.masked_fill(~later, 0.0).cumsum(dim - 1)

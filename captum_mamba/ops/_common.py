"""Scan ops: input checks and time chunking shared by the scans."""

from __future__ import annotations

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

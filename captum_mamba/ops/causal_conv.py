"""Scan ops: the depthwise causal convolution of Mamba blocks, as one function.

``causal_conv1d(x, weight, bias)`` on ``(batch, length, channels)`` inputs equals a
Mamba mixer's ``conv1d(x.transpose(1, 2))[..., :length].transpose(1, 2)`` with
``weight = conv1d.weight[:, 0]``. It is linear in ``x`` (no rule acts on it) and, unlike
mamba-ssm's forward, never fuses the SiLU that follows it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from captum_mamba.ops.backends import FUSED_DTYPES, choose
from captum_mamba.ops.fused import fused_causal_conv1d


def causal_conv1d(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, impl: str | None = None
) -> Tensor:
    r"""Depthwise causal convolution ``y[t, c] = b[c] + sum_k w[c, k] x[t - K + 1 + k, c]``.

    Args:
        x (Tensor): ``(batch, length, channels)`` input.
        weight (Tensor): ``(channels, width)`` kernel (``nn.Conv1d.weight[:, 0]``).
        bias (Tensor, optional): ``(channels,)`` bias. Default: None.
        impl (str, optional): ``"auto"``, ``"torch"`` or ``"fused"`` (causal-conv1d's
            CUDA kernel, without activation); None for the setting of
            :func:`captum_mamba.ops.implementation`. Default: None.

    Returns:
        Tensor: ``(batch, length, channels)``.

    Examples::

        >>> conv = mixer.conv1d  # nn.Conv1d(channels, channels, K, groups=channels, padding=K-1)
        >>> y = causal_conv1d(x, conv.weight[:, 0], conv.bias)
    """
    channels, width = weight.shape
    if x.shape[-1] != channels:
        raise ValueError(
            f"causal_conv1d got {x.shape[-1]} input channels for a ({channels}, {width}) "
            "weight; pass x as (batch, length, channels) and weight as conv.weight[:, 0]"
        )
    unsuitable = None
    if not 2 <= width <= 4:
        unsuitable = f"causal-conv1d takes kernel widths 2 to 4, got {width}"
    elif weight.dtype not in FUSED_DTYPES or (bias is not None and bias.dtype != weight.dtype):
        unsuitable = "causal-conv1d takes a float32/bf16/fp16 weight and a bias of its dtype"
    if choose("causal_conv1d", impl, x, unsuitable) == "fused":
        return fused_causal_conv1d(x, weight, bias)
    length = x.shape[1]
    out = F.conv1d(x.transpose(1, 2), weight[:, None], bias, padding=width - 1, groups=channels)
    return out[..., :length].transpose(1, 2)

"""Scan ops: calls of mamba-ssm's and causal-conv1d's fused kernels that keep every rule.

The kernels are called only for the linear parts of a Mamba block: the scan (with
``D``, ``z``, ``delta_bias`` and ``delta_softplus`` left out) and the causal conv (with
``activation=None``). The softplus, the SiLUs and the gate stay outside, where the
callers apply the identity and half rules; fusing them, as mamba-ssm's own forward
does, would drop those rules from the backward. ``dt``, ``B`` and ``C`` are passed as
the caller passes them, so when they are detached (the SSM rule) autograd takes only
the gradient for ``x`` from the kernel's backward.

The kernels are looked up with :func:`captum_mamba.ops.backends.fused_kernel`; nothing
here imports mamba-ssm or causal-conv1d at import time.
"""

from __future__ import annotations

from torch import Tensor

from captum_mamba.ops.backends import fused_kernel


def fused_selective_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """Selective scan through mamba-ssm's ``selective_scan_fn``.

    Args:
        x (Tensor): ``(batch, length, channels)`` scan input.
        dt (Tensor): ``(batch, length, channels)`` time steps (after softplus).
        A (Tensor): ``(channels, state)``; the kernel takes it in float32.
        B (Tensor): ``(batch, length, state)``.
        C (Tensor): ``(batch, length, state)``.

    Returns:
        Tensor: ``y`` ``(batch, length, channels)``, in the dtype of ``x``.
    """
    kernel = fused_kernel("selective_scan")
    # mamba-ssm's layout: u and delta (batch, channels, length), B and C (batch, state, length).
    y = kernel(
        x.transpose(1, 2),
        dt.transpose(1, 2),
        A.float(),
        B.transpose(1, 2),
        C.transpose(1, 2),
        D=None,
        z=None,
        delta_bias=None,
        delta_softplus=False,
    )
    return y.transpose(1, 2)


def fused_ssd_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int
) -> Tensor:
    """SSD scan through mamba-ssm's ``mamba_chunk_scan_combined``.

    Args:
        x (Tensor): ``(batch, length, heads, head_dim)`` scan input.
        dt (Tensor): ``(batch, length, heads)`` time steps (after softplus and bias).
        A (Tensor): ``(heads,)``; the kernel takes it in float32.
        B (Tensor): ``(batch, length, groups, state)``.
        C (Tensor): ``(batch, length, groups, state)``.
        chunk_size (int): time steps per chunk of the kernel.

    Returns:
        Tensor: ``y`` ``(batch, length, heads, head_dim)``.
    """
    kernel = fused_kernel("ssd_scan")
    return kernel(
        x, dt, A.float(), B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False
    )


def fused_causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Depthwise causal conv through causal-conv1d's ``causal_conv1d_fn``, no activation.

    Args:
        x (Tensor): ``(batch, length, channels)``.
        weight (Tensor): ``(channels, width)``.
        bias (Tensor or None): ``(channels,)``, in the dtype of ``weight``.

    Returns:
        Tensor: ``(batch, length, channels)``.
    """
    kernel = fused_kernel("causal_conv1d")
    # Channel-first contiguous: the kernel's channel-last path needs channels % 8 == 0.
    out = kernel(x.transpose(1, 2).contiguous(), weight, bias=bias, activation=None)
    return out.transpose(1, 2)

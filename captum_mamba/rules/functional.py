"""Rules: the MambaLRP propagation rules as forward functions with a modified backward.

Each function returns exactly the value of the original operation; switching its rule
on changes only which factors are treated as constants in the backward pass. With a
rule off, the function is the plain operation (its gradient is the true gradient).
Gradient x Input on a forward pass built from these functions is MambaLRP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from captum_mamba.ops import selective_scan


def rms_norm(x: Tensor, weight: Tensor | None, eps: float, ln_rule: bool) -> Tensor:
    r"""RMSNorm ``weight * x / rms(x)``; the LN-rule treats ``1 / rms(x)`` as a constant.

    Args:
        x (Tensor): input, normalised over its last dimension.
        weight (Tensor or None): elementwise scale, or None for no scale.
        eps (float): added to the mean square before the square root.
        ln_rule (bool): detach the normalising factor from the backward.

    Returns:
        Tensor: the normalised input, same shape as ``x``.
    """
    inv_rms = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if ln_rule:
        inv_rms = inv_rms.detach()
    out = x * inv_rms
    return out if weight is None else weight * out


def silu(x: Tensor, identity_rule: bool) -> Tensor:
    r"""SiLU ``x * sigmoid(x)``; the identity rule treats ``sigmoid(x)`` as a constant.

    Args:
        x (Tensor): input.
        identity_rule (bool): detach the sigmoid factor, so relevance passes the
            activation unchanged (``R_in = R_out``).

    Returns:
        Tensor: ``silu(x)``.
    """
    if identity_rule:
        return x * torch.sigmoid(x).detach()
    return F.silu(x)


def gated_product(y: Tensor, gate: Tensor, half_rule: bool) -> Tensor:
    r"""Gate ``y * gate``; the half rule passes half of the relevance to each factor.

    Both factors depend (linearly, under the other rules) on the input, so the product
    is homogeneous of degree two and Gradient x Input would count its relevance
    twice. The half rule uses ``0.5 * (y * gate) + 0.5 * [y * gate]_const``, whose
    value equals ``y * gate`` exactly.

    Args:
        y (Tensor): SSM output.
        gate (Tensor): gate activation, same shape as ``y``.
        half_rule (bool): apply the half rule.

    Returns:
        Tensor: ``y * gate``.
    """
    out = y * gate
    if half_rule:
        return 0.5 * out + 0.5 * out.detach()
    return out


def selective_ssm(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, ssm_rule: bool
) -> Tensor:
    r"""Selective SSM ``y = scan(x; exp(dt A), dt B, C) + D x``; the SSM rule keeps the
    input-dependent ``exp(dt A)``, ``dt B`` and ``C`` constant in the backward pass.

    Relevance then flows only through ``x``; the state matrix ``A`` and the skip
    weight ``D`` are parameters and never receive relevance.

    Args:
        x (Tensor): ``(batch, length, channels)`` scan input.
        dt (Tensor): ``(batch, length, channels)`` positive time steps.
        A (Tensor): ``(channels, state)`` continuous state matrix.
        B (Tensor): ``(batch, length, state)`` input projection.
        C (Tensor): ``(batch, length, state)`` output projection.
        D (Tensor or None): ``(channels,)`` skip weight.
        ssm_rule (bool): detach ``dt``, ``B`` and ``C``.

    Returns:
        Tensor: ``(batch, length, channels)`` SSM output.
    """
    if ssm_rule:
        dt, B, C = dt.detach(), B.detach(), C.detach()
    y = selective_scan(x, dt, A.detach(), B, C)
    return y if D is None else y + x * D

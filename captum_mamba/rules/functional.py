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
from captum_mamba.ops.ssd_scan import ssd_scan


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


def layer_norm(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, ln_rule: bool
) -> Tensor:
    r"""LayerNorm ``weight * (x - mean(x)) / std(x) + bias``; the LN-rule treats ``1 / std(x)``
    as a constant.

    Centring is linear, so with the rule the map is affine in ``x`` and the bias absorbs
    its share of the relevance, as the bias of a linear layer does.

    Args:
        x (Tensor): input, normalised over its last dimension.
        weight (Tensor or None): elementwise scale, or None for no scale.
        bias (Tensor or None): elementwise shift, or None for no shift.
        eps (float): added to the variance before the square root.
        ln_rule (bool): detach the normalising factor from the backward.

    Returns:
        Tensor: the normalised input, same shape as ``x``.
    """
    out = rms_norm(x - x.mean(-1, keepdim=True), weight, eps, ln_rule)
    return out if bias is None else out + bias


def add(a: Tensor, b: Tensor) -> Tensor:
    """Sum ``a + b`` (a residual connection or the sum of two branches); relevance is
    shared in proportion to the contributions (Gradient x Input, LRP-0)."""
    return a + b


def scale(x: Tensor, factor: float) -> Tensor:
    """Product ``factor * x`` with a constant; relevance passes unchanged."""
    return x * factor


def time_step(
    raw: Tensor, bias: Tensor | None = None, low: float = 0.0, high: float = float("inf")
) -> Tensor:
    """Time step ``clamp(softplus(raw + bias), low, high)`` of a selective SSM.

    It feeds ``exp(dt A)`` and ``dt B``, which the SSM rule treats as constants, so with
    that rule it receives no relevance; with the rule off its true gradient is used.

    Args:
        raw (Tensor): pre-activation time step.
        bias (Tensor, optional): bias added before the softplus. Default: None.
        low (float, optional): lower clamp. Default: 0.
        high (float, optional): upper clamp. Default: inf.

    Returns:
        Tensor: positive time steps, same shape as ``raw``.
    """
    dt = F.softplus(raw if bias is None else raw + bias)
    if low > 0.0 or high < float("inf"):
        dt = torch.clamp(dt, min=low, max=high)
    return dt


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


def gated_rms_norm(
    y: Tensor,
    z: Tensor | None,
    weight: Tensor | None,
    eps: float,
    group_size: int,
    identity_rule: bool,
    half_rule: bool,
    ln_rule: bool,
) -> Tensor:
    r"""Gated RMSNorm of Mamba-2, ``weight * norm_groups(y * silu(z))``, with three rules.

    The identity rule acts on ``silu(z)``, the half rule on the product of the two
    input-dependent branches ``y * silu(z)`` and the LN-rule on ``1 / rms`` of each
    group of ``group_size`` channels. With all three, the map is linear in ``y`` and in
    ``z`` for the backward pass and the relevance of the output is split evenly between
    the SSM output and the gate.

    Args:
        y (Tensor): SSM output ``(..., channels)``.
        z (Tensor or None): gate pre-activation, same shape as ``y``; None for a plain
            grouped RMSNorm of ``y``.
        weight (Tensor or None): ``(channels,)`` scale, or None for no scale.
        eps (float): added to the mean square before the square root.
        group_size (int): channels normalised together; ``channels`` must be a multiple.
        identity_rule (bool): identity rule on the SiLU of the gate.
        half_rule (bool): half rule on ``y * silu(z)``.
        ln_rule (bool): LN-rule on the group normalisation.

    Returns:
        Tensor: the normalised, gated output, same shape as ``y``.
    """
    gated = y if z is None else gated_product(y, silu(z, identity_rule), half_rule)
    groups = gated.unflatten(-1, (-1, group_size))
    out = rms_norm(groups, None, eps, ln_rule).flatten(-2)
    return out if weight is None else weight * out


def multihead_ssm(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    ssm_rule: bool,
    chunk_size: int,
) -> Tensor:
    r"""Mamba-2 SSM ``y = ssd(x; exp(dt A), dt B, C) + D x`` with one scalar decay per head;
    the SSM rule keeps the input-dependent ``exp(dt A)``, ``dt B`` and ``C`` constant.

    Relevance then flows only through ``x``; ``A`` and ``D`` are parameters and never
    receive relevance.

    Args:
        x (Tensor): ``(batch, length, heads, head_dim)`` scan input.
        dt (Tensor): ``(batch, length, heads)`` positive time steps.
        A (Tensor): ``(heads,)`` continuous decay rates.
        B (Tensor): ``(batch, length, groups, state)`` input projection, shared by the
            ``heads // groups`` consecutive heads of a group.
        C (Tensor): ``(batch, length, groups, state)`` output projection.
        D (Tensor or None): ``(heads,)`` or ``(heads, head_dim)`` skip weight.
        ssm_rule (bool): detach ``dt``, ``B`` and ``C``.
        chunk_size (int): time steps per chunk of the scan.

    Returns:
        Tensor: ``(batch, length, heads, head_dim)`` SSM output.
    """
    if ssm_rule:
        dt, B, C = dt.detach(), B.detach(), C.detach()
    y = ssd_scan(x, dt, A.detach(), B, C, chunk_size)
    if D is None:
        return y
    return y + x * (D[:, None] if D.dim() == 1 else D)

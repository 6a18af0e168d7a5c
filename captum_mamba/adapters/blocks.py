"""Architecture adapters: the maths of the Mamba blocks, written once for every family.

- :func:`selective_branch`: the Mamba-1 branch ``scan(silu(conv(x))) * silu(z)``, used by
  transformers' ``MambaMixer`` and ``FalconMambaMixer``, mamba-ssm's ``Mamba`` (both
  directions of Vim's fork) and this package's Vision Mamba.
- :func:`ssd_mixer`: the Mamba-2 mixer, used by transformers' ``Mamba2Mixer`` and
  mamba-ssm's ``Mamba2``.
- :func:`residual_block`: the pre-norm residual block ``x + mixer(norm(x))``.

Each is written in the operations of :class:`~captum_mamba.adapters.backend.BlockOps`
and so runs on every backend. The site names used here are listed in
:data:`SELECTIVE_SITES`, :data:`SSD_SITES` and :data:`RESIDUAL_SITES` for the handlers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba.adapters.backend import BlockOps

#: Sites of :func:`selective_branch` (with ``suffix=""``).
SELECTIVE_SITES = {
    "conv_act": "silu",
    "time_step": "time_step",
    "ssm": "ssm",
    "gate_act": "silu",
    "gate": "gate",
}
#: Sites of :func:`ssd_mixer` with a gated-norm module.
SSD_SITES = {"conv_act": "silu", "time_step": "time_step", "ssd": "ssd"}
#: Further sites of :func:`ssd_mixer` without a gated norm (``gate``) and with gated-MLP
#: channels (``mlp_gate``).
SSD_EXTRA_SITES = {"gate_act": "silu", "gate": "gate", "mlp_act": "silu", "mlp_gate": "gate"}
#: Sites of :func:`residual_block`.
RESIDUAL_SITES = {"residual": "add"}


def suffixed(sites: dict[str, str], suffix: str) -> dict[str, str]:
    """``sites`` with ``suffix`` appended to every name (second direction of a mixer)."""
    return {f"{name}{suffix}": kind for name, kind in sites.items()}


def mask_padding(x: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Zero the padded positions of ``x`` ``(batch, seq, ...)``, as transformers does."""
    if attention_mask is None:
        return x
    return x * attention_mask[:, :, None].to(x.dtype)


def check_silu(mixer: nn.Module, activation: Any) -> None:
    """Refuse a mixer whose activation is not SiLU (the identity rule assumes it)."""
    if activation not in ("silu", "swish"):
        raise NotImplementedError(
            f"MambaLRP supports SiLU mixers only, {type(mixer).__name__} uses {activation!r}"
        )


@dataclass(frozen=True)
class SelectiveParams:
    """Parameters of one Mamba-1 branch, whatever the names in its family.

    Args:
        conv (nn.Module): causal depthwise ``nn.Conv1d``.
        x_proj (nn.Module): projection of the scan input to ``(dt_low, B, C)``.
        dt_proj (nn.Module): projection of ``dt_low`` to the time step (with its bias).
        A_log (Tensor): ``(channels, state)``, ``A = -exp(A_log)``.
        D (Tensor): ``(channels,)`` skip weight.
        dt_rank (int): width of ``dt_low``.
        state (int): SSM state size.
        norms (tuple of nn.Module, optional): norms of ``dt_low``, ``B`` and ``C``
            (FalconMamba, Jamba). Default: None.
    """

    conv: nn.Module
    x_proj: nn.Module
    dt_proj: nn.Module
    A_log: Tensor
    D: Tensor
    dt_rank: int
    state: int
    norms: tuple[nn.Module, nn.Module, nn.Module] | None = None


def selective_branch(
    ops: BlockOps,
    params: SelectiveParams,
    x: Tensor,
    z: Tensor,
    attention_mask: Tensor | None = None,
    suffix: str = "",
    reverse: bool = False,
) -> Tensor:
    r"""``(scan(silu(conv(x))) + D x) * silu(z)`` with the SiLU, SSM and half rules.

    Args:
        ops (BlockOps): the operations of the calling module.
        params (SelectiveParams): the branch's parameters.
        x (Tensor): ``(batch, seq, channels)`` branch input (before the causal conv).
        z (Tensor): ``(batch, seq, channels)`` gate input.
        attention_mask (Tensor, optional): ``(batch, seq)`` padding mask applied to the
            scan input. Default: None.
        suffix (str, optional): appended to the site names. Default: ``""``.
        reverse (bool, optional): scan the sequence backwards (flip, scan, flip back).
            Default: False.

    Returns:
        Tensor: ``(batch, seq, channels)`` gated SSM output.
    """
    if reverse:
        x, z = x.flip(1), z.flip(1)
        attention_mask = None if attention_mask is None else attention_mask.flip(1)
    x = mask_padding(ops.silu(f"conv_act{suffix}", ops.causal_conv(params.conv, x)), attention_mask)
    time_step, B, C = torch.split(
        params.x_proj(x), [params.dt_rank, params.state, params.state], dim=-1
    )
    if params.norms is not None:
        dt_norm, b_norm, c_norm = params.norms
        time_step, B, C = dt_norm(time_step), b_norm(B), c_norm(C)
    dt = ops.time_step(f"time_step{suffix}", params.dt_proj(time_step))
    A = -torch.exp(params.A_log.to(x.dtype))
    y = ops.ssm(f"ssm{suffix}", x, dt, A, B, C, params.D, reverse=reverse)
    out = ops.gate(f"gate{suffix}", y, ops.silu(f"gate_act{suffix}", z))
    return out.flip(1) if reverse else out


@dataclass(frozen=True)
class SSDParams:
    """Parameters of one Mamba-2 mixer, whatever the names in its family.

    Args:
        in_proj (nn.Module): projection to ``[z0, x0, z, xBC, dt]`` (``z0``/``x0``: the
            optional gated-MLP channels of mamba-ssm, ``d_mlp`` each).
        conv (nn.Module): causal depthwise ``nn.Conv1d`` over ``xBC``.
        out_proj (nn.Module): output projection.
        norm (nn.Module or None): gated norm ``norm(y, z)``; None to gate with
            ``y * silu(z)`` only.
        dt_bias (Tensor): ``(heads,)`` time-step bias.
        A_log (Tensor): ``(heads,)``, ``A = -exp(A_log)``.
        D (Tensor): ``(heads,)`` or ``(heads * head_dim,)`` skip weight.
        inner (int): SSM channels (``heads * head_dim``).
        groups (int): groups of heads sharing ``B`` and ``C``.
        state (int): state size.
        heads (int): number of heads.
        head_dim (int): channels per head.
        chunk_size (int): time steps per chunk of the scan.
        dt_limit (tuple of float): clamp of the time step.
    """

    in_proj: nn.Module
    conv: nn.Module
    out_proj: nn.Module
    norm: nn.Module | None
    dt_bias: Tensor
    A_log: Tensor
    D: Tensor
    inner: int
    groups: int
    state: int
    heads: int
    head_dim: int
    chunk_size: int
    dt_limit: tuple[float, float]


def ssd_mixer(
    ops: BlockOps, params: SSDParams, u: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    r"""Mamba-2 mixer with the SiLU, SSM, half and LN-rules.

    Computes, from the normalised block input ``u``::

        z0, x0, z, xBC, dt = in_proj(u)
        x, B, C = silu(conv(xBC))
        dt = clamp(softplus(dt + dt_bias), *dt_limit)
        y = ssd(x; exp(dt A), dt B, C) + D x
        out = out_proj(cat(x0 * silu(z0), norm(y, z)))

    Args:
        ops (BlockOps): the operations of the calling module.
        params (SSDParams): the mixer's parameters.
        u (Tensor): ``(batch, seq, hidden)`` mixer input.
        attention_mask (Tensor, optional): ``(batch, seq)`` padding mask. Default: None.

    Returns:
        Tensor: ``(batch, seq, hidden)`` mixer output.
    """
    p = params
    batch, length, _ = u.shape
    projected = p.in_proj(mask_padding(u, attention_mask))
    xbc_width = p.inner + 2 * p.groups * p.state
    d_mlp = (projected.shape[-1] - p.inner - xbc_width - p.heads) // 2
    z0, x0, z, xBC, dt = torch.split(projected, [d_mlp, d_mlp, p.inner, xbc_width, p.heads], dim=-1)
    xBC = mask_padding(ops.silu("conv_act", ops.causal_conv(p.conv, xBC)), attention_mask)
    x, B, C = torch.split(xBC, [p.inner, p.groups * p.state, p.groups * p.state], dim=-1)
    dt = ops.time_step("time_step", dt, p.dt_bias, *p.dt_limit)
    A = -torch.exp(p.A_log.to(x.dtype))
    D = p.D if p.D.numel() == p.heads else p.D.reshape(p.heads, p.head_dim)
    y = ops.ssd(
        "ssd",
        x.reshape(batch, length, p.heads, p.head_dim),
        dt,
        A,
        B.reshape(batch, length, p.groups, p.state),
        C.reshape(batch, length, p.groups, p.state),
        D,
        p.chunk_size,
    ).reshape(batch, length, p.inner)
    y = p.norm(y, z) if p.norm is not None else ops.gate("gate", y, ops.silu("gate_act", z))
    if d_mlp > 0:
        y = torch.cat([ops.gate("mlp_gate", x0, ops.silu("mlp_act", z0)), y], dim=-1)
    return p.out_proj(y)


def residual_block(
    ops: BlockOps, block: nn.Module, hidden_states: Tensor, *args: Any, **kwargs: Any
) -> Tensor:
    """Pre-norm residual block ``x + block.mixer(block.norm(x), ...)``, in the input dtype
    (at least float32; transformers casts the residual to float32, which would round a
    float64 explanation)."""
    x = ops.compute(hidden_states)
    return ops.add("residual", x, block.mixer(block.norm(x), *args, **kwargs))


def gated_norm(
    ops: BlockOps,
    y: Tensor,
    z: Tensor | None,
    weight: Tensor | None,
    eps: float,
    group_size: int | None,
    norm_before_gate: bool = False,
) -> Tensor:
    """Gated RMSNorm of Mamba-2: ``norm(y * silu(z))`` or ``norm(y) * silu(z)``, with the
    identity, half and LN-rules (sites ``gate_act``, ``gate`` and ``norm``)."""
    if z is None:
        return ops.rms_norm("norm", y, weight, eps, group_size)
    if norm_before_gate:
        normed = ops.rms_norm("norm", y, weight, eps, group_size)
        return ops.gate("gate", normed, ops.silu("gate_act", z))
    gated = ops.gate("gate", y, ops.silu("gate_act", z))
    return ops.rms_norm("norm", gated, weight, eps, group_size)


#: Sites of :func:`gated_norm`.
GATED_NORM_SITES = {"norm": "norm", "gate_act": "silu", "gate": "gate"}

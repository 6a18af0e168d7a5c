"""Conformance case and independent float64 reference: mamba-ssm's ``Mamba3`` mixer (SISO and
MIMO, grouped ``B``/``C`` heads, with and without the gated output norm) in mamba-ssm
``Block``s of a small sequence classifier (``register_container``).

Runs in the mamba-ssm subprocess (see :mod:`cases.mamba_ssm`) of
``tests/test_mamba_ssm.py``. mamba-ssm's own Mamba-3
forward needs its GPU kernels, so the "own output" here is the reference with every rule
off; ``tests/test_mamba3.py`` checks that reference against the mixer's own decode path
run with mamba-ssm's pure-torch reference functions.

The reference is the step form of the recurrence (as in mamba-ssm's ``Mamba3.step``),
one position at a time, with the rules written as ``detach`` calls; it uses nothing from
captum_mamba. :func:`build_mamba3` builds the tiny configurations for other test modules.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from functools import partial
from unittest import mock

import torch
import torch.nn.functional as F
from mamba_ssm_subprocess import IN_SUBPROCESS
from mamba_ssm_subprocess import SKIP_REASON as SKIP_REASON
from torch import Tensor, nn

from captum_mamba import MambaRules
from captum_mamba.adapters import register_container
from cases import ArchitectureCase

WIDTH, CLASSES = 8, 3

#: Tiny Mamba-3 configurations (keyword arguments of ``Mamba3``) and sequence lengths.
CONFIGS = {
    "siso": dict(d_state=8, headdim=4, chunk_size=4, seq=7),
    "siso-groups-norm": dict(
        d_state=6, headdim=2, ngroups=2, rope_fraction=1.0, is_outproj_norm=True, seq=9
    ),
    "mimo": dict(d_state=8, headdim=4, ngroups=2, is_mimo=True, mimo_rank=2, chunk_size=2, seq=6),
    "mimo-norm": dict(
        d_state=4, headdim=4, is_mimo=True, mimo_rank=3, rope_fraction=1.0, is_outproj_norm=True,
        seq=5,
    ),
}  # fmt: skip


@register_container
class Mamba3Classifier(nn.Module):
    """``(batch, seq, WIDTH)`` inputs -> mamba-ssm ``Block``s of ``Mamba3`` mixers -> RMSNorm
    -> class logits read at the last position."""

    def __init__(self, blocks: nn.ModuleList, norm: nn.Module, bias: bool) -> None:
        super().__init__()
        self.blocks = blocks
        self.norm = norm
        self.head = nn.Linear(WIDTH, CLASSES, bias=bias)

    def forward(self, inputs: Tensor) -> Tensor:
        hidden, residual = inputs, None
        for block in self.blocks:
            hidden, residual = block(hidden, residual)
        return self.head(self.norm(hidden, residual=residual, prenorm=False)[:, -1])


def mamba3_mixer(config: str, d_model: int = WIDTH, **overrides) -> nn.Module:
    """A ``Mamba3`` mixer of configuration ``config`` (a key of :data:`CONFIGS`), with
    ``overrides`` of its keyword arguments (MIMO mixers are built without mamba-ssm's
    TileLang kernels, which only their CUDA forward calls)."""
    from mamba_ssm.modules import mamba3

    options = {key: value for key, value in CONFIGS[config].items() if key != "seq"}
    options.update(overrides)
    kernels = (
        mock.patch.object(mamba3, "mamba3_mimo_combined", object())
        if options.get("is_mimo") and mamba3.mamba3_mimo_combined is None
        else nullcontext()
    )
    with kernels:
        return mamba3.Mamba3(d_model, **options)


def build_mamba3(config: str, seed: int, zero_biases: bool = False, layers: int = 2):
    """The tiny classifier of configuration ``config`` (a key of :data:`CONFIGS`), float64,
    eval mode, every parameter perturbed; ``zero_biases`` removes the head's bias."""
    from mamba_ssm.models.mixer_seq_simple import Block
    from mamba_ssm.ops.triton.layer_norm import RMSNorm

    torch.manual_seed(seed)
    norm = partial(RMSNorm, eps=1e-5)
    blocks = nn.ModuleList(
        Block(WIDTH, lambda dim: mamba3_mixer(config, dim), nn.Identity, norm_cls=norm,
              fused_add_norm=False)
        for _ in range(layers)
    )  # fmt: skip
    model = Mamba3Classifier(blocks, norm(WIDTH), not zero_biases).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.endswith("dt_bias"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def inputs(model: nn.Module, config: str, seed: int) -> tuple[Tensor, list[int]]:
    """Random float64 inputs (batch 2) and one class per example."""
    generator = torch.Generator().manual_seed(1000 + seed)
    shape = (2, CONFIGS[config]["seq"], WIDTH)
    return torch.randn(*shape, generator=generator, dtype=torch.float64), [1, 2]


def _const(x: Tensor, rule: bool) -> Tensor:
    return x.detach() if rule else x


def _rms(x: Tensor, weight: Tensor, eps: float, rule: bool, group: int | None = None) -> Tensor:
    grouped = x if group is None else x.unflatten(-1, (-1, group))
    rms = torch.sqrt((grouped * grouped).mean(-1, keepdim=True) + eps)
    return (grouped / _const(rms, rule)).reshape(x.shape) * weight


def _silu(x: Tensor, rule: bool) -> Tensor:
    return x * _const(torch.sigmoid(x), rule)


def _half(product: Tensor, rule: bool) -> Tensor:
    return 0.5 * product + 0.5 * product.detach() if rule else product


def _rotate(v: Tensor, theta: Tensor, pairwise: bool) -> Tensor:
    """Rotate entry pairs of ``v`` ``(..., n)`` by the angles ``theta`` ``(..., s)``,
    one pair at a time."""
    out = v.clone()
    half = v.shape[-1] // 2
    for i in range(theta.shape[-1]):
        a, b = (2 * i, 2 * i + 1) if pairwise else (i, i + half)
        cos, sin = torch.cos(theta[..., i]), torch.sin(theta[..., i])
        out[..., a] = v[..., a] * cos - v[..., b] * sin
        out[..., b] = v[..., a] * sin + v[..., b] * cos
    return out


def mixer_reference(mixer: nn.Module, u: Tensor, rules: MambaRules) -> Tensor:
    """The Mamba-3 mixer, one position at a time (trapezoid recurrence)."""
    H, P, N, R, G = mixer.nheads, mixer.headdim, mixer.d_state, mixer.mimo_rank, mixer.num_bc_heads
    batch, length, _ = u.shape
    projected = u @ mixer.in_proj.weight.T
    z, x, B, C, dd_dt, dd_A, trap, angle = projected.split(
        [mixer.d_inner, mixer.d_inner, N * G * R, N * G * R, H, H, H, mixer.num_rope_angles], -1
    )
    B = _rms(B.unflatten(-1, (R, G, N)), mixer.B_norm.weight, mixer.B_norm.eps, rules.norm)
    C = _rms(C.unflatten(-1, (R, G, N)), mixer.C_norm.weight, mixer.C_norm.eps, rules.norm)
    head_group = [h // (H // G) for h in range(H)]
    ones = torch.ones(H, R, P, dtype=u.dtype)
    psi = mixer.mimo_x if mixer.is_mimo else ones
    zeta = mixer.mimo_z if mixer.is_mimo else ones
    phi = mixer.mimo_o if mixer.is_mimo else ones
    state = torch.zeros(batch, H, P, N, dtype=u.dtype)
    theta = torch.zeros(batch, H, mixer.num_rope_angles, dtype=u.dtype)
    previous = torch.zeros(batch, H, P, N, dtype=u.dtype)
    outputs = []
    for t in range(length):
        dt = F.softplus(dd_dt[:, t] + mixer.dt_bias)  # (batch, H)
        A = torch.clamp(-F.softplus(dd_A[:, t]), max=-mixer.A_floor)
        lam = torch.sigmoid(trap[:, t])
        theta = theta + torch.tanh(angle[:, t])[:, None] * math.pi * dt[..., None]
        k = _rotate(B[:, t][:, :, head_group] + mixer.B_bias.transpose(0, 1), theta[:, None],
                    not mixer.is_mimo)  # fmt: skip
        q = _rotate(C[:, t][:, :, head_group] + mixer.C_bias.transpose(0, 1), theta[:, None],
                    not mixer.is_mimo)  # fmt: skip
        alpha = torch.exp(A * dt)
        beta, gamma = (1 - lam) * dt * alpha, lam * dt
        alpha, beta, gamma, q, k = (_const(c, rules.ssm) for c in (alpha, beta, gamma, q, k))
        v = x[:, t].unflatten(-1, (H, P))[:, :, None] * psi  # (batch, H, R, P)
        current = torch.zeros(batch, H, P, N, dtype=u.dtype)
        for r in range(R):
            current = current + v[:, :, r, :, None] * k[:, r, :, None, :]
        state = (alpha[..., None, None] * state + beta[..., None, None] * previous
                 + gamma[..., None, None] * current)  # fmt: skip
        previous = current
        y = torch.stack([(state * q[:, r, :, None, :]).sum(-1) for r in range(R)], 2)
        y = y + mixer.D[:, None, None] * v  # (batch, H, R, P)
        gate = z[:, t].unflatten(-1, (H, P))[:, :, None] * zeta
        if mixer.is_outproj_norm:
            norm = mixer.norm
            y = _rms(y.transpose(1, 2).flatten(-2), norm.weight, norm.eps, rules.norm, P)
            y = y.unflatten(-1, (H, P)).transpose(1, 2)
        y = _half(y * _silu(gate, rules.silu), rules.gate)
        outputs.append((y * phi).sum(2).flatten(1))
    return torch.stack(outputs, 1) @ mixer.out_proj.weight.T


def reference(model: Mamba3Classifier, x: Tensor, rules: MambaRules) -> Tensor:
    """The classifier's logits with the rules written as ``detach`` calls."""
    hidden, residual = x, torch.zeros_like(x)
    for block in model.blocks:
        residual = hidden + residual
        hidden = mixer_reference(
            block.mixer, _rms(residual, block.norm.weight, block.norm.eps, rules.norm), rules
        )
    final = _rms(hidden + residual, model.norm.weight, model.norm.eps, rules.norm)
    out = final[:, -1] @ model.head.weight.T
    return out if model.head.bias is None else out + model.head.bias


ADAPTER = "mamba-ssm Mamba-3"

CASE = (
    ArchitectureCase(
        name="mamba_ssm_mamba3",
        adapter=ADAPTER,
        configs=tuple(CONFIGS),
        build=build_mamba3,
        inputs=inputs,
        reference=reference,
        own_output=lambda model, x: reference(model, x, MambaRules.gradient_x_input()),
        forward_func=lambda model: model,
        captum_forward=None,
        layer="blocks.0.mixer.out_proj",
        num_layers=lambda model: len(model.blocks),
        isolated=True,
        hidden_attention=False,
    )
    if IN_SUBPROCESS
    else None
)

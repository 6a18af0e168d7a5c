"""Architecture adapter for mamba-ssm's ``Mamba3`` mixer (Mamba-3: trapezoid discretisation,
complex-valued state as data-dependent rotary embeddings, SISO or MIMO), stand-alone in
any network.

The forward reads the mixer's parameters and computes with this package's own ops, in
plain PyTorch: it runs on CPU, where mamba-ssm's Triton, TileLang and CuTe kernels of
Mamba-3 do not. With all rules off it computes the mixer's function.

Rule assignment:

- ``in_proj`` and ``out_proj``: linear layers (the linear rule).
- ``B_norm`` and ``C_norm`` (RMSNorms of ``B`` and ``C``): LN-rule (sites ``B_rms``,
  ``C_rms``).
- the recurrence (site ``ssm``, kind ``mamba3``): SSM rule, every input-dependent
  coefficient (decay, time step, trapezoid weight, rotary angles, ``B``, ``C``) constant.
- the output gate ``y * silu(z)`` per rank: identity rule on the SiLU (``gate_act``), half
  rule on the product (``gate``); with ``is_outproj_norm`` the gated RMSNorm
  ``norm(y) * silu(z)`` (module ``norm``, mamba-ssm's ``RMSNormGated``, covered by
  :mod:`captum_mamba.adapters.mamba_ssm`) adds the LN-rule.
- MIMO: the up-projection of ``z`` is a product with a constant weight (site ``z_up``,
  kind ``scale``); the down-projection over ranks is a linear map per head
  (site ``rank_sum``, kind ``grouped_linear``, the linear rule); the up-projection of ``x`` is
  a constant weight inside the recurrence.

Importing this module imports ``mamba_ssm``, which needs its compiled extension
``selective_scan_cuda`` (a stand-in that only has to be importable is enough on CPU; see
:mod:`captum_mamba.adapters.mamba_ssm`); without it the adapter stays unregistered.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

import torch
from torch import Tensor

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.families import FamilyUnavailable, declare_family

FAMILY = declare_family(
    __name__,
    "mamba-ssm Mamba-3",
    ("Mamba3 (SISO and MIMO)", "models containing Mamba3"),
    ("mamba_ssm.modules.mamba3",),
)
if find_spec("selective_scan_cuda") is None:
    raise FamilyUnavailable("mamba-ssm or its compiled extension selective_scan_cuda is missing")

(Mamba3,) = FAMILY.load("Mamba3", source="mamba_ssm.modules.mamba3")

#: Sites of the Mamba-3 mixer.
MAMBA3_SITES = {
    "B_rms": "rms_norm",
    "C_rms": "rms_norm",
    "ssm": "mamba3",
    "z_up": "scale",
    "rank_sum": "grouped_linear",
    "gate_act": "silu",
    "gate": "gate",
}


def _rank_sum(ops: BlockOps, y: Tensor, weight: Tensor) -> Tensor:
    """``out[h, p] = sum_r weight[h, r, p] y[r, h, p]`` as one linear map per head (rows
    grouped by head), with the linear rule."""
    batch, length, ranks, heads, width = y.shape
    rows = y.permute(3, 0, 1, 2, 4).reshape(heads * batch * length, ranks * width)
    eye = torch.eye(width, dtype=weight.dtype, device=weight.device)
    per_head = torch.einsum("hrp,pq->hprq", weight, eye).reshape(heads, width, ranks * width)
    out = ops.grouped_linear("rank_sum", rows, per_head, [batch * length] * heads)
    return out.reshape(heads, batch, length, width).permute(1, 2, 0, 3)


def mamba3_forward(
    ops: BlockOps,
    mixer: Mamba3,
    u: Tensor,
    seq_idx: Tensor | None = None,
    cu_seqlens: Tensor | None = None,
    inference_params: Any = None,
) -> Tensor:
    """Mamba-3 mixer with the SSM, LN-, identity and half rules."""
    if inference_params is not None or seq_idx is not None or cu_seqlens is not None:
        raise NotImplementedError(
            "MambaLRP explains whole (batch, seq, hidden) sequences; call the Mamba3 "
            "mixer without inference_params, seq_idx or cu_seqlens"
        )
    heads, width, state = mixer.nheads, mixer.headdim, mixer.d_state
    ranks, groups = mixer.mimo_rank, mixer.num_bc_heads
    projected = mixer.in_proj(ops.compute(u))
    bc = state * groups * ranks
    sizes = [mixer.d_inner, mixer.d_inner, bc, bc, heads, heads, heads, mixer.num_rope_angles]
    z, x, B, C, dt, decay, trap, angle = projected.split(sizes, dim=-1)
    B, C = B.unflatten(-1, (ranks, groups, state)), C.unflatten(-1, (ranks, groups, state))
    B = ops.rms_norm("B_rms", B, mixer.B_norm.weight, mixer.B_norm.eps)
    C = ops.rms_norm("C_rms", C, mixer.C_norm.weight, mixer.C_norm.eps)
    mimo = mixer.is_mimo
    y = ops.mamba3(
        "ssm",
        x.unflatten(-1, (heads, width)),
        B,
        C,
        dt,
        decay,
        trap,
        angle,
        mixer.dt_bias,
        mixer.B_bias,
        mixer.C_bias,
        mixer.D,
        mixer.mimo_x.transpose(0, 1) if mimo else None,
        mixer.A_floor,
        not mimo,
        mixer.chunk_size,
    )  # (batch, seq, ranks, heads, head_dim)
    z = z.unflatten(-1, (heads, width))[:, :, None].expand_as(y)
    if mimo:
        z = ops.scale("z_up", z, mixer.mimo_z.transpose(0, 1).to(z.dtype))
    if mixer.is_outproj_norm:
        y = mixer.norm(y.flatten(-2), z.flatten(-2)).unflatten(-1, (heads, width))
    else:
        y = ops.gate("gate", y, ops.silu("gate_act", z))
    y = _rank_sum(ops, y, mixer.mimo_o.to(y.dtype)) if mimo else y[:, :, 0]
    return mixer.out_proj(y.flatten(-2))


MAMBA3 = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(Mamba3, mamba3_forward, MAMBA3_SITES, ("in_proj", "norm", "out_proj")),
        ),
        blocks=(Mamba3,),
    )
)

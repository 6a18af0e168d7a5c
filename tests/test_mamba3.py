"""Mamba-3 (mamba-ssm's ``Mamba3``): the recurrence op and the mixer's forward.

- ``captum_mamba.ops.mamba3``: the chunked scan (the SSD scan it is mapped onto) equals
  the sequential recurrence and an independent float64 loop of the trapezoid recurrence
  written here, in values and gradients, SISO and MIMO, several seeds, shapes and chunk
  sizes.
- In the mamba-ssm subprocess: the mixer's forward under the rules (all off) equals
  mamba-ssm's own decode path (``Mamba3.step``'s computation with its CUDA kernels
  replaced by mamba-ssm's pure-torch reference functions ``rms_norm_ref``,
  ``apply_rotary_qk_inference_reference`` and ``selective_state_update_fused_ref_v2``),
  position by position.

The conformance suite of the ``mamba_ssm_mamba3`` case (every preset and single-rule
ablation against its float64 reference, conservation, Captum LRP parity) runs with the
other isolated cases in ``tests/test_mamba_ssm.py``'s subprocess; alone::

    CAPTUM_MAMBA_SSM_SUBPROCESS=1 PYTHONPATH=<stand-in dir>:$PWD \
        python -m pytest tests/test_conformance.py -k mamba3
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch
from mamba_ssm_subprocess import run_in_mamba_ssm_subprocess, subprocess_only
from torch import Tensor

from captum_mamba import MambaRules, rules_applied
from captum_mamba.ops.mamba3 import mamba3_scan

SHAPES = [  # batch, length, heads, head_dim, state, ranks, chunk
    (2, 9, 3, 2, 4, 1, 4),
    (1, 13, 2, 3, 6, 2, 5),
    (3, 6, 1, 4, 2, 3, 64),
]


def _loop(x, dt, log_decay, lam, q, k, D, x_weight) -> Tensor:
    """``H[t] = a H[t-1] + (1 - lam) dt a sum_r k v^T [t-1] + lam dt sum_r k v^T [t]``,
    ``y[t, r] = q[t, r] H[t] + D v[t, r]``, one batch element, head and rank at a time."""
    batch, length, heads, width = x.shape
    ranks, state = q.shape[2], q.shape[-1]
    y = torch.zeros(batch, length, ranks, heads, width, dtype=x.dtype)
    for b in range(batch):
        for h in range(heads):
            H = torch.zeros(width, state, dtype=x.dtype)
            previous = torch.zeros(width, state, dtype=x.dtype)
            for t in range(length):
                v = [x[b, t, h] * (1 if x_weight is None else x_weight[r, h]) for r in range(ranks)]
                current = sum(torch.outer(v[r], k[b, t, r, h]) for r in range(ranks))
                alpha = torch.exp(log_decay[b, t, h])
                step = dt[b, t, h]
                H = alpha * H + (1 - lam[b, t, h]) * step * alpha * previous
                H = H + lam[b, t, h] * step * current
                previous = current
                for r in range(ranks):
                    y[b, t, r, h] = H @ q[b, t, r, h] + D[h] * v[r]
    return y


def _scan_inputs(shape, seed: int):
    batch, length, heads, width, state, ranks, _ = shape
    g = torch.Generator().manual_seed(seed)

    def randn(*size: int) -> Tensor:
        return torch.randn(*size, generator=g, dtype=torch.float64)

    dt = torch.nn.functional.softplus(randn(batch, length, heads))
    log_decay = -torch.rand(batch, length, heads, generator=g, dtype=torch.float64) * dt
    lam = torch.rand(batch, length, heads, generator=g, dtype=torch.float64)
    q, k = randn(batch, length, ranks, heads, state), randn(batch, length, ranks, heads, state)
    x_weight = randn(ranks, heads, width) if ranks > 1 else None
    return randn(batch, length, heads, width), dt, log_decay, lam, q, k, randn(heads), x_weight


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_scan_equals_loop_and_sequential(shape, seed: int) -> None:
    x, dt, log_decay, lam, q, k, D, x_weight = _scan_inputs(shape, seed)
    expected = _loop(x, dt, log_decay, lam, q, k, D, x_weight)
    for impl in ("chunked", "sequential"):
        y = mamba3_scan(x, dt, log_decay, lam, q, k, D, x_weight, shape[-1], impl)
        assert (y - expected).abs().max() <= 1e-12 * expected.abs().max()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_chunked_and_sequential_gradients_agree(shape) -> None:
    tensors = _scan_inputs(shape, 3)
    weight = torch.randn(*_loop(*tensors).shape, dtype=torch.float64)
    grads = []
    for impl in ("chunked", "sequential"):
        leaves = [t.clone().requires_grad_() if t is not None else None for t in tensors]
        y = mamba3_scan(*leaves, chunk_size=shape[-1], impl=impl)
        grads.append(torch.autograd.grad((y * weight).sum(), [t for t in leaves if t is not None]))
    for chunked, sequential in zip(*grads, strict=True):
        assert (chunked - sequential).abs().max() <= 1e-10 * (1 + sequential.abs().max())


def test_scan_rejects_unknown_implementation() -> None:
    tensors = _scan_inputs(SHAPES[0], 0)
    with pytest.raises(ValueError, match="impl"):
        mamba3_scan(*tensors, impl="fused")


def test_mamba3_decode_checks_in_subprocess(tmp_path: Path) -> None:
    run_in_mamba_ssm_subprocess(tmp_path, __file__)


def _own_decode(mixer, u: Tensor) -> Tensor:
    """``Mamba3.step`` position by position, with mamba-ssm's pure-torch reference
    functions in place of its Triton/CuTe kernels and RMSNorm kernels."""
    from einops import rearrange
    from mamba_ssm.ops.cute.mamba3.mamba3_step_fn import selective_state_update_fused_ref_v2
    from mamba_ssm.ops.triton.layernorm_gated import rms_norm_ref
    from mamba_ssm.ops.triton.mamba3.mamba3_mimo_rotary_step import (
        apply_rotary_qk_inference_reference,
    )

    def norm_ref(norm):
        return lambda x, z=None: rms_norm_ref(x, norm.weight, None, z, norm.eps, norm.group_size,
                                              norm.norm_before_gate, upcast=False)  # fmt: skip

    batch, length, _ = u.shape
    H, P, N, R = mixer.nheads, mixer.headdim, mixer.d_state, mixer.mimo_rank
    dtype = u.dtype
    angle_state = torch.zeros(batch, H, mixer.num_rope_angles, dtype=dtype)
    ssm_state = torch.zeros(batch, H, P, N, dtype=dtype)
    k_state, v_state = (
        torch.zeros(batch, R, H, N, dtype=dtype),
        torch.zeros(batch, H, P, dtype=dtype),
    )
    ones = torch.ones(R, H, P, dtype=dtype)
    xpj, zpj, outpj = (
        (rearrange(w, "h r p -> r h p") for w in (mixer.mimo_x, mixer.mimo_z, mixer.mimo_o))
        if mixer.is_mimo
        else (ones, ones, ones)
    )
    norms = [mixer.B_norm, mixer.C_norm] + ([mixer.norm] if mixer.is_outproj_norm else [])
    patches = [mock.patch.object(norm, "forward", norm_ref(norm)) for norm in norms]
    outputs = []
    for patch in patches:
        patch.start()
    try:
        for t in range(length):
            z, x, B, C, dd_dt, dd_A, trap, angles = torch.split(
                mixer.in_proj(u[:, t]),
                [mixer.d_inner, mixer.d_inner, N * R, N * R, H, H, H, mixer.num_rope_angles],
                dim=-1,
            )
            DT, B, C, x, z, trap, A, angles = mixer._preprocess(
                dd_A, dd_dt, B, C, x, z, trap, angles
            )
            C, B, angle_state = apply_rotary_qk_inference_reference(
                C, B, angle_state, angles, DT, rearrange(mixer.C_bias, "h r n -> r h n"),
                rearrange(mixer.B_bias, "h r n -> r h n"), rotate_pairwise=not mixer.is_mimo,
            )  # fmt: skip
            gate, out_weight = (None, None) if mixer.is_outproj_norm else (z, outpj)
            y, ssm_state = selective_state_update_fused_ref_v2(
                ssm_state, A, B, C, xpj, x, zpj, gate, DT, k_state, v_state, trap, mixer.D,
                out_weight, compute_dtype=dtype,
            )  # fmt: skip
            if mixer.is_outproj_norm:
                y = mixer._postprocess(y, outpj, z, zpj, P)
            k_state, v_state = B, x
            outputs.append(mixer.out_proj(rearrange(y, "b h p -> b (h p)").to(dtype)))
    finally:
        for patch in patches:
            patch.stop()
    return torch.stack(outputs, 1)


@subprocess_only
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("config", ["siso", "siso-groups-norm", "mimo", "mimo-norm"])
def test_forward_equals_mamba_ssm_decode_references(config: str, seed: int) -> None:
    """mamba-ssm's decode path expands ``B``/``C`` over heads with ``expand``, so it runs
    with one group here (grouped heads are checked against the case's reference, which
    maps head ``h`` to group ``h // (heads / groups)`` as the Triton kernel does). Its
    gated output norm (``_postprocess``) computes in float32, so those configurations are
    compared in float32; the others in float64, but mamba-ssm computes the decay rate
    ``A = -softplus(dd_A.float())`` in float32 (in ``forward`` and ``step`` alike), which
    bounds the agreement at about 1e-8 relative (this package keeps float64)."""
    from cases.mamba_ssm_mamba3 import WIDTH, mamba3_mixer

    dtype = torch.float32 if "norm" in config else torch.float64
    torch.manual_seed(seed)
    mixer = mamba3_mixer(config, ngroups=1).to(dtype)
    with torch.no_grad():
        for name, parameter in mixer.named_parameters():
            if not name.endswith("dt_bias"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    u = torch.randn(2, 7, WIDTH, dtype=dtype)
    with torch.no_grad():
        own = _own_decode(mixer, u)
        with rules_applied(mixer, MambaRules.gradient_x_input()):
            ours = mixer(u)
    tolerance = 1e-5 if dtype == torch.float32 else 1e-7
    assert ours.dtype == dtype
    assert (ours - own).abs().max() <= tolerance * own.abs().max()

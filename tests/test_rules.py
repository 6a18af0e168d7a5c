"""Each rule function against explicit closed forms (Jacobians, LRP formulas)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import jacobian

from captum_mamba.rules import (
    LRP0,
    Epsilon,
    Gamma,
    MambaRules,
    gated_product,
    rms_norm,
    selective_ssm,
    silu,
)

DTYPE = torch.float64


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


# ---------------------------------------------------------------- RMSNorm


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("with_weight", [True, False])
def test_rms_norm_value(seed: int, with_weight: bool) -> None:
    x, w = randn(3, 5, seed=seed), randn(5, seed=seed + 10)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5)
    expected = expected * w if with_weight else expected
    for rule in (True, False):
        out = rms_norm(x, w if with_weight else None, 1e-5, rule)
        torch.testing.assert_close(out, expected, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rms_norm_ln_rule_jacobian_is_diag_w_over_rms(seed: int) -> None:
    x, w, eps = randn(6, seed=seed), randn(6, seed=seed + 10), 1e-3
    rms = torch.sqrt((x**2).mean() + eps)
    jac = jacobian(lambda v: rms_norm(v, w, eps, rule=True), x)
    torch.testing.assert_close(jac, torch.diag(w / rms), rtol=1e-14, atol=1e-14)
    # Gradient x Input is conservative: the relevances sum to the output.
    assert torch.allclose((jac * x).sum(), (w * x / rms).sum(), rtol=1e-13)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rms_norm_without_rule_has_true_jacobian(seed: int) -> None:
    x, w, eps = randn(6, seed=seed), randn(6, seed=seed + 10), 1e-3
    n = x.numel()
    rms = torch.sqrt((x**2).mean() + eps)
    true = torch.diag(w) @ (torch.eye(n, dtype=DTYPE) / rms - torch.outer(x, x) / (n * rms**3))
    jac = jacobian(lambda v: rms_norm(v, w, eps, rule=False), x)
    torch.testing.assert_close(jac, true, rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------- SiLU


@pytest.mark.parametrize("seed", [0, 1])
def test_silu_identity_rule(seed: int) -> None:
    x = 3 * randn(7, seed=seed)
    sig = 1 / (1 + torch.exp(-x))
    torch.testing.assert_close(silu(x, True), x * sig, rtol=1e-14, atol=1e-14)
    jac = jacobian(lambda v: silu(v, rule=True), x)
    torch.testing.assert_close(jac, torch.diag(sig), rtol=1e-14, atol=1e-14)
    # identity rule: R_in = R_out elementwise
    torch.testing.assert_close(torch.diag(jac) * x, x * sig, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("seed", [0, 1])
def test_silu_without_rule_has_true_derivative(seed: int) -> None:
    x = 3 * randn(7, seed=seed)
    sig = 1 / (1 + torch.exp(-x))
    torch.testing.assert_close(silu(x, False), x * sig, rtol=1e-14, atol=1e-14)
    jac = jacobian(lambda v: silu(v, rule=False), x)
    torch.testing.assert_close(jac, torch.diag(sig * (1 + x * (1 - sig))), rtol=1e-13, atol=1e-13)


# ---------------------------------------------------------------- gate


@pytest.mark.parametrize("rule", [True, False])
def test_gated_product(rule: bool) -> None:
    y = randn(4, 3, seed=1).requires_grad_()
    g = randn(4, 3, seed=2).requires_grad_()
    out = gated_product(y, g, rule)
    torch.testing.assert_close(out, y * g, rtol=0, atol=0)
    grad_y, grad_g = torch.autograd.grad(out.sum(), (y, g))
    share = 0.5 if rule else 1.0
    product = (y * g).detach()
    torch.testing.assert_close(y.detach() * grad_y, share * product, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(g.detach() * grad_g, share * product, rtol=1e-15, atol=1e-15)


# ---------------------------------------------------------------- selective SSM


def ssm_inputs(length: int = 6, channels: int = 3, state: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, length, channels, generator=gen, dtype=DTYPE)
    dt = 0.1 + torch.rand(1, length, channels, generator=gen, dtype=DTYPE)
    A = -(0.3 + torch.rand(channels, state, generator=gen, dtype=DTYPE))
    B = torch.randn(1, length, state, generator=gen, dtype=DTYPE)
    C = torch.randn(1, length, state, generator=gen, dtype=DTYPE)
    D = torch.randn(channels, generator=gen, dtype=DTYPE)
    return x, dt, A, B, C, D


def explicit_ssm_matrix(dt, A, B, C, D) -> torch.Tensor:
    """``M[t, s, d]`` with ``y[t, d] = sum_s M[t, s, d] x[s, d]`` (closed form)."""
    _, length, channels = dt.shape
    M = torch.zeros(length, length, channels, dtype=DTYPE)
    for t in range(length):
        for s in range(t + 1):
            for d in range(channels):
                decay = torch.exp(dt[0, s + 1 : t + 1, d, None] * A[d]).prod(0)
                M[t, s, d] = (C[0, t] * decay * dt[0, s, d] * B[0, s]).sum()
        M[t, t] += D
    return M


@pytest.mark.parametrize("seed", [0, 1])
def test_selective_ssm_value_is_explicit_linear_map(seed: int) -> None:
    x, dt, A, B, C, D = ssm_inputs(seed=seed)
    M = explicit_ssm_matrix(dt, A, B, C, D)
    expected = torch.einsum("tsd,sd->td", M, x[0])[None]
    for rule in (True, False):
        out = selective_ssm(x, dt, A, B, C, D, rule=rule)
        torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)
    out = selective_ssm(x, dt, A, B, C, None, rule=True)
    torch.testing.assert_close(out, expected - x * D, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("seed", [0, 1])
def test_ssm_rule_jacobian_is_the_frozen_linear_map(seed: int) -> None:
    x, dt, A, B, C, D = ssm_inputs(seed=seed)
    dt, B, C = (t.requires_grad_() for t in (dt, B, C))
    M = explicit_ssm_matrix(dt.detach(), A, B.detach(), C.detach(), D)
    jac = jacobian(lambda v: selective_ssm(v, dt, A, B, C, D, rule=True), x)[0, :, :, 0]
    length, channels = x.shape[1:]
    expected = torch.zeros(length, channels, length, channels, dtype=DTYPE)
    for d in range(channels):
        expected[:, d, :, d] = M[:, :, d]
    torch.testing.assert_close(jac, expected, rtol=1e-13, atol=1e-13)
    # No relevance flows into dt, B, C (they are constants of the rule).
    out = selective_ssm(x.requires_grad_(), dt, A, B, C, D, rule=True)
    grads = torch.autograd.grad(out.sum(), (x, dt, B, C), allow_unused=True)
    assert grads[0] is not None
    assert all(g is None for g in grads[1:])
    # With a linear map the relevance of x sums to the output.
    torch.testing.assert_close((grads[0] * x).sum(), out.sum(), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("rule", [True, False])
def test_selective_ssm_with_grouped_b_c_is_each_group_with_its_own(rule: bool) -> None:
    # Zamba's multi-head Mamba-1 mixer: consecutive channel groups with their own B and C.
    gen = torch.Generator().manual_seed(7)
    x, dt, A, _, _, D = ssm_inputs(channels=6, seed=7)
    B = torch.randn(1, x.shape[1], 3, A.shape[1], generator=gen, dtype=DTYPE)
    C = torch.randn(1, x.shape[1], 3, A.shape[1], generator=gen, dtype=DTYPE)
    expected = torch.zeros_like(x)
    for g in range(3):
        channels = slice(2 * g, 2 * g + 2)
        M = explicit_ssm_matrix(dt[..., channels], A[channels], B[:, :, g], C[:, :, g], 0.0)
        expected[0, :, channels] = torch.einsum("tsd,sd->td", M, x[0, :, channels])
    expected = expected + x * D
    leaf = x.clone().requires_grad_()
    out = selective_ssm(leaf, dt, A, B, C, D, rule=rule)
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)
    (grad,) = torch.autograd.grad(out[0, -1, 3], leaf)
    M = explicit_ssm_matrix(dt[..., 2:4], A[2:4], B[:, :, 1], C[:, :, 1], 0.0)
    column = torch.zeros_like(x)
    column[0, :, 3] = M[-1, :, 1]
    column[0, -1, 3] += D[3]
    torch.testing.assert_close(grad, column, rtol=1e-13, atol=1e-13)


def test_without_ssm_rule_gradients_reach_dt_b_c() -> None:
    x, dt, A, B, C, D = ssm_inputs(seed=3)
    inputs = tuple(t.requires_grad_() for t in (x, dt, B, C))

    def loop(x, dt, B, C):
        return torch.einsum("tsd,sd->td", explicit_ssm_matrix(dt, A, B, C, D), x[0]).sum()

    expected = torch.autograd.grad(loop(*inputs), inputs)
    actual = torch.autograd.grad(selective_ssm(x, dt, A, B, C, D, False).sum(), inputs)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- linear rules


def stabilised(z: torch.Tensor, eps: float) -> torch.Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def explicit_linear_lrp(x, w, b, relevance_out, gamma: float, eps: float) -> torch.Tensor:
    """``R_i = x_i sum_j w'_ij R_j / (z'_j + eps sign z'_j)`` with loops; ``w`` is (out, in)."""
    w_mod = w + gamma * w.clamp(min=0)
    batch, n_in = x.shape
    n_out = w.shape[0]
    R = torch.zeros_like(x)
    for n in range(batch):
        z_mod = [sum(x[n, i] * w_mod[j, i] for i in range(n_in)) + b[j] for j in range(n_out)]
        for i in range(n_in):
            R[n, i] = x[n, i] * sum(
                w_mod[j, i] * relevance_out[n, j] / stabilised(z_mod[j], eps) for j in range(n_out)
            )
    return R


def rule_relevance(rule, op, x, w, b, relevance_out) -> torch.Tensor:
    """Gradient x Input through ``rule.apply`` with upstream relevance ``R_out``:
    the output gradient is ``R_out / z`` (so that ``z * grad = R_out``)."""
    x = x.detach().requires_grad_()
    z = rule.apply(op, x, w, b)
    torch.testing.assert_close(z, op(x, w, b), rtol=1e-14, atol=1e-15)
    (grad,) = torch.autograd.grad(z, x, grad_outputs=relevance_out / z.detach())
    return x.detach() * grad


LINEAR_RULES = [
    (LRP0(), 0.0, 0.0),
    (Epsilon(), 0.0, 1e-9),
    (Epsilon(0.7), 0.0, 0.7),
    (Gamma(), 0.25, 1e-9),
    (Gamma(gamma=1.0, epsilon=0.3), 1.0, 0.3),
]


@pytest.mark.parametrize(("rule", "gamma", "eps"), LINEAR_RULES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_linear_rule_matches_explicit_formula(rule, gamma, eps, with_bias) -> None:
    x, w = randn(2, 5, seed=1), randn(4, 5, seed=2)
    b = randn(4, seed=3) if with_bias else torch.zeros(4, dtype=DTYPE)
    R_out = randn(2, 4, seed=4)
    expected = explicit_linear_lrp(x, w, b, R_out, gamma, eps)
    actual = rule_relevance(rule, F.linear, x, w, b if with_bias else None, R_out)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    if not with_bias and eps < 1e-6:
        # bias-free and (almost) unstabilised: relevance is conserved per example
        torch.testing.assert_close(actual.sum(1), R_out.sum(1), rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize(("rule", "gamma", "eps"), LINEAR_RULES)
def test_conv_rule_matches_explicit_formula(rule, gamma, eps) -> None:
    """Depthwise causal conv as in Mamba, through the conv module's own op."""
    channels, length, kernel = 3, 6, 4
    conv = nn.Conv1d(channels, channels, kernel, groups=channels, padding=kernel - 1).double()
    x = randn(1, channels, length, seed=5)
    w, b = conv.weight.detach(), randn(channels, seed=6)

    def op(inp, weight, bias):
        return conv._conv_forward(inp, weight, bias)

    out_len = length + kernel - 1
    R_out = randn(1, channels, out_len, seed=7)
    actual = rule_relevance(rule, op, x, w, b, R_out)
    # Explicit: output (c, t) = b_c + sum_k w[c, k] x[c, t + k - (kernel - 1)].
    w_mod = w[:, 0] + gamma * w[:, 0].clamp(min=0)
    expected = torch.zeros_like(x)
    for c in range(channels):
        for t in range(out_len):
            taps = [(k, t + k - (kernel - 1)) for k in range(kernel)]
            taps = [(k, s) for k, s in taps if 0 <= s < length]
            z_mod = b[c] + sum(w_mod[c, k] * x[0, c, s] for k, s in taps)
            for k, s in taps:
                expected[0, c, s] += (
                    x[0, c, s] * w_mod[c, k] * R_out[0, c, t] / stabilised(z_mod, eps)
                )
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_rules_config() -> None:
    assert MambaRules() == MambaRules(norm=True, silu=True, ssm=True, gate=True, linear=LRP0())
    gxi = MambaRules.gradient_x_input()
    assert (gxi.norm, gxi.silu, gxi.ssm, gxi.gate) == (False, False, False, False)
    ln = MambaRules.norm_only()
    assert (ln.norm, ln.silu, ln.ssm, ln.gate) == (True, False, False, False)
    assert isinstance(gxi.linear, LRP0)
    assert isinstance(ln.linear, LRP0)

"""The rule functions of the non-Mamba blocks against obviously correct implementations:
MLP activations (transformers' own modules, closed-form Jacobians), softmax attention (a
loop over queries and keys), the rotary embedding (complex multiplication), grouped
expert projections and the mixture of experts (loops), and their rules' gradients."""

from __future__ import annotations

import cmath

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian
from transformers.activations import ACT2FN

from captum_mamba.rules import LRP0, Epsilon, MambaRules
from captum_mamba.rules.functional import (
    ACTIVATIONS,
    activation,
    attention,
    grouped_linear,
    mixture,
    rotary,
)

DTYPE = torch.float64


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DTYPE)


# ---------------------------------------------------------------- activations


@pytest.mark.parametrize("function", sorted(ACTIVATIONS))
def test_activation_values_are_transformers(function: str) -> None:
    x = randn(40, seed=1) * 3
    x[::7] = 0.0  # exact zeros: f(0) must survive the rule (sigmoid(0) = 1/2)
    expected = ACT2FN[function](x)
    for rule in (True, False):
        torch.testing.assert_close(activation(x, function, rule), expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("function", sorted(ACTIVATIONS))
def test_activation_identity_rule_passes_relevance_unchanged(function: str) -> None:
    x = randn(7, seed=2) * 2
    jac = jacobian(lambda v: activation(v, function, rule=True), x)
    assert torch.count_nonzero(jac - torch.diag(torch.diagonal(jac))) == 0
    # Gradient x Input of each element is the element's output: R_in = R_out.
    torch.testing.assert_close(torch.diagonal(jac) * x, ACT2FN[function](x), rtol=1e-13, atol=0)
    true = jacobian(lambda v: ACT2FN[function](v), x)
    torch.testing.assert_close(jacobian(lambda v: activation(v, function, False), x), true)


def test_squared_relu_identity_rule_is_the_uniform_rule_on_relu_times_relu() -> None:
    x = randn(9, seed=3)

    def uniform(v: torch.Tensor) -> torch.Tensor:
        r = F.relu(v)
        return 0.5 * (r * r.detach() + r.detach() * r)

    torch.testing.assert_close(
        jacobian(lambda v: activation(v, "relu2", True), x), jacobian(uniform, x)
    )


def test_unknown_activation_is_refused_in_one_line() -> None:
    with pytest.raises(NotImplementedError, match=r"supports the activations .*got 'mish'$"):
        activation(randn(3), "mish", True)


# ---------------------------------------------------------------- attention


def loop_attention(q, k, v, bias, scaling):
    """softmax(q k^T scaling + bias) v, one query, head and key at a time."""
    batch, heads, queries, _ = q.shape
    group = heads // k.shape[1]
    out = torch.zeros(batch, heads, queries, v.shape[-1], dtype=q.dtype)
    for b in range(batch):
        for h in range(heads):
            for i in range(queries):
                scores = [
                    float(q[b, h, i] @ k[b, h // group, j]) * scaling + float(bias[b, 0, i, j])
                    for j in range(k.shape[2])
                ]
                top = max(scores)
                weights = [torch.exp(torch.tensor(s - top, dtype=q.dtype)) for s in scores]
                total = sum(weights)
                for j, w in enumerate(weights):
                    out[b, h, i] += w / total * v[b, h // group, j]
    return out


def attention_inputs(seed: int = 0):
    q, k, v = randn(2, 4, 5, 3, seed=seed), randn(2, 2, 5, 3, seed=seed + 1), randn(2, 2, 5, 3)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril()
    allowed[:, 0] = False
    allowed[0, 0] = True  # the first query keeps one key
    bias = torch.zeros(2, 1, 5, 5, dtype=DTYPE).masked_fill(~allowed, torch.finfo(DTYPE).min)
    return q, k, v, bias


@pytest.mark.parametrize(("uniform", "constant"), [(True, False), (False, True), (False, False)])
def test_attention_value_is_softmax_attention(uniform: bool, constant: bool) -> None:
    q, k, v, bias = attention_inputs()
    out = attention(q, k, v, bias, 0.7, uniform, constant)
    torch.testing.assert_close(out, loop_attention(q, k, v, bias, 0.7), rtol=1e-13, atol=1e-14)


def _gradients(uniform: bool, constant: bool, seed: int = 1):
    q, k, v, bias = (t.requires_grad_() for t in attention_inputs(seed))
    upstream = randn(2, 4, 5, 3, seed=9)
    out = attention(q, k, v, bias.detach(), 0.7, uniform, constant)
    grads = torch.autograd.grad(out, (q, k, v), upstream, allow_unused=True)
    grads = tuple(
        torch.zeros_like(t) if g is None else g for t, g in zip((q, k, v), grads, strict=True)
    )
    return (q, k, v), out, grads, upstream


def test_attn_lrp_quarters_query_and_key_gradients_and_halves_value_gradients() -> None:
    _, _, true, _ = _gradients(False, False)
    _, _, ruled, _ = _gradients(True, False)
    for factor, r, t in zip((0.25, 0.25, 0.5), ruled, true, strict=True):
        torch.testing.assert_close(r, factor * t, rtol=1e-13, atol=1e-15)


def test_cp_lrp_passes_relevance_through_the_values_only_and_conserves() -> None:
    (_, _, v), out, (gq, gk, gv), upstream = _gradients(False, True)
    _, _, true, _ = _gradients(False, False)
    assert torch.count_nonzero(gq) == 0 and torch.count_nonzero(gk) == 0
    torch.testing.assert_close(gv, true[2], rtol=1e-13, atol=1e-15)
    # linear in v: Gradient x Input of v sums to that of the output
    total = (v * gv).sum()
    torch.testing.assert_close(total, (out * upstream).sum(), rtol=1e-12, atol=0)


# ---------------------------------------------------------------- rotary embedding


@pytest.mark.parametrize("rotated", [4, 2])
def test_rotary_is_complex_multiplication_of_channel_pairs(rotated: int) -> None:
    x, angles = randn(2, 3, 5, 4, seed=4), randn(1, 5, rotated // 2, seed=5)
    cos = torch.cat([angles.cos(), angles.cos()], -1)
    sin = torch.cat([angles.sin(), angles.sin()], -1)
    out = rotary(x, cos, sin)
    half = rotated // 2
    for b, h, t, m in torch.cartesian_prod(*(torch.arange(n) for n in (2, 3, 5, half))).tolist():
        z = complex(x[b, h, t, m], x[b, h, t, m + half]) * cmath.exp(1j * float(angles[0, t, m]))
        assert abs(out[b, h, t, m] - z.real) < 1e-14
        assert abs(out[b, h, t, m + half] - z.imag) < 1e-14
    torch.testing.assert_close(out[..., rotated:], x[..., rotated:], rtol=0, atol=0)


# ---------------------------------------------------------------- experts and mixture


@pytest.mark.parametrize("rule", [LRP0(), Epsilon(0.3)])
def test_grouped_linear_is_each_group_through_its_weight(rule) -> None:
    x, weight, sizes = randn(6, 4, seed=6), randn(3, 5, 4, seed=7), [2, 0, 4]
    leaf = x.clone().requires_grad_()
    out = grouped_linear(leaf, weight, sizes, rule)
    expected = torch.cat([x[:2] @ weight[0].T, x[2:] @ weight[2].T])
    torch.testing.assert_close(out, expected, rtol=1e-14, atol=1e-14)
    relevance_out = randn(6, 5, seed=8)
    (grad,) = torch.autograd.grad(out, leaf, relevance_out / out.detach())
    eps = 0.3 if isinstance(rule, Epsilon) else 0.0
    groups = [0, 0, 2, 2, 2, 2]
    for row, g in enumerate(groups):
        z = expected[row]
        stabilised = z + eps * torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
        explicit = x[row] * (weight[g].T @ (relevance_out[row] / stabilised))
        torch.testing.assert_close(x[row] * grad[row], explicit, rtol=1e-12, atol=1e-14)


def test_mixture_sums_weighted_expert_outputs_per_token() -> None:
    weights, values = randn(5, seed=9), randn(5, 3, seed=10)
    index = torch.tensor([0, 2, 0, 1, 2])
    out = mixture(weights, values, index, 4, rule=False)
    expected = torch.zeros(4, 3, dtype=DTYPE)
    for p in range(5):
        expected[index[p]] += weights[p] * values[p]
    torch.testing.assert_close(out, expected, rtol=1e-14, atol=1e-15)


def test_router_rule_sends_relevance_to_the_experts_only_and_conserves() -> None:
    weights, values = randn(5, seed=11).requires_grad_(), randn(5, 3, seed=12).requires_grad_()
    index = torch.tensor([0, 2, 0, 1, 2])
    upstream = randn(3, 3, seed=13)
    out = mixture(weights, values, index, 3, rule=True)
    grad_w, grad_v = torch.autograd.grad(out, (weights, values), upstream, allow_unused=True)
    assert grad_w is None
    torch.testing.assert_close((values * grad_v).sum(), (out * upstream).sum(), rtol=1e-13, atol=0)
    out = mixture(weights, values, index, 3, rule=False)
    grad_w, _ = torch.autograd.grad(out, (weights, values), upstream)
    assert grad_w.abs().min() > 0


# ---------------------------------------------------------------- settings


def test_attention_settings_and_presets() -> None:
    assert MambaRules().attention is True and MambaRules.preset("mamba_lrp") == MambaRules()
    assert MambaRules.cp_lrp() == MambaRules(attention="cp_lrp")
    gxi = MambaRules.gradient_x_input()
    assert (gxi.activation, gxi.attention, gxi.router) == (False, False, False)
    only_norm = MambaRules.norm_only()
    assert (only_norm.activation, only_norm.attention, only_norm.router) == (False, False, False)
    with pytest.raises(TypeError, match=r"attention must be True or False or 'cp_lrp', got 'cp'"):
        MambaRules(attention="cp")
    with pytest.raises(TypeError, match=r"router must be True or False, got 'cp_lrp'"):
        MambaRules(router="cp_lrp")
    assert MambaRules().override("model.layers.1", attention="cp_lrp").overrides

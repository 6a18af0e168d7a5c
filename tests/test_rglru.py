"""The RG-LRU operation (``captum_mamba.rules.functional.rg_lru``, computed as a selective
scan) against its recurrence written step by step: values and gradients with the SSM rule
on and off, for every CPU implementation of the scan."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from captum_mamba.ops import implementation
from captum_mamba.rules import functional as R


def _parameters(seed: int, heads: int, width: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    channels = heads * width

    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return {
        "input_weight": normal(heads, width, width),
        "input_bias": normal(heads, width),
        "recurrent_weight": normal(heads, width, width),
        "recurrent_bias": normal(heads, width),
        "rate": 8.0 * F.softplus(normal(channels)),
    }


def _loop(x: Tensor, p: dict[str, Tensor], rule: bool) -> Tensor:
    """``h[t] = a h[t-1] + sqrt(1 - a^2) i x`` one step and one head at a time."""
    heads, width = p["input_bias"].shape
    source = x.detach() if rule else x
    state = torch.zeros_like(x[:, 0])
    out = []
    for t in range(x.shape[1]):
        parts = []
        for h in range(heads):
            block = source[:, t, h * width : (h + 1) * width]
            i = torch.sigmoid(block @ p["input_weight"][h] + p["input_bias"][h])
            r = torch.sigmoid(block @ p["recurrent_weight"][h] + p["recurrent_bias"][h])
            parts.append((i, r))
        i = torch.cat([part[0] for part in parts], -1)
        r = torch.cat([part[1] for part in parts], -1)
        a = torch.exp(-p["rate"] * r)
        normaliser = torch.ones_like(a) if t == 0 else torch.sqrt(1 - a * a)
        state = a * state + normaliser * i * x[:, t]
        out.append(state)
    return torch.stack(out, 1)


@pytest.mark.parametrize("impl", ["sequential", "parallel"])
@pytest.mark.parametrize("rule", [True, False])
@pytest.mark.parametrize(("seed", "heads", "width", "length"), [(0, 2, 3, 7), (1, 1, 4, 12)])
def test_rg_lru_equals_its_recurrence(
    impl: str, rule: bool, seed: int, heads: int, width: int, length: int
) -> None:
    p = _parameters(seed, heads, width)
    x = torch.randn(2, length, heads * width, dtype=torch.float64, generator=torch.Generator())
    x.requires_grad_(True)
    weights = torch.randn(2, length, heads * width, dtype=torch.float64)
    with implementation(selective_scan=impl):
        y = R.rg_lru(x, **p, rule=rule)
    (gradient,) = torch.autograd.grad((y * weights).sum(), x)
    expected = _loop(x, p, rule)
    (expected_gradient,) = torch.autograd.grad((expected * weights).sum(), x)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-10, atol=1e-12)


def test_the_rule_conserves_relevance() -> None:
    """Under the rule the unit is linear in ``x``: Gradient x Input sums to the output."""
    p = _parameters(3, 2, 2)
    x = torch.randn(1, 6, 4, dtype=torch.float64, requires_grad=True)
    y = R.rg_lru(x, **p, rule=True)
    (gradient,) = torch.autograd.grad(y[0, -1, 1], x)
    torch.testing.assert_close((gradient * x).sum(), y[0, -1, 1], rtol=1e-12, atol=1e-14)
    (plain,) = torch.autograd.grad(R.rg_lru(x, **p, rule=False)[0, -1, 1], x)
    assert not torch.allclose((plain * x).sum(), y[0, -1, 1])  # the gates depend on x

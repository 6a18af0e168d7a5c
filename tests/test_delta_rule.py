"""The gated delta rule op kind: its chunked scan against a loop written here (values and
gradients, one decay per head or per key channel, separate write keys, several chunk
sizes), its implicit attention, and the conservation of its uniform rule (the delta rule
of the ``mamba_lrp`` preset conserves, unlike AttnLRP's softmax) on models whose token
mixers are all delta rules."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from captum_mamba import MambaLRP, MambaRules
from captum_mamba.ops.delta_rule import delta_rule, delta_rule_weights

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require")


def loop(q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Tensor, w: Tensor) -> Tensor:
    """``S = diag(exp(g)) S; S = S - beta k (k^T S); S = S + beta w v^T; o = S^T q`` per
    batch element and head, element by element."""
    batch, heads, length, dk = k.shape
    decay = torch.exp(g if g.dim() == 4 else g[..., None].expand(-1, -1, -1, dk))
    out = torch.zeros(batch, heads, length, v.shape[-1], dtype=v.dtype)
    for b in range(batch):
        for h in range(heads):
            state = torch.zeros(dk, v.shape[-1], dtype=v.dtype)
            rows = []
            for t in range(length):
                state = decay[b, h, t][:, None] * state
                state = state - beta[b, h, t] * torch.outer(k[b, h, t], k[b, h, t] @ state)
                state = state + beta[b, h, t] * torch.outer(w[b, h, t], v[b, h, t])
                rows.append(q[b, h, t] @ state)
            out[b, h] = torch.stack(rows)
    return out


def inputs(seed: int, length: int, per_channel: bool) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, length)
    k = torch.nn.functional.normalize(
        torch.randn(*shape, 4, generator=g, dtype=torch.float64), dim=-1
    )
    return [
        torch.randn(*shape, 4, generator=g, dtype=torch.float64),
        k,
        torch.randn(*shape, 5, generator=g, dtype=torch.float64),
        2.0 * torch.rand(*shape, generator=g, dtype=torch.float64),
        -3.0 * torch.rand(*shape, *((4,) if per_channel else ()), generator=g, dtype=torch.float64),
        k + 0.1 * torch.randn(*shape, 4, generator=g, dtype=torch.float64),
    ]


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-head", "per-channel"])
@pytest.mark.parametrize(("seed", "length", "chunk"), [(0, 7, 3), (1, 10, 4), (2, 5, 8), (3, 6, 1)])
def test_chunked_and_sequential_equal_the_loop(seed, length, chunk, per_channel) -> None:
    args = [t.requires_grad_() for t in inputs(seed, length, per_channel)]
    expected = loop(*args)
    weights = torch.randn(
        expected.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64
    )
    grads = torch.autograd.grad((expected * weights).sum(), args)
    for size in (chunk, None):
        out = delta_rule(*args[:5], write_key=args[5], chunk_size=size)
        assert (out - expected).abs().max() <= 1e-12 * expected.abs().max()
        for got, want in zip(torch.autograd.grad((out * weights).sum(), args), grads, strict=True):
            assert (got - want).abs().max() <= 1e-11 * want.abs().max()


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-head", "per-channel"])
def test_implicit_attention_reconstructs_the_output(per_channel) -> None:
    q, k, v, beta, g, _ = inputs(4, 8, per_channel)
    weights = delta_rule_weights(q, k, beta, g)
    expected = loop(q, k, v, beta, g, k)
    assert (weights.triu(1) == 0).all()
    assert (weights @ v - expected).abs().max() <= 1e-12 * expected.abs().max()


@pytest.mark.parametrize(
    ("case", "changes"),
    [
        ("hf_qwen3_next", dict(layer_types=["linear_attention"] * 4, mlp_only_layers=[0, 1, 2, 3])),
        (
            "hf_kimi_linear",
            dict(layer_types=["linear_attention"] * 3, mlp_layer_types=["dense"] * 3),
        ),
    ],
    ids=["qwen3-next", "kimi-linear"],
)
@pytest.mark.parametrize("preset", ["mamba_lrp", "cp_lrp"])
def test_uniform_and_constant_key_rules_conserve(case, changes, preset) -> None:
    module = pytest.importorskip(f"cases.{case}", reason="the installed transformers lacks it")
    config = module.tiny_config(**changes)
    torch.manual_seed(0)
    model_class = {
        "hf_qwen3_next": "Qwen3NextForCausalLM",
        "hf_kimi_linear": "KimiLinearForCausalLM",
    }
    lm = getattr(module, model_class[case])(config).double().eval()
    with torch.no_grad():
        for name, parameter in lm.named_parameters():
            if not name.endswith("bias"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    x = torch.randn(2, 9, config.hidden_size, dtype=torch.float64)
    relevance, delta = MambaLRP(lm, rules=MambaRules.preset(preset)).attribute(
        x, target=[(8, 3), (4, 7)], return_convergence_delta=True
    )
    explained = relevance.flatten(1).sum(1) - delta
    assert (delta.abs() / explained.abs()).max() <= 1e-10
    off = MambaLRP(lm, rules=MambaRules(attention=False)).attribute(
        x, target=[(8, 3), (4, 7)], return_convergence_delta=True
    )[1]
    assert (off.abs() / explained.abs()).max() > 1e-6

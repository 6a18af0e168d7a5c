"""Softmax attention in linear memory: query blocks (``implementation(attention="chunked")``)
and PyTorch's fused kernels (``"sdpa"``).

- both paths give the value and the rule gradients (AttnLRP, CP-LRP, none) of an
  independent float64 loop over heads and queries, with causal, padding and
  sliding-window masks, and with multi-head, grouped and multi-query heads;
- neither keeps anything of size ``queries x keys`` for the backward pass (without a
  mask, for ``"sdpa"``);
- ``"auto"`` picks by size and mask, and the choice can be forced;
- on every hybrid family's conformance case, MambaLRP with either path (query blocks of
  three) equals the case's independent reference and the eager path, for every rule
  preset and single-rule ablation, and on the lean path.
"""

from __future__ import annotations

import pytest
import torch
from cases import ArchitectureCase, load_cases
from helpers import gradient_x_input, half_product, relative_error
from torch import Tensor

from captum_mamba import MambaLRP, MambaRules
from captum_mamba.ops import attention as attention_ops
from captum_mamba.ops import implementation
from captum_mamba.rules.functional import attention

RULES = {"attn_lrp": True, "cp_lrp": "cp_lrp", "none": False}


@pytest.fixture
def blocks_of_three(monkeypatch: pytest.MonkeyPatch) -> None:
    """Query blocks of three (the last one shorter), whatever the sizes."""
    monkeypatch.setattr(attention_ops, "query_block", lambda b, h, k, queries: min(queries, 3))


def loop_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scaling: float, rule):
    """Attention one head and one query at a time over the allowed keys (``allowed``
    ``(batch, queries, keys)`` booleans), the rules as ``detach`` calls."""
    group = q.shape[1] // k.shape[1]
    uniform = rule is True
    heads = []
    for h in range(q.shape[1]):
        rows = []
        for i in range(q.shape[2]):
            row = []
            for b in range(q.shape[0]):
                keys = allowed[b, i].nonzero().squeeze(-1)
                kk, vv = k[b, h // group, keys], v[b, h // group, keys]
                scores = half_product(kk, q[b, h, i][None], uniform).sum(-1) * scaling
                weights = torch.softmax(scores, -1)
                if rule == "cp_lrp":
                    weights = weights.detach()
                row.append(half_product(weights[:, None], vv, uniform).sum(0))
            rows.append(torch.stack(row))
        heads.append(torch.stack(rows, 1))
    return torch.stack(heads, 1)


def masks(length: int, batch: int) -> dict[str, tuple[Tensor | None, bool, Tensor]]:
    """Mask name -> ``(bias, causal, allowed)``."""
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    padded = torch.ones(batch, length, dtype=torch.bool)
    padded[0, :3] = False  # left padding of the first example
    padding = causal & padded[:, None, :]
    padding[:, torch.arange(length), torch.arange(length)] = True  # every row attends
    window = causal & ~torch.ones(length, length, dtype=torch.bool).tril(-4)
    lowest = torch.finfo(torch.float64).min

    def bias(allowed: Tensor) -> Tensor:
        return torch.zeros(allowed.shape, dtype=torch.float64).masked_fill(~allowed, lowest)

    full = torch.ones(batch, length, length, dtype=torch.bool)
    eye = torch.eye(length, dtype=torch.bool)
    return {
        "none": (None, False, full),
        "causal": (None, True, causal.expand(batch, -1, -1)),
        "padding-bias": (bias(padding)[:, None], False, padding),
        "padding-and-causal": (bias(padded[:, None, :] | eye)[:, None], True, padding),
        "sliding-window": (bias(window), False, window.expand(batch, -1, -1)),
    }  # fmt: skip


def inputs(heads: int, kv_heads: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch, length, dim = 2, 10, 4
    q = torch.randn(batch, heads, length, dim, generator=g, dtype=torch.float64) * 2
    k = torch.randn(batch, kv_heads, length, dim, generator=g, dtype=torch.float64) * 2
    v = torch.randn(batch, kv_heads, length, 5, generator=g, dtype=torch.float64)
    return q, k, v


@pytest.mark.usefixtures("blocks_of_three")
@pytest.mark.parametrize("impl", ["chunked", "sdpa"])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (3, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("mask", list(masks(10, 2)))
@pytest.mark.parametrize("rule", list(RULES))
def test_linear_memory_paths_match_loop_reference(
    rule: str, mask: str, heads: tuple[int, int], impl: str
) -> None:
    q, k, v = inputs(*heads)
    bias, causal, allowed = masks(q.shape[2], q.shape[0])[mask]
    setting = RULES[rule]
    generator = torch.Generator().manual_seed(7)
    cotangent = torch.randn((*q.shape[:3], 5), generator=generator, dtype=torch.float64)

    def gradients(function) -> tuple[Tensor, ...]:
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = function(*leaves)
        grads = torch.autograd.grad((out * cotangent).sum(), leaves, allow_unused=True)
        return (
            out,
            *(torch.zeros_like(t) if d is None else d for t, d in zip(leaves, grads, strict=True)),
        )

    chunked = gradients(
        lambda q, k, v: attention(
            q, k, v, bias, 0.6, setting is True, setting == "cp_lrp", causal, impl=impl
        )
    )
    expected = gradients(lambda q, k, v: loop_attention(q, k, v, allowed, 0.6, setting))
    for name, got, want in zip(("out", "dq", "dk", "dv"), chunked, expected, strict=True):
        if want.abs().max() == 0:
            assert got.abs().max() == 0, name  # CP-LRP: no gradient to q and k
        else:
            assert relative_error(got, want) <= 1e-12, name


@pytest.mark.usefixtures("blocks_of_three")
@pytest.mark.parametrize("impl", ["chunked", "sdpa"])
def test_linear_memory_paths_keep_nothing_quadratic(impl: str) -> None:
    q, k, v = (t.requires_grad_() for t in inputs(4, 2))
    length = q.shape[2]
    saved: list[int] = []

    def pack(t: Tensor) -> Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = attention(q, k, v, None, 0.5, True, False, True, impl=impl)
    out.sum().backward()
    # q, k and v (their heads repeated for "sdpa"), the output, the row sums
    assert saved and max(saved) <= q.numel() * 2
    assert max(saved) < q.shape[0] * q.shape[1] * length * length


def test_auto_picks_by_size_and_can_be_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    q, k, _ = inputs(4, 2)
    assert attention_ops.choose(None, q, k, None) == "eager"
    monkeypatch.setattr(attention_ops, "CHUNKED_FROM_ELEMENTS", q.shape[0] * 4 * 10 * 10)
    assert attention_ops.choose(None, q, k, None) == "sdpa"
    assert attention_ops.choose(None, q, k, torch.zeros(10, 10)) == "chunked"
    assert attention_ops.choose(None, q, k, torch.zeros(10, 10, requires_grad=True)) == "eager"
    with implementation(attention="eager"):
        assert attention_ops.choose(None, q, k, None) == "eager"
        assert attention_ops.choose("chunked", q, k, None) == "chunked"
        assert attention_ops.choose("sdpa", q, k, None) == "sdpa"
    with pytest.raises(ValueError, match="attention has no implementation 'flash'"):
        attention_ops.choose("flash", q, k, None)


# --------------------------------------------------------------- conformance cases

CASES = [case for case in load_cases()[0] if "attention" in case.rule_kinds]
PRESETS = {
    "mamba_lrp": MambaRules(),
    "cp_lrp": MambaRules.cp_lrp(),
    "gradient_x_input": MambaRules.gradient_x_input(),
    "norm_only": MambaRules.norm_only(),
    **{f"no_{kind}": MambaRules(**{kind: False}) for kind in MambaRules.kinds()},
}


def by_case_config() -> list:
    return [
        pytest.param(case, config, id=f"{case.name}-{config}")
        for case in CASES
        for config in case.configs
    ]


def _relevance(case: ArchitectureCase, config: str, rules: MambaRules, impl: str, lean: bool):
    model = case.build(config, 0, False)
    inputs, targets = case.inputs(model, config, 0)
    forward = case.forward_func(model) if case.forward_func else None
    with implementation(attention=impl):
        relevance = MambaLRP(model, forward, rules, lean).attribute(inputs, target=targets)
    expected, _ = gradient_x_input(lambda x: case.reference(model, x, rules), inputs, targets)
    return relevance, expected


def test_every_hybrid_family_is_covered() -> None:
    names = {case.name for case in CASES}
    assert {
        "hf_bamba",
        "hf_jamba",
        "hf_zamba",
        "hf_zamba2",
        "hf_falcon_h1",
        "hf_nemotron_h",
    } <= names


#: Presets per linear-memory path: the chunked path under every preset and single-rule
#: ablation; the SDPA path under the three attention settings (AttnLRP, CP-LRP, none),
#: which are all the attention rule can vary (its two gradient factors), the other
#: ablations changing only layers that are the same code on both paths.
PATH_PRESETS = [("chunked", preset) for preset in PRESETS] + [
    ("sdpa", preset) for preset in ("mamba_lrp", "cp_lrp", "no_attention")
]


@pytest.mark.usefixtures("blocks_of_three")
@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require")
@pytest.mark.parametrize(("impl", "preset"), PATH_PRESETS)
@pytest.mark.parametrize(("case", "config"), by_case_config())
def test_linear_memory_paths_match_reference_and_eager(
    case: ArchitectureCase, config: str, preset: str, impl: str
) -> None:
    chunked, expected = _relevance(case, config, PRESETS[preset], impl, False)
    eager, _ = _relevance(case, config, PRESETS[preset], "eager", False)
    assert relative_error(chunked, expected) <= 1e-10
    assert relative_error(chunked, eager) <= 1e-10


@pytest.mark.usefixtures("blocks_of_three")
@pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require")
@pytest.mark.parametrize("impl", ["chunked", "sdpa"])
@pytest.mark.parametrize("preset", ["mamba_lrp", "cp_lrp"])
@pytest.mark.parametrize(("case", "config"), by_case_config())
def test_lean_path_matches_reference(
    case: ArchitectureCase, config: str, preset: str, impl: str
) -> None:
    chunked, expected = _relevance(case, config, PRESETS[preset], impl, True)
    assert relative_error(chunked, expected) <= 1e-10


@pytest.mark.usefixtures("blocks_of_three")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_hybrid_is_explained_in_float32(dtype: torch.dtype) -> None:
    """A half-precision hybrid with chunked attention is explained as a float32 copy of its
    (rounded) weights, whose chunked relevance equals the eager one."""
    case = next(case for case in CASES if case.name == "hf_bamba")
    config = "groups-mqa-biased-sdpa"
    single = case.build(config, 0, False).to(dtype).float()  # the rounded weights
    half = case.build(config, 0, False).to(dtype)
    inputs, targets = case.inputs(half, config, 0)
    with implementation(attention="chunked"):
        relevance = MambaLRP(half).attribute(inputs.to(dtype), target=targets)
        expected = MambaLRP(single).attribute(inputs.to(dtype).float(), target=targets)
    with implementation(attention="eager"):
        eager = MambaLRP(single).attribute(inputs.to(dtype).float(), target=targets)
    assert relevance.dtype == torch.float32
    assert relative_error(relevance, expected) <= 1e-6
    assert relative_error(expected, eager) <= 1e-5

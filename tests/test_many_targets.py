"""Many targets in one batched backward pass.

- every operation kind, under every rule preset and every implementation of its op,
  takes a batch of cotangents: its vmapped backward (``torch.autograd.grad`` under
  ``torch.func.vmap``, as the attributions run it) equals one backward pass per
  cotangent, in float64 (a new kind whose backward breaks under vmap fails here, and in
  the conformance suite's many-target tests, which require the batched path);
- the attributions take the batched path, in as many passes as ``targets_per_pass``
  asks, and fall back to one backward per target, saying so, where a fused kernel ran;
- vmapping the forward of the scans' autograd Functions is refused in one line.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import relative_error
from test_op_kinds import examples, run
from torch import Tensor

from captum_mamba import LayerMambaLRP, MambaLRP, MambaRules
from captum_mamba.adapters import Backend
from captum_mamba.adapters.backend import KINDS
from captum_mamba.attr import AttributionInputError
from captum_mamba.models import mamba_config, random_mamba_lm
from captum_mamba.ops import implementation, replaced_kernels, selective_scan

DTYPE = torch.float64
PRESETS = {
    "mamba_lrp": MambaRules(),
    "attn_lrp": MambaRules(attention=True),
    "gradient_x_input": MambaRules.gradient_x_input(),
}
#: Implementations of the ops with more than one on a CPU, for the kinds that run them.
IMPLS = {
    "default": {},
    "parallel_chunked": {"selective_scan": "parallel", "attention": "chunked"},
    "sdpa": {"attention": "sdpa"},
}
SEVERAL_IMPLS = {"ssm", "rglru", "attention"}


def kind_impls() -> list:
    return [
        pytest.param(kind, impl, id=f"{kind}-{impl}")
        for kind in sorted(k for k in KINDS if KINDS[k].method is not None)
        for impl in (sorted(IMPLS) if kind in SEVERAL_IMPLS else ["default"])
    ]


def _leaves(kind: str, arguments: dict[str, Any]) -> dict[str, Tensor]:
    return {
        name: value.detach().clone().requires_grad_()
        for name, value in arguments.items()
        if name in KINDS[kind].inputs and isinstance(value, Tensor) and value.is_floating_point()
    }


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize(("kind", "impl"), kind_impls())
def test_every_kind_takes_a_batch_of_cotangents(kind: str, preset: str, impl: str) -> None:
    arguments = examples()[kind]
    leaves = _leaves(kind, arguments)
    if not leaves:
        pytest.skip(f"{kind} has no floating input to differentiate")
    with implementation(**IMPLS[impl]):
        out = run(Backend(), KINDS[kind], PRESETS[preset], {**arguments, **leaves})
        if not out.requires_grad:
            pytest.skip(f"{kind} passes no gradient under {preset}")
        generator = torch.Generator().manual_seed(3)
        seeds = torch.randn(3, *out.shape, generator=generator, dtype=DTYPE)
        inputs = list(leaves.values())

        def backward(seed: Tensor) -> tuple[Tensor, ...]:
            return torch.autograd.grad(out, inputs, seed, retain_graph=True, materialize_grads=True)

        batched = torch.func.vmap(backward)(seeds)
        for k, seed in enumerate(seeds):
            single = backward(seed)
            for name, many, one in zip(leaves, batched, single, strict=True):
                error = (many[k] - one).abs().max()
                assert error <= 1e-12 * one.abs().max(), (kind, name, k)


def _model_and_inputs(dtype: torch.dtype = DTYPE) -> tuple[torch.nn.Module, Tensor]:
    model = random_mamba_lm(mamba_config(), seed=1, dtype=dtype)
    generator = torch.Generator().manual_seed(4)
    return model, torch.randn(2, 7, 16, generator=generator, dtype=dtype)


TARGETS = [(-1, 3), (-2, 5), [(0, 1), (3, 2)], (-1, 3), (4, 60)]


@pytest.mark.parametrize("lean", [False, True], ids=["fast", "lean"])
@pytest.mark.parametrize("per_pass", [None, 2, 1])
def test_targets_per_pass_splits_the_batched_backward(per_pass: int | None, lean: bool) -> None:
    model, inputs = _model_and_inputs()
    lrp = MambaLRP(model, lean=lean)
    many = lrp.attribute(inputs, targets=TARGETS, targets_per_pass=per_pass)
    assert (
        lrp.last_backward
        == {
            None: "batched: 5 targets in 1 pass",
            2: "batched: 5 targets in 3 passes",
            1: "per target: targets_per_pass=1",
        }[per_pass]
    )
    for k, target in enumerate(TARGETS):
        single = lrp.attribute(inputs, target=target)
        assert lrp.last_backward == "per target: one target"
        assert relative_error(many[k], single) <= 1e-12


def test_layer_mamba_lrp_and_generation_take_the_batched_path() -> None:
    model, _ = _model_and_inputs()
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(2))
    lrp = LayerMambaLRP(model, model.backbone.layers[0].mixer)
    many = lrp.attribute(ids, targets=TARGETS[:3])
    assert lrp.last_backward == "batched: 3 targets in 1 pass"
    for k, target in enumerate(TARGETS[:3]):
        assert relative_error(many[k], lrp.attribute(ids, target=target)) <= 1e-12


def _standin_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, **_: Any) -> Tensor:
    """mamba-ssm's ``selective_scan_fn`` (its layout, no extras), by the sequential scan."""
    args = (u.transpose(1, 2), delta.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2))
    return selective_scan(*args, impl="sequential").transpose(1, 2)


def test_a_fused_kernel_falls_back_to_one_backward_per_target() -> None:
    model, inputs = _model_and_inputs(torch.float32)
    lrp = MambaLRP(model)
    targets = TARGETS[:3]
    with replaced_kernels(selective_scan=_standin_scan), implementation(selective_scan="fused"):
        many = lrp.attribute(inputs, targets=targets)
        assert lrp.last_backward == (
            "per target: the fused kernels of selective_scan take one cotangent at a time"
        )
    for k, target in enumerate(targets):
        single = lrp.attribute(inputs, target=target)
        assert lrp.last_backward == "per target: one target"
        torch.testing.assert_close(many[k], single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_bad_targets_per_pass_is_refused(value: Any) -> None:
    model, inputs = _model_and_inputs()
    with pytest.raises(AttributionInputError, match="targets_per_pass must be a positive int"):
        MambaLRP(model).attribute(inputs, targets=TARGETS, targets_per_pass=value)


def test_vmapping_a_scans_forward_is_refused() -> None:
    generator = torch.Generator().manual_seed(0)
    x, dt = torch.randn(3, 1, 5, 2, generator=generator), torch.rand(1, 5, 2, generator=generator)
    A, B, C = -torch.rand(2, 3), torch.randn(1, 5, 3), torch.randn(1, 5, 3)
    with pytest.raises(NotImplementedError, match="vmap the backward pass"):
        torch.func.vmap(lambda u: selective_scan(u, dt, A, B, C))(x)

"""The explained model is left exactly as it was, whether attribution returns or raises."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import assert_unchanged, snapshot
from torch import nn

from captum_mamba import (
    AttributionInputError,
    Gamma,
    LayerMambaLRP,
    MambaLRP,
    MambaRules,
    rules_applied,
)

SEQ, BATCH, HIDDEN = 11, 3, 16


class UserError(RuntimeError):
    """Raised by a user forward function in these tests."""


def logits(model: nn.Module, embeds: torch.Tensor) -> torch.Tensor:
    return model.lm_head(model.backbone(inputs_embeds=embeds, use_cache=False).last_hidden_state)


def embeds_for(seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, SEQ, HIDDEN, generator=gen, dtype=torch.float64).to(dtype)


def raise_after_model(model):
    def forward(embeds):
        logits(model, embeds)
        raise UserError("boom")

    return forward


def raise_in_backward(model):
    class Explode(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise UserError("boom in backward")

    return lambda embeds: logits(model, Explode.apply(embeds))


def run_mamba_lrp(model, embeds, **kwargs):
    return MambaLRP(model, **kwargs).attribute(embeds, target=(-1, 3))


def run_layer(model, embeds, layer: str, to_input: bool, **kwargs):
    ids = torch.arange(SEQ).repeat(BATCH, 1)
    module = dict(model.named_modules())[layer]
    return LayerMambaLRP(model, module, **kwargs).attribute(
        ids, target=(-1, 3), attribute_to_layer_input=to_input
    )


SCENARIOS: dict[str, tuple[Callable[[nn.Module, torch.Tensor], Any], type | None]] = {
    "mamba_lrp": (lambda m, e: run_mamba_lrp(m, e), None),
    "gradient_x_input": (
        lambda m, e: run_mamba_lrp(m, e, rules=MambaRules.gradient_x_input()),
        None,
    ),
    "gamma_on_linears": (lambda m, e: run_mamba_lrp(m, e, rules=MambaRules(linear=Gamma())), None),
    "with_delta": (
        lambda m, e: MambaLRP(m).attribute(e, target=(-1, 3), return_convergence_delta=True),
        None,
    ),
    "layer_embeddings": (
        lambda m, e: run_layer(m, e, "backbone.embeddings", to_input=False),
        None,
    ),
    "layer_block_input": (lambda m, e: run_layer(m, e, "backbone.layers.1", True), None),
    "layer_block_output": (
        lambda m, e: run_layer(m, e, "backbone.layers.0", False, rules=MambaRules(linear=Gamma())),
        None,
    ),
    "raise_in_forward_func": (
        lambda m, e: run_mamba_lrp(m, e, forward_func=raise_after_model(m)),
        UserError,
    ),
    "raise_in_backward": (
        lambda m, e: run_mamba_lrp(m, e, forward_func=raise_in_backward(m)),
        UserError,
    ),
    "target_out_of_range": (
        lambda m, e: MambaLRP(m).attribute(e, target=(-1, 10_000)),
        AttributionInputError,
    ),
    "wrong_number_of_targets": (
        lambda m, e: MambaLRP(m).attribute(e, target=[(-1, 0)]),
        AttributionInputError,
    ),
    "layer_raise_in_forward_func": (
        lambda m, e: run_layer(
            m,
            e,
            "backbone.layers.1",
            False,
            forward_func=lambda ids: raise_after_model(m)(m.get_input_embeddings()(ids)),
        ),
        UserError,
    ),
    "layer_target_out_of_range": (
        lambda m, e: LayerMambaLRP(m, m.get_input_embeddings()).attribute(
            torch.zeros(BATCH, SEQ, dtype=torch.long), target=(SEQ, 0)
        ),
        AttributionInputError,
    ),
}


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_model_is_unchanged(make_lm, scenario: str, mode: str) -> None:
    model = make_lm(seed=1, hidden_size=HIDDEN)
    model.train(mode == "train")
    model.backbone.layers[0].mixer.D.requires_grad_(False)
    model.backbone.layers[1].eval()  # a mixed-mode model
    embeds = embeds_for()
    with torch.no_grad():
        expected_logits = logits(model, embeds)
    before = snapshot(model)
    run, error = SCENARIOS[scenario]
    if error is None:
        result = run(model, embeds)
        first = result[0] if isinstance(result, tuple) else result
        assert torch.isfinite(first).all()
    else:
        with pytest.raises(error):
            run(model, embeds)
    assert_unchanged(before, model)
    with torch.no_grad():
        assert torch.equal(logits(model, embeds), expected_logits)


def test_rules_applied_restores_on_exception(make_lm) -> None:
    model = make_lm(seed=3, hidden_size=HIDDEN)
    before = snapshot(model)
    with pytest.raises(UserError), rules_applied(model, MambaRules(linear=Gamma())):
        assert "forward" in model.backbone.layers[0].mixer.__dict__
        assert "forward" in model.backbone.layers[0].mixer.in_proj.__dict__
        raise UserError("inside the block")
    assert_unchanged(before, model)


def test_rules_do_not_touch_other_instances(make_lm) -> None:
    model, other = make_lm(seed=4, hidden_size=HIDDEN), make_lm(seed=4, hidden_size=HIDDEN)
    embeds = embeds_for()
    with rules_applied(model, MambaRules()):
        assert not any("forward" in m.__dict__ for m in other.modules())
        leaf = embeds.clone().requires_grad_()
        out = logits(other, leaf)[:, -1, 3].sum()
        (grad,) = torch.autograd.grad(out, leaf)
    assert all(p.grad is None for p in other.parameters())
    # the other model's gradient inside the block is its true gradient
    leaf = embeds.clone().requires_grad_()
    (plain,) = torch.autograd.grad(logits(other, leaf)[:, -1, 3].sum(), leaf)
    torch.testing.assert_close(grad, plain, rtol=0, atol=0)


def test_grad_mode_is_restored(make_lm) -> None:
    model = make_lm(seed=5, hidden_size=HIDDEN)
    with torch.no_grad():
        relevance = run_mamba_lrp(model, embeds_for())
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    assert not relevance.requires_grad
    torch.testing.assert_close(relevance, run_mamba_lrp(model, embeds_for()), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batch_equals_per_example(make_lm, dtype: torch.dtype) -> None:
    model = make_lm(seed=6, hidden_size=HIDDEN, dtype=dtype)
    embeds = embeds_for(seed=6, dtype=dtype)
    targets = [(-1, 3), (4, 17), (-5, 60)]
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, :3] = 0
    lrp = MambaLRP(model)
    batch, delta = lrp.attribute(
        embeds, target=targets, additional_forward_args=(mask,), return_convergence_delta=True
    )
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    for i, target in enumerate(targets):
        single, single_delta = lrp.attribute(
            embeds[i : i + 1],
            target=target,
            additional_forward_args=(mask[i : i + 1],),
            return_convergence_delta=True,
        )
        torch.testing.assert_close(batch[i : i + 1], single, rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(delta[i : i + 1], single_delta, rtol=0, atol=tolerance)

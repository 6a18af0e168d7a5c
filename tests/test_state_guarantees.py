"""Every attribution call leaves the model, its flags and hooks, torch's grad mode and
Captum's global rule tables exactly as before, also when it raises or is interrupted;
attributions of two models on two threads do not interfere."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import torch
from helpers import assert_unchanged, snapshot
from torch import Tensor, nn
from transformers import MambaForCausalLM

from captum_mamba import (
    AttributionInputError,
    Epsilon,
    LayerMambaLRP,
    MambaLRP,
    MambaRules,
)
from captum_mamba.adapters import register_container

VOCAB = 64


@pytest.fixture
def model(make_lm) -> MambaForCausalLM:
    """A model with non-default state: training mode on one block, frozen parameters,
    a parameter with a gradient, and user hooks that must survive."""
    lm = make_lm(seed=4, vocab_size=VOCAB)
    lm.backbone.layers[1].train()
    lm.backbone.layers[0].mixer.x_proj.weight.requires_grad_(False)
    lm.lm_head.weight.grad = torch.ones_like(lm.lm_head.weight)
    lm.backbone.layers[0].mixer.register_forward_hook(lambda m, a, o: None)
    lm.backbone.layers[1].mixer.in_proj.register_forward_pre_hook(lambda m, a: None)
    return lm


def tokens(seed: int = 0) -> Tensor:
    return torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(seed))


def calls(model: MambaForCausalLM) -> dict[str, Callable[[], Any]]:
    """Successful attribution calls of every kind."""
    embed = model.get_input_embeddings()
    embeds = embed(tokens()).detach()
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :3] = 0
    return {
        "mamba-lrp": lambda: MambaLRP(model).attribute(embeds, target=(-1, 1)),
        "mamba-lrp-mask": lambda: MambaLRP(model).attribute(
            embeds, target=(-1, 1), additional_forward_args=mask
        ),
        "epsilon": lambda: MambaLRP(model, rules=MambaRules(linear=Epsilon())).attribute(
            embeds, target=(-1, 1)
        ),
        "layer-output": lambda: LayerMambaLRP(model, embed).attribute(tokens(), target=(-1, 1)),
        "layer-input": lambda: LayerMambaLRP(model, model.backbone.layers[1]).attribute(
            tokens(), target=(-1, 1), attribute_to_layer_input=True
        ),
    }


@pytest.mark.parametrize(
    "kind", ["mamba-lrp", "mamba-lrp-mask", "epsilon", "layer-output", "layer-input"]
)
def test_successful_call_leaves_no_state(model, kind):
    before = snapshot(model)
    first = calls(model)[kind]()
    assert_unchanged(before, model)
    torch.testing.assert_close(calls(model)[kind](), first, rtol=0, atol=0)


class Interrupt(Exception):
    """Raised by the test at a chosen point of an attribution."""


def raise_inside_model(model: MambaForCausalLM, error: BaseException) -> Callable[[], Any]:
    """A hook on the last mixer's out_proj raises mid-forward, with every rule applied."""

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        raise error

    handle = model.backbone.layers[-1].mixer.out_proj.register_forward_hook(hook)

    def call() -> Any:
        try:
            return LayerMambaLRP(model, model.get_input_embeddings()).attribute(
                tokens(), target=(-1, 1)
            )
        finally:
            handle.remove()

    return call


def raise_in_backward(model: MambaForCausalLM, error: BaseException) -> Callable[[], Any]:
    """The forward succeeds; a tensor hook raises during the relevance backward pass."""

    def fail(grad: Tensor) -> None:
        raise error

    def forward(x: Tensor) -> Tensor:
        logits = model(inputs_embeds=x).logits
        logits.register_hook(fail)
        return logits

    embeds = model.get_input_embeddings()(tokens()).detach()
    return lambda: MambaLRP(model, forward_func=forward).attribute(embeds, target=(-1, 1))


def raise_in_forward_func(model: MambaForCausalLM, error: BaseException) -> Callable[[], Any]:
    """The user's forward function runs the model, then raises."""

    def forward(ids: Tensor) -> Tensor:
        model(input_ids=ids)
        raise error

    return lambda: LayerMambaLRP(model, model.backbone.layers[0], forward_func=forward).attribute(
        tokens(), target=(-1, 1)
    )


def bad_target(model: MambaForCausalLM, error: BaseException) -> Callable[[], Any]:
    """Validation fails after the forward pass (target out of range)."""
    return lambda: LayerMambaLRP(model, model.get_input_embeddings()).attribute(
        tokens(), target=(-1, VOCAB)
    )


@pytest.mark.parametrize(
    "where", [raise_inside_model, raise_in_backward, raise_in_forward_func, bad_target]
)
@pytest.mark.parametrize(
    "error", [Interrupt("stop"), KeyboardInterrupt()], ids=["exception", "ctrl-c"]
)
def test_interrupted_call_leaves_no_state(model, where, error):
    reference = calls(model)["layer-output"]()
    before = snapshot(model)
    expected = AttributionInputError if where is bad_target else type(error)
    with pytest.raises(expected):
        where(model, error)()
    assert_unchanged(before, model)
    torch.testing.assert_close(calls(model)["layer-output"](), reference, rtol=0, atol=0)


@pytest.mark.parametrize(
    "mode", [torch.no_grad, torch.inference_mode], ids=["no-grad", "inference"]
)
def test_works_under_no_grad_and_inference_mode(model, mode):
    expected = calls(model)["mamba-lrp-mask"]()
    embeds = model.get_input_embeddings()(tokens()).detach()
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :3] = 0
    with mode():
        embeds, mask = embeds.clone(), mask.clone()  # inference tensors in inference mode
        before = snapshot(model)
        relevance = MambaLRP(model).attribute(embeds, target=(-1, 1), additional_forward_args=mask)
        assert_unchanged(before, model)
    torch.testing.assert_close(relevance, expected, rtol=0, atol=0)


def run_on_threads(jobs: list[Callable[[], Tensor]], repeats: int = 10) -> list[list[Tensor]]:
    """Run each job ``repeats`` times on its own thread, all threads started together."""
    results: list[list[Tensor]] = [[] for _ in jobs]
    errors: list[BaseException] = []
    start = threading.Barrier(len(jobs))

    def work(index: int) -> None:
        try:
            start.wait()
            for _ in range(repeats):
                results[index].append(jobs[index]())
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert all(len(r) == repeats for r in results)
    return results


def test_two_models_on_two_threads(make_lm):
    """Concurrent attributions of two models equal the sequential ones."""
    models = [make_lm(seed=5, vocab_size=VOCAB), make_lm(seed=6, vocab_size=VOCAB, hidden_size=8)]
    snapshots = [snapshot(m) for m in models]
    jobs = [calls(models[0])["mamba-lrp-mask"], calls(models[1])["layer-output"]]
    expected = [job() for job in jobs]
    for index, results in enumerate(run_on_threads(jobs)):
        for result in results:
            torch.testing.assert_close(result, expected[index], rtol=0, atol=1e-12)
        assert_unchanged(snapshots[index], models[index])


def test_one_model_on_two_threads(make_lm):
    """Attributions of one model on two threads are serialised: each equals its
    sequential result and no rule forward or capture hook is left behind."""
    model = make_lm(seed=7, vocab_size=VOCAB)
    before = snapshot(model)
    jobs = [calls(model)["layer-output"], calls(model)["layer-input"]]
    expected = [job() for job in jobs]
    for index, results in enumerate(run_on_threads(jobs)):
        for result in results:
            torch.testing.assert_close(result, expected[index], rtol=0, atol=1e-12)
    assert_unchanged(before, model)


@register_container
class SharedBackboneClassifier(nn.Module):
    """A classifier on the backbone of a language model: the two share every Mamba block."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 3, bias=False, dtype=torch.float64)

    def forward(self, inputs_embeds: Tensor) -> Tensor:
        hidden = self.backbone(inputs_embeds=inputs_embeds, use_cache=False).last_hidden_state
        return self.head(hidden[:, -1])


def test_models_sharing_modules_on_many_threads(make_lm):
    """8 threads x 50 calls, mixed rule presets and methods, over a language model, its
    backbone and a classifier sharing that backbone: every result equals the sequential
    one and no model keeps anything (rule forwards, hooks) afterwards."""
    lm = make_lm(seed=8, vocab_size=VOCAB)
    classifier = SharedBackboneClassifier(lm.backbone).eval()
    embeds = lm.get_input_embeddings()(tokens(3)).detach()
    backbone_sum = lambda e: lm.backbone(inputs_embeds=e).last_hidden_state[:, -1].sum(-1)  # noqa: E731
    presets = [
        MambaRules(),
        MambaRules.gradient_x_input(),
        MambaRules(linear=Epsilon(0.1)),
        MambaRules.norm_only(),
    ]
    methods = [
        lambda rules: MambaLRP(lm, rules=rules).attribute(embeds, target=(-1, 2)),
        lambda rules: MambaLRP(lm.backbone, forward_func=backbone_sum, rules=rules).attribute(
            embeds
        ),
        lambda rules: MambaLRP(classifier, forward_func=classifier, rules=rules).attribute(
            embeds, target=1
        ),
        lambda rules: LayerMambaLRP(lm, lm.get_input_embeddings(), rules=rules).attribute(
            tokens(3), target=(-1, 2)
        ),
    ]
    jobs = [(lambda m=methods[i % 4], r=presets[(i // 2) % 4]: m(r)) for i in range(8)]
    snapshots = [snapshot(model) for model in (lm, classifier)]
    expected = [job() for job in jobs]
    for index, results in enumerate(run_on_threads(jobs, repeats=50)):
        for result in results:
            torch.testing.assert_close(result, expected[index], rtol=0, atol=1e-12)
    for before, model in zip(snapshots, (lm, classifier), strict=True):
        assert_unchanged(before, model)

"""A user's own network on continuous ``(batch, time, channels)`` signals: explained as
declared (``register_container``), refused naming the innermost module no rule covers,
never silently unconserved through a forward function that runs more than the model,
and padded batches of unequal lengths with a mask.

The conformance suite (``tests/cases/user_hf_mamba.py``) checks the classifier itself
against its float64 reference; this file checks the entry points around it.
"""

from __future__ import annotations

import pytest
import torch
from cases.user_hf_mamba import SignalClassifier, build, reference
from torch import Tensor, nn

from captum_mamba import LayerMambaLRP, MambaLRP, MambaRules, UnsupportedModelError
from captum_mamba.adapters import register_container
from captum_mamba.attr import time_step_relevance
from captum_mamba.baselines.captum_methods import build_method


def _signals(batch: int = 2, length: int = 9, seed: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, length, 3, generator=generator, dtype=torch.float64)


class Undeclared(nn.Module):
    """The same network, not declared: its forward could compute anything."""

    def __init__(self, model: SignalClassifier) -> None:
        super().__init__()
        self.stem, self.backbone, self.head = model.stem, model.backbone, model.head

    def forward(self, signals: Tensor) -> Tensor:
        hidden = self.backbone(inputs_embeds=self.stem(signals)).last_hidden_state
        return self.head(hidden.mean(1))


def test_relevance_per_time_step_and_channel_is_conserved() -> None:
    model = build("h8-l1-s9", 0, True)
    signals = _signals()
    relevance, delta = MambaLRP(model).attribute(
        signals, target=[0, 2], return_convergence_delta=True
    )
    assert relevance.shape == signals.shape
    with torch.no_grad():
        logits = reference(model, signals, MambaRules())[[0, 1], [0, 2]]
    steps = time_step_relevance(relevance)
    assert steps.shape == (2, 9)
    assert ((steps.sum(1) - logits).abs() / logits.abs()).max() <= 1e-10
    assert (delta.abs() / logits.abs()).max() <= 1e-10


def test_undeclared_network_is_refused_by_its_name_and_explained_once_declared() -> None:
    model = Undeclared(build("h8-l1-s9", 0, True))
    with pytest.raises(UnsupportedModelError) as error:
        MambaLRP(model)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("<model> (test_user_networks.Undeclared)")
    assert "register_container" in message


def test_innermost_unsupported_module_is_named_never_the_outer_class() -> None:
    model = Undeclared(build("h8-l1-s9", 0, True))
    model.head[1] = nn.Softplus()
    for make in (lambda: MambaLRP(model), lambda: MambaLRP(model.backbone, forward_func=model)):
        with pytest.raises(UnsupportedModelError, match=r"^head\.1 \(torch\.nn\.[\w.]*Softplus\)"):
            make()


@pytest.mark.parametrize("how", ["module", "bound-method"])
def test_forward_function_around_the_model_is_covered_not_silent(how: str) -> None:
    model = build("h8-l1-s9", 1, True)
    signals = _signals(seed=1)
    forward = model if how == "module" else model.forward
    relevance, delta = MambaLRP(model.backbone, forward_func=forward).attribute(
        signals, target=1, return_convergence_delta=True
    )
    with torch.no_grad():
        logits = reference(model, signals, MambaRules())[:, 1]
    # the head's GELU gets its identity rule: conserved, as explaining the whole model
    assert (delta.abs() / logits.abs()).max() <= 1e-10
    torch.testing.assert_close(relevance, MambaLRP(model).attribute(signals, target=1))
    layer = LayerMambaLRP(model.backbone, model.head[0], forward_func=forward)
    _, layer_delta = layer.attribute(signals, target=1, return_convergence_delta=True)
    assert (layer_delta.abs() / logits.abs()).max() <= 1e-10
    model.head[1] = nn.Softplus()
    with pytest.raises(UnsupportedModelError, match=r"^head\.1 "):
        MambaLRP(model.backbone, forward_func=forward)


@register_container
class MaskedClassifier(nn.Module):
    """The classifier with an average over the real time steps only."""

    def __init__(self, model: SignalClassifier) -> None:
        super().__init__()
        self.stem, self.backbone, self.head = model.stem, model.backbone, model.head

    def forward(self, signals: Tensor, mask: Tensor) -> Tensor:
        hidden = self.backbone(inputs_embeds=self.stem(signals), attention_mask=mask)
        weights = mask / mask.sum(1, keepdim=True)
        return self.head((hidden.last_hidden_state * weights[..., None]).sum(1))


def test_padded_batch_of_unequal_lengths_with_a_mask() -> None:
    model = MaskedClassifier(build("h8-l1-s9", 2, True))
    signals = _signals(length=9, seed=2)  # the padding holds values: the mask must act
    mask = torch.ones(2, 9, dtype=torch.float64)
    mask[1, 6:] = 0  # the second signal has 6 steps, right-padded
    relevance, delta = MambaLRP(model).attribute(
        signals, target=[0, 1], additional_forward_args=mask, return_convergence_delta=True
    )
    steps = time_step_relevance(relevance, mask)
    assert torch.all(relevance[1, 6:] == 0) and torch.all(steps[1, 6:] == 0)
    assert delta.abs().max() <= 1e-10 * relevance.abs().sum()
    alone = MambaLRP(model).attribute(
        signals[1:2, :6], target=[1], additional_forward_args=mask[1:2, :6]
    )
    torch.testing.assert_close(relevance[1:2, :6], alone, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="mask has shape"):
        time_step_relevance(relevance, mask[:, :5])


@pytest.mark.parametrize(
    "method",
    ["Integrated Gradients", "Saliency", "Gradient x Input", "Attention Rollout", "MambaLRP"],
)
def test_baselines_take_signals_directly(method: str) -> None:
    model = build("h8-l1-s9", 3, False)
    signals = _signals(seed=3)
    scores = build_method(method, model)(signals, target=[0, 2])
    assert scores.shape == (2, 9)
    assert torch.isfinite(scores).all() and scores.abs().sum() > 0

"""Tests of the bidirectional (Vision) Mamba model beyond the conformance suite: images
through the whole model, patch heatmaps, user networks of Vim blocks, training.

The token-level checks against the independent reference (``_ref_logits``) are in the
conformance suite (``tests/cases/vim.py``).
"""

from __future__ import annotations

import pytest
import torch
from cases.vim import CONFIGS, _ref_logits
from cases.vim import build_model as _model
from torch import Tensor, nn

from captum_mamba import Epsilon, MambaLRP, MambaRules, rules_applied
from captum_mamba.adapters import register_container
from captum_mamba.vision import (
    VimBlock,
    VisionMamba,
    accuracy,
    square_images,
    train_classifier,
)
from captum_mamba.vision.explain import explain_patches


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops: threads only add contention on a small, shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("config", list(CONFIGS))
def test_forward_under_rules_equals_own_forward(config: str):
    model = _model(CONFIGS[config], seed=3)
    size = CONFIGS[config]["image_size"]
    images = torch.randn(2, model.patch_embed.proj.in_channels, size, size, dtype=torch.float64)
    with torch.no_grad():
        plain = model(images)
        reference = _ref_logits(model, model.embed(images), MambaRules.gradient_x_input())
        with rules_applied(model, MambaRules(linear=Epsilon(0.1))):
            ruled = model(images)
    torch.testing.assert_close(plain, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ruled, plain, rtol=1e-12, atol=1e-12)
    assert all("forward" not in module.__dict__ for module in model.modules())


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_conservation_without_biases(config: str, seed: int):
    overrides = dict(conv_bias=False, bias=False, head_bias=False)
    model = _model(CONFIGS[config], seed, **overrides)
    size = CONFIGS[config]["image_size"]
    images = torch.randn(4, model.patch_embed.proj.in_channels, size, size, dtype=torch.float64)
    result = explain_patches(model, images, target=[0, 1, 1, 0])
    with torch.no_grad():
        logits = model(images)[torch.arange(4), torch.tensor([0, 1, 1, 0])]
    total = result.heatmap.sum((1, 2)) + result.position.sum((1, 2)) + result.cls_relevance
    torch.testing.assert_close(total, logits, rtol=0, atol=1e-12 * logits.abs().max().item())
    assert result.delta.abs().max() < 1e-12 * logits.abs().max()


def test_biases_break_conservation_by_their_share():
    model = _model(CONFIGS["middle-cls-sum"], seed=0, conv_bias=False)
    images = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    result = explain_patches(model, images, target=0)
    # The head bias receives no relevance: it is exactly what is missing.
    torch.testing.assert_close(
        result.delta, model.head.bias[0].detach().expand(2), rtol=1e-9, atol=1e-12
    )


def test_user_network_with_bidirectional_blocks():
    torch.manual_seed(0)

    @register_container  # its forward only pools (linearly) and calls its children
    class SequenceClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(VimBlock(6, d_state=2, conv_bias=False), VimBlock(6))
            self.head = nn.Linear(6, 2, bias=False)

        def forward(self, embeds: Tensor) -> Tensor:
            return self.head(self.blocks(embeds).mean(1))

    model = SequenceClassifier().double().eval()
    for block in model.blocks:
        if block.mixer.forward_branch.conv1d.bias is not None:
            for branch in (block.mixer.forward_branch, block.mixer.backward_branch):
                nn.init.zeros_(branch.conv1d.bias)
    embeds = torch.randn(2, 7, 6, dtype=torch.float64)
    relevance, delta = MambaLRP(model, forward_func=model).attribute(
        embeds, target=1, return_convergence_delta=True
    )
    assert relevance.shape == embeds.shape
    assert delta.abs().max() < 1e-12


def test_cls_position_and_split():
    model = VisionMamba(image_size=8, patch_size=4, cls_position=4)
    values = torch.arange(5.0)[None]
    patches, cls = model.split_tokens(values)
    torch.testing.assert_close(patches, torch.tensor([[[0.0, 1.0], [2.0, 3.0]]]))
    torch.testing.assert_close(cls, torch.tensor([4.0]))
    assert VisionMamba(image_size=8, patch_size=2).cls_position == 8
    with pytest.raises(ValueError, match="cls_position"):
        VisionMamba(image_size=8, patch_size=4, cls_position=5)
    with pytest.raises(ValueError, match="patch_size"):
        VisionMamba(image_size=8, patch_size=3)


def test_trained_model_heatmaps_are_conservative_and_find_the_square():
    torch.manual_seed(0)
    train, test = square_images(1024, seed=0), square_images(64, seed=1)
    model = VisionMamba(patch_bias=False, conv_bias=False, head_bias=False)
    train_classifier(model, train.images, train.labels, steps=80)
    assert accuracy(model, test.images, test.labels) >= 0.8

    model = model.double()
    images = test.images.double()
    result = explain_patches(model, images, target=test.labels)
    with torch.no_grad():
        logits = model(images)[torch.arange(64), test.labels]
    total = result.heatmap.sum((1, 2)) + result.position.sum((1, 2)) + result.cls_relevance
    torch.testing.assert_close(total, logits, rtol=0, atol=1e-10)

    # Patches that contain part of the square, on the model's 4 x 4 patch grid.
    square_patches = test.masks.unflatten(1, (4, 4)).unflatten(3, (4, 4)).any(4).any(2)
    top = result.heatmap.flatten(1).argmax(1, keepdim=True)
    hits = square_patches.flatten(1).gather(1, top).float().mean()
    chance = square_patches.float().mean()
    assert hits >= 0.5 > 2 * chance

"""Tests of the bidirectional (Vision) Mamba model and its MambaLRP adapter.

The reference below re-implements the Vim forward pass from the model's parameters
with explicit loops (causal convolution tap by tap, the scan step by step) and
expresses every MambaLRP rule as a ``detach`` at the place the paper puts it; its
Gradient x Input is the expected relevance.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_mamba import Epsilon, MambaLRP, MambaRules, rules_applied
from captum_mamba.vision import (
    BiMambaMixer,
    VimBlock,
    VisionMamba,
    accuracy,
    square_images,
    train_classifier,
)
from captum_mamba.vision.explain import explain_patches

CONFIGS = {
    "middle-cls-sum": dict(
        image_size=8, patch_size=2, in_channels=2, embed_dim=8, depth=2, d_state=3, d_conv=3
    ),
    "first-cls-average": dict(
        image_size=6,
        patch_size=3,
        in_channels=1,
        embed_dim=6,
        depth=3,
        num_classes=3,
        cls_position=0,
        d_state=2,
        d_conv=2,
        expand=1,
        dt_rank=2,
        divide_output=True,
        bias=True,
    ),
}


def _model(config: dict, seed: int, **overrides: object) -> VisionMamba:
    torch.manual_seed(seed)
    model = VisionMamba(**{**config, **overrides}).double().eval()
    with torch.no_grad():  # make the SSM and gates matter: larger, varied parameters
        for name, parameter in model.named_parameters():
            if name.endswith(("dt_proj.bias", "A_log")):
                continue
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops: threads only add contention on a small, shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- independent sequential reference -------------------------------------------------


def _ref_rms(x: Tensor, weight: Tensor, eps: float, rule: bool) -> Tensor:
    rms = torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return weight * x / (rms.detach() if rule else rms)


def _ref_silu(x: Tensor, rule: bool) -> Tensor:
    gate = 1 / (1 + torch.exp(-x))
    return x * (gate.detach() if rule else gate)


def _ref_branch(branch: nn.Module, x: Tensor, z: Tensor, rules: MambaRules) -> Tensor:
    batch, length, channels = x.shape
    weight = branch.conv1d.weight[:, 0]  # (channels, kernel)
    kernel = weight.shape[1]
    conv = []
    for t in range(length):
        acc = torch.zeros(batch, channels, dtype=x.dtype)
        for k in range(kernel):
            source = t - (kernel - 1) + k
            if source >= 0:
                acc = acc + weight[:, k] * x[:, source]
        if branch.conv1d.bias is not None:
            acc = acc + branch.conv1d.bias
        conv.append(acc)
    u = _ref_silu(torch.stack(conv, 1), rules.silu)
    projected = u @ branch.x_proj.weight.T
    rank, state = branch.dt_rank, branch.d_state
    dt = F.softplus(projected[..., :rank] @ branch.dt_proj.weight.T + branch.dt_proj.bias)
    B, C = projected[..., rank : rank + state], projected[..., rank + state :]
    A = -torch.exp(branch.A_log)
    h = torch.zeros(batch, channels, state, dtype=x.dtype)
    outputs = []
    for t in range(length):
        decay = torch.exp(dt[:, t, :, None] * A)
        drive = dt[:, t, :, None] * B[:, t, None, :]
        c = C[:, t, None, :]
        if rules.ssm:
            decay, drive, c = decay.detach(), drive.detach(), c.detach()
        h = decay * h + drive * u[:, t, :, None]
        outputs.append((h * c).sum(-1) + branch.D * u[:, t])
    y = torch.stack(outputs, 1)
    gated = y * _ref_silu(z, rules.silu)
    return 0.5 * gated + 0.5 * gated.detach() if rules.gate else gated


def _ref_mixer(mixer: BiMambaMixer, hidden: Tensor, rules: MambaRules) -> Tensor:
    xz = hidden @ mixer.in_proj.weight.T
    if mixer.in_proj.bias is not None:
        xz = xz + mixer.in_proj.bias
    inner = xz.shape[-1] // 2
    x, z = xz[..., :inner], xz[..., inner:]
    reverse = torch.arange(x.shape[1] - 1, -1, -1)
    forward = _ref_branch(mixer.forward_branch, x, z, rules)
    backward = _ref_branch(mixer.backward_branch, x[:, reverse], z[:, reverse], rules)[:, reverse]
    y = forward + backward
    if mixer.divide_output:
        y = y / 2
    out = y @ mixer.out_proj.weight.T
    return out if mixer.out_proj.bias is None else out + mixer.out_proj.bias


def _ref_logits(model: VisionMamba, tokens: Tensor, rules: MambaRules) -> Tensor:
    for block in model.layers:
        normed = _ref_rms(tokens, block.norm.weight, block.norm.eps, rules.norm)
        tokens = tokens + _ref_mixer(block.mixer, normed, rules)
    cls = tokens[:, model.cls_position]
    pooled = _ref_rms(cls, model.norm_f.weight, model.norm_f.eps, rules.norm)
    logits = pooled @ model.head.weight.T
    return logits if model.head.bias is None else logits + model.head.bias


def _ref_relevance(model: VisionMamba, tokens: Tensor, target: int, rules: MambaRules) -> Tensor:
    leaf = tokens.detach().requires_grad_()
    (grad,) = torch.autograd.grad(_ref_logits(model, leaf, rules)[:, target].sum(), leaf)
    return leaf.detach() * grad


# --- tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "rules", [MambaRules(), MambaRules.gradient_x_input()], ids=["mamba_lrp", "gxi"]
)
def test_relevance_matches_sequential_reference(config: str, seed: int, rules: MambaRules):
    model = _model(CONFIGS[config], seed)
    images = torch.randn(3, model.patch_embed.proj.in_channels, 8, 8, dtype=torch.float64)
    images = images[..., : CONFIGS[config]["image_size"], : CONFIGS[config]["image_size"]]
    tokens = model.embed(images).detach()
    lrp = MambaLRP(model, forward_func=model.forward_tokens, rules=rules)
    relevance = lrp.attribute(tokens, target=1)
    expected = _ref_relevance(model, tokens, 1, rules)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-11)


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

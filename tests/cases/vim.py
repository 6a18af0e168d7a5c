"""Conformance case and independent float64 reference: the Vision Mamba (Vim) model.

The reference re-implements the Vim forward pass from the model's parameters with
explicit loops (causal convolution tap by tap, the scan step by step) and expresses every
MambaLRP rule as a ``detach`` at the place the paper puts it (it reads the rule switches
of the ``rules`` object it is given). The explained input is the token sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_mamba.vision import VisionMamba
from cases import ArchitectureCase, tiny_model

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


def perturb(name: str, parameter: Tensor) -> None:
    """Larger, varied parameters, so that the SSM and gates matter."""
    if not name.endswith(("dt_proj.bias", "A_log")):
        parameter.add_(0.3 * torch.randn_like(parameter))


def build_model(config: dict, seed: int, **overrides: object) -> VisionMamba:
    return tiny_model(lambda: VisionMamba(**{**config, **overrides}), seed, perturb)


NO_BIASES = dict(conv_bias=False, bias=False, head_bias=False)


def _ref_rms(x: Tensor, weight: Tensor, eps: float, rule: bool) -> Tensor:
    rms = torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    return weight * x / (rms.detach() if rule else rms)


def _ref_silu(x: Tensor, rule: bool) -> Tensor:
    gate = 1 / (1 + torch.exp(-x))
    return x * (gate.detach() if rule else gate)


def _ref_branch(branch: nn.Module, x: Tensor, z: Tensor, rules) -> Tensor:
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


def _ref_mixer(mixer: nn.Module, hidden: Tensor, rules) -> Tensor:
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


def _ref_logits(model: VisionMamba, tokens: Tensor, rules) -> Tensor:
    for block in model.layers:
        normed = _ref_rms(tokens, block.norm.weight, block.norm.eps, rules.norm)
        tokens = tokens + _ref_mixer(block.mixer, normed, rules)
    cls = tokens[:, model.cls_position]
    pooled = _ref_rms(cls, model.norm_f.weight, model.norm_f.eps, rules.norm)
    logits = pooled @ model.head.weight.T
    return logits if model.head.bias is None else logits + model.head.bias


def tokens_and_targets(model: VisionMamba, config: str, seed: int) -> tuple[Tensor, list[int]]:
    """Token sequences of 3 random images and one class per image."""
    generator = torch.Generator().manual_seed(500 + seed)
    size = model.patch_embed.image_size
    channels = model.patch_embed.proj.in_channels
    images = torch.randn(3, channels, size, size, generator=generator, dtype=torch.float64)
    classes = model.head.out_features
    return model.embed(images).detach(), [1 % classes, 0, (seed + 1) % classes]


ADAPTER = "captum-mamba Vision Mamba"

CASE = ArchitectureCase(
    name="vim",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=lambda config, seed, zero_biases: build_model(
        CONFIGS[config], seed, **(NO_BIASES if zero_biases else {})
    ),
    inputs=tokens_and_targets,
    reference=_ref_logits,
    own_output=lambda model, tokens: model.forward_tokens(tokens),
    layer="layers.0.mixer.out_proj",
    num_layers=lambda model: len(model.layers),
    forward_func=lambda model: model.forward_tokens,
    captum_forward=lambda copy, tokens: copy.forward_tokens(tokens),
)

"""Shared fixtures: tiny, seeded Mamba language models built in code (never the hub)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from transformers import MambaForCausalLM

from captum_mamba.models import mamba_config, random_mamba_lm


def build_lm(
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    zero_biases: bool = False,
    dt_range: tuple[float, float] = (0.05, 1.0),
    hidden_size: int = 16,
    num_hidden_layers: int = 2,
    state_size: int = 4,
    **config: object,
) -> MambaForCausalLM:
    """A tiny random ``MambaForCausalLM`` whose parameters are all perturbed away from
    their structured initial values (unit norm weights and ``D``, zero conv biases,
    ``A = -(1..N)``), so that a mishandled parameter changes the results.

    Args:
        seed: seed of the initialisation and the perturbation.
        dtype: parameter dtype.
        zero_biases: zero the biases on the relevance path (conv, in/out proj).
        dt_range: range of ``softplus(dt_proj.bias)``; larger than the transformers
            default (0.001-0.1) so that the selective scan matters.
        hidden_size, num_hidden_layers, state_size, **config: ``mamba_config`` fields.
    """
    cfg = mamba_config(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        state_size=state_size,
        **config,
    )
    model = random_mamba_lm(cfg, seed=seed, dtype=dtype)
    gen = torch.Generator().manual_seed(10_000 + seed)

    def noise(t: torch.Tensor, scale: float) -> torch.Tensor:
        return scale * torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.dtype)

    low, high = math.log(dt_range[0]), math.log(dt_range[1])
    with torch.no_grad():
        for block in model.backbone.layers:
            mixer = block.mixer
            block.norm.weight.add_(noise(block.norm.weight, 0.3))
            mixer.D.copy_(noise(mixer.D, 1.0))
            mixer.A_log.add_(noise(mixer.A_log, 0.3))
            for module in (mixer.conv1d, mixer.in_proj, mixer.out_proj):
                if module.bias is not None:
                    module.bias.copy_(noise(module.bias, 0.0 if zero_biases else 0.3))
            dt = torch.exp(low + (high - low) * torch.rand(mixer.D.shape, generator=gen))
            mixer.dt_proj.bias.copy_((dt + torch.log(-torch.expm1(-dt))).to(dtype))
        model.backbone.norm_f.weight.add_(noise(model.backbone.norm_f.weight, 0.3))
    return model


@pytest.fixture
def make_lm() -> Callable[..., MambaForCausalLM]:
    """Factory of tiny perturbed Mamba language models, see :func:`build_lm`."""
    return build_lm


@pytest.fixture
def tiny_lm() -> MambaForCausalLM:
    """A float64, 2-layer, hidden-16 perturbed Mamba LM with zero biases."""
    return build_lm(seed=0, zero_biases=True)

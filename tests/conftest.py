"""Shared fixtures: tiny, seeded Mamba language models built in code (never the hub)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cases.hf_mamba import build_lm
from transformers import MambaForCausalLM


@pytest.fixture
def make_lm() -> Callable[..., MambaForCausalLM]:
    """Factory of tiny perturbed Mamba language models, see :func:`build_lm`."""
    return build_lm


@pytest.fixture
def tiny_lm() -> MambaForCausalLM:
    """A float64, 2-layer, hidden-16 perturbed Mamba LM with zero biases."""
    return build_lm(seed=0, zero_biases=True)

"""Shared fixtures: tiny, seeded Mamba language models built in code (never the hub)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from cases.hf_mamba import build_lm
from transformers import MambaForCausalLM
from triton_interpreter import IN_INTERPRETER, interpreter_shims


@pytest.fixture
def triton_interpreter() -> Iterator[None]:
    """mamba-ssm's CUDA assumptions replaced for Triton's interpreter during the test
    (:func:`triton_interpreter.interpreter_shims`); skips outside the interpreter subprocess."""
    if not IN_INTERPRETER:
        pytest.skip("needs Triton's interpreter: runs in test_triton_interpreter's subprocess")
    with interpreter_shims():
        yield


@pytest.fixture
def make_lm() -> Callable[..., MambaForCausalLM]:
    """Factory of tiny perturbed Mamba language models, see :func:`build_lm`."""
    return build_lm


@pytest.fixture
def tiny_lm() -> MambaForCausalLM:
    """A float64, 2-layer, hidden-16 perturbed Mamba LM with zero biases."""
    return build_lm(seed=0, zero_biases=True)

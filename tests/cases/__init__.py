"""The conformance cases: one module per architecture, each defining ``CASE``.

Each module names the adapter it covers in ``ADAPTER``. A case is everything the
registry-driven conformance suite (``tests/test_conformance.py``) needs to check an
adapter: tiny model builders, inputs and targets, and an independent float64 reference
forward of the model with the MambaLRP rules written as ``detach`` calls (no
captum-mamba code). Adding an architecture adds one module here.

A module that cannot run in this process (mamba-ssm outside its subprocess) sets
``CASE = None`` and ``SKIP_REASON``. Inside that subprocess
(``CAPTUM_MAMBA_SSM_SUBPROCESS=1``) only the isolated cases are loaded: importing mamba-ssm
breaks transformers' Mamba on CPU there.
"""

from __future__ import annotations

import os
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba import MambaRules

#: ``reference(model, inputs, rules) -> output``: the independent float64 forward.
Reference = Callable[[nn.Module, Tensor, MambaRules], Tensor]


@dataclass(frozen=True)
class ArchitectureCase:
    """One architecture in the conformance suite.

    Args:
        name: case name (test ids).
        adapter: name of the :class:`~captum_mamba.adapters.ArchitectureAdapter` covered.
        configs: names of the tiny configurations.
        build: ``build(config, seed, zero_biases) -> model`` in float64, eval mode, with
            every parameter perturbed away from its structured initial value.
        inputs: ``inputs(model, config, seed) -> (inputs, targets)``: float64 inputs
            (batch >= 2) of the explained forward and one Captum target per example.
        reference: ``reference(model, inputs, rules) -> output``, the independent forward.
        own_output: ``own_output(model, inputs) -> output``: the model's own forward
            (without captum-mamba), for "forward unchanged".
        forward_func: ``forward_func(model) -> callable`` for ``MambaLRP``; None for the
            default forward of language models.
        captum_forward: ``forward_func`` of ``prepare_captum_lrp``; None for the default.
        layer: path of a leaf layer (e.g. an ``out_proj``) read by layer attributions.
        rule_kinds: rule kinds each of which, switched off in the ``conserving`` preset,
            must break conservation.
        padding: whether the model takes an attention mask.
        num_layers: ``num_layers(model) -> int`` residual layers with scans or softmax
            attention (rollout).
        isolated: the case runs only in its own subprocess (see ``load_cases``).
        conserving: the preset under which relevance is conserved exactly with bias-free
            layers (``"cp_lrp"`` for models with softmax attention: AttnLRP's softmax
            absorbs relevance).
        eager_attention: configurations computing attention eagerly, whose attention
            weights transformers returns (``output_attentions=True``) for comparison
            with the recorded ones.
        padding_rtol: relative tolerance of padded against unpadded relevance. Left
            padding shifts the positions of a model with rotary embeddings: the relative
            positions, and so the model's function, stay the same, but transformers'
            float32 position table rounds differently (about 1e-8).
    """

    name: str
    adapter: str
    configs: Sequence[str]
    build: Callable[[str, int, bool], nn.Module]
    inputs: Callable[[nn.Module, str, int], tuple[Tensor, list[Any]]]
    reference: Reference
    own_output: Callable[[nn.Module, Tensor], Tensor]
    layer: str
    num_layers: Callable[[nn.Module], int]
    forward_func: Callable[[nn.Module], Callable[..., Tensor]] | None = None
    captum_forward: Callable[..., Tensor] | None = None
    rule_kinds: tuple[str, ...] = ("norm", "silu", "ssm", "gate")
    padding: bool = False
    isolated: bool = False
    conserving: str = "mamba_lrp"
    eager_attention: Sequence[str] = ()
    padding_rtol: float = 1e-9


def lm_logits(model: nn.Module, embeds: Tensor, **kwargs: Any) -> Tensor:
    """A transformers language model's own forward through its backbone (named by
    ``base_model_prefix``) and head, without the float32 cast of the logits."""
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(inputs_embeds=embeds, use_cache=False, **kwargs).last_hidden_state
    return model.lm_head(hidden)


def random_embeddings(
    length: int, targets: Sequence[Any]
) -> Callable[[nn.Module, str, int], tuple[Tensor, list[Any]]]:
    """``inputs(model, config, seed)``: seeded random float64 embeddings of ``length`` tokens,
    one example per target."""

    def inputs(model: nn.Module, config: str, seed: int) -> tuple[Tensor, list[Any]]:
        generator = torch.Generator().manual_seed(1000 + seed)
        shape = (len(targets), length, model.config.hidden_size)
        return torch.randn(*shape, generator=generator).double(), list(targets)

    return inputs


def case_adapters() -> list[str]:
    """The adapter names of every case module (``ADAPTER``), including those whose case
    runs in another process."""
    return [
        import_module(f"{__name__}.{info.name}").ADAPTER for info in pkgutil.iter_modules(__path__)
    ]


def load_cases() -> tuple[list[ArchitectureCase], dict[str, str]]:
    """The cases that run in this process, and the reasons of those that cannot."""
    isolated = os.environ.get("CAPTUM_MAMBA_SSM_SUBPROCESS") == "1"
    cases, skipped = [], {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = import_module(f"{__name__}.{info.name}")
        if module.CASE is None:
            skipped[info.name] = module.SKIP_REASON
        elif module.CASE.isolated == isolated:
            cases.append(module.CASE)
    return cases, skipped

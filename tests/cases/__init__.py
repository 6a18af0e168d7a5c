"""The conformance cases: one module per architecture, each defining ``CASE``.

Each module names the adapter it covers in ``ADAPTER``. A case is everything the
registry-driven conformance suite (``tests/test_conformance.py``) needs to check an
adapter: tiny model builders, inputs and targets, and an independent float64 reference
forward of the model with the MambaLRP rules written as ``detach`` calls (no
captum-mamba code). Adding an architecture adds one module here.

A module that cannot run in this process (mamba-ssm outside its subprocess) sets
``CASE = None`` and ``SKIP_REASON``. Inside that subprocess
(``CAPTUM_MAMBA_SSM_SUBPROCESS=1``) only the isolated cases are loaded: importing mamba-ssm
breaks transformers' Mamba on CPU there. A case whose model classes the installed
transformers lacks (its module does not import), or whose family captum-mamba reports
unavailable, is skipped with the reason.

:func:`tiny_model` builds every case's model: seeded (the global random state restored
afterwards), float64, eval mode, each parameter perturbed by the case's rule.
"""

from __future__ import annotations

import os
import pkgutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from importlib import import_module
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba import MambaRules
from captum_mamba.adapters import family_statuses

#: ``perturb(name, tensor)``: changes a parameter (or buffer) of a new model in place.
Perturb = Callable[[str, Tensor], None]

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
        hidden_attention: the hidden-attention baselines (rollout, Mamba-Attr) explain
            the model; False for a model with a recurrence they cannot record (Mamba-3),
            which they must refuse.
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
    hidden_attention: bool = True


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


def tiny_model(
    make: Callable[[], nn.Module],
    seed: int,
    perturb: Perturb,
    perturb_buffer: Perturb | None = None,
) -> nn.Module:
    """``make()`` built with the seed ``seed`` (the global random state is restored
    afterwards), in float64 and eval mode, with ``perturb(name, parameter)`` applied to
    every parameter (and ``perturb_buffer`` to every buffer), so that a mishandled
    parameter changes the results.

    Args:
        make: builds the model.
        seed: seed of the initialisation and the perturbation.
        perturb: changes one parameter in place.
        perturb_buffer: changes one buffer in place. Default: None (buffers unchanged).

    Returns:
        the model.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make().double().eval()
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                perturb(name, parameter)
            for name, buffer in model.named_buffers() if perturb_buffer else ():
                perturb_buffer(name, buffer)
    return model


def tiny_lm(
    model_class: type,
    config_class: type,
    fields: Mapping[str, Any],
    seed: int,
    perturb: Perturb,
    perturb_buffer: Perturb | None = None,
    eager_experts: bool = False,
) -> nn.Module:
    """:func:`tiny_model` of a transformers model.

    Args:
        model_class: e.g. ``BambaForCausalLM``.
        config_class: e.g. ``BambaConfig``.
        fields: configuration fields; ``attn_implementation`` (optional) sets the
            attention implementation.
        seed, perturb, perturb_buffer: see :func:`tiny_model`.
        eager_experts: compute mixtures of experts eagerly (``grouped_mm`` has no
            float64).

    Returns:
        the model.
    """
    fields = dict(fields)
    implementation = fields.pop("attn_implementation", None)
    settings = config_class(**fields)
    if implementation is not None:
        settings._attn_implementation = implementation
    if eager_experts:
        settings._experts_implementation = "eager"
    return tiny_model(lambda: model_class(settings), seed, perturb, perturb_buffer)


@dataclass(frozen=True)
class Rule:
    """How the parameters whose names match ``patterns`` (``fnmatch``) are perturbed."""

    patterns: tuple[str, ...]
    change: Callable[[Tensor], object]


def add_noise(scale: float) -> Callable[[Tensor], object]:
    """Add ``scale`` times random normal values."""
    return lambda parameter: parameter.add_(scale * torch.randn_like(parameter))


def set_noise(scale: float) -> Callable[[Tensor], object]:
    """Replace by ``scale`` times random normal values."""
    return lambda parameter: parameter.copy_(scale * torch.randn_like(parameter))


def times(factor: float) -> Callable[[Tensor], object]:
    """Multiply by ``factor``."""
    return lambda parameter: parameter.mul_(factor)


def time_steps(parameter: Tensor) -> None:
    """Set a time-step bias (before its softplus) to giving time steps in [0.05, 1]."""
    dt = torch.exp(torch.empty_like(parameter).uniform_(-3.0, 0.0))
    parameter.copy_(dt + torch.log(-torch.expm1(-dt)))


def perturbation(
    zero_biases: bool,
    *rules: Rule,
    kept_biases: tuple[str, ...] = ("*dt_bias", "*dt_proj.bias"),
    weights: float | None = 5.0,
) -> Perturb:
    """The perturbation of a language model's parameters: the first of ``rules`` that
    matches a name applies; otherwise norm weights and ``D`` get random normal values
    times 0.3 added, biases (but ``kept_biases``) are zeroed (``zero_biases``) or set
    to random normal values times 0.1, and the other weights are multiplied by
    ``weights`` (None: kept).
    """
    rules = (*rules, Rule(("*norm.weight", "*norm_f.weight", "*.D"), add_noise(0.3)))

    def perturb(name: str, parameter: Tensor) -> None:
        for rule in rules:
            if any(fnmatchcase(name, pattern) for pattern in rule.patterns):
                rule.change(parameter)
                return
        if name.endswith("bias"):
            if not any(fnmatchcase(name, pattern) for pattern in kept_biases):
                parameter.copy_(torch.zeros_like(parameter) if zero_biases else
                                0.1 * torch.randn_like(parameter))  # fmt: skip
        elif weights is not None and name.endswith("weight") and "norm" not in name:
            parameter.mul_(weights)

    return perturb


def _case_modules() -> tuple[list[ModuleType], dict[str, str]]:
    """The case modules that import, and the reasons of those that do not (model
    classes the installed transformers lacks)."""
    modules, failed = [], {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        try:
            modules.append(import_module(f"{__name__}.{info.name}"))
        except ImportError as error:
            failed[info.name] = str(error).splitlines()[0]
    return modules, failed


def case_adapters() -> list[str]:
    """The adapter names of every case module that imports (``ADAPTER``), including
    those whose case runs in another process."""
    return [module.ADAPTER for module in _case_modules()[0]]


def load_cases() -> tuple[list[ArchitectureCase], dict[str, str]]:
    """The cases that run in this process, and the reasons of those that cannot."""
    isolated = os.environ.get("CAPTUM_MAMBA_SSM_SUBPROCESS") == "1"
    unavailable = {s.name: s.describe() for s in family_statuses() if not s.available}
    modules, skipped = _case_modules()
    cases = []
    for module in modules:
        name = module.__name__.rsplit(".", 1)[-1]
        if module.CASE is None:
            skipped[name] = module.SKIP_REASON
        elif module.ADAPTER in unavailable:
            skipped[name] = unavailable[module.ADAPTER]
        elif module.CASE.isolated == isolated:
            cases.append(module.CASE)
    return cases, skipped

"""Baselines: one uniform, token-level interface to every compared attribution method.

Every method is run on the input embeddings of the same model and returns one score
per token, ``(batch, seq)``:

- MambaLRP and its ablations (:class:`captum_mamba.MambaLRP` with
  ``MambaRules()``, ``MambaRules.norm_only()``, ``MambaRules.gradient_x_input()``),
  Captum's ``InputXGradient`` and ``IntegratedGradients`` produce signed relevance per
  embedding element; the token score is the **sum over the hidden dimension**, which
  keeps conservation (the token scores sum to the same total as the elements).
- Captum's ``Saliency`` and SmoothGrad (``NoiseTunnel`` over signed ``Saliency``,
  i.e. the noise-averaged gradient) produce gradients, whose sum over the hidden
  dimension has no meaning; the token score is the **sum of absolute values**
  (the L1 norm of the token's gradient).
- Attention rollout, Mamba-Attr and Random produce token scores directly, and so do the
  two position-only sanity baselines, which read no model at all: ``Recency`` (the most
  recent token first; score = position minus the last position, so that padded batches
  and single texts score alike) and ``Read position, then random`` (the explained
  position first, the other tokens in random order).

Each method is described once, in :data:`METHODS` (:class:`MethodSpec`: how it is
built, whether its scores are signed, whether padded batches may be explained in one
call, whether it draws random numbers, how element scores become token scores); the
study, the data-set attribution and the command line read that table.

Captum's gradient methods (``InputXGradient``, ``IntegratedGradients``, ``Saliency``,
SmoothGrad) run with the model's forward computed by this package's scans with every
rule off (:func:`~captum_mamba.rules_applied` with ``MambaRules.gradient_x_input()``):
the same function and its true gradient, without the per-time-step autograd graph of
transformers' CPU path. From :data:`~captum_mamba.attr.LEAN_FROM_TOKENS` tokens (counting
every Integrated Gradients step and SmoothGrad sample of the batch Captum builds) they
recompute each residual layer in the backward pass, as MambaLRP's lean path does. Captum
selects the target from the full output of the forward function, so for language models
the logits of every position are formed unless the forward function returns only the
explained position.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from captum.attr import (
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Saliency,
)
from torch import Tensor, nn

from captum_mamba.adapters import rules_applied
from captum_mamba.attr import MambaLRP
from captum_mamba.attr.forward import count_tokens, default_forward, explanation_backend
from captum_mamba.attr.targets import TargetType
from captum_mamba.baselines.implicit_attention import (
    ImplicitAttentionAttribution,
    ImplicitAttentionRollout,
)
from captum_mamba.baselines.latim import LaTIM
from captum_mamba.baselines.mamba_attr import MambaAttr
from captum_mamba.baselines.random import RandomAttribution
from captum_mamba.baselines.rollout import MambaAttentionRollout, RawHiddenAttention
from captum_mamba.rules import MambaRules

TokenFunction = Callable[[Tensor, TargetType, tuple[Any, ...]], Tensor]


@dataclass(frozen=True)
class TokenScorer:
    """A compared method, built for one model, as a function from input embeddings to one
    score per token (not a Captum ``Attribution``: it wraps one, or scores tokens
    directly).

    Args:
        name (str): display name.
        function (Callable): ``function(embeds, target, additional_forward_args)``
            returning ``(batch, seq)`` scores.
        signed (bool): whether the scores are signed relevances meant to sum to the
            explained output (checked by the conservation statistics).
    """

    name: str
    function: TokenFunction
    signed: bool

    def __call__(
        self, embeds: Tensor, target: TargetType = None, additional_forward_args: Any = None
    ) -> Tensor:
        """Token scores ``(batch, seq)`` of ``embeds`` ``(batch, seq, hidden)``."""
        extra = additional_forward_args
        if extra is not None and not isinstance(extra, tuple):
            extra = (extra,)
        return self.function(embeds, target, extra or ()).detach()


@dataclass(frozen=True)
class MethodSettings:
    """Hyper-parameters of the compared methods.

    Args:
        ig_steps (int): Integrated Gradients steps (Gauss-Legendre). Default: 32.
        smoothgrad_samples (int): SmoothGrad noise samples. Default: 10.
        smoothgrad_noise (float): SmoothGrad noise standard deviation as a fraction of
            the embedding value range of the example. Default: 0.15.
        seed (int): seed of the Random baseline and of SmoothGrad's noise. Default: 0.
        position (int): sequence position read by rollout and Mamba-Attr. Default: -1.
    """

    ig_steps: int = 32
    smoothgrad_samples: int = 10
    smoothgrad_noise: float = 0.15
    seed: int = 0
    position: int = -1


MAMBA_LRP = "MambaLRP"
LN_RULE_ONLY = "LRP (LN-rule only)"
NO_RULES = "MambaLRP, no rules (GxI)"
INPUT_X_GRADIENT = "Gradient x Input"
INTEGRATED_GRADIENTS = "Integrated Gradients"
SMOOTHGRAD = "SmoothGrad"
SALIENCY = "Saliency"
HIDDEN_ATTENTION = "Hidden Attention (last layer)"
ROLLOUT = "Attention Rollout"
MAMBA_ATTR = "Mamba-Attr"
LATIM_L2 = "LaTIM (l2)"
LATIM_ALTI = "LaTIM (ALTI)"
IMPLICIT_ROLLOUT = "Implicit Attention Rollout"
IMPLICIT_ATTRIBUTION = "Implicit Attention (gradient-weighted)"
CP_LRP = "MambaLRP (CP-LRP attention)"
RANDOM = "Random"
RECENCY = "Recency"
READ_POSITION = "Read position, then random"


def _leaf(embeds: Tensor) -> Tensor:
    """A copy of ``embeds`` that requires grad (Captum's gradient methods need one)."""
    return embeds.detach().clone().requires_grad_()


def _lrp(model: nn.Module, forward: Callable[..., Tensor], rules: MambaRules) -> TokenFunction:
    lrp = MambaLRP(model, forward, rules=rules)

    def run(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
        return lrp.attribute(embeds, target=target, additional_forward_args=extra or None)

    return run


def _through_package(model: nn.Module, run: TokenFunction, copies: int = 1) -> TokenFunction:
    """``run`` with the model's forward computed by this package's scans, every rule off
    (the gradients are the model's own), on the lean path for inputs of at least
    ``LEAN_FROM_TOKENS`` tokens (batch x sequence x ``copies``, the inputs Captum batches
    per example)."""

    def wrapped(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
        backend = explanation_backend(None, count_tokens(embeds) * copies)
        with rules_applied(model, MambaRules.gradient_x_input(), backend):
            return run(embeds, target, extra)

    return wrapped


def _captum(method: Any, leaf: bool = True, **kwargs: Any) -> TokenFunction:
    """A Captum attribution method's ``attribute`` as a :data:`TokenFunction`, on a copy
    of the embeddings that requires grad if ``leaf``."""

    def run(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
        inputs = _leaf(embeds) if leaf else embeds
        return method.attribute(
            inputs, target=target, additional_forward_args=extra or None, **kwargs
        )

    return run


def _integrated_gradients(forward: Callable[..., Tensor], steps: int) -> TokenFunction:
    method = IntegratedGradients(forward)

    def run(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
        return method.attribute(
            embeds,
            baselines=torch.zeros_like(embeds),
            target=target,
            additional_forward_args=extra or None,
            n_steps=steps,
        )

    return run


def _smoothgrad(forward: Callable[..., Tensor], settings: MethodSettings) -> TokenFunction:
    method = NoiseTunnel(Saliency(forward))
    calls = [0]

    def run(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
        stdev = settings.smoothgrad_noise * float(embeds.max() - embeds.min())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed + calls[0])
            calls[0] += 1
            return method.attribute(
                _leaf(embeds),
                nt_type="smoothgrad",
                nt_samples=settings.smoothgrad_samples,
                stdevs=stdev,
                target=target,
                additional_forward_args=extra or None,
                abs=False,
            )

    return run


def _recency(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
    length = embeds.shape[1]
    positions = torch.arange(1 - length, 1, dtype=torch.float64, device=embeds.device)
    return positions.expand(embeds.shape[0], -1).to(embeds.dtype)


def _read_position(seed: int, position: int) -> TokenFunction:
    def run(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
        generator = torch.Generator().manual_seed(seed)
        scores = torch.rand(embeds.shape[:2], generator=generator, dtype=torch.float64)
        read = target[0] if isinstance(target, tuple) else position
        scores[:, read] = 2.0  # above every random score in [0, 1)
        return scores.to(dtype=embeds.dtype, device=embeds.device)

    return run


#: How a method's scores become one score per token: ``"sum"`` over the hidden dimension
#: (signed relevance; keeps conservation), ``"abs_sum"`` of absolute values (the L1 norm
#: of a gradient), ``"none"`` (the method scores tokens already).
REDUCTIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "sum": lambda scores: scores.sum(-1),
    "abs_sum": lambda scores: scores.abs().sum(-1),
    "none": lambda scores: scores,
}

#: ``build(model, forward, settings)``: the method's scores (before the reduction).
Builder = Callable[[nn.Module, Callable[..., Tensor], MethodSettings], TokenFunction]


@dataclass(frozen=True)
class MethodSpec:
    """One compared method, described once.

    Args:
        name (str): display name (the key of :data:`METHODS`).
        build (Callable): ``build(model, forward, settings)`` returning
            ``function(embeds, target, additional_forward_args)``, the method's scores
            before the reduction.
        signed (bool): whether its token scores are signed relevances meant to sum to
            the explained output (checked by the conservation statistics).
        batchable (bool): whether its padded-batch scores equal the single-example
            scores (to rounding) for models that honour the attention mask.
        seeded (bool): whether it draws random numbers (seeded per example by the runs).
        reduction (str): how its scores become token scores, a key of
            :data:`REDUCTIONS`.
    """

    name: str
    build: Builder
    signed: bool
    batchable: bool
    seeded: bool
    reduction: str


def _lrp_spec(name: str, rules: Callable[[], MambaRules]) -> MethodSpec:
    def build(model: nn.Module, forward: Callable[..., Tensor], _: MethodSettings) -> TokenFunction:
        return _lrp(model, forward, rules())

    return MethodSpec(name, build, signed=True, batchable=True, seeded=False, reduction="sum")


def _gradient_spec(name: str, build: Builder, signed: bool, seeded: bool) -> MethodSpec:
    """A Captum gradient method (batchable unless seeded; signed sums or L1 norms)."""
    reduction = "sum" if signed else "abs_sum"
    return MethodSpec(name, build, signed, not seeded, seeded, reduction)


def _token_spec(name: str, build: Builder, batchable: bool, seeded: bool) -> MethodSpec:
    """A method that scores tokens directly (unsigned)."""
    return MethodSpec(name, build, False, batchable, seeded, "none")


#: Every method, in table order: MambaLRP, its ablations and the baselines, then the
#: position-only sanity baselines.
METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        _lrp_spec(MAMBA_LRP, MambaRules),
        _lrp_spec(CP_LRP, MambaRules.cp_lrp),
        _lrp_spec(LN_RULE_ONLY, MambaRules.norm_only),
        _lrp_spec(NO_RULES, MambaRules.gradient_x_input),
        _gradient_spec(
            INPUT_X_GRADIENT,
            lambda model, forward, _: _through_package(model, _captum(InputXGradient(forward))),
            signed=True,
            seeded=False,
        ),
        _gradient_spec(
            INTEGRATED_GRADIENTS,
            lambda model, forward, settings: _through_package(
                model, _integrated_gradients(forward, settings.ig_steps), settings.ig_steps
            ),
            signed=True,
            seeded=False,
        ),
        _gradient_spec(
            SMOOTHGRAD,
            lambda model, forward, settings: _through_package(
                model, _smoothgrad(forward, settings), settings.smoothgrad_samples
            ),
            signed=False,
            seeded=True,
        ),
        _gradient_spec(
            SALIENCY,
            lambda model, forward, _: _through_package(
                model, _captum(Saliency(forward), abs=False)
            ),
            signed=False,
            seeded=False,
        ),
        _token_spec(
            HIDDEN_ATTENTION,
            lambda model, forward, settings: _captum(
                RawHiddenAttention(model, forward), leaf=False, position=settings.position
            ),
            batchable=False,
            seeded=False,
        ),
        _token_spec(
            ROLLOUT,
            lambda model, forward, settings: _captum(
                MambaAttentionRollout(model, forward), leaf=False, position=settings.position
            ),
            batchable=False,
            seeded=False,
        ),
        _token_spec(
            MAMBA_ATTR,
            lambda model, forward, settings: _captum(
                MambaAttr(model, forward), leaf=False, position=settings.position
            ),
            batchable=False,
            seeded=False,
        ),
        *(
            _token_spec(
                name,
                lambda model, forward, settings, aggregation=aggregation: _captum(
                    LaTIM(model, forward, aggregation), leaf=False, position=settings.position
                ),
                batchable=False,
                seeded=False,
            )
            for name, aggregation in ((LATIM_L2, "l2"), (LATIM_ALTI, "alti"))
        ),
        _token_spec(
            IMPLICIT_ROLLOUT,
            lambda model, forward, settings: _captum(
                ImplicitAttentionRollout(model, forward), leaf=False, position=settings.position
            ),
            batchable=False,
            seeded=False,
        ),
        _token_spec(
            IMPLICIT_ATTRIBUTION,
            lambda model, forward, settings: _captum(
                ImplicitAttentionAttribution(model, forward),
                leaf=False,
                position=settings.position,
            ),
            batchable=False,
            seeded=False,
        ),
        _token_spec(
            RANDOM,
            lambda model, forward, settings: _captum(
                RandomAttribution(seed=settings.seed), leaf=False
            ),
            batchable=False,
            seeded=True,
        ),
        _token_spec(RECENCY, lambda model, forward, _: _recency, batchable=True, seeded=False),
        _token_spec(
            READ_POSITION,
            lambda model, forward, settings: _read_position(settings.seed, settings.position),
            batchable=False,
            seeded=True,
        ),
    )
}

#: The position-only sanity baselines.
POSITION_BASELINES: tuple[str, ...] = (RECENCY, READ_POSITION)
#: Methods for transformers Mamba-1 and Mamba-2 models only (they refuse others in one
#: line).
MAMBA1_METHODS: tuple[str, ...] = (LATIM_L2, LATIM_ALTI, IMPLICIT_ROLLOUT, IMPLICIT_ATTRIBUTION)
#: Methods that differ from another only on models with softmax attention (hybrids):
#: MambaLRP with CP-LRP instead of AttnLRP on the attention layers.
HYBRID_METHODS: tuple[str, ...] = (CP_LRP,)
#: The methods that read the model and explain every architecture, in table order.
METHOD_NAMES: tuple[str, ...] = tuple(
    name for name in METHODS if name not in POSITION_BASELINES + MAMBA1_METHODS + HYBRID_METHODS
)


def build_method(
    name: str,
    model: nn.Module,
    forward_func: Callable[..., Tensor] | None = None,
    settings: MethodSettings | None = None,
    per_feature: bool = False,
) -> TokenScorer:
    r"""Build one of :data:`METHODS` for ``model``.

    Args:
        name (str): method name, a key of :data:`METHODS`.
        model (nn.Module): a model with supported Mamba blocks.
        forward_func (Callable, optional): ``forward(embeds, *additional_args)``
            returning the explained outputs. Default: for Hugging Face models,
            ``forward(inputs_embeds, attention_mask=None)`` returning the logits.
        settings (MethodSettings, optional): hyper-parameters. Default:
            ``MethodSettings()``.
        per_feature (bool, optional): return the scores of every input element
            ``(batch, seq, features)`` (e.g. per time step and channel of a signal),
            before their reduction to one score per position. Default: False.

    Returns:
        TokenScorer: the method, ``scorer(embeds, target)`` -> ``(batch, seq)``, or
        the shape of ``embeds`` with ``per_feature``.

    Raises:
        ValueError: for an unknown name, or ``per_feature`` for a method that scores
            positions only (rollout, Mamba-Attr, random, the position baselines).

    Examples::

        >>> ig = build_method("Integrated Gradients", classifier)
        >>> scores = ig(embeds, target=1)          # (batch, seq)
    """
    settings = settings or MethodSettings()
    forward = forward_func or default_forward(model, "inputs_embeds")
    spec = METHODS.get(name)
    if spec is None:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    if per_feature and spec.reduction == "none":
        raise ValueError(f"{name} scores positions only; it has no per-feature scores")
    scores = spec.build(model, forward, settings)
    reduce = REDUCTIONS["none" if per_feature else spec.reduction]

    def function(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
        return reduce(scores(embeds, target, extra))

    return TokenScorer(name, function, spec.signed)


def build_methods(
    names: Sequence[str],
    model: nn.Module,
    forward_func: Callable[..., Tensor] | None = None,
    settings: MethodSettings | None = None,
) -> list[TokenScorer]:
    """Build several methods, see :func:`build_method`."""
    return [build_method(name, model, forward_func, settings) for name in names]

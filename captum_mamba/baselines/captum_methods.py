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
- Attention rollout, Mamba-Attr and Random produce token scores directly.

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
from captum_mamba.baselines.mamba_attr import MambaAttr
from captum_mamba.baselines.random import RandomAttribution
from captum_mamba.baselines.rollout import MambaAttentionRollout
from captum_mamba.rules import MambaRules

TokenFunction = Callable[[Tensor, TargetType, tuple[Any, ...]], Tensor]


@dataclass(frozen=True)
class TokenAttribution:
    """A named attribution method that returns one score per token.

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
ROLLOUT = "Attention Rollout"
MAMBA_ATTR = "Mamba-Attr"
RANDOM = "Random"

#: Every method, in table order.
METHOD_NAMES: tuple[str, ...] = (
    MAMBA_LRP,
    LN_RULE_ONLY,
    NO_RULES,
    INPUT_X_GRADIENT,
    INTEGRATED_GRADIENTS,
    SMOOTHGRAD,
    SALIENCY,
    ROLLOUT,
    MAMBA_ATTR,
    RANDOM,
)


def _leaf(embeds: Tensor) -> Tensor:
    """A copy of ``embeds`` that requires grad (Captum's gradient methods need one)."""
    return embeds.detach().clone().requires_grad_()


def _lrp(model: nn.Module, forward: Callable[..., Tensor], rules: MambaRules) -> TokenFunction:
    lrp = MambaLRP(model, forward, rules=rules)

    def run(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
        return lrp.attribute(embeds, target=target, additional_forward_args=extra or None).sum(-1)

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


def _captum_sum(method: Any, **kwargs: Any) -> TokenFunction:
    def run(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
        scores = method.attribute(
            _leaf(embeds), target=target, additional_forward_args=extra or None, **kwargs
        )
        return scores.sum(-1)

    return run


def _integrated_gradients(forward: Callable[..., Tensor], steps: int) -> TokenFunction:
    method = IntegratedGradients(forward)

    def run(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
        scores = method.attribute(
            embeds,
            baselines=torch.zeros_like(embeds),
            target=target,
            additional_forward_args=extra or None,
            n_steps=steps,
        )
        return scores.sum(-1)

    return run


def _saliency(forward: Callable[..., Tensor]) -> TokenFunction:
    method = Saliency(forward)

    def run(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
        grads = method.attribute(
            _leaf(embeds), target=target, additional_forward_args=extra or None, abs=True
        )
        return grads.sum(-1)

    return run


def _smoothgrad(forward: Callable[..., Tensor], settings: MethodSettings) -> TokenFunction:
    method = NoiseTunnel(Saliency(forward))
    calls = [0]

    def run(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
        stdev = settings.smoothgrad_noise * float(embeds.max() - embeds.min())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed + calls[0])
            calls[0] += 1
            grads = method.attribute(
                _leaf(embeds),
                nt_type="smoothgrad",
                nt_samples=settings.smoothgrad_samples,
                stdevs=stdev,
                target=target,
                additional_forward_args=extra or None,
                abs=False,
            )
        return grads.abs().sum(-1)

    return run


def _token_method(method: Any, **kwargs: Any) -> TokenFunction:
    def run(embeds: Tensor, target: TargetType, extra: tuple[Any, ...]) -> Tensor:
        return method.attribute(
            embeds, target=target, additional_forward_args=extra or None, **kwargs
        )

    return run


def build_method(
    name: str,
    model: nn.Module,
    forward_func: Callable[..., Tensor] | None = None,
    settings: MethodSettings | None = None,
) -> TokenAttribution:
    r"""Build one of :data:`METHOD_NAMES` for ``model``.

    Args:
        name (str): method name, one of :data:`METHOD_NAMES`.
        model (nn.Module): a model with supported Mamba blocks.
        forward_func (Callable, optional): ``forward(embeds, *additional_args)``
            returning the explained outputs. Default: for Hugging Face models,
            ``forward(inputs_embeds, attention_mask=None)`` returning the logits.
        settings (MethodSettings, optional): hyper-parameters. Default:
            ``MethodSettings()``.

    Returns:
        TokenAttribution: the method.

    Raises:
        ValueError: for an unknown name.

    Examples::

        >>> ig = build_method("Integrated Gradients", classifier)
        >>> scores = ig(embeds, target=1)          # (batch, seq)
    """
    settings = settings or MethodSettings()
    forward = forward_func or default_forward(model, "inputs_embeds")
    builders: dict[str, Callable[[], tuple[TokenFunction, bool]]] = {
        MAMBA_LRP: lambda: (_lrp(model, forward, MambaRules()), True),
        LN_RULE_ONLY: lambda: (_lrp(model, forward, MambaRules.norm_only()), True),
        NO_RULES: lambda: (_lrp(model, forward, MambaRules.gradient_x_input()), True),
        INPUT_X_GRADIENT: lambda: (
            _through_package(model, _captum_sum(InputXGradient(forward))),
            True,
        ),
        INTEGRATED_GRADIENTS: lambda: (
            _through_package(
                model, _integrated_gradients(forward, settings.ig_steps), settings.ig_steps
            ),
            True,
        ),
        SMOOTHGRAD: lambda: (
            _through_package(model, _smoothgrad(forward, settings), settings.smoothgrad_samples),
            False,
        ),
        SALIENCY: lambda: (_through_package(model, _saliency(forward)), False),
        ROLLOUT: lambda: (
            _token_method(MambaAttentionRollout(model, forward), position=settings.position),
            False,
        ),
        MAMBA_ATTR: lambda: (
            _token_method(MambaAttr(model, forward), position=settings.position),
            False,
        ),
        RANDOM: lambda: (_token_method(RandomAttribution(seed=settings.seed)), False),
    }
    if name not in builders:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}")
    function, signed = builders[name]()
    return TokenAttribution(name, function, signed)


def build_methods(
    names: Sequence[str],
    model: nn.Module,
    forward_func: Callable[..., Tensor] | None = None,
    settings: MethodSettings | None = None,
) -> list[TokenAttribution]:
    """Build several methods, see :func:`build_method`."""
    return [build_method(name, model, forward_func, settings) for name in names]

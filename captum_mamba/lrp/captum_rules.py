"""Captum LRP: the MambaLRP rules as Captum ``PropagationRule`` classes.

Captum's LRP turns every leaf module that carries a ``rule`` into one LRP step:
a hook on the module's output divides the incoming relevance by the output ``z``,
autograd carries the quotient back through the module, and a hook on each input
multiplies by the input ``x``::

    R_in = x * J^T (R_out / z)            (J: the module's autograd Jacobian)

That is Gradient x Input of the module's local function. Every leaf of a model
prepared by :func:`captum_mamba.lrp.prepare_captum_lrp` computes its operation
with the modified backward of its MambaLRP rule (the factor detachments of
:mod:`captum_mamba.rules`), so the composition of these local steps is exactly
MambaLRP's global Gradient x Input. The Mamba rules below differ from
:class:`LRP0Rule` only in telling their leaf module which factor to detach; the
relevance arithmetic is the same exact division for all of them. Each is named after the
setting of :class:`~captum_mamba.rules.MambaRules` it switches on (``gate`` ->
:class:`GateRule`); the two rules of the ``attention`` setting after the methods they
are (:class:`AttnLRPRule` for True, :class:`CPLRPRule` for ``"cp_lrp"``).

Captum's own rules can be used where they make sense: ``EpsilonRule`` and
``GammaRule`` on linear and convolutional layers reproduce
:class:`captum_mamba.Epsilon` and :class:`captum_mamba.Gamma`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba._captum import PropagationRule, format_tensor_into_tuples


class LRP0Rule(PropagationRule):
    r"""LRP-0: ``R_in = x * J^T (R_out / z)`` with an exact division.

    Captum's ``EpsilonRule`` adds ``1e-9 * sign(z)`` to the denominator, which
    shifts relevances by a relative ``1e-9 / |z|``. This rule divides exactly;
    output elements that are exactly zero pass no relevance (their relevance
    ``z * gradient`` is zero as well).

    Examples::

        >>> prepared.model.lm_head.rule = LRP0Rule()
    """

    def _create_backward_hook_output(self, outputs: Tensor) -> Callable[[Tensor], Tensor]:
        nonzero = outputs != 0
        denominator = torch.where(nonzero, outputs, torch.ones_like(outputs))

        def hook(grad: Tensor) -> Tensor:
            self.relevance_output[grad.device] = grad.data
            return torch.where(nonzero, grad / denominator, torch.zeros_like(grad))

        return hook

    def _manipulate_weights(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        """LRP-0 uses the weights as they are."""


class NormRule(LRP0Rule):
    """LN-rule (setting ``norm``): ``1 / rms(x)`` of an RMSNorm is a constant (relevance
    passes unchanged)."""


class SiLURule(LRP0Rule):
    """Identity rule for SiLU (setting ``silu``): ``sigmoid(x)`` is a constant (relevance
    passes unchanged)."""


class SSMRule(LRP0Rule):
    """SSM rule (setting ``ssm``): ``exp(dt A)``, ``dt B`` and ``C`` are constants;
    relevance flows through the scan input only."""


class GateRule(LRP0Rule):
    """Half rule for the gate ``y * silu(z)`` (setting ``gate``): each factor receives half
    of the relevance."""


class ActivationRule(LRP0Rule):
    """Identity rule for the activation of an MLP (setting ``activation``): ``f(x) / x`` is
    a constant."""


class AttnLRPRule(LRP0Rule):
    """AttnLRP on softmax attention (setting ``attention=True``): uniform rule on ``q k^T``
    and ``weights v``; on xLSTM's mLSTM cell the uniform rule on ``q``, ``k``, ``v``; on a
    gated delta rule, on its reads and writes."""


class CPLRPRule(LRP0Rule):
    """CP-LRP on softmax attention (setting ``attention="cp_lrp"``): the attention weights
    are constants; on xLSTM's mLSTM cell and on a gated delta rule, the queries and keys
    are."""


class RouterRule(LRP0Rule):
    """Router rule of a mixture of experts (setting ``router``): the router weights are
    constants."""


class ConstantRule(PropagationRule):
    """For modules whose output does not depend on the values of their inputs (rotary
    position embeddings: a function of the positions): no relevance passes, so the
    module gets no hooks, and it may return a tuple."""

    def forward_hook(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        """No relevance passes: nothing to hook."""
        self._handle_input_hooks = []

    def forward_hook_weights(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        """No weights to change."""

    def forward_pre_hook_activations(self, module: nn.Module, inputs: Any) -> Any:
        """The inputs as they are."""
        return inputs

    def _manipulate_weights(self, module: nn.Module, inputs: Any, outputs: Any) -> None:
        """No weights to change."""


class EmbeddingRule(LRP0Rule):
    """Relevance stops at an embedding's output: token ids carry no relevance.

    Captum hooks every input of a ruled layer, which fails for integer ids. This
    rule hooks only the output, so that Captum's ``LayerLRP`` can read the relevance
    of the embedding output when the embedding runs inside the model.
    """

    def forward_hook(self, module: nn.Module, inputs: Any, outputs: Tensor) -> Tensor:
        """Hook the output only; integer inputs cannot carry gradients."""
        self._has_single_input = len(format_tensor_into_tuples(inputs)) == 1
        self._handle_input_hooks = []
        self._handle_output_hook = outputs.register_hook(
            self._create_backward_hook_output(outputs.data)
        )
        return outputs.clone()

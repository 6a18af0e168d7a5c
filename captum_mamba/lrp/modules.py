"""Captum LRP: leaf modules for the functional operations of a Mamba block.

Captum's LRP only sees leaf modules that carry a ``rule``. A Mamba block computes
its residual addition, SiLUs, selective scan and gate product with functions, so a
prepared model routes each of them through one of the leaf modules below. A leaf
computes exactly the value of its operation; when it carries its MambaLRP rule
(:attr:`MambaLeaf.rule_type`), it uses the rule's modified backward from
:mod:`captum_mamba.rules`, otherwise the plain operation.

``module.rule`` of every prepared leaf is a :class:`KeptRule`: Captum deletes
``rule`` from every layer after each call, which would discard rules set by the
user. A kept rule ignores that deletion and instead removes what Captum leaves
behind for that call (the layer's ``activations`` and the rule's hook state), so
that the module is as it was before the call, also when the call raised.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from captum.attr._utils.lrp_rules import PropagationRule
from torch import Tensor, nn
from transformers.models.mamba.modeling_mamba import MambaMixer, MambaRMSNorm

from captum_mamba.adapters.selective_branch import mask_padding
from captum_mamba.lrp.captum_rules import HalfRule, LRP0Rule, NormRule, SiLURule, SSMRule
from captum_mamba.rules import gated_product, rms_norm, selective_ssm, silu

#: Attributes that one Captum LRP call leaves on a rule object.
_CALL_STATE = (
    "relevance_input",
    "relevance_output",
    "_has_single_input",
    "_handle_input_hooks",
    "_handle_output_hook",
)


class KeptRule:
    """Descriptor for ``module.rule`` that survives Captum's clean-up.

    Setting stores the rule (a ``PropagationRule``); ``del module.rule`` keeps it and
    drops the per-call state of Captum's LRP instead.
    """

    slot = "_captum_mamba_rule"

    def __get__(self, module: nn.Module | None, owner: type | None = None) -> Any:
        if module is None:
            return self
        try:
            return module.__dict__[self.slot]
        except KeyError:
            raise AttributeError("rule") from None

    def __set__(self, module: nn.Module, rule: PropagationRule) -> None:
        if not isinstance(rule, PropagationRule):
            raise TypeError(
                f"module.rule must be a captum PropagationRule, got {type(rule).__name__}"
            )
        module.__dict__[self.slot] = rule

    def __delete__(self, module: nn.Module) -> None:
        module.__dict__.pop("activations", None)
        rule = module.__dict__.get(self.slot)
        if rule is not None:
            for name in _CALL_STATE:
                vars(rule).pop(name, None)


_KEPT_RULE_CLASSES: dict[type, type] = {}


def original_type(module: nn.Module) -> type:
    """The class of ``module`` before :func:`keep_rule` (its own class otherwise)."""
    cls = type(module)
    return cls.__base__ if _KEPT_RULE_CLASSES.get(cls.__base__) is cls else cls


def keep_rule(module: nn.Module) -> None:
    """Give ``module`` (a leaf of a prepared copy) a :class:`KeptRule` ``rule``.

    The module's class is replaced by a subclass with the same name that only adds
    the descriptor; the forward is unchanged.

    Args:
        module (nn.Module): the module, changed in place.
    """
    cls = type(module)
    if isinstance(vars(cls).get("rule"), KeptRule):
        return
    if cls not in _KEPT_RULE_CLASSES:
        _KEPT_RULE_CLASSES[cls] = type(cls.__name__, (cls,), {"rule": KeptRule()})
    module.__class__ = _KEPT_RULE_CLASSES[cls]


class MambaLeaf(nn.Module):
    """A leaf module that applies its MambaLRP rule when it carries one.

    Attributes:
        rule_type (type): the rule that switches on the modified backward.
    """

    rule = KeptRule()
    rule_type: ClassVar[type[PropagationRule]] = LRP0Rule

    @property
    def rule_active(self) -> bool:
        """Whether the module carries its MambaLRP rule."""
        return isinstance(getattr(self, "rule", None), self.rule_type)


class Addition(MambaLeaf):
    """Residual addition ``a + b`` (LRP-0 distributes relevance by contribution)."""

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return a + b


class SiLU(MambaLeaf):
    """SiLU; with :class:`SiLURule` the identity rule (``sigmoid(x)`` constant)."""

    rule_type = SiLURule

    def forward(self, x: Tensor) -> Tensor:
        return silu(x, self.rule_active)


class GatedProduct(MambaLeaf):
    """Gate ``y * gate``; with :class:`HalfRule` each factor gets half the relevance."""

    rule_type = HalfRule

    def forward(self, y: Tensor, gate: Tensor) -> Tensor:
        return gated_product(y, gate, self.rule_active)


class RMSNorm(MambaLeaf):
    """RMSNorm in the input dtype; with :class:`NormRule` the LN-rule.

    Args:
        norm (MambaRMSNorm): the norm whose weight (shared, not copied) and epsilon
            are used.
    """

    rule_type = NormRule

    def __init__(self, norm: MambaRMSNorm) -> None:
        super().__init__()
        self.weight = norm.weight
        self.variance_epsilon = norm.variance_epsilon

    def forward(self, hidden_states: Tensor) -> Tensor:
        weight = self.weight.to(hidden_states.dtype)
        return rms_norm(hidden_states, weight, self.variance_epsilon, self.rule_active)


class SelectiveSSM(MambaLeaf):
    """Selective SSM ``scan(x; softplus(dt), A, B, C) + D x``; with :class:`SSMRule`
    the SSM rule.

    The softplus of the time step is part of the leaf, so that with the rule off the
    relevance of ``dt`` is that of its pre-activation (the output of ``dt_proj``).

    Args:
        mixer (MambaMixer): the mixer whose ``A_log`` and ``D`` (shared) are used.
    """

    rule_type = SSMRule

    def __init__(self, mixer: MambaMixer) -> None:
        super().__init__()
        self.A_log = mixer.A_log
        self.D = mixer.D

    def forward(self, x: Tensor, dt: Tensor, B: Tensor, C: Tensor) -> Tensor:
        A = -torch.exp(self.A_log.to(x.dtype))
        D = self.D.to(x.dtype)
        return selective_ssm(x, F.softplus(dt), A, B, C, D, self.rule_active)


class PreparedMixer(nn.Module):
    """Mamba-1 mixer whose every operation on the relevance path is a leaf module.

    Args:
        mixer (MambaMixer): the mixer (of the prepared copy) whose projections and
            parameters are used.

    Raises:
        NotImplementedError: if the mixer does not use SiLU.
    """

    def __init__(self, mixer: MambaMixer) -> None:
        super().__init__()
        if mixer.activation not in ("silu", "swish"):
            raise NotImplementedError(
                f"MambaLRP supports SiLU mixers only, this one uses {mixer.activation!r}"
            )
        self.time_step_rank = mixer.time_step_rank
        self.ssm_state_size = mixer.ssm_state_size
        self.in_proj = mixer.in_proj
        self.conv1d = mixer.conv1d
        self.conv_act = SiLU()
        self.x_proj = mixer.x_proj
        self.dt_proj = mixer.dt_proj
        self.ssm = SelectiveSSM(mixer)
        self.gate_act = SiLU()
        self.gate = GatedProduct()
        self.out_proj = mixer.out_proj

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        length = hidden_states.shape[1]
        x, z = self.in_proj(mask_padding(hidden_states, attention_mask)).chunk(2, dim=-1)
        x = self.conv1d(x.transpose(1, 2))[..., :length].transpose(1, 2)
        x = mask_padding(self.conv_act(x), attention_mask)
        time_step, B, C = torch.split(
            self.x_proj(x), [self.time_step_rank, self.ssm_state_size, self.ssm_state_size], dim=-1
        )
        y = self.ssm(x, self.dt_proj(time_step), B, C)
        return self.out_proj(self.gate(y, self.gate_act(z)))


class PreparedBlock(nn.Module):
    """Pre-norm residual block ``x + mixer(norm(x))`` with the addition as a leaf.

    Args:
        norm (RMSNorm): the prepared norm.
        mixer (PreparedMixer): the prepared mixer.
    """

    def __init__(self, norm: RMSNorm, mixer: PreparedMixer) -> None:
        super().__init__()
        self.norm = norm
        self.mixer = mixer
        self.residual = Addition()

    def forward(
        self,
        hidden_states: Tensor,
        cache: Any = None,
        attention_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> Tensor:
        if cache is not None:
            raise NotImplementedError(
                "a model prepared for Captum's LRP explains whole sequences; "
                "call it with use_cache=False"
            )
        mixed = self.mixer(self.norm(hidden_states), attention_mask=attention_mask)
        return self.residual(hidden_states, mixed)

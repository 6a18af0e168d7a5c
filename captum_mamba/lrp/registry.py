"""Captum LRP: which rule a module of a prepared model gets by default.

The registry maps module types (matched exactly, as in Captum) to a rule: either a
``PropagationRule`` class, instantiated once per module, or a factory
``factory(module, rules) -> PropagationRule`` that may read the
:class:`~captum_mamba.MambaRules` of the preparation. Register your own module
types with :func:`register_rule`; override single modules of a prepared model with
``module.rule = ...`` as in Captum.
"""

from __future__ import annotations

from collections.abc import Callable

from captum.attr._utils.lrp_rules import EpsilonRule, GammaRule, PropagationRule
from torch import nn

from captum_mamba.lrp.captum_rules import (
    EmbeddingRule,
    HalfRule,
    LRP0Rule,
    NormRule,
    SiLURule,
    SSMRule,
)
from captum_mamba.lrp.modules import (
    Addition,
    GatedProduct,
    RMSNorm,
    SelectiveSSM,
    SiLU,
    original_type,
)
from captum_mamba.rules import LRP0, Epsilon, Gamma, LinearRule, MambaRules

RuleFactory = Callable[[nn.Module, MambaRules], PropagationRule]
RuleSpec = type[PropagationRule] | RuleFactory

_RULES: dict[type[nn.Module], RuleSpec] = {}


def register_rule(module_type: type[nn.Module], rule: RuleSpec) -> None:
    """Set the default rule of a module type (replacing any earlier one).

    Args:
        module_type (type): the module class, matched exactly.
        rule (type or Callable): a ``PropagationRule`` subclass constructible
            without arguments, or ``factory(module, rules)`` returning a rule.

    Examples::

        >>> register_rule(MyPooling, EpsilonRule)
        >>> register_rule(MyGate, lambda module, rules: HalfRule() if rules.gate else LRP0Rule())
    """
    _RULES[module_type] = rule


def registered_rules() -> dict[type[nn.Module], RuleSpec]:
    """A copy of the registry: module type -> rule class or factory."""
    return dict(_RULES)


def rule_for(module: nn.Module, rules: MambaRules | None = None) -> PropagationRule | None:
    """A new instance of the default rule of ``module``.

    Args:
        module (nn.Module): the module.
        rules (MambaRules, optional): the MambaLRP rule selection. Default: all on.

    Returns:
        PropagationRule or None: the rule, or None if the type is not registered.
    """
    spec = _RULES.get(original_type(module))
    if spec is None:
        return None
    if isinstance(spec, type) and issubclass(spec, PropagationRule):
        return spec()
    return spec(module, rules if rules is not None else MambaRules())


def captum_linear_rule(linear: LinearRule) -> PropagationRule:
    """The Captum rule that computes the same relevances as a MambaLRP linear rule.

    ``Epsilon(eps)`` becomes ``EpsilonRule(eps)``; ``Gamma(gamma, eps)`` becomes
    ``GammaRule(gamma)`` with stabiliser ``eps`` (Captum's GammaRule has no argument
    for it and uses ``1e-9``, the default of both).

    Args:
        linear (LinearRule): :class:`~captum_mamba.LRP0`,
            :class:`~captum_mamba.Epsilon` or :class:`~captum_mamba.Gamma`.

    Returns:
        PropagationRule: the equivalent Captum rule.

    Raises:
        TypeError: for other linear rules.
    """
    if isinstance(linear, LRP0):
        return LRP0Rule()
    if isinstance(linear, Epsilon):
        return EpsilonRule(linear.epsilon)
    if isinstance(linear, Gamma):
        rule = GammaRule(linear.gamma)
        rule.STABILITY_FACTOR = linear.epsilon
        return rule
    raise TypeError(f"no Captum rule is known for the linear rule {linear!r}")


def _linear(module: nn.Module, rules: MambaRules) -> PropagationRule:
    return captum_linear_rule(rules.linear)


def _switch(rule: type[PropagationRule], flag: str) -> RuleFactory:
    def factory(module: nn.Module, rules: MambaRules) -> PropagationRule:
        return rule() if getattr(rules, flag) else LRP0Rule()

    return factory


register_rule(nn.Linear, _linear)
register_rule(nn.Conv1d, _linear)
register_rule(nn.Embedding, EmbeddingRule)
register_rule(Addition, LRP0Rule)
register_rule(RMSNorm, _switch(NormRule, "norm"))
register_rule(SiLU, _switch(SiLURule, "silu"))
register_rule(SelectiveSSM, _switch(SSMRule, "ssm"))
register_rule(GatedProduct, _switch(HalfRule, "gate"))

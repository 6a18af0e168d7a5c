"""Captum LRP: the default rule of user module types in a prepared model.

The operations of handled modules get their rule from their op kind and the
:class:`~captum_mamba.MambaRules` of the preparation; linear and convolutional layers
the Captum rule equivalent to the linear rule (:func:`captum_linear_rule`). Other leaf
types get a rule from this registry: register your own with :func:`register_rule`,
which also admits the type on the relevance path of MambaLRP (as
:func:`captum_mamba.adapters.register_leaf` does). Override single modules of a prepared
model with ``module.rule = ...`` as in Captum.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from captum_mamba._captum import EpsilonRule, GammaRule, PropagationRule
from captum_mamba.adapters import register_leaf
from captum_mamba.lrp.captum_rules import EmbeddingRule, LRP0Rule
from captum_mamba.lrp.modules import original_type
from captum_mamba.rules import LRP0, Epsilon, Gamma, LinearRule, MambaRules

RuleFactory = Callable[[nn.Module, MambaRules], PropagationRule]
RuleSpec = type[PropagationRule] | RuleFactory

_RULES: dict[type[nn.Module], RuleSpec] = {nn.Embedding: EmbeddingRule}


def register_rule(module_type: type[nn.Module], rule: RuleSpec) -> None:
    """Set the Captum rule of a leaf module type (replacing any earlier one).

    The type is also admitted on the relevance path of MambaLRP, which explains it by
    its own gradient (LRP-0): register only modules that are linear maps of their input
    (e.g. a learned elementwise scale) or whose gradient is the rule you want.

    Args:
        module_type (type): the module class, matched exactly.
        rule (type or Callable): a ``PropagationRule`` subclass constructible
            without arguments, or ``factory(module, rules)`` returning a rule.

    Raises:
        TypeError: if ``module_type`` is not a module class or ``rule`` is neither.

    Examples::

        >>> register_rule(MyScale, LRP0Rule)
        >>> register_rule(MyPooling, lambda module, rules: EpsilonRule(1e-6))
    """
    is_rule_class = isinstance(rule, type) and issubclass(rule, PropagationRule)
    if not is_rule_class and (isinstance(rule, type) or not callable(rule)):
        raise TypeError(
            f"rule must be a PropagationRule subclass or a factory(module, rules), got {rule!r}"
        )
    register_leaf(module_type)
    _RULES[module_type] = rule


def registered_rules() -> dict[type[nn.Module], RuleSpec]:
    """A copy of the registry: module type -> rule class or factory."""
    return dict(_RULES)


def rule_for(module: nn.Module, rules: MambaRules | None = None) -> PropagationRule | None:
    """A new instance of the registered rule of ``module``'s type.

    Args:
        module (nn.Module): the module.
        rules (MambaRules, optional): the rule selection. Default: MambaLRP.

    Returns:
        PropagationRule or None: the rule, or None if the type is not registered.
    """
    spec = _RULES.get(original_type(module))
    if spec is None:
        return None
    if isinstance(spec, type):
        return spec()
    return spec(module, rules if rules is not None else MambaRules())


def captum_linear_rule(linear: LinearRule) -> PropagationRule:
    """The Captum rule that computes the same relevances as a linear rule.

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

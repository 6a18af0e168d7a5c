"""Captum LRP: the operations of a block as leaf modules, and the ops that call them.

Captum's LRP only sees leaf modules that carry a ``rule``. In a model prepared by
:func:`captum_mamba.lrp.prepare_captum_lrp`, every operation site of a handled module
(see :mod:`captum_mamba.adapters.backend`) is a child leaf of that module (e.g.
``mixer.conv_act``, ``mixer.ssm``, ``block.residual``), or the module itself for
one-operation modules such as norms. :class:`CaptumOps` runs the module's handler
forward (the same code as MambaLRP's) and routes each operation through its leaf. A leaf
computes exactly the value of its operation with the rule functions of
:mod:`captum_mamba.rules`; the MambaLRP rule of its kind is on when the leaf carries the
corresponding Captum rule (:data:`MAMBA_RULES`), off for any other rule.

``module.rule`` of every prepared leaf is a :class:`KeptRule`: Captum deletes ``rule``
from every layer after each call, which would discard rules set by the user. A kept rule
ignores that deletion and instead removes what Captum leaves behind for that call (the
layer's ``activations`` and the rule's hook state), so that the module is as it was
before the call, also when the call raised.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from captum_mamba._captum import PropagationRule
from captum_mamba.adapters import BlockOps
from captum_mamba.adapters.backend import KINDS
from captum_mamba.lrp.captum_rules import (
    ActivationRule,
    AttnLRPRule,
    ConstantRule,
    CPLRPRule,
    GateRule,
    LRP0Rule,
    NormRule,
    RouterRule,
    SiLURule,
    SSMRule,
)
from captum_mamba.rules import MambaRules

#: Setting of ``MambaRules`` -> the Captum rule that switches its MambaLRP rule on (True).
CAPTUM_RULES: dict[str, type[PropagationRule]] = {
    "norm": NormRule,
    "silu": SiLURule,
    "gate": GateRule,
    "ssm": SSMRule,
    "activation": ActivationRule,
    "attention": AttnLRPRule,
    "router": RouterRule,
}
#: Setting -> the Captum rules of its further values (see ``MambaRules``).
CAPTUM_CHOICES: dict[str, dict[str, type[PropagationRule]]] = {"attention": {"cp_lrp": CPLRPRule}}

#: Op kind -> the Captum rule that switches its MambaLRP rule on, for every kind governed
#: by a rule setting of ``MambaRules`` (the linear rule of ``grouped_linear`` is read from
#: the site's rules instead, as for linear layers).
MAMBA_RULES: dict[str, type[PropagationRule]] = {
    kind.name: CAPTUM_RULES[kind.setting]
    for kind in KINDS.values()
    if kind.setting in MambaRules.kinds()
}
#: Op kind -> the Captum rules of its setting's further values.
CHOICE_RULES: dict[str, dict[str, type[PropagationRule]]] = {
    kind.name: CAPTUM_CHOICES[kind.setting]
    for kind in KINDS.values()
    if kind.setting in CAPTUM_CHOICES
}
#: Op kinds through which no relevance passes: their leaves get no hooks.
CONSTANT_KINDS = frozenset(kind.name for kind in KINDS.values() if not kind.inputs)

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


def rule_setting(module: nn.Module, kind: str) -> bool | str:
    """The setting of the MambaLRP rule of ``kind`` that the Captum rule carried by
    ``module`` stands for: True for its rule (:data:`MAMBA_RULES`), a choice such as
    ``"cp_lrp"`` (:data:`CHOICE_RULES`), False for any other rule."""
    rule = getattr(module, "rule", None)
    for value, rule_type in CHOICE_RULES.get(kind, {}).items():
        if isinstance(rule, rule_type):
            return value
    rule_type = MAMBA_RULES.get(kind)
    return rule_type is not None and isinstance(rule, rule_type)


class OpLeaf(nn.Module):
    """A leaf module computing one operation of a block, with the rule its setting selects.

    Relevance-path tensors (:attr:`~captum_mamba.adapters.backend.OpKind.inputs`) are
    positional arguments (Captum hooks them); the other arguments are keyword arguments.

    Args:
        kind (str): the op kind, a key of :data:`captum_mamba.adapters.backend.KINDS`
            with a function.
    """

    rule = KeptRule()

    def __init__(self, kind: str) -> None:
        super().__init__()
        if KINDS.get(kind) is None or KINDS[kind].function is None:
            raise ValueError(f"no leaf for the op kind {kind!r}")
        self.kind = kind

    def forward(self, *inputs: Tensor, setting: Any, **arguments: Any) -> Tensor:
        op = KINDS[self.kind]
        return op.function(setting, **dict(zip(op.inputs, inputs, strict=True)), **arguments)

    def extra_repr(self) -> str:
        return self.kind


class CaptumOps(BlockOps):
    """The operations of a handled module in a prepared copy: each runs its leaf.

    The computation stays in the model's dtype (no widening, parameters as they are), as
    Captum's own layers do.
    """

    def compute(self, x: Tensor) -> Tensor:
        return x

    def parameter(self, value: Tensor | None, x: Tensor) -> Tensor | None:
        return value

    def apply(self, kind: str, site: str, **arguments: Any) -> Tensor:
        """Run the operation through the leaf of ``site`` (or the module itself), with the
        setting that the leaf's Captum rule stands for."""
        self.rules(site)
        leaf = self.module if site == "" else getattr(self.module, site)
        if leaf is not self.module and leaf.kind != kind:
            raise TypeError(
                f"{self.path}.{site} is declared as a {leaf.kind!r} site but runs {kind!r}"
            )
        setting = rule_setting(leaf, kind) if kind in MAMBA_RULES else self.setting(kind, site)
        if leaf is self.module:
            return KINDS[kind].function(setting, **arguments)
        inputs = [arguments.pop(name) for name in KINDS[kind].inputs]
        return leaf(*inputs, setting=setting, **arguments)


def default_leaf_rule(kind: str, setting: Any) -> PropagationRule:
    """The Captum rule of a leaf of ``kind`` for the value of its MambaLRP setting: the
    rule of that value (e.g. :class:`CPLRPRule` for ``"cp_lrp"``), its MambaLRP rule if
    the value is true, else LRP-0; :class:`ConstantRule` for kinds that pass no
    relevance."""
    if kind in CONSTANT_KINDS:
        return ConstantRule()
    choice = CHOICE_RULES.get(kind, {}).get(setting) if isinstance(setting, str) else None
    if choice is not None:
        return choice()
    rule_type = MAMBA_RULES.get(kind)
    return rule_type() if setting and rule_type is not None else LRP0Rule()

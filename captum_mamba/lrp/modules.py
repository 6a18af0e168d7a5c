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

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from captum_mamba._captum import PropagationRule
from captum_mamba.adapters import BlockOps
from captum_mamba.lrp.captum_rules import (
    ActivationRule,
    AttnLRPRule,
    ConstantRule,
    CPLRPRule,
    HalfRule,
    LRP0Rule,
    NormRule,
    RouterRule,
    SiLURule,
    SSMRule,
)
from captum_mamba.rules import functional as R

#: Op kind -> the Captum rule that switches its MambaLRP rule on (setting True).
MAMBA_RULES: dict[str, type[PropagationRule]] = {
    "norm": NormRule,
    "silu": SiLURule,
    "gate": HalfRule,
    "ssm": SSMRule,
    "ssd": SSMRule,
    "activation": ActivationRule,
    "attention": AttnLRPRule,
    "mixture": RouterRule,
}
#: Op kind -> the Captum rules of its further setting values (see ``MambaRules``).
CHOICE_RULES: dict[str, dict[str, type[PropagationRule]]] = {"attention": {"cp_lrp": CPLRPRule}}
#: Op kinds through which no relevance passes: their leaves get no hooks.
CONSTANT_KINDS = frozenset({"constant"})

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


def rule_active(module: nn.Module, kind: str) -> bool:
    """Whether ``module`` carries a Captum rule that switches on a MambaLRP rule of
    ``kind`` (always False for kinds without one)."""
    return rule_setting(module, kind) is not False


class OpLeaf(nn.Module):
    """A leaf module computing one operation of a block, with its rule when it carries it.

    Relevance-path tensors are positional arguments (Captum hooks them); parameters and
    settings are keyword arguments.

    Args:
        kind (str): the op kind, a key of
            :data:`captum_mamba.adapters.backend.SITE_KINDS`.
    """

    rule = KeptRule()
    _COMPUTE: ClassVar[dict[str, Any]] = {
        "silu": lambda on, x: R.silu(x, on),
        "gate": lambda on, y, g: R.gated_product(y, g, on),
        "ssm": lambda on, x, dt, B, C, *, A, D: R.selective_ssm(x, dt, A, B, C, D, on),
        "ssd": lambda on, x, dt, B, C, *, A, D, chunk_size: R.multihead_ssm(
            x, dt, A, B, C, D, on, chunk_size
        ),
        "add": lambda on, a, b: R.add(a, b),
        "scale": lambda on, x, *, factor: R.scale(x, factor),
        "time_step": lambda on, raw, *, bias, low, high: R.time_step(raw, bias, low, high),
        "norm": lambda on, x, *, weight, eps, group_size: _grouped_norm(
            x, weight, eps, group_size, on
        ),
        "activation": lambda on, x, *, function: R.activation(x, function, on),
        "attention": lambda setting, q, k, v, *, bias, scaling: R.attention(
            q, k, v, bias, scaling, setting is True, setting == "cp_lrp"
        ),
        "rotary": lambda on, x, *, cos, sin: R.rotary(x, cos, sin),
        "grouped_linear": lambda on, x, *, weight, group_sizes, rule: R.grouped_linear(
            x, weight, group_sizes, rule
        ),
        "routing": lambda on, x, *, select: select(x),
        "mixture": lambda on, weights, values, *, index, size: R.mixture(
            weights, values, index, size, on
        ),
    }

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in self._COMPUTE:
            raise ValueError(f"no leaf for the op kind {kind!r}")
        self.kind = kind

    def forward(self, *inputs: Tensor, **params: Any) -> Tensor:
        return self._COMPUTE[self.kind](rule_setting(self, self.kind), *inputs, **params)

    def extra_repr(self) -> str:
        return self.kind


def _grouped_norm(
    x: Tensor, weight: Tensor | None, eps: float, group_size: int | None, ln_rule: bool
) -> Tensor:
    if group_size is None or group_size == x.shape[-1]:
        return R.rms_norm(x, weight, eps, ln_rule)
    out = R.rms_norm(x.unflatten(-1, (-1, group_size)), None, eps, ln_rule).flatten(-2)
    return out if weight is None else weight * out


class CaptumOps(BlockOps):
    """The operations of a handled module in a prepared copy: each runs its leaf.

    The computation stays in the model's dtype (no widening), as Captum's own layers do.
    """

    def _leaf(self, site: str) -> nn.Module:
        self.rules(site)
        return self.module if site == "" else getattr(self.module, site)

    def _run(self, site: str, kind: str, *inputs: Tensor, **params: Any) -> Tensor:
        leaf = self._leaf(site)
        if leaf is self.module:
            return OpLeaf._COMPUTE[kind](rule_setting(leaf, kind), *inputs, **params)
        return leaf(*inputs, **params)

    def compute(self, x: Tensor) -> Tensor:
        return x

    def silu(self, site: str, x: Tensor) -> Tensor:
        return self._run(site, "silu", x)

    def gate(self, site: str, y: Tensor, gate: Tensor) -> Tensor:
        return self._run(site, "gate", y, gate)

    def rms_norm(
        self,
        site: str,
        x: Tensor,
        weight: Tensor | None,
        eps: float,
        group_size: int | None = None,
    ) -> Tensor:
        return self._run(site, "norm", x, weight=weight, eps=eps, group_size=group_size)

    def layer_norm(
        self, site: str, x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> Tensor:
        leaf = self._leaf(site)
        if leaf is not self.module:
            raise NotImplementedError("a LayerNorm operation must be the module itself")
        return R.layer_norm(x, weight, bias, eps, rule_active(leaf, "norm"))

    def ssm(
        self,
        site: str,
        x: Tensor,
        dt: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor | None,
        reverse: bool = False,
    ) -> Tensor:
        return self._run(site, "ssm", x, dt, B, C, A=A.to(x.dtype), D=D)

    def ssd(
        self,
        site: str,
        x: Tensor,
        dt: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor | None,
        chunk_size: int,
    ) -> Tensor:
        return self._run(site, "ssd", x, dt, B, C, A=A.to(x.dtype), D=D, chunk_size=chunk_size)

    def add(self, site: str, a: Tensor, b: Tensor) -> Tensor:
        return self._run(site, "add", a, b)

    def scale(self, site: str, x: Tensor, factor: float | Tensor) -> Tensor:
        return self._run(site, "scale", x, factor=factor)

    def time_step(
        self,
        site: str,
        raw: Tensor,
        bias: Tensor | None = None,
        low: float = 0.0,
        high: float = float("inf"),
    ) -> Tensor:
        return self._run(site, "time_step", raw, bias=bias, low=low, high=high)

    def activation(self, site: str, x: Tensor, function: str) -> Tensor:
        return self._run(site, "activation", x, function=function)

    def attention(
        self, site: str, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scaling: float
    ) -> Tensor:
        return self._run(site, "attention", q, k, v, bias=bias, scaling=scaling)

    def rotary(self, site: str, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return self._run(site, "rotary", x, cos=cos, sin=sin)

    def grouped_linear(
        self, site: str, x: Tensor, weight: Tensor, group_sizes: Sequence[int]
    ) -> Tensor:
        rule = self.rules(site).linear
        return self._run(
            site, "grouped_linear", x, weight=weight, group_sizes=group_sizes, rule=rule
        )

    def routing(self, site: str, x: Tensor, select: Callable[[Tensor], Tensor]) -> Tensor:
        return self._run(site, "routing", x, select=select)

    def mixture(
        self, site: str, weights: Tensor, values: Tensor, index: Tensor, size: int
    ) -> Tensor:
        return self._run(site, "mixture", weights, values, index=index, size=size)


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

"""Rules: which propagation rule each kind of operation gets, with presets and overrides.

A :class:`MambaRules` holds one setting per *rule kind* (the non-linear operations of a
Mamba block: ``norm``, ``silu``, ``ssm``, ``gate``; of the attention, MLP and
mixture-of-experts blocks of hybrid models: ``activation``, ``attention``, ``router``),
the rule of the linear and
convolutional layers, and an ordered list of :class:`Override` objects that change
settings for parts of the model selected by module path or type. MambaLRP, the
ablations and Captum's ``LRP`` on a prepared model all read the same object, so a rule
is named once for every backend.

Presets are data (:data:`PRESETS`): each maps setting names to values, and the key
``"*"`` sets every rule kind at once. "Gradient x Input" switches every kind off through
``"*"``, so it stays correct when a new kind is added.

The rules of the non-Mamba blocks (derived in :mod:`captum_mamba.rules.functional`):

- ``attention``: AttnLRP (Achtibat et al., ICML 2024), the uniform rule on the products
  ``q k^T`` and ``weights v`` with the softmax by its gradient (its AttnLRP rule); or
  ``"cp_lrp"``: CP-LRP (Ali et al., ICML 2022), the attention weights are constants,
  relevance flows through the values only and is conserved exactly; the same two
  choices for the mLSTM cell of xLSTM (its gates and normaliser constant under both: the
  uniform rule over ``q``, ``k``, ``v``, or constant queries and keys);
- ``activation``: the identity rule on the activation of every MLP (SiLU, GELU, ReLU,
  squared ReLU); the product of a gated MLP gets the half rule of ``gate``;
- ``router``: the router weights of a mixture of experts are constants (relevance flows
  through the selected experts, conserved exactly);
- every norm: the LN-rule of ``norm``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any

from torch import nn

from captum_mamba.rules.linear import LRP0, LinearRule

#: Key of a preset that sets every rule kind.
EVERY_KIND = "*"
#: Values a rule kind takes besides True and False.
CHOICES: Mapping[str, tuple[str, ...]] = MappingProxyType({"attention": ("cp_lrp",)})


@dataclass(frozen=True)
class Override:
    """Settings that replace those of :class:`MambaRules` on part of a model.

    Args:
        selector (str or type): a module path pattern (``fnmatch`` style, e.g.
            ``"lm_head"``, ``"backbone.layers.[01].mixer.in_proj"``, ``"*.out_proj"``)
            matching a module or operation path or any path below it, or a module class
            matching its instances (subclasses too) and everything inside them.
        changes (Mapping): setting name -> value, e.g. ``{"linear": Epsilon(1e-6)}``.
    """

    selector: str | type
    changes: Mapping[str, Any]

    def __post_init__(self) -> None:
        if isinstance(self.selector, str):
            if not self.selector:
                raise ValueError("an override selector must be a non-empty path pattern")
        elif not (isinstance(self.selector, type) and issubclass(self.selector, nn.Module)):
            raise TypeError(
                f"an override selector is a path pattern or an nn.Module class, "
                f"got {self.selector!r}"
            )
        unknown = sorted(set(self.changes) - set(MambaRules.setting_names()))
        if unknown:
            raise ValueError(
                f"unknown rule setting(s) {', '.join(unknown)}; "
                f"choose from {', '.join(MambaRules.setting_names())}"
            )
        object.__setattr__(self, "changes", MappingProxyType(dict(self.changes)))

    def matches(self, path: str, owners: tuple[nn.Module, ...]) -> bool:
        """Whether the override applies at ``path``.

        Args:
            path (str): dotted path of a module or of an operation inside one.
            owners (tuple of nn.Module): the modules that contain ``path`` (the module
                itself and its ancestors).

        Returns:
            bool: True if the selector matches ``path``, a path above it, or the type of
            one of ``owners``.
        """
        if isinstance(self.selector, type):
            return any(isinstance(owner, self.selector) for owner in owners)
        parts = path.split(".")
        return any(
            fnmatchcase(".".join(parts[:end]), self.selector) for end in range(1, len(parts) + 1)
        )


@dataclass(frozen=True)
class MambaRules:
    r"""Selection of the propagation rules.

    All rules on (the default) is MambaLRP; all off is Gradient x Input on the
    unmodified model. Each setting can be switched for ablations, for the whole model or,
    with :meth:`override`, for parts of it.

    Args:
        norm (bool, optional): LN-rule, ``1 / rms(x)`` of every RMSNorm/LayerNorm is
            constant. Default: True.
        silu (bool, optional): identity rule, ``sigmoid(x)`` of the SiLU after the
            causal conv and on the gate branch is constant. Default: True.
        ssm (bool, optional): SSM rule, ``exp(dt A)``, ``dt B`` and ``C`` are constant
            (in Griffin's RG-LRU the decay, its normaliser and both gates), relevance
            flows through the scan input only. Default: True.
        gate (bool, optional): half rule on every product of two input-dependent
            branches: the gate ``y * silu(z)`` of the Mamba blocks and the product of
            gated MLPs (SwiGLU). Default: True.
        activation (bool, optional): identity rule on the activation of MLPs (SiLU,
            GELU, ReLU, squared ReLU): ``f(x) / x`` is constant. Default: True.
        attention (bool or str, optional): rule of softmax attention: True for AttnLRP
            (uniform rule on ``q k^T`` and ``weights v``, softmax by its gradient),
            ``"cp_lrp"`` for CP-LRP (the attention weights are constants), False for
            the plain gradient. It also governs xLSTM's mLSTM cell (gates and normaliser
            constant; True: a third of the relevance to each of ``q``, ``k``, ``v``;
            ``"cp_lrp"``: ``q`` and ``k`` constant) and the gated delta rule (Gated
            DeltaNet, Kimi Delta Attention: decays, step sizes and transitions constant;
            True: the uniform rule on its reads and writes, ``"cp_lrp"``: constant keys
            and queries). Default: True.
        router (bool, optional): router rule: the weights of the selected experts of a
            mixture of experts are constants. Default: True.
        linear (LinearRule, optional): rule for linear and conv layers.
            Default: :class:`LRP0`.
        overrides (tuple of Override, optional): changes for parts of the model, later
            ones winning; build them with :meth:`override`. Default: none.

    Raises:
        TypeError: if a setting has the wrong type (e.g. ``linear="lrp0"``).

    Examples::

        >>> MambaRules()                       # MambaLRP (+ AttnLRP for hybrids)
        >>> MambaRules.cp_lrp()                # MambaLRP + CP-LRP on attention
        >>> MambaRules.gradient_x_input()      # all rules off
        >>> MambaRules.norm_only()             # "LRP (LN-rule only)" baseline
        >>> MambaRules(gate=False)             # ablation without the half rule
        >>> MambaRules().override("lm_head", linear=Epsilon(1e-6)).override(
        ...     "backbone.layers.[01].mixer.in_proj", linear=Gamma(0.25))
    """

    norm: bool = True
    silu: bool = True
    ssm: bool = True
    gate: bool = True
    activation: bool = True
    attention: bool | str = True
    router: bool = True
    linear: LinearRule = field(default_factory=LRP0)
    overrides: tuple[Override, ...] = ()

    def __post_init__(self) -> None:
        for name in self.kinds():
            value = getattr(self, name)
            choices = CHOICES.get(name, ())
            if not isinstance(value, bool) and value not in choices:
                allowed = " or ".join(["True", "False", *(repr(c) for c in choices)])
                raise TypeError(f"MambaRules.{name} must be {allowed}, got {value!r}")
        if not isinstance(self.linear, LinearRule):
            hint = "an instance such as LRP0(), Epsilon(1e-6) or Gamma(0.25)"
            raise TypeError(f"MambaRules.linear must be {hint}, got {self.linear!r}")
        if not isinstance(self.overrides, tuple) or not all(
            isinstance(o, Override) for o in self.overrides
        ):
            raise TypeError("MambaRules.overrides must be a tuple of Override; use .override()")

    @classmethod
    def kinds(cls) -> tuple[str, ...]:
        """Names of the rule kinds (every setting except ``linear`` and ``overrides``)."""
        return tuple(f.name for f in fields(cls) if f.name not in ("linear", "overrides"))

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """Names of the settings an :class:`Override` may change."""
        return (*cls.kinds(), "linear")

    @classmethod
    def preset(cls, name: str) -> MambaRules:
        """The rules of a named preset, see :data:`PRESETS`.

        Args:
            name (str): ``"mamba_lrp"`` (every rule on, the default ``MambaRules()``:
                AttnLRP on attention), ``"cp_lrp"``, ``"gradient_x_input"`` or
                ``"norm_only"``.

        Returns:
            MambaRules: the preset.

        Raises:
            ValueError: for an unknown name.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
        settings = dict(PRESETS[name])
        every = settings.pop(EVERY_KIND, None)
        values = {kind: every for kind in cls.kinds()} if every is not None else {}
        return cls(**{**values, **settings})

    @classmethod
    def cp_lrp(cls) -> MambaRules:
        """MambaLRP with CP-LRP on softmax attention: the attention weights are constants,
        so relevance is conserved exactly through attention layers too."""
        return cls.preset("cp_lrp")

    @classmethod
    def gradient_x_input(cls) -> MambaRules:
        """All rules off: Gradient x Input on the unmodified model."""
        return cls.preset("gradient_x_input")

    @classmethod
    def norm_only(cls) -> MambaRules:
        """Only the LN-rule: the "LRP (LN-rule only)" baseline of the MambaLRP paper."""
        return cls.preset("norm_only")

    def override(self, selector: str | type, **changes: Any) -> MambaRules:
        """These rules with different settings on part of the model.

        Args:
            selector (str or type): module path pattern or module class, see
                :class:`Override`.
            **changes: settings to replace there, e.g. ``linear=Epsilon(1e-6)`` or
                ``ssm=False``.

        Returns:
            MambaRules: a new object; ``self`` is unchanged.

        Raises:
            ValueError: for an unknown setting name or no change.
        """
        if not changes:
            raise ValueError("override() needs at least one setting, e.g. linear=Epsilon(1e-6)")
        override = Override(selector, changes)  # validates the names
        replace(self, **changes)  # validates the values
        return replace(self, overrides=(*self.overrides, override))

    def resolve(self, path: str, owners: tuple[nn.Module, ...]) -> MambaRules:
        """The settings that apply at one module or operation path (no overrides left).

        Args:
            path (str): dotted path of the module or operation.
            owners (tuple of nn.Module): the module(s) containing ``path``, innermost
                first.

        Returns:
            MambaRules: the base settings with every matching override applied in order.
        """
        base = replace(self, overrides=())
        changes: dict[str, Any] = {}
        for override in self.overrides:
            if override.matches(path, owners):
                changes.update(override.changes)
        return replace(base, **changes) if changes else base


#: Presets: setting name -> value; ``"*"`` sets every rule kind.
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "mamba_lrp": MappingProxyType({}),
        "cp_lrp": MappingProxyType({"attention": "cp_lrp"}),
        "gradient_x_input": MappingProxyType({EVERY_KIND: False}),
        "norm_only": MappingProxyType({EVERY_KIND: False, "norm": True}),
    }
)

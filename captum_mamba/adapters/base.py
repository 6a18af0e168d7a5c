"""Architecture adapters: which module is computed how, checked against an allow-list.

An :class:`ArchitectureAdapter` lists, for one model family, a
:class:`ModuleHandler` per module type (its forward written once in the operations of
:mod:`captum_mamba.adapters.backend`, the sites of those operations and the children it
calls) and the *containers* of the family, whose own forward only routes tensors
between their children.

:func:`plan_rules` walks a model from its root and accepts a module only if it is

- handled by an adapter (matched by type, subclasses included unless they override
  ``forward``): its declared children are walked;
- a linear or convolutional layer (``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d``), which
  gets the linear rule;
- a leaf known to be safe (``nn.Embedding``, ``nn.Dropout``, ``nn.Identity``) or
  registered with :func:`register_leaf`;
- a container (of an adapter, ``nn.Sequential``/``ModuleList``/``ModuleDict``, or
  registered with :func:`register_container`): all its children are walked.

Anything else raises :class:`UnsupportedModelError` naming the module's path and type
and what to do. So does a module with an instance-level ``forward`` set by someone else
(accelerate and PEFT set one), which applying the rules would bypass.

:func:`rules_applied` installs the rule forwards as instance attributes for the duration
of a ``with`` block and restores every module exactly as it was afterwards, also when
the block raises. Classes are never patched. The modules of one plan are locked in a
global order while the rules are installed, so calls on models that share modules wait
for each other and calls on disjoint models run in parallel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_mamba.adapters.backend import KINDS, Backend, BlockOps
from captum_mamba.adapters.families import family_statuses, unavailable_family_of
from captum_mamba.rules import MambaRules

OpsForward = Callable[..., Any]


class UnsupportedModelError(TypeError):
    """The model contains a module that no rule covers, or no supported block."""


@dataclass(frozen=True)
class ModuleHandler:
    """How one module type is computed under the rules.

    Args:
        module_type (type): the class; subclasses that do not override ``forward`` match
            too.
        forward (Callable): ``forward(ops, module, *args, **kwargs)`` written in the
            operations of :class:`~captum_mamba.adapters.backend.BlockOps`; with every
            rule off it must compute the module's own function.
        sites (Mapping): site name -> op kind (a key of
            :data:`~captum_mamba.adapters.backend.KINDS`) of every operation the
            forward runs; ``""`` is the module itself, allowed only as the sole site (the
            module is then one operation, e.g. a norm).
        calls (tuple of str): names of the children the forward calls as modules; they
            are checked and planned in turn. Children not named are never called.
        role (str, optional): ``"block"`` for a residual layer (the unit of attention
            rollout), else ``"op"``. Default: ``"op"``.
    """

    module_type: type
    forward: OpsForward
    sites: Mapping[str, str] = field(default_factory=dict)
    calls: tuple[str, ...] = ()
    role: str = "op"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.sites.values()) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown site kind(s) {unknown}; choose from {list(KINDS)}")
        if "" in self.sites and len(self.sites) > 1:
            raise ValueError("the site '' (the module itself) must be a handler's only site")
        if self.role not in ("op", "block"):
            raise ValueError(f"role must be 'op' or 'block', got {self.role!r}")


@dataclass(frozen=True)
class ArchitectureAdapter:
    """Handlers and containers of one model family.

    Args:
        name (str): family name used in messages, e.g. ``"transformers Mamba"``.
        models (tuple of str): user-facing model classes of the family.
        handlers (tuple of ModuleHandler): the computed modules.
        containers (tuple of type): modules whose forward only routes tensors between
            their children (models, backbones).
        blocks (tuple of type): the mixers of the family (state-space mixers, softmax
            attention); a model must contain a block of some adapter to be explained.
    """

    name: str
    models: tuple[str, ...]
    handlers: tuple[ModuleHandler, ...] = ()
    containers: tuple[type, ...] = ()
    blocks: tuple[type, ...] = ()

    def describe(self) -> str:
        """One-line description for error messages."""
        return f"{self.name} ({', '.join(self.models)})"


_ADAPTERS: list[ArchitectureAdapter] = []
_CONTAINERS: set[type] = {nn.Sequential, nn.ModuleList, nn.ModuleDict}
#: Leaves on the relevance path that need no rule: their forward is the identity or a
#: lookup of the input (which is where relevance stops).
#: Pooling is a linear map (average) or routes the winner's value (max: its gradient,
#: winner-take-all, passes all relevance to the maximum).
_SAFE_LEAVES: set[type] = {
    nn.Embedding,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.AvgPool1d,
    nn.AdaptiveAvgPool1d,
    nn.MaxPool1d,
    nn.AdaptiveMaxPool1d,
}
#: Linear and convolutional layers and batch norms (in eval mode an affine map per
#: channel): the linear rule of the explanation applies.
LINEAR_LAYERS: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)


def register_adapter(adapter: ArchitectureAdapter) -> ArchitectureAdapter:
    """Register an adapter so that its modules are recognised.

    Args:
        adapter (ArchitectureAdapter): the adapter to add.

    Returns:
        ArchitectureAdapter: ``adapter``, for use as an expression.
    """
    _ADAPTERS.append(adapter)
    return adapter


def registered_adapters() -> tuple[ArchitectureAdapter, ...]:
    """The adapters known at this point (their modules are importable)."""
    return tuple(_ADAPTERS)


def register_container(module_type: type) -> type:
    """Declare that a module class only routes tensors between its children.

    Its forward may call children, index, reshape, concatenate and pool linearly (a
    mean or sum over positions); it must not compute anything non-linear outside its
    children, which is not checked. Usable as a class decorator.

    Args:
        module_type (type): an ``nn.Module`` subclass, e.g. a classifier wrapping a
            Mamba backbone.

    Returns:
        type: ``module_type``.

    Examples::

        >>> @register_container
        ... class Classifier(nn.Module):
        ...     def forward(self, inputs_embeds):
        ...         return self.head(self.backbone(inputs_embeds=inputs_embeds)[0][:, -1])
    """
    _check_module_type(module_type)
    _CONTAINERS.add(module_type)
    return module_type


def register_leaf(module_type: type) -> type:
    """Declare a leaf module class whose own forward is explained as it is (by its
    gradient, i.e. LRP-0). Right for linear maps such as a learned elementwise scale.

    Args:
        module_type (type): an ``nn.Module`` subclass.

    Returns:
        type: ``module_type``.
    """
    _check_module_type(module_type)
    _SAFE_LEAVES.add(module_type)
    return module_type


def _check_module_type(module_type: Any) -> None:
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"expected an nn.Module subclass, got {module_type!r}")


def describe_architectures() -> str:
    """The supported architectures, then the families that are unavailable with the
    installed libraries (with the reason and the release they need), as one line of text
    for messages; :func:`registered_adapters` and
    :func:`~captum_mamba.adapters.family_statuses` give the same as data.

    Returns:
        str: e.g. ``"transformers Mamba (MambaForCausalLM, ...); ...; unavailable: ..."``.
    """
    named = [adapter.describe() for adapter in _ADAPTERS if adapter.blocks]
    missing = [status.describe() for status in family_statuses() if not status.available]
    listed = "; ".join(named) or "none (no adapter loaded)"
    return f"{listed}; unavailable: {'; '.join(missing)}" if missing else listed


def _check_families(model: nn.Module) -> None:
    """Refuse, in one line, a model with a module of an unavailable family."""
    for module in model.modules():
        status = unavailable_family_of(type(module))
        if status is not None:
            needs = f" (needs {status.needs})" if status.needs else ""
            raise UnsupportedModelError(
                f"{type(module).__name__} belongs to {status.name}, which is unavailable "
                f"here: {status.reason}{needs}"
            )


def _handlers() -> dict[type, ModuleHandler]:
    handlers: dict[type, ModuleHandler] = {}
    for adapter in _ADAPTERS:
        handlers.update({h.module_type: h for h in adapter.handlers})
    return handlers


def _containers() -> set[type]:
    return _CONTAINERS.union(*(adapter.containers for adapter in _ADAPTERS))


def _blocks() -> tuple[type, ...]:
    return tuple(block for adapter in _ADAPTERS for block in adapter.blocks)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _match(module: nn.Module, known: Mapping[type, Any] | set[type], path: str) -> Any:
    """The entry of the nearest known base class of ``module``'s type, or None.

    Raises:
        UnsupportedModelError: if the type subclasses a known class but overrides its
            ``forward``.
    """
    cls = type(module)
    for base in cls.__mro__:
        if base not in known:
            continue
        if base is not cls and cls.forward is not base.forward:
            raise UnsupportedModelError(
                f"{path or '<model>'} ({_qualified(cls)}) subclasses {base.__name__} but "
                "overrides forward, so MambaLRP cannot tell what it computes; register an "
                "adapter for it (captum_mamba.adapters.register_adapter)"
            )
        return known[base] if isinstance(known, Mapping) else base
    return None


def is_computed(module: nn.Module) -> bool:
    """Whether an adapter's handler computes ``module`` (rather than it being a container
    or a leaf), e.g. a language model whose forward scales its logits."""
    try:
        return _match(module, _handlers(), "") is not None
    except UnsupportedModelError:
        return False


class RuleForward:
    """An instance-level ``forward`` installed by captum-mamba (never taken for a user's).

    Args:
        function (Callable): called as ``function(*bound, *args, **kwargs)``.
        *bound: leading arguments.
    """

    __slots__ = ("bound", "function")

    def __init__(self, function: Callable[..., Any], *bound: Any) -> None:
        self.function = function
        self.bound = bound

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*self.bound, *args, **kwargs)


def _check_instance_forward(module: nn.Module, path: str) -> None:
    forward = vars(module).get("forward")
    if forward is not None and not isinstance(forward, RuleForward):
        raise UnsupportedModelError(
            f"{path or '<model>'} ({type(module).__name__}) has an instance-level forward "
            "(as accelerate and PEFT set), which applying the rules would bypass; remove it "
            "(accelerate.hooks.remove_hook_from_module) or merge the adapters "
            "(PEFT: merge_and_unload) before explaining"
        )


@dataclass(frozen=True)
class PlanEntry:
    """One module that gets a rule forward.

    Args:
        module (nn.Module): the module.
        path (str): its dotted path from the explained model (``""`` for the root).
        handler (ModuleHandler or None): its handler; None for a linear layer.
        rules (MambaRules): the rules resolved at the module (no overrides left).
        site_rules (Mapping): site -> rules resolved at ``path.site``.
        block (bool): whether it is a residual layer.
    """

    module: nn.Module
    path: str
    handler: ModuleHandler | None
    rules: MambaRules
    site_rules: Mapping[str, MambaRules]

    @property
    def block(self) -> bool:
        """True for a residual layer (handler role ``"block"``)."""
        return self.handler is not None and self.handler.role == "block"


@dataclass(frozen=True)
class Plan:
    """Every module a model computes under the rules, checked against the allow-list.

    Args:
        entries (tuple of PlanEntry): the handled and linear modules, in walk order.
        modules (tuple of nn.Module): every module visited (locked during a call).
    """

    entries: tuple[PlanEntry, ...]
    modules: tuple[nn.Module, ...]


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def plan_rules(model: nn.Module, rules: MambaRules) -> Plan:
    """Walk ``model`` and list the modules that get a rule forward, with their rules.

    Args:
        model (nn.Module): the model to explain.
        rules (MambaRules): the rules to apply.

    Returns:
        Plan: the entries and the visited modules.

    Raises:
        UnsupportedModelError: for a module of a family that is unavailable with the
            installed libraries, a module on the relevance path that no rule covers,
            a subclass that overrides a known forward, an instance-level forward, or a
            model without any supported block (a Mamba mixer or an attention layer of an
            adapter); the message names the module's path and type and what to do.
        ValueError: if an override of ``rules`` matches no module.
    """
    if not isinstance(rules, MambaRules):
        raise TypeError(f"rules must be a MambaRules instance, e.g. MambaRules(), got {rules!r}")
    _check_families(model)
    handlers, containers = _handlers(), _containers()
    entries: list[PlanEntry] = []
    visited: dict[int, nn.Module] = {}
    matched: set[int] = set()

    def resolve(path: str, owners: tuple[nn.Module, ...]) -> MambaRules:
        resolved = rules.resolve(path, owners)
        matched.update(i for i, o in enumerate(rules.overrides) if o.matches(path, owners))
        return resolved

    def visit(module: nn.Module, path: str, owners: tuple[nn.Module, ...]) -> None:
        if id(module) in visited:
            return
        visited[id(module)] = module
        owners = (module, *owners)
        _check_instance_forward(module, path)
        handler = _match(module, handlers, path)
        if handler is not None:
            site_rules = {site: resolve(_join(path, site), owners) for site in handler.sites}
            entries.append(PlanEntry(module, path, handler, resolve(path, owners), site_rules))
            for name in handler.calls:
                child = getattr(module, name, None)
                if isinstance(child, nn.Module):
                    visit(child, _join(path, name), owners)
            return
        if _match(module, set(LINEAR_LAYERS), path) is not None:
            _check_batch_norm(module, path)
            entries.append(PlanEntry(module, path, None, resolve(path, owners), {}))
            return
        if _match(module, _SAFE_LEAVES, path) is not None:
            resolve(path, owners)
            return
        known = _match(module, containers, path) is not None
        # An unknown module's children are checked first, so that the message names the
        # innermost module that no rule covers.
        for name, child in module.named_children():
            visit(child, _join(path, name), owners)
        if not known:
            raise UnsupportedModelError(
                f"{path or '<model>'} ({_qualified(type(module))}) is on the relevance path but "
                "no rule covers it: if its forward only routes tensors between its children "
                "(residual sums, means, concatenation, slicing) declare it with "
                "captum_mamba.adapters.register_container, else register an adapter for it "
                "(captum_mamba.adapters.register_adapter); supported architectures: "
                f"{describe_architectures()}"
            )

    visit(model, "", ())
    unmatched = [o.selector for i, o in enumerate(rules.overrides) if i not in matched]
    if unmatched:
        raise ValueError(
            f"rule override(s) {unmatched} match no module of {type(model).__name__}; "
            "check the path pattern (e.g. 'backbone.layers.0.mixer.in_proj') or class"
        )
    blocks = _blocks()
    if not any(isinstance(entry.module, blocks) for entry in entries):
        raise UnsupportedModelError(
            f"{type(model).__name__} contains no supported block (Mamba mixer or attention "
            "layer of a registered adapter); "
            f"supported architectures: {describe_architectures()}"
        )
    return Plan(tuple(entries), tuple(visited.values()))


def _check_batch_norm(module: nn.Module, path: str) -> None:
    """Refuse a batch norm that normalises with the statistics of the batch."""
    if not isinstance(module, nn.modules.batchnorm._BatchNorm):
        return
    if module.training or module.running_mean is None:
        raise UnsupportedModelError(
            f"{path or '<model>'} ({type(module).__name__}) normalises with the statistics of "
            "the batch (training mode or track_running_stats=False), so each example's "
            "explanation would depend on the others; call model.eval() first"
        )


def _weights(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor | None]:
    # Half-precision models are explained in float32: cast the parameters on the fly.
    bias = None if module.bias is None else module.bias.to(x.dtype)
    weight = module.weight
    if weight is None:  # a batch norm without affine parameters
        weight = torch.ones_like(module.running_var)
    return weight.to(x.dtype), bias


def _batch_norm_op(module: nn.Module) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    """A batch norm in eval mode as ``op(x, weight, bias)``: an affine map per channel."""

    def op(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        mean, var = module.running_mean.to(x.dtype), module.running_var.to(x.dtype)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, module.eps)

    return op


def linear_forward(module: nn.Module, rules: MambaRules, x: Tensor) -> Tensor:
    """``module(x)`` of a linear or convolutional layer or of a batch norm in eval mode
    with the linear rule of ``rules``."""
    if isinstance(module, nn.Linear):
        op = F.linear
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        op = _batch_norm_op(module)
    else:
        op = module._conv_forward
    return rules.linear.apply(op, x, *_weights(module, x))


_MODULE_LOCKS: WeakKeyDictionary[nn.Module, threading.RLock] = WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


@contextmanager
def modules_locked(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Hold a per-module lock on each of ``modules``, taken in one global order.

    Args:
        modules (sequence of nn.Module): the modules to lock.
    """
    with _LOCKS_GUARD:
        locks = [_MODULE_LOCKS.setdefault(m, threading.RLock()) for m in modules]
    ordered = sorted({id(lock): lock for lock in locks}.items())
    with ExitStack() as stack:
        for _, lock in ordered:
            stack.enter_context(lock)
        yield


_MISSING = object()


def bind(entry: PlanEntry, backend: Backend) -> RuleForward:
    """The rule forward of one plan entry on ``backend``."""
    if entry.handler is None:
        return RuleForward(linear_forward, entry.module, entry.rules)
    ops: BlockOps = backend.ops(entry.module, entry.path, entry.site_rules)
    return RuleForward(backend.call, entry, ops)


@contextmanager
def rules_applied(
    model: nn.Module, rules: MambaRules, backend: Backend | None = None
) -> Iterator[nn.Module]:
    """Apply the rules to one model instance inside a ``with`` block.

    Args:
        model (nn.Module): model containing supported Mamba blocks.
        rules (MambaRules): rules to apply; ``MambaRules.gradient_x_input()`` gives the
            model's plain forward through this package's scans (fast and fully
            differentiable on CPU).
        backend (Backend, optional): how the operations are computed. Default: the rule
            functions.

    Yields:
        nn.Module: ``model``, whose forward now computes the same values with the
        rules' backward.

    Raises:
        UnsupportedModelError: see :func:`plan_rules`.

    Examples::

        >>> with rules_applied(model, MambaRules()):
        ...     logits = model(inputs_embeds=embeds).logits
    """
    plan = plan_rules(model, rules)
    backend = backend or Backend()
    saved: list[tuple[nn.Module, Any]] = []
    with modules_locked(plan.modules):
        try:
            for entry in plan.entries:
                saved.append((entry.module, vars(entry.module).get("forward", _MISSING)))
                entry.module.forward = bind(entry, backend)
            yield model
        finally:
            for module, previous in reversed(saved):
                if previous is _MISSING:
                    del module.__dict__["forward"]
                else:
                    module.forward = previous


_PLAIN = MambaRules.gradient_x_input()


def plain_forward(handler: ModuleHandler, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """A module's own forward, computed by its handler with every rule off.

    Modules defined by this package (e.g. the Vision Mamba) use it as their forward, so
    that their maths is written once, in their handler.

    Args:
        handler (ModuleHandler): the module's handler.
        module (nn.Module): the module.
        *args (Any): positional arguments of the forward.
        **kwargs (Any): keyword arguments of the forward.

    Returns:
        Any: the forward's output.
    """
    ops = BlockOps(module, "", dict.fromkeys(handler.sites, _PLAIN))
    return handler.forward(ops, module, *args, **kwargs)

"""Captum LRP: a prepared copy of a Mamba model for ``captum.attr.LRP`` and ``LayerLRP``.

Captum's LRP hooks leaf modules only, ignores functional operations and needs a
rule on every leaf. :func:`prepare_captum_lrp` builds a copy of the model in which

- parameters and buffers are shared with the original (nothing is copied);
- a module registered at several places (a block shared by several depths) gets a
  copy per place, so that each use has its own leaves;
- every handled module (see :mod:`captum_mamba.adapters`) computes with its handler
  forward, the same code that :class:`~captum_mamba.MambaLRP` runs, through
  :class:`~captum_mamba.lrp.modules.CaptumOps`: each operation site is a leaf module
  (a child of the handled module named after the site, e.g. ``mixer.ssm``,
  ``block.residual``, or the module itself for norms);
- every leaf carries a rule: the one set on the original module (the same
  object), else the default for the given :class:`~captum_mamba.MambaRules` (the
  MambaLRP rule of the site's kind where the rules switch it on, the Captum equivalent of
  the linear rule on linear layers, the registry's rule for other types). Rules survive
  Captum calls (:class:`~captum_mamba.lrp.modules.KeptRule`).

The copy is checked against the same allow-list as MambaLRP. The original model is
never changed, except that Captum's ``GammaRule`` edits the shared weights during a call
and restores them at its end, as on any model.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba.adapters import Backend, plan_rules
from captum_mamba.adapters.backend import KINDS
from captum_mamba.adapters.base import PlanEntry, RuleForward
from captum_mamba.attr.forward import backbone_and_head, check_model, default_forward
from captum_mamba.attr.targets import AttributionInputError
from captum_mamba.lrp.captum_rules import LRP0Rule
from captum_mamba.lrp.modules import CaptumOps, OpLeaf, default_leaf_rule, keep_rule
from captum_mamba.lrp.registry import captum_linear_rule, rule_for
from captum_mamba.rules import MambaRules

PreparedForward = Callable[..., Tensor]


class CaptumLRPModel(nn.Module):
    r"""A Mamba model prepared for Captum's ``LRP`` and ``LayerLRP``.

    Args:
        model (nn.Module): the prepared copy (see :func:`prepare_captum_lrp`),
            available as ``self.model`` to set rules or pick layers.
        forward_func (Callable): ``forward_func(model, *inputs)`` returning the output to
            explain.

    Examples::

        >>> prepared = prepare_captum_lrp(model)
        >>> relevance = LRP(prepared).attribute(embeds, target=(-1, token_id))
    """

    def __init__(self, model: nn.Module, forward_func: PreparedForward) -> None:
        super().__init__()
        self.model = model
        self._forward_func = forward_func

    def forward(self, *inputs: Any) -> Tensor:
        """The model output for ``inputs`` (for language models: input embeddings and an
        optional ``(batch, seq)`` attention mask), in the dtype of the model.

        Raises:
            AttributionInputError: if a floating-point input contains NaN or inf (Captum's
                LRP would return NaN relevance without a word).
        """
        for index, value in enumerate(inputs):
            floating = isinstance(value, Tensor) and value.is_floating_point()
            if floating and not torch.isfinite(value.detach()).all():
                raise AttributionInputError(
                    f"inputs[{index}] contains NaN or inf; explain finite inputs only"
                )
        return self._forward_func(self.model, *inputs)


class _CaptumBackend(Backend):
    ops_class = CaptumOps


def _user_rule(module: nn.Module) -> Any:
    """The rule set by the user as a plain attribute (or kept), if any."""
    return vars(module).pop("rule", None) or getattr(module, "rule", None)


def _fresh_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Each call of a leaf gets its own view of its tensor inputs.

    Captum's LRP hooks a leaf's input tensors to turn the gradient arriving there into
    relevance (multiplying by the input). A tensor passed to one leaf and, through a
    view, to another (``z`` and ``z.flip(1)`` in a bidirectional mixer) would be hooked
    twice on one path and multiply the relevance twice; per-call views keep every hook on
    a tensor of its own, and their relevances add up in the shared tensor.
    """
    return tuple(a.view_as(a) if isinstance(a, Tensor) and a.requires_grad else a for a in args)


def _set_rule(module: nn.Module, rule: Any) -> None:
    keep_rule(module)
    module.rule = rule
    if not getattr(module, "_captum_mamba_fresh_inputs", False):
        module.register_forward_pre_hook(_fresh_inputs)
        module._captum_mamba_fresh_inputs = True


def _prepare_entry(copy: nn.Module, entry: PlanEntry, backend: Backend) -> None:
    module = copy.get_submodule(entry.path)
    user = _user_rule(module)
    if entry.handler is None:
        _set_rule(module, user or captum_linear_rule(entry.rules.linear))
        return
    for site, kind in entry.handler.sites.items():
        rules = entry.site_rules[site]
        setting = KINDS[kind].setting
        value = None if setting is None else getattr(rules, setting)
        if site == "":
            _set_rule(module, user or rule_for(module, rules) or default_leaf_rule(kind, value))
            continue
        if site in module._modules or hasattr(module, site):
            raise AttributeError(
                f"{type(module).__name__} already has an attribute {site!r}; rename the site "
                "in its ModuleHandler"
            )
        leaf = OpLeaf(kind)
        setattr(module, site, leaf)
        _set_rule(leaf, default_leaf_rule(kind, value))
    ops = backend.ops(module, entry.path, entry.site_rules)
    module.forward = RuleForward(entry.handler.forward, ops, module)


def _attach_leaf_rules(model: nn.Module, rules: MambaRules) -> None:
    """Give every leaf still without a rule one: the user's, the registry's, or LRP-0
    (the allow-list admitted the leaf, or it is never called)."""
    for module in model.modules():
        if next(module.children(), None) is not None or "_captum_mamba_rule" in vars(module):
            continue
        _set_rule(module, _user_rule(module) or rule_for(module, rules) or LRP0Rule())


def _one_module_per_use(model: nn.Module, shared: dict[int, object]) -> None:
    """Give every further place of a module registered at several places (a shared
    block reused at several depths, as Zamba2's used to be) its own copy, sharing
    parameters and buffers (``shared``) but not rules: Captum's LRP hooks each leaf once
    per forward and refuses a leaf that runs twice."""
    seen = {id(model)}

    def walk(module: nn.Module) -> None:
        for name, child in list(module._modules.items()):
            if child is None:
                continue
            if id(child) in seen:
                child = deepcopy(child, dict(shared))
                module._modules[name] = child
            seen.add(id(child))
            walk(child)

    walk(model)


def _default_prepared_forward(model: nn.Module) -> PreparedForward:
    backbone, _ = backbone_and_head(model)
    if backbone is not None or hasattr(model, "get_input_embeddings"):
        return lambda copy, inputs_embeds, attention_mask=None: default_forward(
            copy, "inputs_embeds"
        )(inputs_embeds, attention_mask)
    return lambda copy, *inputs: copy(*inputs)


def prepare_captum_lrp(
    model: nn.Module,
    rules: MambaRules | None = None,
    forward_func: PreparedForward | None = None,
) -> CaptumLRPModel:
    r"""Copy a Mamba model so that ``captum.attr.LRP`` computes MambaLRP on it.

    ``LRP(prepare_captum_lrp(model, rules)).attribute(inputs, target)`` equals
    ``MambaLRP(model, rules=rules).attribute(inputs, target)`` (up to rounding) for every
    supported architecture. Change single rules with ``module.rule = ...`` on
    ``prepared.model``; Captum's ``EpsilonRule`` and ``GammaRule`` work on its linear and
    conv layers.

    Args:
        model (nn.Module): a model containing supported Mamba blocks. Rules already set
            as ``module.rule`` on its modules are kept.
        rules (MambaRules, optional): default rules of the leaves, overrides included.
            Default: MambaLRP, LRP-0 on linear layers.
        forward_func (Callable, optional): ``forward_func(prepared_copy, *inputs)``
            returning the output to explain, e.g.
            ``lambda m, tokens: m.forward_tokens(tokens)`` for a Vision Mamba. Default:
            for language models ``forward(inputs_embeds, attention_mask=None)`` returning
            the logits, else the copy's own forward.

    Returns:
        CaptumLRPModel: a module returning the model output; the prepared copy is its
        ``model`` attribute.

    Raises:
        UnsupportedModelError: if ``model`` contains a module that no rule covers (see
            :func:`captum_mamba.adapters.plan_rules`).

    Examples::

        >>> from captum.attr import LRP, LayerLRP
        >>> from captum_mamba.lrp import GammaRule
        >>> prepared = prepare_captum_lrp(model)
        >>> prepared.model.lm_head.rule = GammaRule(0.25)
        >>> relevance = LRP(prepared).attribute(embeds, target=(-1, token_id))
        >>> block = prepared.model.backbone.layers[0]
        >>> block_relevance = LayerLRP(prepared, block.residual).attribute(
        ...     embeds, target=(-1, token_id))
    """
    rules = check_model(model, rules)
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    shared: dict[int, object] = dict(tensors)
    shared.update({id(m.rule): m.rule for m in model.modules() if "rule" in vars(m)})
    copy = deepcopy(model, shared)
    _one_module_per_use(copy, tensors)
    plan = plan_rules(copy, rules)
    backend = _CaptumBackend()
    for entry in plan.entries:
        _prepare_entry(copy, entry, backend)
    _attach_leaf_rules(copy, rules)
    return CaptumLRPModel(copy, forward_func or _default_prepared_forward(model))

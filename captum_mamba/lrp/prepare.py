"""Captum LRP: a prepared copy of a Mamba model for ``captum.attr.LRP`` and ``LayerLRP``.

Captum's LRP hooks leaf modules only, ignores functional operations and needs a
rule on every leaf. :func:`prepare_captum_lrp` builds a copy of the model in which

- parameters and buffers are shared with the original (nothing is copied);
- every Mamba block, mixer and RMSNorm is replaced by the modules of
  :mod:`captum_mamba.lrp.modules`, whose residual addition, SiLUs, selective scan
  and gate product are leaf modules; the forward computes the same values as the
  forward that :class:`~captum_mamba.MambaLRP` explains (in the input dtype);
- every leaf carries a rule: the one set on the original module (the same
  object), else the default of :mod:`captum_mamba.lrp.registry` for the given
  :class:`~captum_mamba.MambaRules`. Rules survive Captum calls
  (:class:`~captum_mamba.lrp.modules.KeptRule`).

The original model is never changed, except that Captum's ``GammaRule`` edits the
shared weights during a call and restores them at its end, as on any model.
"""

from __future__ import annotations

from copy import deepcopy

from torch import Tensor, nn
from transformers.models.mamba.modeling_mamba import MambaBlock, MambaMixer, MambaRMSNorm

from captum_mamba.adapters import UnsupportedModelError
from captum_mamba.attr._forward import default_forward
from captum_mamba.lrp.modules import PreparedBlock, PreparedMixer, RMSNorm, keep_rule
from captum_mamba.lrp.registry import rule_for
from captum_mamba.rules import MambaRules


class CaptumLRPModel(nn.Module):
    r"""A Mamba model prepared for Captum's ``LRP`` and ``LayerLRP``.

    Args:
        model (nn.Module): the prepared copy (see :func:`prepare_captum_lrp`),
            available as ``self.model`` to set rules or pick layers.

    Examples::

        >>> prepared = prepare_captum_lrp(model)
        >>> relevance = LRP(prepared).attribute(embeds, target=(-1, token_id))
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._forward = default_forward(model, "inputs_embeds")

    def forward(self, inputs_embeds: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Model output (e.g. logits ``(batch, seq, vocab)``) for input embeddings.

        Args:
            inputs_embeds (Tensor): ``(batch, seq, hidden)`` input embeddings.
            attention_mask (Tensor, optional): ``(batch, seq)`` mask, 0 on padding.
                Default: None.

        Returns:
            Tensor: the model output, in the dtype of the model.
        """
        return self._forward(inputs_embeds, attention_mask)


def _convert(module: nn.Module) -> nn.Module:
    for name, child in list(module.named_children()):
        setattr(module, name, _convert(child))
    if type(module) is MambaRMSNorm:
        norm = RMSNorm(module)
        if getattr(module, "rule", None) is not None:
            norm.rule = module.rule
        return norm
    if type(module) is MambaMixer:
        return PreparedMixer(module)
    if type(module) is MambaBlock:
        return PreparedBlock(module.norm, module.mixer)
    return module


def _attach_rules(model: nn.Module, rules: MambaRules) -> None:
    """Give every leaf a kept rule: the user's (plain attribute of a copied module, or
    carried to a replaced norm) if set, else the registry's default."""
    for module in model.modules():
        if next(module.children(), None) is not None:
            continue
        user_rule = vars(module).pop("rule", None) or getattr(module, "rule", None)
        rule = user_rule or rule_for(module, rules)
        if rule is not None:
            keep_rule(module)
            module.rule = rule


def prepare_captum_lrp(model: nn.Module, rules: MambaRules | None = None) -> CaptumLRPModel:
    r"""Copy a Mamba model so that ``captum.attr.LRP`` computes MambaLRP on it.

    ``LRP(prepare_captum_lrp(model, rules)).attribute(embeds, target)`` equals
    ``MambaLRP(model, rules=rules).attribute(embeds, target)`` (up to rounding).
    Change single rules with ``module.rule = ...`` on ``prepared.model``; Captum's
    ``EpsilonRule`` and ``GammaRule`` work on its linear and conv layers.

    Args:
        model (nn.Module): a model containing transformers Mamba blocks, e.g.
            ``MambaForCausalLM`` or a classifier on ``MambaModel``. Rules already
            set as ``module.rule`` on its leaf modules are kept.
        rules (MambaRules, optional): default rules of the leaves. Default: all
            MambaLRP rules, LRP-0 on linear layers.

    Returns:
        CaptumLRPModel: a module ``forward(inputs_embeds, attention_mask=None)``
        returning the model output; the prepared copy is its ``model`` attribute.

    Raises:
        UnsupportedModelError: if ``model`` contains no transformers Mamba mixer.

    Examples::

        >>> from captum.attr import LRP, LayerLRP
        >>> from captum.attr._utils.lrp_rules import GammaRule
        >>> prepared = prepare_captum_lrp(model)
        >>> prepared.model.lm_head.rule = GammaRule(0.25)
        >>> relevance = LRP(prepared).attribute(embeds, target=(-1, token_id))
        >>> block = prepared.model.backbone.layers[0]
        >>> block_relevance = LayerLRP(prepared, block.residual).attribute(
        ...     embeds, target=(-1, token_id))
    """
    if not any(type(m) is MambaMixer for m in model.modules()):
        raise UnsupportedModelError(
            f"{type(model).__name__} contains no transformers MambaMixer; "
            "prepare_captum_lrp supports transformers Mamba-1 models"
        )
    shared: dict[int, object] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    shared.update({id(m.rule): m.rule for m in model.modules() if "rule" in vars(m)})
    copy = _convert(deepcopy(model, shared))
    _attach_rules(copy, rules if rules is not None else MambaRules())
    return CaptumLRPModel(copy)

"""Attribution classes: MambaLRP relevance at a layer (e.g. the token embeddings)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from captum.attr import LayerGradientXActivation
from torch import Tensor, nn

from captum_mamba._captum import format_additional_forward_args
from captum_mamba.adapters import plan_rules, recomputing, rules_applied
from captum_mamba.attr.forward import (
    argument_names,
    as_leaf,
    check_devices,
    check_model,
    check_target_list,
    compute_dtype,
    count_tokens,
    default_forward,
    explained_module,
    explained_outputs_many,
    explanation_backend,
    explanation_mode,
    gradients_per_output,
    plain_arguments,
    uses_lean,
)
from captum_mamba.attr.mamba_lrp import relevance_delta
from captum_mamba.attr.targets import (
    AttributionInputError,
    TargetType,
    as_input_tuple,
    batch_size,
    check_relevance,
    check_token_ids,
)
from captum_mamba.rules import MambaRules


def _leaf(value: Any, layer: nn.Module, dtype: torch.dtype) -> Tensor:
    if not isinstance(value, Tensor) or not value.is_floating_point():
        raise AttributionInputError(
            f"layer {type(layer).__name__} passes {type(value).__name__} values; "
            "LayerMambaLRP needs a layer whose input/output is one floating tensor"
        )
    if not torch.isfinite(value).all():
        raise AttributionInputError(
            f"layer {type(layer).__name__} produced NaN or inf (check its weights)"
        )
    return as_leaf(value, dtype)


class LayerMambaLRP(LayerGradientXActivation):
    r"""MambaLRP relevance of the input or output of one layer of a Mamba model.

    With ``layer = model.get_input_embeddings()`` this explains token ids: the
    relevance of each embedding element, summing (with bias-free layers) to the
    explained output. Any block of the model can be chosen instead to read the
    relevance that flows through it.

    MambaLRP is Gradient x Activation on a backward pass modified by the rules, so this
    class is a Captum ``LayerGradientXActivation``: Captum's
    ``LLMGradientAttribution`` accepts it as it accepts that class.

    Args:
        model (nn.Module): a model containing supported Mamba blocks.
        layer (nn.Module): the layer whose output (or input) is attributed.
        forward_func (Callable, optional): function of the inputs that runs ``model``
            and returns a tensor ``(batch, ...)``. Default (or ``model`` itself): for
            Hugging Face models, ``forward(input_ids, attention_mask=None)`` returning
            the logits.
        rules (MambaRules, optional): which rules to apply. Default: all.
        lean (bool, optional): memory-lean path (see :class:`MambaLRP`); None
            chooses it for inputs of at least
            :data:`~captum_mamba.attr.LEAN_FROM_TOKENS` tokens. Default: None.

    Examples::

        >>> lrp = LayerMambaLRP(model, model.get_input_embeddings())
        >>> relevance = lrp.attribute(input_ids, target=(-1, next_token_id))
        >>> token_relevance = relevance.sum(-1)      # (batch, seq)
    """

    def __init__(
        self,
        model: nn.Module,
        layer: nn.Module,
        forward_func: Callable[..., Tensor] | None = None,
        rules: MambaRules | None = None,
        lean: bool | None = None,
    ) -> None:
        self.rules = check_model(model, rules)
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be a module of the model, got {type(layer).__name__}")
        model = explained_module(model, forward_func)
        plan_rules(model, self.rules)
        # The model is the forward function, as in Captum: its LLM attributions read the
        # model from it and replace it with their own; the model runs as ``_logits``.
        super().__init__(forward_func or model, layer)
        self.model = model
        uses_lean(lean, 0)  # checks the setting
        self.lean = lean
        #: How the last call's backward pass ran, as :attr:`MambaLRP.last_backward`.
        self.last_backward = ""
        self._logits = default_forward(model, "input_ids")

    @property
    def multiplies_by_inputs(self) -> bool:
        """True: relevances are gradients times layer activations."""
        return True

    def has_convergence_delta(self) -> bool:
        """True: the delta is the explained output minus the sum of relevances."""
        return True

    def _check_ids(self, inputs: tuple[Tensor, ...]) -> None:
        embedding = getattr(self.model, "get_input_embeddings", lambda: None)()
        if self.layer is embedding and len(inputs) == 1:
            check_token_ids(inputs[0], embedding.num_embeddings)

    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        attribute_to_layer_input: bool = False,
        targets: Sequence[TargetType] | None = None,
        targets_per_pass: int | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Relevance of every element of the layer's output (or input).

        Args:
            inputs (Tensor or tuple of Tensor): inputs of the forward function, e.g.
                token ids ``(batch, seq)``.
            target (int, tuple, Tensor, list, optional): output to explain, as in
                :meth:`MambaLRP.attribute`. Default: None.
            additional_forward_args (Any, optional): further arguments of the forward
                function (e.g. the attention mask). Default: None.
            return_convergence_delta (bool, optional): also return the explained
                output minus the sum of relevances, per example. Default: False.
            attribute_to_layer_input (bool, optional): attribute to the layer's input
                instead of its output. Default: False.
            targets (list, optional): several targets at once instead of ``target``,
                from one forward pass and one batched backward pass, as in
                :meth:`MambaLRP.attribute`. Default: None.
            targets_per_pass (int, optional): targets per backward pass, as in
                :meth:`MambaLRP.attribute`. Default: None.

        Returns:
            *Tensor* **attributions** with the shape of the layer's output (or
            input), with a leading dimension ``K`` for ``K`` ``targets``; and, if
            ``return_convergence_delta``, a ``(batch,)`` (``(K, batch)``) **delta**.

        Examples::

            >>> relevance, delta = lrp.attribute(ids, target=(-1, token),
            ...                                  return_convergence_delta=True)
        """
        many = targets is not None
        target_list = check_target_list(targets, target) if many else [target]
        formatted = as_input_tuple(inputs, "token ids")
        batch = batch_size(formatted)
        extra = format_additional_forward_args(additional_forward_args) or ()
        check_devices(self.model, argument_names(formatted, extra))
        self._check_ids(formatted)
        dtype = compute_dtype(self.model)
        captured: list[Tensor] = []

        # When a residual layer is recomputed for the backward pass (lean path), the
        # layer runs again: it gets a fresh leaf (so that the recomputation saves what
        # the forward pass saved) that is not recorded.
        def capture_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            leaf = _leaf(args[0], module, dtype)
            if not recomputing():
                captured.append(leaf)
            return (leaf, *args[1:])

        def capture_output(module: nn.Module, args: Any, output: Any) -> Tensor:
            leaf = _leaf(output, module, dtype)
            if not recomputing():
                captured.append(leaf)
            return leaf

        backend = explanation_backend(self.lean, count_tokens(formatted[0]))
        with explanation_mode() as unbatched, rules_applied(self.model, self.rules, backend):
            if attribute_to_layer_input:
                handle = self.layer.register_forward_pre_hook(capture_input)
            else:
                handle = self.layer.register_forward_hook(capture_output)
            try:
                forward = self._logits if self.forward_func is self.model else self.forward_func
                arguments = plain_arguments((*formatted, *extra))
                explained = explained_outputs_many(
                    forward,
                    arguments[: len(formatted)],
                    arguments[len(formatted) :],
                    target_list,
                    batch,
                )
                if len(captured) != 1:
                    raise AttributionInputError(
                        f"layer {type(self.layer).__name__} ran {len(captured)} times in "
                        "one forward pass; LayerMambaLRP needs a layer that runs exactly once"
                    )
                gradients, self.last_backward = gradients_per_output(
                    explained, captured, unbatched, targets_per_pass
                )
            finally:
                handle.remove()
        activation = captured[0].detach()
        rows = [activation * g for (g,) in gradients]
        check_relevance(tuple(rows))
        deltas = [relevance_delta(row, value) for row, value in zip(rows, explained, strict=True)]
        if not many:
            return (rows[0], deltas[0]) if return_convergence_delta else rows[0]
        attributions = torch.stack(rows)
        return (attributions, torch.stack(deltas)) if return_convergence_delta else attributions

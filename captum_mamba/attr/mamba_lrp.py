"""Attribution classes: MambaLRP on input embeddings, as a Captum attribution."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from captum.attr import GradientAttribution
from torch import Tensor, nn

from captum_mamba._captum import (
    format_additional_forward_args,
    format_output,
    format_tensor_into_tuples,
    is_tuple,
)
from captum_mamba.adapters import plan_rules, rules_applied
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
from captum_mamba.attr.targets import (
    TargetType,
    as_input_tuple,
    check_embeddings,
    check_relevance,
)
from captum_mamba.rules import MambaRules

TensorOrTuple = Tensor | tuple[Tensor, ...]


def relevance_delta(attributions: TensorOrTuple, output: Tensor) -> Tensor:
    """Explained output minus the sum of all relevances, per example.

    Args:
        attributions (Tensor or tuple of Tensor): relevances, batch first.
        output (Tensor): ``(batch,)`` explained outputs.

    Returns:
        Tensor: ``(batch,)`` convergence deltas (zero for perfect conservation).
    """
    total = sum(a.reshape(a.shape[0], -1).sum(1) for a in format_tensor_into_tuples(attributions))
    return output.detach().reshape(-1) - total


class MambaLRP(GradientAttribution):
    r"""MambaLRP (Jafari et al., NeurIPS 2024) for Mamba models, on input embeddings.

    Relevance is Gradient x Input of a forward pass in which the non-linear,
    input-dependent parts of every Mamba block are treated as constants in the
    backward pass (LN-rule, identity rule for SiLU, SSM rule, half rule for the
    gate). The rules are applied to ``model`` only for the duration of a call; the
    forward output is unchanged and, with bias-free layers, the relevances of each
    example sum to the explained output.

    Half-precision models are explained in float32 (inputs and weights are cast on
    the fly; the model is not modified). Every call leaves the model, its hooks and
    flags exactly as they were, also when it raises or is interrupted. Calls on
    different models run in parallel threads; calls on one model are serialised.

    Args:
        model (nn.Module): a model containing supported Mamba blocks (see
            :func:`captum_mamba.adapters.describe_architectures`), e.g. ``MambaForCausalLM``
            or a classifier built on ``MambaModel``.
        forward_func (Callable, optional): function of the inputs (and
            ``additional_forward_args``) that runs ``model`` and returns a tensor
            ``(batch, ...)``. Default: for Hugging Face models,
            ``forward(inputs_embeds, attention_mask=None)`` returning the logits.
        rules (MambaRules, optional): which rules to apply. Default: all
            (MambaLRP). ``MambaRules.gradient_x_input()`` and
            ``MambaRules.norm_only()`` give the paper's baselines.
        lean (bool, optional): memory-lean path: keep only the input of each residual
            layer and recompute the layer in the backward pass (one more forward pass
            of the blocks, a fraction of the memory, the same relevance). None
            chooses it for inputs of at least
            :data:`~captum_mamba.attr.LEAN_FROM_TOKENS` tokens (batch x sequence).
            Default: None.

    Examples::

        >>> model = MambaForCausalLM.from_pretrained("state-spaces/mamba-130m-hf")
        >>> ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
        >>> embeds = model.get_input_embeddings()(ids)
        >>> lrp = MambaLRP(model)
        >>> relevance, delta = lrp.attribute(
        ...     embeds, target=(-1, tokenizer.encode(" Paris")[0]),
        ...     return_convergence_delta=True)
        >>> token_relevance = relevance.sum(-1)      # (batch, seq)
    """

    def __init__(
        self,
        model: nn.Module,
        forward_func: Callable[..., Tensor] | None = None,
        rules: MambaRules | None = None,
        lean: bool | None = None,
    ) -> None:
        self.rules = check_model(model, rules)
        model = explained_module(model, forward_func)
        plan_rules(model, self.rules)
        super().__init__(forward_func or default_forward(model, "inputs_embeds"))
        self.model = model
        uses_lean(lean, 0)  # checks the setting
        self.lean = lean
        #: How the last call's backward pass ran: ``"batched: K targets in P passes"``
        #: (every target's cotangent through one vmapped backward pass) or
        #: ``"per target: <reason>"`` (one target, or a fused kernel in the graph).
        self.last_backward = ""

    @property
    def multiplies_by_inputs(self) -> bool:
        """True: relevances are gradients (of the modified backward) times inputs."""
        return True

    def has_convergence_delta(self) -> bool:
        """True: the delta is the explained output minus the sum of relevances."""
        return True

    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType = None,
        additional_forward_args: Any = None,
        return_convergence_delta: bool = False,
        targets: Sequence[TargetType] | None = None,
        targets_per_pass: int | None = None,
    ) -> TensorOrTuple | tuple[TensorOrTuple, Tensor]:
        r"""Relevance of every input element for the target output (or for each of
        several targets, from one forward pass).

        Args:
            inputs (Tensor or tuple of Tensor): input embeddings
                ``(batch, seq, hidden)`` (or several inputs of the forward function),
                floating point.
            target (int, tuple, Tensor, list, optional): output to explain, as in
                Captum: an int for ``(batch, classes)`` outputs, a tuple such as
                ``(position, token)`` for ``(batch, seq, vocab)`` logits, a tensor or
                list with one target per example. None if the output is already
                one value per example. Default: None.
            additional_forward_args (Any, optional): further arguments of the forward
                function (e.g. the attention mask), passed after the inputs.
                Default: None.
            return_convergence_delta (bool, optional): also return the explained
                output minus the sum of relevances, per example. Default: False.
            targets (list, optional): explain several outputs at once instead of
                ``target`` (which must then be None): a list of ``K`` targets, each
                anything ``target`` takes. The model runs forward once, and one
                backward pass through it takes the targets together (a batch of
                cotangents; see :attr:`last_backward`). The result has a leading
                dimension of size ``K``, and row ``k`` equals the result of
                ``attribute(inputs, target=targets[k])``. Default: None.
            targets_per_pass (int, optional): with ``targets``, how many targets one
                backward pass takes; its memory grows with them (about one backward
                pass's activation gradients per target). None keeps the input
                gradients of a pass within
                :data:`~captum_mamba.attr.forward.TARGETS_ELEMENTS` elements.
                Default: None.

        Returns:
            *Tensor* or *tuple[Tensor, ...]* of **attributions**, with the shape of
            ``inputs`` (``(K, *inputs.shape)`` with ``targets``), in the compute dtype
            (the model's, at least float32); and, if ``return_convergence_delta``, a
            ``(batch,)`` (``(K, batch)``) tensor **delta**.

        Examples::

            >>> relevance = lrp.attribute(embeds, target=(-1, token_id))
            >>> # every position's next token at once: (seq, batch, seq, hidden)
            >>> every = lrp.attribute(embeds, targets=[(p, int(ids[0, p + 1]))
            ...                                        for p in range(ids.shape[1] - 1)])
        """
        many = targets is not None
        target_list = check_target_list(targets, target) if many else [target]
        tuple_input = is_tuple(inputs)
        formatted = as_input_tuple(inputs)
        extra = format_additional_forward_args(additional_forward_args) or ()
        check_devices(self.model, argument_names(formatted, extra))
        dtype = compute_dtype(self.model)
        check_embeddings(formatted, dtype)
        backend = explanation_backend(self.lean, count_tokens(formatted[0]))
        with explanation_mode() as unbatched, rules_applied(self.model, self.rules, backend):
            leaves = tuple(as_leaf(x, dtype) for x in formatted)
            explained = explained_outputs_many(
                self.forward_func,
                leaves,
                plain_arguments(extra),
                target_list,
                formatted[0].shape[0],
            )
            gradients, self.last_backward = gradients_per_output(
                explained, leaves, unbatched, targets_per_pass
            )
        rows = []
        for grads in gradients:
            attributions = tuple(x.detach() * g for x, g in zip(leaves, grads, strict=True))
            check_relevance(attributions)
            rows.append(attributions)
        if many:
            stacked = tuple(torch.stack(parts) for parts in zip(*rows, strict=True))
            result = format_output(tuple_input, stacked)
            if return_convergence_delta:
                pairs = zip(rows, explained, strict=True)
                deltas = [relevance_delta(row, value) for row, value in pairs]
                return result, torch.stack(deltas)
            return result
        result = format_output(tuple_input, rows[0])
        if return_convergence_delta:
            return result, relevance_delta(result, explained[0])
        return result

    def compute_convergence_delta(self, attributions: TensorOrTuple, output: Tensor) -> Tensor:
        """Explained output minus the sum of relevances, per example.

        Args:
            attributions (Tensor or tuple of Tensor): result of :meth:`attribute`.
            output (Tensor): ``(batch,)`` explained outputs.

        Returns:
            Tensor: ``(batch,)`` deltas.
        """
        return relevance_delta(attributions, output)

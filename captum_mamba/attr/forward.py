"""Attribution classes: running a model for an explanation.

Default forward functions for Hugging Face and mamba-ssm language models, the dtype
an explanation computes in, device and argument checks, the autograd mode of an
attribution call, and the model's exact function with every rule off
(:func:`fast_forward`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from captum_mamba.adapters import (
    Backend,
    RecomputeBackend,
    UnsupportedModelError,
    plan_rules,
    rules_applied,
)
from captum_mamba.adapters.base import is_computed
from captum_mamba.attr.targets import (
    AttributionInputError,
    TargetType,
    check_output,
    gather_targets,
    target_indices,
    warn_masked_targets,
)
from captum_mamba.ops import unbatched_backwards
from captum_mamba.rules import MambaRules


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype an explanation of ``model`` computes in: its widest parameter dtype,
    and at least float32 (half-precision models are explained in float32).

    Args:
        model (nn.Module): the model to explain.

    Returns:
        torch.dtype: float32 or float64.

    Raises:
        AttributionInputError: if ``model`` has no floating-point parameter.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if not dtypes:
        raise AttributionInputError(
            f"{type(model).__name__} has no floating-point parameters (quantized?); "
            "MambaLRP needs float16, bfloat16, float32 or float64 weights"
        )
    result = torch.float32
    for dtype in dtypes:
        result = torch.promote_types(result, dtype)
    return result


def check_devices(model: nn.Module, named: Sequence[tuple[str, Any]]) -> None:
    """Check that every tensor in ``named`` is on a device that holds ``model``, and
    that neither the model nor a tensor is on the meta device (no values).

    Args:
        model (nn.Module): the model to explain.
        named (sequence of (str, Any)): argument names and values; non-tensors are
            ignored.

    Raises:
        AttributionInputError: naming the first tensor on another device or on the
            meta device.
    """
    devices = {t.device for t in (*model.parameters(), *model.buffers())}
    if any(device.type == "meta" for device in devices):
        raise AttributionInputError(
            f"{type(model).__name__} has weights on the meta device (shapes without values); "
            f"load its weights first, e.g. with from_pretrained or to_empty and load_state_dict"
        )
    for name, value in named:
        if isinstance(value, Tensor) and value.device.type == "meta":
            raise AttributionInputError(
                f"{name} is on the meta device (a shape without values); pass a tensor with "
                f"values on the model's device"
            )
        if isinstance(value, Tensor) and devices and value.device not in devices:
            target = sorted(str(d) for d in devices)[0]
            raise AttributionInputError(
                f"{name} is on {value.device} but the model is on {target}; "
                f"move it with .to({target!r})"
            )


def argument_names(
    inputs: tuple[Any, ...], additional_forward_args: tuple[Any, ...]
) -> list[tuple[str, Any]]:
    """Name every input and additional forward argument for error messages."""
    names = ["inputs"] if len(inputs) == 1 else [f"inputs[{i}]" for i in range(len(inputs))]
    extra = [f"additional_forward_args[{i}]" for i in range(len(additional_forward_args))]
    return list(zip(names + extra, (*inputs, *additional_forward_args), strict=True))


def as_leaf(x: Tensor, dtype: torch.dtype) -> Tensor:
    """A fresh copy of ``x`` in ``dtype`` that requires grad (also for inference tensors).

    Args:
        x (Tensor): an input or layer activation.
        dtype (torch.dtype): the compute dtype.

    Returns:
        Tensor: the leaf of the explanation's backward pass.
    """
    return x.detach().to(dtype, copy=True).requires_grad_()


def plain_arguments(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """``args`` with inference tensors (made under ``torch.inference_mode``) copied,
    so that autograd may save them."""
    return tuple(a.clone() if isinstance(a, Tensor) and a.is_inference() else a for a in args)


@contextmanager
def explanation_mode() -> Iterator[list[str]]:
    """Autograd on, also inside ``torch.no_grad()`` or ``torch.inference_mode()``.

    The rules and capture hooks of an explanation are installed under the per-module
    locks of :func:`captum_mamba.adapters.rules_applied`, so explanations of models that
    share modules run one after the other and others in parallel.

    Yields:
        list of str: the ops that ran a fused kernel in the block, whose backward takes
        one target at a time (:func:`captum_mamba.ops.unbatched_backwards`), for
        :func:`gradients_per_output`.
    """
    with torch.inference_mode(False), torch.enable_grad(), unbatched_backwards() as unbatched:
        yield unbatched


def check_model(model: Any, rules: Any) -> MambaRules:
    """Check the model and rules given to an attribution class.

    Args:
        model (Any): should be an ``nn.Module``.
        rules (Any): None or a :class:`~captum_mamba.MambaRules` instance.

    Returns:
        MambaRules: ``rules``, or MambaLRP's rules for None.

    Raises:
        TypeError: naming what was given instead.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if rules is None:
        return MambaRules()
    if not isinstance(rules, MambaRules):
        hint = "MambaRules() (call the class)" if rules is MambaRules else "e.g. MambaRules()"
        raise TypeError(f"rules must be a MambaRules instance, {hint}; got {rules!r}")
    return rules


def _first(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    for name in ("logits", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, Tensor):
            return value
    return output[0]


def _check_mask(attention_mask: Any, inputs: Tensor) -> None:
    if attention_mask is None:
        return
    if not isinstance(attention_mask, Tensor):
        raise AttributionInputError(
            f"attention_mask must be a tensor, got {type(attention_mask).__name__}"
        )
    if attention_mask.shape != inputs.shape[:2]:
        raise AttributionInputError(
            f"attention_mask has shape {tuple(attention_mask.shape)} but the inputs have "
            f"(batch, seq) = {tuple(inputs.shape[:2])}; pass one 0/1 entry per token"
        )
    if not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise AttributionInputError("attention_mask must contain only 0 (padding) and 1")


def _check_embeds(model: nn.Module, inputs: Tensor) -> None:
    width = getattr(getattr(model, "config", None), "hidden_size", None)
    if inputs.dim() != 3 or (width is not None and inputs.shape[-1] != width):
        raise AttributionInputError(
            f"inputs_embeds has shape {tuple(inputs.shape)}; expected (batch, seq, {width}) "
            "embeddings; for token ids use LayerMambaLRP(model, model.get_input_embeddings())"
        )


def backbone_and_head(model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """The backbone and output head of a language model, if it has both and its own
    forward only routes between them.

    The backbone is the attribute named by transformers' ``base_model_prefix`` (e.g.
    ``backbone`` for Mamba, ``model`` for Jamba) or ``backbone`` (mamba-ssm); the head is
    ``get_output_embeddings()`` or ``lm_head``. A model whose forward an adapter computes
    (e.g. Granite's, which divides the logits by ``logits_scaling``) has neither: it is
    run as a whole.

    Args:
        model (nn.Module): the model.

    Returns:
        tuple: ``(backbone, head)``, each None when missing.
    """
    if is_computed(model):
        return None, None
    backbone = getattr(model, getattr(model, "base_model_prefix", "") or "backbone", None)
    if not isinstance(backbone, nn.Module) or backbone is model:
        backbone = getattr(model, "backbone", None)
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else getattr(model, "lm_head", None)
    if not isinstance(backbone, nn.Module) or not isinstance(head, nn.Module):
        return None, None
    return backbone, head


class ModelForward:
    """The default forward function of a Hugging Face (or mamba-ssm) model.

    Calling it, ``forward(inputs, attention_mask=None)``, returns the logits. Language
    models are run as ``head(backbone(...))`` (see :func:`backbone_and_head`) so that
    the logits keep the dtype of the computation (transformers casts them to float32).

    The attribution classes call :meth:`explained` instead, which runs the head only
    at the explained positions: the full ``(batch, seq, vocab)`` logits (about 0.4 GiB
    per 1,000 tokens at a vocabulary of 50k in float32, and as much again for their
    gradient) are never formed. The explained values are the same.

    Args:
        model (nn.Module): a Hugging Face model.
        keyword (str): ``"inputs_embeds"`` or ``"input_ids"``.
    """

    def __init__(self, model: nn.Module, keyword: str) -> None:
        self.model = model
        self.keyword = keyword
        self.backbone, self.head = backbone_and_head(model)

    def _check(self, inputs: Tensor, attention_mask: Any) -> dict[str, Any]:
        if self.keyword == "inputs_embeds":
            _check_embeds(self.model, inputs)
        _check_mask(attention_mask, inputs)
        return {self.keyword: inputs, "attention_mask": attention_mask, "use_cache": False}

    def __call__(self, inputs: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The logits ``(batch, seq, vocab)`` (or the model's first output).

        Raises:
            AttributionInputError: for embeddings of the wrong shape and for an
                attention mask that is not a 0/1 tensor of shape ``(batch, seq)``.
        """
        kwargs = self._check(inputs, attention_mask)
        if self.backbone is not None:
            return self.head(_first(self.backbone(**kwargs)))
        return _first(self.model(**kwargs))

    def logits_at(self, inputs: Tensor, positions: Tensor) -> list[Tensor]:
        """Logits of one example at some positions, the head run at those positions only.

        Each position gets its own call of the head, so that the backward pass of one
        of them does not multiply the whole vocabulary of every other position.

        Args:
            inputs (Tensor): ``(1, seq, ...)`` model inputs.
            positions (Tensor): positions to read.

        Returns:
            list of Tensor: ``(vocab,)`` logits per position.
        """
        kwargs = self._check(inputs, None)
        if self.backbone is None:
            logits = _first(self.model(**kwargs))[0]
            return [logits[int(p)] for p in positions]
        hidden = _first(self.backbone(**kwargs))[0]
        return [self.head(hidden[int(p)][None])[0] for p in positions]

    def last_logits(self, inputs: Tensor) -> Tensor:
        """Logits ``(batch, vocab)`` at the last position, the head run there only.

        Args:
            inputs (Tensor): ``(batch, seq, ...)`` model inputs.

        Returns:
            Tensor: the logits of the last position of each example.
        """
        kwargs = self._check(inputs, None)
        if self.backbone is None:
            return _first(self.model(**kwargs))[:, -1]
        return self.head(_first(self.backbone(**kwargs))[:, -1:])[:, 0]

    def vocab_size(self) -> int | None:
        """Number of logits per position of a language model's head, else None."""
        weight = getattr(self.head, "weight", None)
        return weight.shape[0] if isinstance(weight, Tensor) and weight.dim() == 2 else None

    def explained(
        self,
        inputs: Tensor,
        attention_mask: Tensor | None,
        targets: Sequence[TargetType],
        batch: int,
    ) -> tuple[list[Tensor], list[list[tuple[int, ...]]], tuple[int, ...]]:
        """The explained logits of one or more targets, from one run of the backbone, with
        the head run at the explained positions only.

        Args:
            inputs (Tensor): the model inputs ``(batch, seq, ...)``.
            attention_mask (Tensor or None): ``(batch, seq)`` 0/1 padding mask.
            targets (sequence): targets, each ``(position, token)`` per example in
                Captum's conventions (see :func:`~captum_mamba.attr.targets.select_target`).
            batch (int): number of examples.

        Returns:
            tuple: for each target the ``(batch,)`` explained logits and the index tuple
            of each example; and the shape the full logits would have.

        Raises:
            AttributionInputError: as :func:`select_target` for the full logits.
        """
        kwargs = self._check(inputs, attention_mask)
        hidden = _first(self.backbone(**kwargs))
        shape = (*hidden.shape[:2], self.vocab_size())
        rows = torch.arange(batch, device=hidden.device)
        values, all_indices = [], []
        for target in targets:
            indices = target_indices(target, shape, batch)
            positions = torch.tensor([index[0] for index in indices], device=hidden.device)
            logits = self.head(hidden[rows, positions][:, None])[:, 0]
            values.append(gather_targets(logits, [index[1:] for index in indices]))
            all_indices.append(indices)
        return values, all_indices, shape


def default_forward(model: nn.Module, keyword: str) -> ModelForward | nn.Module:
    """Forward function of a Hugging Face (or mamba-ssm) model that returns its logits;
    for a user's own network (a module without a ``config``), the network itself, called
    with the inputs and additional arguments positionally (e.g. ``model(x, mask)`` for
    ``(batch, time, channels)`` signals).

    Args:
        model (nn.Module): a Hugging Face model or a user's network.
        keyword (str): ``"inputs_embeds"`` or ``"input_ids"``.

    Returns:
        ModelForward or nn.Module: ``forward(inputs, attention_mask=None) -> Tensor``;
        it raises :class:`AttributionInputError` for embeddings of the wrong shape and
        for an attention mask that is not a 0/1 tensor of shape ``(batch, seq)``.
    """
    if getattr(model, "config", None) is None:
        return model
    return ModelForward(model, keyword)


def explained_module(model: nn.Module, forward_func: Any) -> nn.Module:
    """The module whose rules an explanation applies: ``model``, or the module that
    ``forward_func`` is (or is a bound method of) when that module contains ``model``,
    e.g. ``MambaLRP(net.backbone, forward_func=net)``. Every module the forward function
    runs is then checked against the allow-list, so that none of it passes relevance
    without a rule. (A plain function or lambda cannot be inspected: it must run only
    ``model`` and routing operations.)

    Args:
        model (nn.Module): the model given to the attribution class.
        forward_func (Any): its forward function, or None.

    Returns:
        nn.Module: ``model`` or the module around it.
    """
    owner = forward_func if isinstance(forward_func, nn.Module) else None
    owner = owner or getattr(forward_func, "__self__", None)
    inside = isinstance(owner, nn.Module) and owner is not model
    if inside and any(module is model for module in owner.modules()):
        return owner
    return model


def _mask_argument(inputs: Tensor, extra: tuple[Any, ...]) -> Tensor | None:
    """The padding mask among the forward arguments: the first additional argument if
    it is an integer or boolean ``(batch, seq)`` tensor (the convention of the default
    forward functions)."""
    if not extra or not isinstance(extra[0], Tensor) or inputs.dim() < 2:
        return None
    mask = extra[0]
    if mask.is_floating_point() or mask.shape != inputs.shape[:2]:
        return None
    return mask


def explained_outputs(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    extra: tuple[Any, ...],
    target: TargetType,
    batch: int,
) -> Tensor:
    """Run the forward function and select the explained output of each example.

    With the default forward of a language model and ``(position, token)`` targets, the
    head runs at the explained positions only (:meth:`ModelForward.explained`).
    Explaining a padded position or a fully padded example warns
    (:class:`~captum_mamba.attr.targets.MaskedTargetWarning`).

    Args:
        forward_func (Callable): the attribution's forward function.
        inputs (tuple of Tensor): its inputs (leaves of the backward pass).
        extra (tuple): its additional arguments.
        target: Captum-style target (see :func:`select_target`).
        batch (int): number of examples.

    Returns:
        Tensor: ``(batch,)`` explained outputs, part of the autograd graph.

    Raises:
        AttributionInputError: for outputs or targets that do not fit.
    """
    return explained_outputs_many(forward_func, inputs, extra, [target], batch)[0]


def explained_outputs_many(
    forward_func: Callable[..., Any],
    inputs: tuple[Tensor, ...],
    extra: tuple[Any, ...],
    targets: Sequence[TargetType],
    batch: int,
) -> list[Tensor]:
    """Run the forward function once and select the explained output of each example
    for each of several targets (as :func:`explained_outputs` for one).

    Args:
        forward_func (Callable): the attribution's forward function.
        inputs (tuple of Tensor): its inputs (leaves of the backward pass).
        extra (tuple): its additional arguments.
        targets (sequence): Captum-style targets (see :func:`select_target`).
        batch (int): number of examples.

    Returns:
        list of Tensor: ``(batch,)`` explained outputs per target, part of one autograd
        graph.

    Raises:
        AttributionInputError: for outputs or targets that do not fit.
    """
    targeted = (
        isinstance(forward_func, ModelForward)
        and forward_func.backbone is not None
        and forward_func.vocab_size() is not None
        and len(inputs) == 1
        and len(extra) <= 1
        and all(_is_position_target(target) for target in targets)
    )
    if targeted:
        mask = extra[0] if extra else None
        explained, indices, shape = forward_func.explained(inputs[0], mask, targets, batch)
    else:
        output = forward_func(*inputs, *extra)
        check_output(output, batch)
        shape = tuple(output.shape)
        indices = [target_indices(target, shape, batch) for target in targets]
        explained = [gather_targets(output, index) for index in indices]
    mask = _mask_argument(inputs[0], extra)
    if mask is not None:
        for index in indices:
            warn_masked_targets(mask, index, shape)
    return explained


#: Elements of the gradients of the leaves that one batched backward pass computes (the
#: targets of a pass times the leaves' elements), when ``targets_per_pass`` is automatic.
TARGETS_ELEMENTS = 1 << 22


def targets_per_pass(setting: int | None, leaves: Sequence[Tensor]) -> int:
    """Targets differentiated together in one batched backward pass.

    Args:
        setting (int or None): the caller's choice; None for as many as keep the
            leaves' gradients within :data:`TARGETS_ELEMENTS` elements (at least one).
        leaves (sequence of Tensor): the leaves of the backward pass.

    Returns:
        int: targets per pass.

    Raises:
        AttributionInputError: if ``setting`` is not a positive int.
    """
    if setting is None:
        return max(1, TARGETS_ELEMENTS // max(1, sum(leaf.numel() for leaf in leaves)))
    if not isinstance(setting, int) or isinstance(setting, bool) or setting < 1:
        raise AttributionInputError(f"targets_per_pass must be a positive int, got {setting!r}")
    return setting


def gradients_per_output(
    explained: Sequence[Tensor],
    leaves: Sequence[Tensor],
    unbatched: Sequence[str] = (),
    per_pass: int | None = None,
) -> tuple[list[tuple[Tensor, ...]], str]:
    """Gradients of the leaves for each explained output, through one autograd graph.

    The graph of one forward pass serves every output, never another forward pass.
    Under the rules the backward pass is linear in its cotangent and does not depend on
    it, so the outputs are differentiated together: one backward pass for a batch of
    cotangents (the rows of an identity matrix), vmapped over them
    (:func:`torch.autograd.grad` under :func:`torch.func.vmap`); each operation computes
    its gradient for every cotangent at once (the scans' hand-written backward passes take
    a leading batch of cotangents, :func:`captum_mamba.ops.batched_cotangents`). The
    result for each output is the one a call for that output alone gives. Outputs are
    taken ``per_pass`` at a time, since the backward pass's memory grows with them; where
    a fused kernel ran (``unbatched``), or with one output per pass, each output gets its
    own (plain) backward pass.

    Args:
        explained (sequence of Tensor): ``(batch,)`` explained outputs of one graph.
        leaves (sequence of Tensor): the leaves to differentiate.
        unbatched (sequence of str, optional): the ops of the graph whose backward takes
            one cotangent at a time (from :func:`explanation_mode`). Default: ().
        per_pass (int, optional): outputs per batched backward pass
            (:func:`targets_per_pass`). Default: None (automatic).

    Returns:
        tuple: per output, the gradient of the sum of its values for every leaf (zeros
        where a leaf does not reach it); and how they were computed, ``"batched: ..."``
        or ``"per target: <reason>"``.
    """
    # one node per output, so that a backward pass traverses the branches of its own only
    sums = [value.sum() for value in explained]
    count = len(explained)
    size = targets_per_pass(per_pass, leaves)
    if unbatched or count == 1 or size == 1:
        reason = (
            f"the fused kernels of {', '.join(unbatched)} take one cotangent at a time"
            if unbatched
            else "one target"
            if count == 1
            else "targets_per_pass=1"
        )
        rows = [
            torch.autograd.grad(sums[k], leaves, retain_graph=k < count - 1, materialize_grads=True)
            for k in range(count)
        ]
        return rows, f"per target: {reason}"
    passes = -(-count // size)
    size = -(-count // passes)  # the targets split evenly between the passes
    parts = []
    for start in range(0, count, size):
        chosen = torch.stack(sums[start : start + size])
        seeds = torch.eye(len(chosen), dtype=chosen.dtype, device=chosen.device)
        retain = start + size < count

        def backward(seed: Tensor, chosen: Tensor = chosen, retain: bool = retain):
            return torch.autograd.grad(
                chosen, leaves, seed, retain_graph=retain, materialize_grads=True
            )

        parts.append(torch.func.vmap(backward)(seeds))
    stacked = [torch.cat(grads) for grads in zip(*parts, strict=True)]
    rows = [tuple(grads[k] for grads in stacked) for k in range(count)]
    return rows, f"batched: {count} targets in {passes} pass{'es' if passes > 1 else ''}"


def check_target_list(targets: Any, target: TargetType) -> list[TargetType]:
    """Check the ``targets`` argument of a many-target attribution call.

    Args:
        targets (Any): should be a non-empty list of Captum targets.
        target (TargetType): the call's ``target`` argument, which must then be None.

    Returns:
        list: the targets.

    Raises:
        AttributionInputError: if ``targets`` is not a non-empty list, or both
            ``target`` and ``targets`` are given.
    """
    if target is not None:
        raise AttributionInputError(
            "pass either target (one output) or targets (a list of several), not both"
        )
    if not isinstance(targets, list) or not targets:
        raise AttributionInputError(
            "targets must be a non-empty list of Captum targets (one result row each), "
            f"got {type(targets).__name__}"
            + (f" of length {len(targets)}" if isinstance(targets, list) else "")
        )
    return targets


def _is_position_target(target: TargetType) -> bool:
    """Whether ``target`` names two indices per example (``(position, token)``)."""
    if isinstance(target, tuple):
        return len(target) == 2
    if isinstance(target, list):
        return bool(target) and all(isinstance(t, tuple) and len(t) == 2 for t in target)
    if isinstance(target, Tensor):  # (batch, 2); a 1-d tensor holds one index per example
        return target.dim() == 2 and target.shape[-1] == 2
    return False


def count_tokens(x: Tensor) -> int:
    """Batch size times sequence length of an input ``(batch, seq, ...)``."""
    return x.shape[0] * x.shape[1] if x.dim() >= 2 else x.numel()


#: Inputs of at least this many tokens (batch x sequence length) are explained on the
#: memory-lean path (:func:`uses_lean`).
LEAN_FROM_TOKENS = 2048


def uses_lean(lean: bool | None, tokens: int) -> bool:
    """Whether an explanation of ``tokens`` tokens recomputes each residual layer in the
    backward pass (:class:`~captum_mamba.adapters.RecomputeBackend`).

    Args:
        lean (bool or None): the attribution's setting; None chooses automatically:
            lean from :data:`LEAN_FROM_TOKENS` tokens on.
        tokens (int): batch size times sequence length.

    Returns:
        bool: True for the memory-lean path.
    """
    if lean is None:
        return tokens >= LEAN_FROM_TOKENS
    if not isinstance(lean, bool):
        raise TypeError(f"lean must be True, False or None (automatic), got {lean!r}")
    return lean


def explanation_backend(lean: bool | None, tokens: int) -> Backend | None:
    """The backend of an explanation: :class:`RecomputeBackend` on the memory-lean path
    (:func:`uses_lean`), else None (the rule functions)."""
    return RecomputeBackend() if uses_lean(lean, tokens) else None


def fast_forward(model: nn.Module) -> AbstractContextManager[Any]:
    """Context in which ``model`` computes its exact function through this package's
    scans (``rules_applied`` with every rule off): fast on CPUs and differentiable, with
    an adjoint-scan backward; or its own forward if the adapters do not cover it.

    Args:
        model (nn.Module): the model.

    Returns:
        context manager: the context.

    Examples::

        >>> with fast_forward(classifier):
        ...     loss = loss_function(classifier(input_ids=ids), labels)
        ...     loss.backward()
    """
    try:
        plan_rules(model, MambaRules.gradient_x_input())
    except UnsupportedModelError:
        return nullcontext()
    return rules_applied(model, MambaRules.gradient_x_input())

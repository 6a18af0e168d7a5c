"""Attribution classes: validation of inputs and Captum-style target selection."""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

TargetType = int | tuple[int, ...] | Tensor | list[Any] | None


class AttributionInputError(ValueError):
    """An input, target or forward output cannot be explained; the message says why."""


def as_input_tuple(inputs: Any, what: str = "embeddings") -> tuple[Tensor, ...]:
    """The inputs of an attribution call as a tuple of tensors, as Captum formats them.

    Captum rejects anything else with a bare ``AssertionError``; this names the problem.

    Args:
        inputs (Any): a tensor or a tuple of tensors.
        what (str, optional): what the inputs are, for the message (``"embeddings"`` or
            ``"token ids"``). Default: ``"embeddings"``.

    Returns:
        tuple of Tensor: the inputs.

    Raises:
        AttributionInputError: for any other type, e.g. numpy arrays or (nested) lists.
    """
    items = inputs if isinstance(inputs, tuple) else (inputs,)
    for index, item in enumerate(items):
        if not isinstance(item, Tensor):
            name = "inputs" if not isinstance(inputs, tuple) else f"inputs[{index}]"
            fix = "torch.tensor(ids)" if what == "token ids" else "torch.as_tensor(x)"
            raise AttributionInputError(
                f"{name} is a {type(item).__module__}.{type(item).__name__}, not a torch.Tensor; "
                f"pass {what} as a tensor, e.g. {fix}"
            )
    return items


def check_embeddings(inputs: tuple[Tensor, ...], dtype: torch.dtype) -> None:
    """Check that every input is a finite floating tensor ``(batch, seq, ...)`` that
    converts to the compute dtype without rounding, with one batch size.

    Args:
        inputs (tuple of Tensor): formatted inputs of an attribution call.
        dtype (torch.dtype): the dtype the explanation computes in.

    Raises:
        AttributionInputError: on integer ids, wrong rank, empty sequences, differing
            batch sizes, a dtype wider than ``dtype`` or non-finite values.
    """
    for index, x in enumerate(inputs):
        name = "inputs" if len(inputs) == 1 else f"inputs[{index}]"
        if not isinstance(x, Tensor):
            raise AttributionInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise AttributionInputError(
                f"{name} has dtype {x.dtype}: MambaLRP explains input embeddings; for token "
                "ids use LayerMambaLRP(model, model.get_input_embeddings())"
            )
        if x.dim() < 2:
            raise AttributionInputError(
                f"{name} has shape {tuple(x.shape)}; expected (batch, seq, hidden)"
            )
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise AttributionInputError(
                f"{name} has shape {tuple(x.shape)}: batch and sequence must be non-empty"
            )
        if x.shape[0] != inputs[0].shape[0]:
            raise AttributionInputError(
                f"{name} has batch size {x.shape[0]} but inputs[0] has {inputs[0].shape[0]}"
            )
        if torch.promote_types(x.dtype, dtype) != dtype:
            raise AttributionInputError(
                f"{name} has dtype {x.dtype} but the model computes in {dtype}; pass "
                f"{name}.to({dtype}) or explain a copy of the model in {x.dtype}"
            )
        if not torch.isfinite(x).all():
            raise AttributionInputError(
                f"{name} contains NaN or inf; explain finite embeddings only"
            )
        largest = float(x.detach().abs().amax()) if x.numel() else 0.0
        if largest**2 > torch.finfo(dtype).max:
            raise AttributionInputError(
                f"{name} has values up to {largest:.3g}, whose squares overflow {dtype} in the "
                "model's norms; rescale the inputs or explain the model in torch.float64"
            )


def check_token_ids(ids: Tensor, vocab_size: int | None) -> None:
    """Check a ``(batch, seq)`` tensor of token ids against the vocabulary.

    Args:
        ids (Tensor): token ids.
        vocab_size (int or None): number of embeddings, or None if unknown.

    Raises:
        AttributionInputError: on float ids, wrong rank, empty sequences or ids out
            of the vocabulary.
    """
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise AttributionInputError(
            f"token ids have dtype {ids.dtype}; pass a LongTensor of ids "
            "(or explain embeddings with MambaLRP)"
        )
    if ids.dim() != 2:
        raise AttributionInputError(
            f"token ids have shape {tuple(ids.shape)}; expected (batch, seq)"
        )
    if ids.numel() == 0:
        raise AttributionInputError(
            f"token ids have shape {tuple(ids.shape)}: batch and sequence must be non-empty"
        )
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (vocab_size is not None and high >= vocab_size):
        raise AttributionInputError(
            f"token ids span [{low}, {high}] but the vocabulary has {vocab_size} entries"
        )


def batch_size(inputs: tuple[Any, ...]) -> int:
    """The common batch size of the inputs of an attribution call.

    Args:
        inputs (tuple): formatted inputs.

    Returns:
        int: size of dim 0 of every input.

    Raises:
        AttributionInputError: if an input is not a tensor of rank >= 1 or the batch
            sizes differ.
    """
    sizes = []
    for index, x in enumerate(inputs):
        if not isinstance(x, Tensor) or x.dim() == 0:
            raise AttributionInputError(
                f"inputs[{index}] must be a tensor with a batch dimension, got "
                f"{type(x).__name__}{tuple(x.shape) if isinstance(x, Tensor) else ''}"
            )
        sizes.append(x.shape[0])
    if len(set(sizes)) != 1:
        raise AttributionInputError(f"the inputs have different batch sizes {sizes}")
    return sizes[0]


def _check_index(value: Any, size: int, what: str) -> int:
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_floating_point() or value.dtype == torch.bool:
            raise AttributionInputError(f"{what} must be an int, got tensor {value.tolist()!r}")
        value = value.item()
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise AttributionInputError(f"{what} must be an int, got {value!r}")
    if not -size <= value < size:
        raise AttributionInputError(f"{what} (value {value}) is out of range for size {size}")
    return value


def _check_index_tuple(target: Sequence[Any], shape: torch.Size) -> tuple[int, ...]:
    if len(target) != len(shape) - 1:
        raise AttributionInputError(
            f"target {tuple(target)} has {len(target)} indices but the output has shape "
            f"{tuple(shape)}, i.e. {len(shape) - 1} per example"
        )
    return tuple(
        _check_index(v, size, f"target index {i}")
        for i, (v, size) in enumerate(zip(target, shape[1:], strict=True))
    )


def _target_values(target: Tensor) -> int | list[Any]:
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise AttributionInputError(
            f"target tensor has dtype {target.dtype}; pass integer indices (a LongTensor)"
        )
    if target.numel() == 1:
        return int(target.item())
    if target.dim() == 1:
        return [int(v) for v in target.tolist()]
    return [tuple(int(v) for v in row) for row in target.tolist()]


def _index_tuple(target: Any) -> tuple[Any, ...]:
    """One example's target (an int, a tuple or list of ints, or an integer tensor or
    array) as a tuple of indices."""
    if hasattr(target, "__array__") and not isinstance(target, Tensor):
        target = torch.as_tensor(target)
    if isinstance(target, Tensor):
        value = _target_values(target)
        return tuple(value) if isinstance(value, list) else (value,)
    if isinstance(target, tuple | list):
        return tuple(target)
    return (target,)


def target_indices(target: TargetType, shape: Sequence[int], batch: int) -> list[tuple[int, ...]]:
    """The index tuple that ``target`` selects in each example of an output of ``shape``.

    Args:
        target (int, tuple, Tensor, list or None): as for :func:`select_target`.
        shape (sequence of int): shape of the forward output, ``(batch, ...)``.
        batch (int): number of examples.

    Returns:
        list of tuple of int: one index per non-batch dimension for each example
        (empty tuples for ``target=None``).

    Raises:
        AttributionInputError: if ``target`` does not fit ``shape``.
    """
    shape = torch.Size(shape)
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        target = int(target)
    elif hasattr(target, "__array__") and not isinstance(target, Tensor | list | tuple):
        target = torch.as_tensor(target)
    if isinstance(target, Tensor):
        target = _target_values(target)
    if target is None:
        if shape.numel() != batch:
            raise AttributionInputError(
                f"target is None but the output has shape {tuple(shape)}; pass a target "
                "index (e.g. a class id, or (position, token) for language-model logits)"
            )
        return [()] * batch
    if isinstance(target, int | tuple):
        common = target if isinstance(target, tuple) else (target,)
        return [_check_index_tuple(common, shape)] * batch
    if isinstance(target, list):
        if len(target) != batch:
            raise AttributionInputError(
                f"{len(target)} targets given for a batch of {batch} examples"
            )
        return [_check_index_tuple(_index_tuple(t), shape) for t in target]
    raise AttributionInputError(f"unsupported target type {type(target).__name__}")


def gather_targets(output: Tensor, indices: Sequence[tuple[int, ...]]) -> Tensor:
    """``output[i, *indices[i]]`` for every example ``i``, in one indexing operation.

    Args:
        output (Tensor): forward output ``(batch, ...)``.
        indices (sequence of tuple of int): from :func:`target_indices`.

    Returns:
        Tensor: ``(batch,)`` selected outputs.

    Raises:
        AttributionInputError: if a selected output is NaN or inf.
    """
    batch = len(indices)
    if all(not index for index in indices):
        selected = output.reshape(batch)
    else:
        columns = [torch.tensor(c, device=output.device) for c in zip(*indices, strict=True)]
        selected = output[(torch.arange(batch, device=output.device), *columns)]
    if not torch.isfinite(selected).all():
        raise AttributionInputError(
            "the explained output is NaN or inf; the model overflows on these inputs "
            "(check its weights and dtype)"
        )
    return selected


def select_target(output: Any, target: TargetType, batch: int) -> Tensor:
    """Select one scalar per example from ``output``, following Captum's conventions.

    Args:
        output (Tensor): forward output of shape ``(batch, ...)``.
        target (int, tuple, Tensor, list or None): ``None`` for an output that is
            already one value per example; an int (index of dim 1); a tuple
            (an index per non-batch dim, e.g. ``(position, token)`` of
            ``(batch, seq, vocab)`` logits); an integer tensor of one index (or index
            tuple) per example or one for all; or a list with one int or tuple per
            example.
        batch (int): number of examples in the inputs.

    Returns:
        Tensor: ``(batch,)`` selected outputs.

    Raises:
        AttributionInputError: if ``output`` is not a tensor with one row per
            example, ``target`` does not fit it, or a selected output is NaN or inf.
    """
    check_output(output, batch)
    return gather_targets(output, target_indices(target, output.shape, batch))


def check_output(output: Any, batch: int) -> None:
    """Check that a forward output is a tensor with one row per example.

    Args:
        output (Any): what the forward function returned.
        batch (int): number of examples in the inputs.

    Raises:
        AttributionInputError: naming what was returned instead.
    """
    if not isinstance(output, Tensor):
        raise AttributionInputError(
            f"the forward function returned {type(output).__name__}, not a tensor; "
            "wrap the model so that it returns logits, e.g. lambda x: model(inputs_embeds=x).logits"
        )
    if output.dim() == 0 or output.shape[0] != batch:
        raise AttributionInputError(
            f"the forward function returned shape {tuple(output.shape)} for {batch} examples; "
            "it must return one row per example, (batch, ...)"
        )


class MaskedTargetWarning(UserWarning):
    """An explained output belongs to a padded position or to a fully padded example."""


def warn_masked_targets(
    attention_mask: Tensor, indices: Sequence[tuple[int, ...]], output_shape: Sequence[int]
) -> None:
    """Warn about explained outputs that only padding can produce.

    An example whose mask is all zeros has no real token to explain. For outputs with
    one row per position (``output_shape[1]`` equal to the mask's sequence length, as
    language-model logits), an explained position whose mask entry is 0 is padding.

    Args:
        attention_mask (Tensor): ``(batch, seq)`` 0/1 padding mask of the inputs.
        indices (sequence of tuple of int): the explained index of each example
            (:func:`target_indices`).
        output_shape (sequence of int): shape of the forward output.
    """
    present = attention_mask.reshape(attention_mask.shape[0], -1) != 0
    empty = [i for i in range(present.shape[0]) if not bool(present[i].any())]
    if empty:
        warnings.warn(
            f"example(s) {empty} are fully masked (attention_mask all 0): their relevance "
            "explains padding only; drop them or fix the mask",
            MaskedTargetWarning,
            stacklevel=3,
        )
    length = present.shape[1]
    if len(output_shape) < 3 or output_shape[1] != length:
        return
    padded = [
        i
        for i, index in enumerate(indices)
        if i not in empty and not bool(present[i, index[0] % length])
    ]
    if padded:
        warnings.warn(
            f"example(s) {padded} explain a padded position (attention_mask 0 there); "
            "target the last real token instead, e.g. its index from attention_mask",
            MaskedTargetWarning,
            stacklevel=3,
        )


def check_relevance(attributions: tuple[Tensor, ...]) -> None:
    """Check that the relevances are finite.

    Args:
        attributions (tuple of Tensor): relevances of an attribution call.

    Raises:
        AttributionInputError: if a relevance is NaN or inf.
    """
    if not all(torch.isfinite(a).all() for a in attributions):
        raise AttributionInputError(
            "the relevances contain NaN or inf although the explained output is finite; "
            "the backward pass overflows (explain the model in float64)"
        )

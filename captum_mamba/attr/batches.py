"""Attribution classes: explaining many sequences of different lengths in padded batches.

:func:`attribute_batches` sorts the sequences by length, cuts the sorted list into
batches (of at most ``batch_size`` sequences and ``max_tokens`` padded tokens), pads
each batch to its longest sequence, explains it in one call with the padding mask, and
returns every sequence's relevance without the padding, in the input order.

Padding is exact: with right padding (the default) every real position of a causal
model sees only real positions before it, and the padded positions are masked, so each
relevance equals that of the sequence explained alone (to rounding).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from captum_mamba.attr.targets import AttributionInputError


def length_buckets(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None
) -> list[list[int]]:
    """Indices of sequences grouped into batches of similar length.

    Args:
        lengths (sequence of int): length of every sequence.
        batch_size (int): most sequences per batch.
        max_tokens (int, optional): most padded tokens (sequences x longest length) per
            batch; a longer sequence gets a batch of its own. Default: None.

    Returns:
        list of list of int: the indices of each batch, longest first (equal lengths
        in input order).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    batch: list[int] = []
    for index in order:
        longest = lengths[batch[0]] if batch else lengths[index]
        too_many = max_tokens is not None and (len(batch) + 1) * longest > max_tokens
        if batch and (len(batch) == batch_size or too_many):
            batches.append(batch)
            batch = []
        batch.append(index)
    if batch:
        batches.append(batch)
    return batches


def pad_sequences(
    sequences: Sequence[Tensor], pad_value: Tensor | float = 0, left: bool = False
) -> tuple[Tensor, Tensor]:
    """Pad ``(seq, ...)`` tensors to the longest into ``(batch, longest, ...)``, with the
    0/1 padding mask ``(batch, longest)``.

    Args:
        sequences (sequence of Tensor): non-empty tensors of one dtype and device, equal
            but for their first dimension.
        pad_value (Tensor or float, optional): the value of padded positions, or a
            ``(...)`` tensor (e.g. the embedding of a pad token). Default: 0.
        left (bool, optional): pad on the left (real tokens last, as a causal model
            reads them before its output) instead of the right. Default: False.

    Returns:
        tuple: the padded tensor and the ``torch.long`` mask (1 at real positions).
    """
    longest = max(sequence.shape[0] for sequence in sequences)
    first = sequences[0]
    padded = first.new_empty((len(sequences), longest, *first.shape[1:]))
    padded[:] = pad_value
    mask = torch.zeros(len(sequences), longest, dtype=torch.long, device=first.device)
    for row, sequence in enumerate(sequences):
        length = sequence.shape[0]
        real = slice(longest - length, longest) if left else slice(0, length)
        padded[row, real] = sequence
        mask[row, real] = 1
    return padded, mask


def _shift(target: Any, length: int, pad: int, left: bool) -> Any:
    """A target of the unpadded sequence as a target of its padded row: sequence
    positions (the first index of a tuple) counted from the start of the padded row."""
    if not isinstance(target, tuple) or not target:
        return target
    position = int(target[0])
    if not -length <= position < length:
        raise AttributionInputError(
            f"target position {position} is out of range for a sequence of {length} tokens"
        )
    position = position % length + (pad if left else 0)
    return (position, *target[1:])


def attribute_batches(
    attribution: Any,
    sequences: Sequence[Tensor],
    targets: Sequence[Any],
    batch_size: int = 8,
    max_tokens: int | None = None,
    padding_side: str = "right",
    pad_value: float = 0,
    **kwargs: Any,
) -> list[Tensor]:
    r"""Explain many sequences of different lengths in length-bucketed, padded batches.

    Args:
        attribution: an attribution whose ``attribute(inputs, target=...,
            additional_forward_args=attention_mask, **kwargs)`` explains a padded batch,
            e.g. :class:`MambaLRP` (embeddings) or :class:`LayerMambaLRP` (token ids)
            with the default forward function.
        sequences (sequence of Tensor): each ``(seq,)`` token ids or ``(seq, hidden)``
            embeddings; lengths may differ.
        targets (sequence): one target per sequence, as for one example of
            ``attribute``: a class index, or ``(position, token)`` with the position
            counted in the unpadded sequence (negative from its end).
        batch_size (int, optional): most sequences per call. Default: 8.
        max_tokens (int, optional): most padded tokens per call (limits memory for long
            sequences). Default: None.
        padding_side (str, optional): ``"right"`` (exact for causal models) or
            ``"left"`` (for models that read the last position; exact when padding
            does not reach real positions, see the padding guarantees). Default:
            ``"right"``.
        pad_value (float, optional): value of padded token ids or embedding entries
            (masked, so it does not matter for exact models). Default: 0.
        **kwargs: further arguments of ``attribute``; with
            ``return_convergence_delta=True`` each result is a pair.

    Returns:
        list: the relevance of each sequence, its padding removed, in the order of
        ``sequences`` (with ``return_convergence_delta=True``: pairs of the relevance
        and the sequence's convergence delta).

    Raises:
        AttributionInputError: on an empty list, a count of targets that differs from
            the count of sequences, sequences of different kinds, or bad batch sizes.

    Examples::

        >>> lrp = LayerMambaLRP(model, model.get_input_embeddings())
        >>> rows = attribute_batches(lrp, [ids_a, ids_b, ids_c],
        ...                          [(-1, 7), (-1, 7), (3, 2)], batch_size=2)
        >>> [r.shape for r in rows]            # (len_a, hidden), (len_b, hidden), ...
    """
    if not sequences:
        raise AttributionInputError("attribute_batches needs at least one sequence")
    if len(targets) != len(sequences):
        raise AttributionInputError(
            f"{len(targets)} targets given for {len(sequences)} sequences; pass one each"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise AttributionInputError(f"batch_size must be a positive int, got {batch_size!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        raise AttributionInputError(f"max_tokens must be a positive int, got {max_tokens!r}")
    if padding_side not in ("right", "left"):
        raise AttributionInputError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    tails = {tuple(s.shape[1:]) for s in sequences}
    kinds = {s.dtype for s in sequences}
    if len(tails) != 1 or len(kinds) != 1 or any(s.dim() not in (1, 2) for s in sequences):
        raise AttributionInputError(
            "sequences must all be (seq,) token ids or all (seq, hidden) embeddings of "
            f"one dtype, got shapes {sorted(tails)} and dtypes {sorted(map(str, kinds))}"
        )
    if any(s.shape[0] == 0 for s in sequences):
        raise AttributionInputError("sequences must be non-empty")
    left = padding_side == "left"
    lengths = [s.shape[0] for s in sequences]
    results: list[Any] = [None] * len(sequences)
    for batch in length_buckets(lengths, batch_size, max_tokens):
        longest = lengths[batch[0]]
        padded, mask = pad_sequences([sequences[index] for index in batch], pad_value, left)
        rows = [
            _shift(targets[index], lengths[index], longest - lengths[index], left)
            for index in batch
        ]
        output = attribution.attribute(padded, target=rows, additional_forward_args=mask, **kwargs)
        relevance, delta = output if isinstance(output, tuple) else (output, None)
        for row, index in enumerate(batch):
            length, pad = lengths[index], longest - lengths[index]
            real = slice(pad, longest) if left else slice(0, length)
            result = relevance[row, real]
            results[index] = result if delta is None else (result, delta[row])
    return results

r"""Metrics: input-perturbation curves over tokens and their areas.

Tokens are ranked by their relevance; the curve records the explained output after
``k = 0, 1, ..., L`` tokens have been changed:

- **deletion, MoRF** (most relevant first): the ``k`` most relevant tokens are
  replaced; a faithful explanation makes the output drop fast (small area);
- **deletion, LeRF** (least relevant first): the ``k`` least relevant are replaced;
  the output should stay high (large area);
- **insertion** (most relevant first): every token is replaced except the ``k``
  most relevant; the output should recover fast (large area). With one ranking and
  one replacement this is the LeRF deletion curve read backwards (step ``k`` of
  insertion = step ``L - k`` of LeRF), so its area equals ``A(LeRF)``; it is kept
  for plots in the insertion convention.

The faithfulness score of the MambaLRP paper is ``Delta A^F = A(LeRF) - A(MoRF)``
(higher is better). Areas are trapezoids over the fraction ``k / L`` in ``[0, 1]``,
so sequences of different length are comparable. Ties in the relevance are broken
by position (earlier first) with a stable sort, for both orders.

A replaced token's embedding becomes the *replacement* vector (see
:func:`replacement_embedding`): zeros, the mean of the embedding matrix, or the
embedding of one token (e.g. padding or unknown).

Bad numbers are refused, never ranked or averaged: NaN or infinite scores, embeddings,
replacements, explained outputs along a curve and curve values raise a one-line
``ValueError`` (``AttributionInputError`` for targets and explained outputs) that names
the example (or curve) and the fix. A NaN score would otherwise sort as the most
relevant token, and a NaN output would turn an area, and every mean over a data set,
into NaN.

Targets mean the same as in the attribution classes
(:func:`captum_mamba.attr.targets.select_target`): an int indexes dim 1 of the
output, a tuple one index per non-batch dim (``(position, token)`` for language-model
logits ``(batch, seq, vocab)``), a list or tensor gives one target per example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn

from captum_mamba.attr.targets import AttributionInputError, TargetType, select_target
from captum_mamba.metrics.checks import (
    as_real_tensor,
    check_bool,
    check_int,
    describe,
    nonfinite_rows,
)

#: Replacement kinds accepted by :func:`replacement_embedding`.
REPLACEMENTS: tuple[str, ...] = ("zero", "mean", "token")
#: Curve kinds computed by :func:`perturbation_curves`.
CURVES: tuple[str, ...] = ("morf", "lerf", "insertion")


def replacement_embedding(
    embedding: nn.Embedding | Tensor | ArrayLike, kind: str = "zero", token_id: int | None = None
) -> Tensor:
    """The vector that replaces a removed token's embedding.

    Non-finite embeddings that the replacement would be built from are refused
    (a NaN row would make the ``"mean"`` replacement NaN and every curve with it).

    Args:
        embedding (nn.Embedding, Tensor or ArrayLike): the embedding layer or its
            ``(vocab, hidden)`` weight (a NumPy array or nested list works too).
        kind (str, optional): ``"zero"``, ``"mean"`` (mean over the vocabulary,
            computed in float64) or ``"token"`` (the embedding of ``token_id``).
            Default: ``"zero"``.
        token_id (int, optional): the token for ``kind="token"`` (e.g. the padding
            or unknown token); must be None for the other kinds. Default: None.

    Returns:
        Tensor: ``(hidden,)`` replacement in the dtype of the weight, detached.

    Raises:
        ValueError: for an unknown kind, a missing, superfluous or out-of-range
            ``token_id``, a weight that is not ``(vocab, hidden)``, or NaN/inf in
            the embeddings used.
        TypeError: for a non-integer ``token_id`` or a non-numeric weight.

    Examples::

        >>> filler = replacement_embedding(model.get_input_embeddings(), "mean")
    """
    if isinstance(embedding, nn.Embedding):
        weight = embedding.weight.detach()
    else:
        weight = as_real_tensor(embedding, "embedding")
    if weight.dim() != 2 or 0 in weight.shape:
        raise ValueError(
            f"embedding weight has shape {tuple(weight.shape)}; expected a non-empty "
            "(vocab, hidden) matrix or an nn.Embedding"
        )
    if not isinstance(kind, str) or kind not in REPLACEMENTS:
        raise ValueError(f"unknown replacement {kind!r}; choose from {', '.join(REPLACEMENTS)}")
    vocab = weight.shape[0]
    if kind != "token":
        if token_id is not None:
            raise ValueError(
                f"token_id={token_id!r} is only used with kind='token'; pass kind='token' "
                "or drop token_id"
            )
        if kind == "zero":
            return torch.zeros_like(weight[0])
        bad = nonfinite_rows(weight)
        if bad.numel():
            raise ValueError(
                f"embedding rows {describe(bad)} contain NaN or inf, so their mean is not a "
                "number; fix the embeddings or use kind='zero'"
            )
        return weight.double().mean(0).to(weight.dtype)
    if token_id is None:
        raise ValueError(f"kind='token' needs a token_id in [0, {vocab})")
    token_id = check_int(token_id, "token_id")
    if not 0 <= token_id < vocab:
        raise ValueError(f"kind='token' needs a token_id in [0, {vocab}), got {token_id}")
    if not torch.isfinite(weight[token_id]).all():
        raise ValueError(f"the embedding of token {token_id} contains NaN or inf; pick another")
    return weight[token_id].clone()


def relevance_order(scores: Tensor | ArrayLike, most_relevant_first: bool) -> Tensor:
    """Token positions sorted by score, ties broken by position (earlier first).

    NaN and infinite scores are refused: a NaN would silently sort as the most (or
    least) relevant token.

    Args:
        scores (Tensor or ArrayLike): ``(seq,)`` token scores.
        most_relevant_first (bool): descending (MoRF) or ascending (LeRF) order.

    Returns:
        Tensor: ``(seq,)`` long positions.

    Raises:
        ValueError: if ``scores`` is not 1-d or holds NaN or inf.

    Examples::

        >>> relevance_order(torch.tensor([1.0, 2.0, 1.0]), most_relevant_first=True)
        tensor([1, 0, 2])
    """
    scores = as_real_tensor(scores, "scores")
    if scores.dim() != 1:
        raise ValueError(f"scores have shape {tuple(scores.shape)}; expected (seq,)")
    most_relevant_first = check_bool(most_relevant_first, "most_relevant_first")
    bad = nonfinite_rows(scores)
    if bad.numel():
        raise ValueError(
            f"scores contain NaN or inf at positions {describe(bad)}; they cannot be ranked "
            "(replace them, or explain in float64)"
        )
    return _order(scores, most_relevant_first)


def _order(scores: Tensor, most_relevant_first: bool) -> Tensor:
    return torch.sort(scores, descending=most_relevant_first, stable=True).indices


def _steps(order: Tensor, insertion: bool) -> Tensor:
    """``(L + 1, L)`` boolean masks of the replaced tokens after ``k`` steps."""
    length = order.numel()
    rank = torch.empty_like(order)
    rank[order] = torch.arange(length, device=order.device)
    changed = rank[None, :] < torch.arange(length + 1, device=order.device)[:, None]
    return ~changed if insertion else changed


def _example_args(args: tuple[Any, ...], index: int, batch: int, copies: int) -> tuple[Any, ...]:
    out = []
    for arg in args:
        if isinstance(arg, Tensor) and arg.dim() > 0 and arg.shape[0] == batch:
            arg = arg[index : index + 1].expand(copies, *arg.shape[1:])
        out.append(arg)
    return tuple(out)


def _example_targets(target: TargetType, batch: int) -> list[Any]:
    """The target of each example, still in :func:`select_target`'s conventions
    (NumPy integers and arrays are read as ints and tensors)."""
    if isinstance(target, np.integer):
        target = int(target)
    elif isinstance(target, np.ndarray):
        target = torch.from_numpy(target)
    if isinstance(target, Tensor) and target.numel() > 1:
        if target.dim() > 2 or target.shape[0] != batch:
            raise AttributionInputError(
                f"target has shape {tuple(target.shape)} for {batch} examples; pass one "
                f"target per example, shape ({batch},) or ({batch}, indices), or one for all"
            )
        return [target[index] for index in range(batch)]
    if isinstance(target, list):
        if len(target) != batch:
            raise AttributionInputError(
                f"{len(target)} targets given for a batch of {batch} examples"
            )
        return [[item] for item in target]  # repeated for the copies of the example
    return [target] * batch


def _for_copies(target: Any, copies: int) -> Any:
    """One example's target for ``copies`` perturbed versions of it."""
    if isinstance(target, list):
        return target * copies
    if isinstance(target, Tensor) and target.numel() > 1:
        return target.expand(copies, *target.shape)  # a row of indices for each copy
    return target


def _finite_outputs(output: Any, target: Any, copies: int) -> Tensor:
    """Whether each copy's explained output is finite; validates output and target."""
    if not isinstance(output, Tensor):
        return select_target(output, target, copies)  # raises its one-line error
    # The mask goes through the same selection as the output, so it checks the target.
    return select_target(torch.isfinite(output), target, copies)


@torch.no_grad()
def perturbation_curve(
    forward_func: Callable[..., Tensor],
    embeds: Tensor,
    scores: Tensor | ArrayLike,
    target: TargetType,
    replacement: Tensor | ArrayLike,
    kind: str = "morf",
    additional_forward_args: Any = None,
    batch_size: int = 64,
) -> Tensor:
    r"""Explained output after ``k = 0..L`` perturbation steps, per example.

    Bad numbers are refused with a one-line error naming the example: NaN or inf
    in ``scores`` (a NaN would rank as the most relevant token), in ``embeds`` or in
    ``replacement`` (``ValueError``), and an explained output that is NaN or inf
    after some perturbation steps (``AttributionInputError``, naming the steps), so
    that no area or mean over a data set silently becomes NaN.

    Args:
        forward_func (Callable): ``forward(embeds, *additional_forward_args)``.
        embeds (Tensor): ``(batch, seq, hidden)`` input embeddings, ``seq >= 1``.
        scores (Tensor or ArrayLike): ``(batch, seq)`` token relevance (sum over the
            hidden dimension first).
        target (int, tuple, Tensor, list or None): explained output, as in the
            attribution classes: None for one output value per example, an int
            (index of dim 1), a tuple (one index per non-batch dim, e.g.
            ``(position, token)`` for LM logits), or a list or integer tensor with
            one target per example.
        replacement (Tensor or ArrayLike): ``(hidden,)`` embedding of a removed
            token, see :func:`replacement_embedding`.
        kind (str, optional): ``"morf"``, ``"lerf"`` or ``"insertion"``.
            Default: ``"morf"``.
        additional_forward_args (Any, optional): further forward arguments; tensors
            with the batch size as first dimension are taken per example.
            Default: None.
        batch_size (int, optional): perturbed sequences per forward pass, at least
            1. Default: 64.

    Returns:
        Tensor: ``(batch, seq + 1)`` outputs; column ``k`` after ``k`` steps (column
        0 is the unperturbed output for deletion, the fully replaced input for
        insertion).

    Raises:
        ValueError: for ill-shaped or non-finite embeddings, scores or replacement,
            an unknown kind or a batch size below 1.
        AttributionInputError: for a target that does not fit the output, or an
            explained output that is NaN or inf.

    Examples::

        >>> logits = lambda x: model(inputs_embeds=x).logits
        >>> curve = perturbation_curve(logits, embeds, relevance, (-1, token), zeros, "morf")
        >>> area = curve_area(curve)
    """
    if not callable(forward_func):
        raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
    if not isinstance(kind, str) or kind not in CURVES:
        raise ValueError(f"unknown curve {kind!r}; choose from {', '.join(CURVES)}")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    embeds = as_real_tensor(embeds, "embeds")
    if embeds.dim() != 3 or 0 in embeds.shape:
        raise ValueError(
            f"embeds have shape {tuple(embeds.shape)}; expected a non-empty "
            "(batch, seq, hidden) tensor of input embeddings"
        )
    batch, length, hidden = embeds.shape
    scores = as_real_tensor(scores, "scores").to(embeds.device)
    if scores.shape != embeds.shape[:2]:
        hint = "; sum over the hidden dimension first" if scores.dim() == 3 else ""
        raise ValueError(
            f"scores have shape {tuple(scores.shape)}, expected (batch, seq) = "
            f"{tuple(embeds.shape[:2])}{hint}"
        )
    replacement = as_real_tensor(replacement, "replacement")
    if replacement.shape != (hidden,):
        raise ValueError(
            f"replacement has shape {tuple(replacement.shape)}, expected (hidden,) = ({hidden},)"
        )
    if not torch.isfinite(replacement).all():
        raise ValueError("replacement contains NaN or inf; use a finite replacement embedding")
    for name, values in (("scores", scores), ("embeds", embeds)):
        bad = nonfinite_rows(values)
        if bad.numel():
            raise ValueError(
                f"{name} of example{'s' if bad.numel() > 1 else ''} {describe(bad)} contain "
                f"NaN or inf; {name} must be finite (leave the example out or explain it in "
                "float64)"
            )
    targets = _example_targets(target, batch)
    extra = additional_forward_args
    extra = () if extra is None else (extra if isinstance(extra, tuple) else (extra,))
    replacement = replacement.to(embeds)
    curves = []
    for index in range(batch):
        order = _order(scores[index], most_relevant_first=kind != "lerf")
        masks = _steps(order, insertion=kind == "insertion")
        outputs = []
        for first in range(0, length + 1, batch_size):
            mask = masks[first : first + batch_size, :, None]
            perturbed = torch.where(mask, replacement, embeds[index])
            outputs.append(
                perturbed_outputs(
                    forward_func, perturbed, extra, index, batch, targets[index], first,
                    f"of {length} {kind} steps; the model overflows on perturbed inputs "
                    "(try another replacement or float64)",
                )
            )  # fmt: skip
        curves.append(torch.cat(outputs))
    return torch.stack(curves)


def perturbed_outputs(
    forward_func: Callable[..., Tensor],
    perturbed: Tensor,
    extra: tuple[Any, ...],
    index: int,
    batch: int,
    target: Any,
    first: int,
    steps_note: str,
) -> Tensor:
    """The explained outputs of perturbed copies of example ``index`` (one per curve step
    ``first, first + 1, ...``), refused in one line where one is NaN or inf.

    Args:
        forward_func (Callable): the forward function of the curves.
        perturbed (Tensor): the copies, stacked along dim 0.
        extra (tuple): additional forward arguments of the whole batch.
        index (int): the example.
        batch (int): examples in the batch.
        target: the example's target.
        first (int): the curve step of the first copy.
        steps_note (str): what follows "after N steps" in the error (the total and kind).

    Returns:
        Tensor: ``(copies,)`` explained outputs.
    """
    copies = perturbed.shape[0]
    output = forward_func(perturbed, *_example_args(extra, index, batch, copies))
    example_target = _for_copies(target, copies)
    try:
        finite = _finite_outputs(output, example_target, copies)
    except AttributionInputError as error:
        raise AttributionInputError(f"example {index}: {error}") from None
    if not finite.all():
        steps = first + torch.nonzero(~finite).reshape(-1)
        raise AttributionInputError(
            f"example {index}: the explained output is NaN or inf after "
            f"{describe(steps)} {steps_note}"
        )
    return select_target(output, example_target, copies)


def perturbation_curves(
    forward_func: Callable[..., Tensor],
    embeds: Tensor,
    scores: Tensor | ArrayLike,
    target: TargetType,
    replacement: Tensor | ArrayLike,
    additional_forward_args: Any = None,
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """MoRF, LeRF and insertion curves, see :func:`perturbation_curve` (same
    arguments, same refusal of NaN and inf).

    Returns:
        dict: ``{"morf": ..., "lerf": ..., "insertion": ...}``, each ``(batch, seq + 1)``.

    Examples::

        >>> curves = perturbation_curves(classify, embeds, relevance, 1, zeros)
        >>> delta_area(curves["morf"], curves["lerf"])
    """
    return {
        kind: perturbation_curve(
            forward_func,
            embeds,
            scores,
            target,
            replacement,
            kind,
            additional_forward_args,
            batch_size,
        )
        for kind in CURVES
    }


def _curves(curve: Tensor | ArrayLike, name: str) -> Tensor:
    """Check ``(..., L + 1)`` curves: at least two points, all finite."""
    curve = as_real_tensor(curve, name)
    if curve.dim() == 0 or curve.shape[-1] < 2:
        raise ValueError(
            f"{name} has shape {tuple(curve.shape)}; a curve needs at least 2 points "
            "(k = 0..L with L >= 1) along the last dimension"
        )
    bad = ~torch.isfinite(curve)
    if bad.any():
        if curve.dim() == 1:
            where = f"at steps {describe(torch.nonzero(bad).reshape(-1))}"
        else:
            rows = torch.nonzero(bad.any(-1))
            rows = rows.reshape(-1) if curve.dim() == 2 else rows
            where = f"in curve{'s' if len(rows) > 1 else ''} {describe(rows)}"
        raise ValueError(
            f"{name} contains NaN or inf {where}; leave those curves out before "
            "computing areas or averages"
        )
    return curve


def curve_area(curve: Tensor | ArrayLike, fractions: Tensor | ArrayLike | None = None) -> Tensor:
    """Trapezoid area under ``(..., L + 1)`` curves over the fractions ``k / L``, or
    over other x positions divided by their range (the mean height of the curve; over
    ``k / L`` that range is 1).

    Curves with NaN or inf are refused (a NaN area would make every mean over a
    data set NaN); leave them out first.

    Args:
        curve (Tensor or ArrayLike): curves over ``k / L``, ``k = 0..L``, ``L >= 1``.
        fractions (Tensor or ArrayLike, optional): ``(L + 1,)`` strictly increasing,
            finite x positions. Default: None (``k / L``).

    Returns:
        Tensor: ``(...)`` areas.

    Raises:
        ValueError: for fewer than 2 points or NaN/inf values (naming the curves), or
            fractions of another length, not finite or not increasing.

    Examples::

        >>> curve_area(torch.tensor([2.0, 1.0, 0.0]))
        tensor(1.)
        >>> curve_area(torch.tensor([4.0, 2.0, 0.0]), torch.tensor([0.0, 0.5, 2.0]))
        tensor(1.5000)
    """
    curve = _curves(curve, "curve")
    if fractions is None:
        return torch.trapezoid(curve, dx=1.0 / (curve.shape[-1] - 1), dim=-1)
    x = as_real_tensor(fractions, "fractions").to(curve.dtype)
    if x.shape != curve.shape[-1:]:
        raise ValueError(f"{curve.shape[-1]} curve points but fractions of shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("fractions contain NaN or inf; pass finite x positions")
    if not (x.diff() > 0).all():
        raise ValueError("fractions must increase strictly (one x position per step)")
    return torch.trapezoid(curve, x, dim=-1) / (x[-1] - x[0])


def delta_area(morf: Tensor | ArrayLike, lerf: Tensor | ArrayLike) -> Tensor:
    r"""Faithfulness ``Delta A^F = A(LeRF) - A(MoRF)`` per curve (higher is better).

    Args:
        morf (Tensor or ArrayLike): MoRF curves ``(..., L + 1)``.
        lerf (Tensor or ArrayLike): LeRF curves of the same shape.

    Returns:
        Tensor: ``(...)`` differences of the areas.

    Raises:
        ValueError: for curves of different shapes, or as :func:`curve_area`.
    """
    morf, lerf = _curves(morf, "morf"), _curves(lerf, "lerf")
    if morf.shape != lerf.shape:
        raise ValueError(
            f"morf has shape {tuple(morf.shape)} but lerf {tuple(lerf.shape)}; pass the "
            "curves of the same examples"
        )
    return curve_area(lerf) - curve_area(morf)


def resample_curve(curve: Tensor | ArrayLike, fractions: Tensor | ArrayLike) -> Tensor:
    """Linear interpolation of ``(..., L + 1)`` curves at ``fractions`` in ``[0, 1]``,
    to average curves of sequences with different lengths.

    Curves with NaN or inf are refused (interpolation would spread them).

    Args:
        curve (Tensor or ArrayLike): curves over ``k / L``, ``k = 0..L``, ``L >= 1``.
        fractions (Tensor or ArrayLike): ``(F,)`` points in ``[0, 1]``, ``F >= 1``.

    Returns:
        Tensor: ``(..., F)`` values.

    Raises:
        ValueError: for curves with fewer than 2 points or NaN/inf values, or
            fractions that are empty, not 1-d, or outside ``[0, 1]``.

    Examples::

        >>> resample_curve(torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.25, 1.0]))
        tensor([0.0000, 0.5000, 2.0000])
    """
    curve = _curves(curve, "curve")
    fractions = as_real_tensor(fractions, "fractions")
    if fractions.dim() != 1 or fractions.numel() == 0:
        raise ValueError(
            f"fractions have shape {tuple(fractions.shape)}; expected a non-empty 1-d "
            "sequence of points in [0, 1]"
        )
    outside = torch.nonzero(~((fractions >= 0) & (fractions <= 1))).reshape(-1)
    if outside.numel():
        raise ValueError(
            f"fractions must lie in [0, 1]; entries {describe(outside)} are "
            f"{describe([f'{float(v):g}' for v in fractions[outside]])}"
        )
    steps = curve.shape[-1] - 1
    position = fractions.to(device=curve.device, dtype=curve.dtype) * steps
    low = position.floor().long().clamp(max=steps - 1)
    weight = position - low.to(curve.dtype)
    return curve[..., low] * (1 - weight) + curve[..., low + 1] * weight

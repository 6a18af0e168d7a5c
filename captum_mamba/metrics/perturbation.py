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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum._utils.common import _select_targets
from torch import Tensor, nn

from captum_mamba.attr._targets import TargetType

#: Replacement kinds accepted by :func:`replacement_embedding`.
REPLACEMENTS: tuple[str, ...] = ("zero", "mean", "token")
#: Curve kinds computed by :func:`perturbation_curves`.
CURVES: tuple[str, ...] = ("morf", "lerf", "insertion")


def replacement_embedding(
    embedding: nn.Embedding | Tensor, kind: str = "zero", token_id: int | None = None
) -> Tensor:
    """The vector that replaces a removed token's embedding.

    Args:
        embedding (nn.Embedding or Tensor): the embedding layer or its
            ``(vocab, hidden)`` weight.
        kind (str, optional): ``"zero"``, ``"mean"`` (mean over the vocabulary) or
            ``"token"`` (the embedding of ``token_id``). Default: ``"zero"``.
        token_id (int, optional): the token for ``kind="token"`` (e.g. the padding
            or unknown token). Default: None.

    Returns:
        Tensor: ``(hidden,)`` replacement, detached.

    Raises:
        ValueError: for an unknown kind or a missing/out-of-range ``token_id``.
    """
    weight = (embedding.weight if isinstance(embedding, nn.Embedding) else embedding).detach()
    if kind == "zero":
        return torch.zeros_like(weight[0])
    if kind == "mean":
        return weight.mean(0)
    if kind == "token":
        if token_id is None or not 0 <= token_id < weight.shape[0]:
            raise ValueError(f"kind='token' needs a token_id in [0, {weight.shape[0]})")
        return weight[token_id].clone()
    raise ValueError(f"unknown replacement {kind!r}; choose from {', '.join(REPLACEMENTS)}")


def relevance_order(scores: Tensor, most_relevant_first: bool) -> Tensor:
    """Token positions sorted by score, ties broken by position (earlier first).

    Args:
        scores (Tensor): ``(seq,)`` token scores.
        most_relevant_first (bool): descending (MoRF) or ascending (LeRF) order.

    Returns:
        Tensor: ``(seq,)`` long positions.
    """
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


def _example_target(target: TargetType, index: int) -> TargetType:
    if isinstance(target, Tensor) and target.numel() > 1:
        return target[index].tolist() if target.dim() > 1 else int(target[index])
    if isinstance(target, list):
        return target[index]
    return target


@torch.no_grad()
def perturbation_curve(
    forward_func: Callable[..., Tensor],
    embeds: Tensor,
    scores: Tensor,
    target: TargetType,
    replacement: Tensor,
    kind: str = "morf",
    additional_forward_args: Any = None,
    batch_size: int = 64,
) -> Tensor:
    r"""Explained output after ``k = 0..L`` perturbation steps, per example.

    Args:
        forward_func (Callable): ``forward(embeds, *additional_forward_args)``.
        embeds (Tensor): ``(batch, seq, hidden)`` input embeddings.
        scores (Tensor): ``(batch, seq)`` token relevance.
        target (int, tuple, Tensor, list or None): explained output, as in Captum
            (one for all examples, or one per example).
        replacement (Tensor): ``(hidden,)`` embedding of a removed token.
        kind (str, optional): ``"morf"``, ``"lerf"`` or ``"insertion"``.
            Default: ``"morf"``.
        additional_forward_args (Any, optional): further forward arguments; tensors
            with the batch size as first dimension are taken per example.
            Default: None.
        batch_size (int, optional): perturbed sequences per forward pass. Default: 64.

    Returns:
        Tensor: ``(batch, seq + 1)`` outputs; column ``k`` after ``k`` steps (column
        0 is the unperturbed output for deletion, the fully replaced input for
        insertion).

    Examples::

        >>> curve = perturbation_curve(forward, embeds, relevance, 1, zeros, "morf")
        >>> area = curve_area(curve)
    """
    if kind not in CURVES:
        raise ValueError(f"unknown curve {kind!r}; choose from {', '.join(CURVES)}")
    if scores.shape != embeds.shape[:2]:
        raise ValueError(
            f"scores have shape {tuple(scores.shape)}, expected (batch, seq) = "
            f"{tuple(embeds.shape[:2])}"
        )
    extra = additional_forward_args
    extra = () if extra is None else (extra if isinstance(extra, tuple) else (extra,))
    batch, length, _ = embeds.shape
    replacement = replacement.to(embeds)
    curves = []
    for index in range(batch):
        order = relevance_order(scores[index], most_relevant_first=kind != "lerf")
        masks = _steps(order, insertion=kind == "insertion")
        outputs = []
        for first in range(0, length + 1, batch_size):
            mask = masks[first : first + batch_size, :, None]
            perturbed = torch.where(mask, replacement, embeds[index])
            args = _example_args(extra, index, batch, perturbed.shape[0])
            output = forward_func(perturbed, *args)
            outputs.append(_select_targets(output, _example_target(target, index)).reshape(-1))
        curves.append(torch.cat(outputs))
    return torch.stack(curves)


def perturbation_curves(
    forward_func: Callable[..., Tensor],
    embeds: Tensor,
    scores: Tensor,
    target: TargetType,
    replacement: Tensor,
    additional_forward_args: Any = None,
    batch_size: int = 64,
) -> dict[str, Tensor]:
    """MoRF, LeRF and insertion curves, see :func:`perturbation_curve`.

    Returns:
        dict: ``{"morf": ..., "lerf": ..., "insertion": ...}``, each ``(batch, seq + 1)``.
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


def curve_area(curve: Tensor) -> Tensor:
    """Trapezoid area under ``(..., L + 1)`` curves over the fractions ``k / L``.

    A single point (``L = 0``) has area 0.
    """
    steps = curve.shape[-1] - 1
    if steps == 0:
        return torch.zeros_like(curve[..., 0])
    return torch.trapezoid(curve, dx=1.0 / steps, dim=-1)


def delta_area(morf: Tensor, lerf: Tensor) -> Tensor:
    r"""Faithfulness ``Delta A^F = A(LeRF) - A(MoRF)`` per curve (higher is better)."""
    return curve_area(lerf) - curve_area(morf)


def resample_curve(curve: Tensor, fractions: Tensor) -> Tensor:
    """Linear interpolation of ``(..., L + 1)`` curves at ``fractions`` in ``[0, 1]``,
    to average curves of sequences with different lengths.

    Args:
        curve (Tensor): curves over ``k / L``, ``k = 0..L``.
        fractions (Tensor): ``(F,)`` increasing points in ``[0, 1]``.

    Returns:
        Tensor: ``(..., F)`` values.
    """
    steps = curve.shape[-1] - 1
    if steps == 0:
        return curve[..., :1].expand(*curve.shape[:-1], fractions.numel()).clone()
    position = fractions.to(curve.dtype) * steps
    low = position.floor().long().clamp(max=steps - 1)
    weight = position - low.to(curve.dtype)
    return curve[..., low] * (1 - weight) + curve[..., low + 1] * weight

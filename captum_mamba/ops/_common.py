"""Scan ops: input checks, time chunking and segment sums shared by the scans."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def check_one_dtype(op: str, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    """Raise TypeError unless the five scan inputs share one dtype."""
    if not (x.dtype == dt.dtype == A.dtype == B.dtype == C.dtype):
        raise TypeError(
            f"{op} needs one dtype for x, dt, A, B and C, got "
            f"{x.dtype}, {dt.dtype}, {A.dtype}, {B.dtype}, {C.dtype}; cast them with .to()"
        )


def chunked(tensor: Tensor, chunk: int) -> Tensor:
    """Pad dim 1 with zeros to a multiple of ``chunk`` and split it into ``(chunks, chunk)``."""
    pad = -tensor.shape[1] % chunk
    if pad:
        tensor = F.pad(tensor, (0, 0) * (tensor.dim() - 2) + (0, pad))
    return tensor.reshape(tensor.shape[0], -1, chunk, *tensor.shape[2:])


def segment_sums(steps: Tensor, dim: int = -1) -> Tensor:
    """``out[..., t, s, ...] = sum_{k=s+1..t} steps[..., k, ...]`` for ``s < t``, else 0.

    Built from a cumulative sum of masked copies rather than a difference of two
    cumulative sums, so that no large numbers cancel.

    Args:
        steps (Tensor): time at dimension ``dim``.
        dim (int, optional): the time dimension, counted from the end (negative).
            Default: -1.

    Returns:
        Tensor: ``steps`` with its time dimension replaced by the two dimensions
        ``(t, s)``.
    """
    length = steps.shape[dim]
    later = torch.ones(length, length, dtype=torch.bool, device=steps.device).tril(-1)
    later = later.view(length, length, *(1,) * (-dim - 1))
    shape = list(steps.shape)
    shape.insert(steps.dim() + dim + 1, length)
    repeated = steps.unsqueeze(dim).expand(shape)
    return repeated.masked_fill(~later, 0.0).cumsum(dim - 1)


def _batched(dims: Any) -> bool:
    """Whether an entry of a vmap rule's ``in_dims`` marks a batched tensor."""
    if isinstance(dims, tuple | list):
        return any(_batched(dim) for dim in dims)
    return dims is not None


class ScanFunction(torch.autograd.Function):
    """Base of the package's ``autograd.Function`` s: written with ``setup_context`` and
    a ``vmap`` rule, so that they run inside a vmapped backward pass (many targets at
    once, :func:`torch.autograd.grad` under :func:`torch.func.vmap`).

    There, a Function called on unbatched tensors (a layer recomputed by the memory-lean
    path) runs as usual; its backward receives the batch of cotangents through
    :func:`batched_cotangents`. Vmapping the forward itself (batched inputs) is not
    supported and raises.
    """

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], *args: Any) -> Any:
        raise NotImplementedError(
            "the scans' autograd Functions take a batch of cotangents in their backward, "
            "not a batch of inputs: vmap the backward pass (many targets), not the forward"
        )


class _Cotangents(ScanFunction):
    """``function(cotangents, *constants)`` with the cotangents given a leading batch
    dimension: of size 1 when called plainly, of the vmapped size under ``torch.func.vmap``
    (the batched backward of many targets), so that ``function`` sees every cotangent of
    the batch as ordinary tensors (see :func:`batched_cotangents`)."""

    @staticmethod
    def forward(function: Callable[..., tuple[Tensor, ...]], cotangent: Tensor, *constants: Any):
        return tuple(part[0] for part in function(cotangent[None], *constants))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        """Nothing to save: the function is a backward pass, never differentiated."""

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], function: Callable, *args: Any) -> Any:
        if _batched(in_dims[2:]):
            return ScanFunction.vmap(info, in_dims, function, *args)
        return tuple(function(args[0].movedim(in_dims[1], 0), *args[1:])), 0


def batched_cotangents(
    function: Callable[..., tuple[Tensor, ...]], cotangent: Tensor, *constants: Any
) -> tuple[Tensor, ...]:
    """Apply a hand-written backward that takes a leading batch of cotangents.

    ``function(cotangents, *constants)`` receives ``cotangents`` with a leading dimension
    ``K`` and returns gradients with the same leading dimension. Called from an
    ``autograd.Function``'s backward, this makes the backward vmap-compatible: in a plain
    backward ``K`` is 1; when ``torch.func.vmap`` runs the backward for ``K`` targets
    (:func:`torch.autograd.grad` under vmap), ``function`` gets all ``K`` cotangents at
    once as ordinary tensors, so it may keep its in-place buffers and ``out=`` operations
    and fold ``K`` into a dimension its maths already has.

    Args:
        function (Callable): the backward's maths, ``(K, *cotangent.shape)`` in,
            a tuple of ``(K, ...)`` tensors out.
        cotangent (Tensor): the gradient of the Function's output.
        *constants (Any): the saved tensors and settings ``function`` reads.

    Returns:
        tuple of Tensor: the gradients, without the leading dimension.
    """
    return _Cotangents.apply(function, cotangent, *constants)

"""Softmax attention in linear memory: query blocks with a recomputing backward.

:func:`chunked_attention` computes ``softmax(q k^T * scaling + bias) v`` one block of
queries at a time. The forward keeps only the output and the log-sum-exp of each row;
the backward recomputes each block's weights from them. Apart from the inputs, the
output and the mask, memory is ``block x keys`` per head, with the block chosen so that
one block's scores hold about :data:`BLOCK_ELEMENTS` numbers.

The gradient it returns is the attention gradient with two constant factors, as the
rules of :func:`captum_mamba.rules.functional.attention` require: the gradient of the
output is multiplied by ``value_scale`` before it enters the attention, and the
gradient of the scores ``q k^T`` by ``score_scale`` (0 gives ``q`` and ``k`` none).
Grouped and multi-query heads read their key/value head without copying it; a causal
mask is applied per block (keys past a block's last query are never read).

:func:`sdpa_attention` computes the same attention with PyTorch's
``scaled_dot_product_attention``, whose CPU and CUDA kernels (flash and memory-efficient
attention) also keep memory linear in the length for the backward; the rules' two
gradient factors are applied around it (:func:`captum_mamba.rules.functional.attention`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from captum_mamba.ops._common import ScanFunction, batched_cotangents
from captum_mamba.ops.backends import _check_choice, get_implementation

#: Scores of one query block (batch x heads x block x keys), about: the block size.
BLOCK_ELEMENTS = 1 << 20
#: Fewest queries per block (matrix products of fewer rows are slow).
MIN_BLOCK = 16
#: Query x key pairs (times batch and heads) from which ``"auto"`` computes attention in
#: query blocks rather than eagerly (below it the eager path is as fast and small).
CHUNKED_FROM_ELEMENTS = 1 << 22


def query_block(batch: int, heads: int, keys: int, queries: int) -> int:
    """Queries per block so that one block's scores hold about :data:`BLOCK_ELEMENTS`
    (at least :data:`MIN_BLOCK`)."""
    return min(queries, max(MIN_BLOCK, BLOCK_ELEMENTS // max(1, batch * heads * keys)))


def choose(impl: str | None, q: Tensor, k: Tensor, bias: Tensor | None) -> str:
    """``"eager"``, ``"chunked"`` or ``"sdpa"`` for attention of ``q`` over ``k``: the
    caller's choice (None: the current setting, see :mod:`captum_mamba.ops.backends`),
    and for ``"auto"`` eager below :data:`CHUNKED_FROM_ELEMENTS` weights or when the bias
    needs a gradient (only the eager path gives it one); above, ``"sdpa"`` without a
    bias (PyTorch's fused kernels) and ``"chunked"`` with one (its mask is read per block,
    never combined with the causal mask into a full matrix)."""
    impl = impl or get_implementation("attention")
    _check_choice("attention", impl)
    if impl != "auto":
        return impl
    size = q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2]
    if size < CHUNKED_FROM_ELEMENTS or (bias is not None and bias.requires_grad):
        return "eager"
    return "sdpa" if bias is None else "chunked"


def causal_fill(scores: Tensor, start: int) -> Tensor:
    """``scores`` of queries ``start, start + 1, ...`` (rows) over keys ``0, 1, ...``
    (columns) with the dtype's lowest value where the key comes after the query."""
    rows = torch.arange(start, start + scores.shape[-2], device=scores.device)
    columns = torch.arange(scores.shape[-1], device=scores.device)
    later = columns[None, :] > rows[:, None]
    return scores.masked_fill(later, torch.finfo(scores.dtype).min)


def _bias_block(bias: Tensor | None, shape: tuple[int, ...], start: int, stop: int, keys: int):
    """Rows ``start:stop`` and the first ``keys`` columns of ``bias`` broadcast to
    ``(batch, kv_heads, group, queries, keys)``."""
    if bias is None:
        return None
    batch, kv_heads, group, queries, width = shape
    full = bias.expand(batch, kv_heads * group, queries, width)
    return full[:, :, start:stop, :keys].unflatten(1, (kv_heads, group))


class _Blocks:
    """The query blocks of one call and the keys each reads."""

    def __init__(self, q: Tensor, k: Tensor, causal: bool, copies: int = 1) -> None:
        batch, kv_heads, group, queries, _ = q.shape
        self.keys = k.shape[-2]
        self.causal = causal
        self.size = query_block(copies * batch, kv_heads * group, self.keys, queries)
        self.starts = range(0, queries, self.size)

    def span(self, start: int, queries: int) -> tuple[int, int]:
        """The block's last query (exclusive) and the number of keys it reads."""
        stop = min(start + self.size, queries)
        return stop, min(stop, self.keys) if self.causal else self.keys


def _flat(x: Tensor) -> Tensor:
    """``(batch, kv_heads, group, rows, n)`` as ``(batch, kv_heads, group * rows, n)``:
    the queries of a key/value head's group in one matrix product with its keys."""
    return x.flatten(2, 3)


def _scores(
    q: Tensor, k: Tensor, bias: Tensor | None, scaling: float, causal: bool, start: int
) -> Tensor:
    """Scores of a block of grouped queries ``(batch, kv_heads, group, rows, dim)`` over keys
    ``(batch, kv_heads, keys, dim)``, with the bias and the causal mask."""
    scores = (_flat(q) @ k.transpose(-1, -2)).unflatten(2, q.shape[2:4]) * scaling
    if bias is not None:
        scores = scores + bias
    return causal_fill(scores, start) if causal else scores


def _attention_backward(
    grad: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    out: Tensor,
    lse: Tensor,
    settings: tuple[float, bool, float, float],
    scores_grad: bool,
) -> tuple[Tensor, ...]:
    """Gradients of :class:`_ChunkedAttention` for ``K`` cotangents ``grad`` ``(K, batch,
    kv_heads, group, queries, dim_v)`` at once, recomputing each query block's weights
    (blocks ``K`` times shorter, so that a block's ``K`` score gradients keep the size of
    one); ``(dv,)``, or ``(dq, dk, dv)`` with ``scores_grad``, each with the leading ``K``."""
    scaling, causal, value_scale, score_scale = settings
    grad = grad * value_scale
    count = grad.shape[0]
    dq = q.new_zeros(count, *q.shape) if scores_grad else None
    dk = k.new_zeros(count, *k.shape) if scores_grad else None
    dv = v.new_zeros(count, *v.shape)
    blocks = _Blocks(q, k, causal, count)
    queries = q.shape[-2]
    # b batch, h key/value head, g query head of its group, r query, s key, e/d channel
    for start in blocks.starts:
        stop, keys = blocks.span(start, queries)
        part = _bias_block(bias, (*q.shape[:-1], k.shape[-2]), start, stop, keys)
        q_block, g_block = q[..., start:stop, :], grad[..., start:stop, :]
        k_used, v_used = k[..., :keys, :], v[..., :keys, :]
        scores = _scores(q_block, k_used, part, scaling, causal, start)
        weights = torch.exp(scores - lse[..., start:stop, None])
        dv[..., :keys, :] += torch.einsum("bhgrs,kbhgre->kbhse", weights, g_block)
        if dq is None or dk is None:
            continue
        row = (g_block * out[..., start:stop, :]).sum(-1, keepdim=True)
        d_weights = torch.einsum("kbhgre,bhse->kbhgrs", g_block, v_used)
        d_scores = weights * (d_weights - row) * (scaling * score_scale)
        dq[..., start:stop, :] = torch.einsum("kbhgrs,bhsd->kbhgrd", d_scores, k_used)
        dk[..., :keys, :] += torch.einsum("kbhgrs,bhgrd->kbhsd", d_scores, q_block)
    return (dv,) if dq is None or dk is None else (dq, dk, dv)


class _ChunkedAttention(ScanFunction):
    @staticmethod
    def forward(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        bias: Tensor | None,
        scaling: float,
        causal: bool,
        value_scale: float,
        score_scale: float,
    ) -> tuple[Tensor, Tensor]:
        blocks = _Blocks(q, k, causal)
        queries = q.shape[-2]
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(q.shape[:-1])
        for start in blocks.starts:
            stop, keys = blocks.span(start, queries)
            part = _bias_block(bias, (*q.shape[:-1], k.shape[-2]), start, stop, keys)
            scores = _scores(q[..., start:stop, :], k[..., :keys, :], part, scaling, causal, start)
            top = scores.amax(-1, keepdim=True)
            weights = torch.exp(scores - top)
            total = weights.sum(-1, keepdim=True)
            values = _flat(weights) @ v[..., :keys, :]
            out[..., start:stop, :] = values.unflatten(2, weights.shape[2:4]) / total
            lse[..., start:stop] = (top + total.log()).squeeze(-1)
        return out, lse

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
        q, k, v, bias, *settings = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(q, k, v, bias, *output)
        ctx.settings = tuple(settings)

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, bias, out, lse = ctx.saved_tensors
        scores_grad = ctx.settings[3] != 0.0 and any(ctx.needs_input_grad[:2])
        grads = batched_cotangents(
            _attention_backward, grad, q, k, v, bias, out, lse, ctx.settings, scores_grad
        )
        dq, dk, dv = grads if scores_grad else (None, None, *grads)
        return dq, dk, dv, None, None, None, None, None


def chunked_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Tensor | None,
    scaling: float,
    causal: bool,
    value_scale: float,
    score_scale: float,
) -> Tensor:
    r"""Softmax attention ``softmax(q k^T * scaling + bias) v`` in query blocks, with the
    gradient of the output scaled by ``value_scale`` and that of ``q k^T`` by
    ``score_scale``.

    Args:
        q (Tensor): ``(batch, heads, queries, dim)``.
        k (Tensor): ``(batch, kv_heads, keys, dim)``; ``heads`` is a multiple of
            ``kv_heads`` (query head ``h`` reads key/value head ``h // group``).
        v (Tensor): ``(batch, kv_heads, keys, dim_v)``.
        bias (Tensor or None): additive mask broadcastable to
            ``(batch, heads, queries, keys)``; it receives no gradient.
        scaling (float): factor of the scores.
        causal (bool): query ``i`` attends to keys ``j <= i`` only (on top of ``bias``).
        value_scale (float): factor of the gradient entering the attention.
        score_scale (float): factor of the gradient of ``q k^T``.

    Returns:
        Tensor: ``(batch, heads, queries, dim_v)``.
    """
    group = q.shape[1] // k.shape[1]
    grouped = q.unflatten(1, (k.shape[1], group))
    out, _ = _ChunkedAttention.apply(
        grouped, k, v, None if bias is None else bias.detach(), scaling, causal,
        value_scale, score_scale,
    )  # fmt: skip
    return out.flatten(1, 2)


def sdpa_attention(
    q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, scaling: float, causal: bool
) -> Tensor:
    """Softmax attention ``softmax(q k^T * scaling + bias) v`` by PyTorch's
    ``scaled_dot_product_attention`` (its ordinary gradient).

    Without a bias its fused kernels keep memory linear in the length, forward and
    backward. A bias is passed as the kernel's mask (it receives no gradient); with a
    causal mask as well, the two are combined into one ``queries x keys`` mask, so
    ``"auto"`` leaves that case to :func:`chunked_attention`.

    Args:
        q (Tensor): ``(batch, heads, queries, dim)``.
        k (Tensor): ``(batch, kv_heads, keys, dim)``; ``heads`` is a multiple of
            ``kv_heads`` (query head ``h`` reads key/value head ``h // group``).
        v (Tensor): ``(batch, kv_heads, keys, dim_v)``.
        bias (Tensor or None): additive mask broadcastable to
            ``(batch, heads, queries, keys)``.
        scaling (float): factor of the scores.
        causal (bool): query ``i`` attends to keys ``j <= i`` only (on top of ``bias``).

    Returns:
        Tensor: ``(batch, heads, queries, dim_v)``.
    """
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    mask = None if bias is None else bias.detach()
    if mask is not None and causal:
        shape = (*torch.broadcast_shapes(mask.shape[:-2], q.shape[:-2]), q.shape[-2], k.shape[-2])
        mask, causal = causal_fill(mask.expand(shape), 0), False
    # The fused CPU kernel takes values as wide as the queries (else PyTorch falls back
    # to its quadratic reference path): zero channels change neither scores nor outputs.
    dim, dim_v = q.shape[-1], v.shape[-1]
    pad = torch.nn.functional.pad
    if dim_v < dim:
        v = pad(v, (0, dim - dim_v))
    elif dim_v > dim:
        q, k = pad(q, (0, dim_v - dim)), pad(k, (0, dim_v - dim))
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=scaling
    )
    return out[..., :dim_v]

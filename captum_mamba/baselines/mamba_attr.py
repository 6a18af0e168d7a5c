"""Baselines: Mamba-Attribution (Ali et al., 2024), gradient-weighted hidden-attention rollout.

Per layer ``l``:

- ``P_l = mean_d max(alpha_l[d], 0) / max_{d,i,j} max(alpha_l, 0)``: the positive part
  of the hidden attention, min-max normalised (its minimum is 0: the upper triangle
  is zero) and averaged over channels (summed over the scans of a layer, normalised by
  their largest element); the softmax attention of an attention layer (hybrid models)
  enters the same way, averaged over heads;
- ``s_l[j] = max_h max(dy/dr_l[j, h], 0)``, min-max normalised over the tokens: the
  positive gradient of the explained output with respect to the residual stream
  ``r_l`` entering layer ``l``;
- ``A_l[i, j] = P_l[i, j] * s_l[j]``.

The layers are combined by :func:`~captum_mamba.baselines.rollout.attention_rollout`
and the relevance of token ``j`` for the output at position ``t`` is entry ``[t, j]``.
All normalisations are per example. The explained output is selected as in every
method of this package (:func:`captum_mamba.attr.targets.select_target`).
"""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import GradientAttribution
from torch import Tensor

from captum_mamba.attr.forward import explanation_mode
from captum_mamba.attr.targets import TargetType, select_target
from captum_mamba.baselines.hidden_attention import positive_hidden_attention
from captum_mamba.baselines.recording import LayerRecord
from captum_mamba.baselines.rollout import (
    MambaAttentionRollout,
    attention_rollout,
    in_original_order,
    mask_attention,
    scan_inputs,
    scatter_row,
)


def min_max(values: Tensor, dim: int | tuple[int, ...] = -1) -> Tensor:
    """``(v - min) / (max - min)`` along ``dim``; constant slices become ones."""
    low = values.amin(dim=dim, keepdim=True)
    spread = values.amax(dim=dim, keepdim=True) - low
    return torch.where(spread > 0, (values - low) / spread.clamp_min(1e-300), 1.0)


class MambaAttr(MambaAttentionRollout, GradientAttribution):
    r"""Mamba-Attribution: hidden attention weighted by positive residual gradients, rolled out.

    Args:
        model (nn.Module): a model that MambaLRP explains (any supported architecture);
            the gradient is taken at the input of each residual layer (the residual
            stream).
        forward_func (Callable, optional): function of the inputs (and
            ``additional_forward_args``) that runs ``model``. Default: for Hugging Face
            models, ``forward(inputs_embeds, attention_mask=None)``.
        start_layer (int, optional): first layer of the rollout. Default: 0.
        leaf_size (int, optional): see :func:`positive_hidden_attention`. Default: 8.
        chunk_elements (int, optional): work-buffer size. Default: ``2**22``.

    Examples::

        >>> attr = MambaAttr(classifier)
        >>> scores = attr.attribute(embeds, target=1)              # (batch, seq)
        >>> scores = MambaAttr(lm).attribute(embeds, target=(-1, token_id))
    """

    def attribute(
        self,
        inputs: Tensor,
        target: TargetType = None,
        additional_forward_args: Any = None,
        position: int = -1,
    ) -> Tensor:
        r"""Mamba-Attr relevance of every token for the target output.

        Args:
            inputs (Tensor): ``(batch, seq, hidden)`` input embeddings.
            target (int, tuple, Tensor, list, optional): explained output, as in
                :meth:`captum_mamba.MambaLRP.attribute` (e.g. a class id, or
                ``(position, token)`` for LM logits); None only for an output with one
                value per example. Default: None.
            additional_forward_args (Any, optional): further forward arguments (e.g.
                the attention mask). Default: None.
            position (int, optional): sequence position whose rollout row is read
                (the position of the explained output). Default: -1.

        Returns:
            Tensor: ``(batch, seq)`` token relevances.

        Raises:
            AttributionInputError: for ill-fitting inputs or targets.
        """
        length, stop, extra = self._prepare(inputs, position, additional_forward_args)
        with explanation_mode():
            leaf = inputs.detach().clone().requires_grad_()
            output, layers = self._record(leaf, extra)
            explained = select_target(output, target, inputs.shape[0])
            states = [layer.hidden_states for layer in layers]
            wanted = [s for s in states if s is not None and s.requires_grad]
            grads = iter(torch.autograd.grad(explained.sum(), wanted, allow_unused=True))
        grads_by_layer = [
            next(grads) if s is not None and s.requires_grad else None for s in states
        ]
        rows = length if any(layer.bidirectional for layer in layers) else stop
        attentions = (
            self._weighted_attention(layer, grad, rows)
            for layer, grad in zip(layers, grads_by_layer, strict=True)
        )
        return scatter_row(attention_rollout(attentions)[:, stop - 1, :rows], length)

    def _positive_attention(self, layer: LayerRecord, rows: int) -> tuple[Tensor, Tensor]:
        """The layer's positive attention, ``(batch, rows, rows)``, and its largest
        element per example (see the module docstring)."""
        positive, largest = None, None
        for ssm in layer.ssms:
            mean, peak = positive_hidden_attention(
                scan_inputs(ssm, rows), self.leaf_size, self.chunk_elements
            )
            mean = in_original_order(mean, ssm)[:, :rows, :rows]
            positive = mean if positive is None else positive + mean
            largest = peak if largest is None else torch.maximum(largest, peak)
        for attention in layer.attentions:
            mean = attention.weights.mean(1)[:, :rows, :rows]
            peak = attention.weights.flatten(1).amax(1)
            positive = mean if positive is None else positive + mean
            largest = peak if largest is None else torch.maximum(largest, peak)
        return positive, largest

    @staticmethod
    def _weigh(positive: Tensor, largest: Tensor, weight: Tensor) -> Tensor:
        """``A[i, j] = P[i, j] / largest * s[j]``."""
        largest = largest.where(largest > 0, torch.ones_like(largest))
        return positive / largest[:, None, None] * weight[:, None, :]

    def _weighted_attention(self, layer: LayerRecord, grad: Tensor | None, rows: int) -> Tensor:
        """Gradient-weighted positive attention of one layer, ``(batch, rows, rows)``."""
        positive, largest = self._positive_attention(layer, rows)
        if grad is None:
            weight = positive.new_ones(positive.shape[0], rows)
        else:
            weight = min_max(grad[:, :rows].detach().clamp_min(0).amax(-1))
        return mask_attention(self._weigh(positive, largest, weight), layer.padding_mask)

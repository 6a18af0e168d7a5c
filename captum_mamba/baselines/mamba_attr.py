"""Baselines: Mamba-Attribution (Ali et al., 2024), gradient-weighted hidden-attention rollout.

Per layer ``l``:

- ``P_l = mean_d max(alpha_l[d], 0) / max_{d,i,j} max(alpha_l, 0)``: the positive part
  of the hidden attention, min-max normalised (its minimum is 0: the upper triangle
  is zero) and averaged over channels;
- ``s_l[j] = max_h max(dy/dr_l[j, h], 0)``, min-max normalised over the tokens: the
  positive gradient of the explained output with respect to the residual stream
  ``r_l`` entering layer ``l``;
- ``A_l[i, j] = P_l[i, j] * s_l[j]``.

The layers are combined by :func:`~captum_mamba.baselines.rollout.attention_rollout`
and the relevance of token ``j`` for the output at position ``t`` is entry ``[t, j]``.
All normalisations are per example.
"""

from __future__ import annotations

from typing import Any

import torch
from captum._utils.common import _select_targets
from captum.attr import GradientAttribution
from torch import Tensor

from captum_mamba.attr._targets import TargetType
from captum_mamba.baselines.hidden_attention import positive_hidden_attention
from captum_mamba.baselines.rollout import (
    MambaAttentionRollout,
    MixerCall,
    attention_rollout,
    mask_attention,
    mixer_call,
    recorded_calls,
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
        model (nn.Module): a model containing supported SSM mixers (transformers
            ``MambaMixer``); the gradient is taken at the input of each mixer's
            parent block (the residual stream).
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
                Captum (e.g. a class id, or ``(position, token)`` for LM logits).
                Default: None.
            additional_forward_args (Any, optional): further forward arguments (e.g.
                the attention mask). Default: None.
            position (int, optional): sequence position whose rollout row is read
                (the position of the explained output). Default: -1.

        Returns:
            Tensor: ``(batch, seq)`` token relevances.
        """
        length, stop, extra = self._prepare(inputs, position, additional_forward_args)
        leaf = inputs.detach().requires_grad_()
        with (
            recorded_calls(self.blocks) as block_calls,
            recorded_calls(self.mixers) as calls,
            torch.enable_grad(),
        ):
            explained = _select_targets(self.forward_func(leaf, *extra), target)
        residuals = [args[0] if args else kw["hidden_states"] for _, args, kw in block_calls]
        grads = torch.autograd.grad(explained.sum(), residuals, allow_unused=True)
        layers = list(zip((mixer_call(*c) for c in calls), grads, strict=True))
        attentions = (
            self._layer_attention(call, grad, stop) for call, grad in layers[self.start_layer :]
        )
        return scatter_row(attention_rollout(attentions)[:, stop - 1], length)

    def _layer_attention(self, call: MixerCall, grad: Tensor | None, stop: int) -> Tensor:
        """Gradient-weighted positive hidden attention of one layer, ``(batch, t, t)``."""
        if grad is None:
            grad = torch.zeros_like(call.hidden_states)
        weight = min_max(grad[:, :stop].detach().clamp_min(0).amax(-1))
        positive, largest = positive_hidden_attention(
            call.ssm_inputs(stop), self.leaf_size, self.chunk_elements
        )
        largest = largest.where(largest > 0, torch.ones_like(largest))
        attention = positive / largest[:, None, None] * weight[:, None, :]
        return mask_attention(attention, call.attention_mask)

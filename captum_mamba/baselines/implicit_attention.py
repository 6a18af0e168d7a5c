r"""Baselines: the implicit attention of Mamba layers (Zimerman, Ali and Wolf, ICLR 2025,
"Explaining Modern Gated-Linear RNNs via a Unified Implicit Attention Formulation").

Ali et al.'s hidden attention (:mod:`captum_mamba.baselines.hidden_attention`) covers the
selective scan only. The implicit attention folds the whole mixer into one causal
token-to-token matrix per channel. A Mamba-1 mixer maps its (normalised) input ``a`` to

.. math::

    o_i = W_o\Big(\mathrm{silu}(z_i) \odot \sum_{t \le i} P_{it} \odot s_t \odot
          \big(\textstyle\sum_k w_k \odot x_{t-K+1+k} + b_c\big)\Big) + b_o,

with ``x = W_x a + b_x`` and ``z = W_z a + b_z`` the two halves of the input projection,
``w`` the depthwise causal convolution (kernel ``K``, bias ``b_c``), ``s = sigmoid`` of the
convolution's output (``s_t`` times the convolution's output is the SiLU that feeds the
scan) and ``P`` the scan's per-channel hidden attention with its skip ``D`` on the
diagonal. With the two gates ``s`` and ``silu(z)`` held at their forward values (diagonal
per token, as in the paper), channel ``d`` of the mixer is the causal attention

.. math::

    \Omega[d, i, j] = \mathrm{silu}(z_i)_d \sum_{t=j}^{\min(i, j+K-1)} P[d, i, t]\,
                      s_{t, d}\, w_{d, K-1-(t-j)},

the product ``Z P S M`` of the output gate, the hidden attention, the SiLU's gate and the
convolution's Toeplitz matrix. The input projection ``W_x`` (with its bias ``b_x``) plays the
part of a value projection and ``W_o`` that of an output projection, so that exactly

.. math::

    o_i = W_o\Big(\sum_{j \le i} \Omega[:, i, j] \odot x_j + \beta_i\Big) + b_o, \qquad
    \beta_i = \mathrm{silu}(z_i) \odot \sum_{t \le i} P_{it} \odot s_t \odot b_c,

the convolution's bias entering through the documented bias term ``beta`` (zero when the
convolution has no bias). ``tests/test_implicit_attention.py`` checks ``Omega`` against
loops over time and this identity against the mixer's own output.

:class:`ImplicitAttentionRollout` aggregates as Ali et al.'s rollout does: each layer's
``Omega`` averaged over channels, the identity added for the residual, rows normalised,
the layers chained by matrix products. :class:`ImplicitAttentionAttribution` is the
paper's attribution method: the same rollout of the positive implicit attention weighted
by the positive gradient of the explained output at each layer's input (Mamba-Attr's
recipe, :mod:`captum_mamba.baselines.mamba_attr`, with ``Omega`` for the hidden
attention).

Mamba-2 (SSD) mixers give the same matrices: the scan is recorded as the selective scan it
equals (:func:`~captum_mamba.baselines.hidden_attention.ssd_as_selective`: one scalar
decay per head, ``B`` and ``C`` shared by a group of heads), the convolution's ``x``
channels make ``M`` and ``S`` (its ``B`` and ``C`` channels feed the scan's coefficients,
held at their forward values like ``dt``), and the output gate is the gated RMSNorm's
factor ``g_i = weight * silu(z_i) / rms_group(y_i * silu(z_i))``, with the normaliser, like
the gates, at its forward value: ``Omega[d, i, j] = g_{i, d} sum_t P[d, i, t] s_{t, d}
w_{d, K-1-(t-j)}``.

LaTIM (:mod:`captum_mamba.baselines.latim`) is
built on the same matrices.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_mamba._captum import format_additional_forward_args
from captum_mamba.adapters import UnsupportedModelError
from captum_mamba.adapters.blocks import norm_epsilon
from captum_mamba.baselines.hidden_attention import hidden_attention_matrices
from captum_mamba.baselines.mamba_attr import MambaAttr, min_max
from captum_mamba.baselines.recording import LayerRecord, record_layers
from captum_mamba.baselines.rollout import (
    MambaAttentionRollout,
    check_token_embeddings,
    mask_attention,
)
from captum_mamba.rules import functional as R


@dataclass(frozen=True)
class MixerAttention:
    r"""The implicit attention of one Mamba mixer and what it is applied to.

    Args:
        omega (Tensor): ``(batch, channels, L, L)`` causal implicit attention ``Omega``.
        values (Tensor): ``(batch, L, channels)`` the convolution's input
            ``x = W_x a + b_x``.
        value_bias (Tensor): ``(channels,)`` its bias ``b_x`` (zeros without one).
        bias (Tensor): ``(batch, L, channels)`` the convolution bias's term ``beta``.
        out_proj (nn.Linear): the output projection ``W_o, b_o``.
    """

    omega: Tensor
    values: Tensor
    value_bias: Tensor
    bias: Tensor
    out_proj: nn.Linear

    def inner(self, values: Tensor | None = None) -> Tensor:
        """``sum_j Omega[:, i, j] * values_j``: the gated scan output for ``values``.

        Args:
            values (Tensor, optional): ``(batch, L, channels)``. Default: :attr:`values`.

        Returns:
            Tensor: ``(batch, L, channels)``, without the bias term.
        """
        values = self.values if values is None else values
        return torch.einsum("bcij,bjc->bic", self.omega, values)

    def output(self) -> Tensor:
        """The mixer's output ``W_o (Omega x + beta) + b_o``, ``(batch, L, hidden)``."""
        out = (self.inner() + self.bias) @ self.out_proj.weight.to(self.omega.dtype).T
        if self.out_proj.bias is not None:
            out = out + self.out_proj.bias.to(out.dtype)
        return out


def _mixer_parts(block: nn.Module, path: str) -> tuple[nn.Module, bool]:
    """The block's mixer and whether it is a Mamba-2 (SSD) mixer."""
    mixer = getattr(block, "mixer", None)
    norm = getattr(block, "norm", None)
    common = ("in_proj", "conv1d", "out_proj")
    mamba1 = all(isinstance(getattr(mixer, name, None), nn.Module) for name in common) and all(
        isinstance(getattr(mixer, name, None), nn.Module) for name in ("x_proj", "dt_proj")
    )
    mamba2 = all(isinstance(getattr(mixer, name, None), nn.Module) for name in common) and (
        isinstance(getattr(getattr(mixer, "norm", None), "group_size", None), int)
    )
    if not isinstance(getattr(norm, "weight", None), Tensor) or not (mamba1 or mamba2):
        raise UnsupportedModelError(
            f"{path} ({type(block).__name__}): the implicit attention is derived for "
            "transformers' Mamba-1 and Mamba-2 blocks (RMS norm, mixer with in_proj, "
            "conv1d, out_proj, and x_proj and dt_proj or a gated norm) only"
        )
    return mixer, mamba2


def _causal_conv(kernel: Tensor, x: Tensor) -> Tensor:
    """Depthwise causal convolution of ``(batch, L, channels)`` with ``(channels, K)``,
    without bias."""
    width, length = kernel.shape[1], x.shape[1]
    out = torch.zeros_like(x)
    for k in range(width):
        shift = width - 1 - k
        if shift < length:
            out[:, shift:] += kernel[:, k] * x[:, : length - shift]
    return out


def _gated_norm_factor(norm: nn.Module, y: Tensor, z: Tensor) -> Tensor:
    """Mamba-2's output gate ``weight * silu(z) / rms_group(y * silu(z))``, with the
    normaliser at its forward value: the factor that multiplies the scan output ``y``."""
    gate = F.silu(z)
    groups = (y * gate).unflatten(-1, (-1, norm.group_size))
    inverse_rms = torch.rsqrt(groups.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight.to(y.dtype) * gate * inverse_rms.expand_as(groups).flatten(-2)


def mixer_attention(block: nn.Module, layer: LayerRecord) -> MixerAttention:
    r"""The implicit attention of one Mamba-1 or Mamba-2 mixer from its recorded forward
    pass.

    Args:
        block (nn.Module): the residual block (``norm`` and ``mixer``), e.g. a
            transformers ``MambaBlock`` or ``Mamba2Block``.
        layer (LayerRecord): its recorded forward pass (input and scan).

    Returns:
        MixerAttention: ``Omega``, the values ``x``, the bias term and ``W_o``.

    Raises:
        UnsupportedModelError: for blocks that are not Mamba-1 or Mamba-2 blocks.
    """
    mixer, mamba2 = _mixer_parts(block, layer.path)
    if len(layer.ssms) != 1 or layer.ssms[0].reverse or layer.attentions:
        raise UnsupportedModelError(
            f"{layer.path} ({type(block).__name__}): the implicit attention needs one "
            "forward Mamba-1 or Mamba-2 scan per layer"
        )
    ssm = layer.ssms[0].inputs
    dtype = ssm.x.dtype
    with torch.no_grad():
        # the normalised input as the package's forward computed it (transformers'
        # own RMSNorm rounds through float32)
        norm = block.norm
        a = R.rms_norm(
            layer.hidden_states.detach().to(dtype), norm.weight.to(dtype), norm_epsilon(norm), False
        )
        length, channels = a.shape[1], ssm.x.shape[-1]
        projected = a @ mixer.in_proj.weight.to(dtype).T
        if mixer.in_proj.bias is not None:
            projected = projected + mixer.in_proj.bias.to(dtype)
        # Mamba-1: in_proj -> [x, z]; Mamba-2: in_proj -> [z, x, B, C, dt]
        start, gate_start = (channels, 0) if mamba2 else (0, channels)
        values = projected[..., start : start + channels]
        z = projected[..., gate_start : gate_start + channels]
        in_bias = mixer.in_proj.bias
        value_bias = (
            torch.zeros(channels, dtype=dtype)
            if in_bias is None
            else in_bias[start : start + channels].to(dtype)
        )
        kernel = mixer.conv1d.weight.to(dtype)[:channels, 0]  # (channels, K)
        conv_bias = mixer.conv1d.bias
        conv_bias = (
            torch.zeros(channels, dtype=dtype) if conv_bias is None else conv_bias[:channels]
        ).to(dtype)
        gate_in = torch.sigmoid(_causal_conv(kernel, values) + conv_bias)  # s
        mixing = hidden_attention_matrices(ssm)  # (batch, channels, L, L)
        if ssm.D is not None:
            mixing = mixing + torch.diag_embed(ssm.D[:, None].expand(channels, length))
        mixing = mixing * gate_in.transpose(1, 2)[:, :, None, :]  # P_it s_t
        if mamba2:
            gate_out = _gated_norm_factor(mixer.norm, layer.ssms[0].output.to(dtype), z)
        else:
            gate_out = F.silu(z)
        gate_out = gate_out.transpose(1, 2)[..., None]  # (batch, channels, L, 1)
        # Omega[b, d, i, j] = g_i sum_k P_{i, j+k} s_{j+k} w_{K-1-k}
        width = kernel.shape[1]
        omega = torch.zeros_like(mixing)
        for k in range(min(width, length)):
            omega[..., : length - k] += mixing[..., k:] * kernel[:, width - 1 - k, None, None]
        omega = omega * gate_out
        bias = (gate_out * mixing).sum(-1).transpose(1, 2) * conv_bias
    return MixerAttention(omega, values, value_bias, bias, mixer.out_proj)


class ImplicitAttentionRollout(MambaAttentionRollout):
    r"""Rollout of the implicit attention of Mamba-1 and Mamba-2 models (Zimerman et al.,
    ICLR 2025).

    Each layer's implicit attention (:func:`mixer_attention`: convolution, SiLU gate,
    scan and output gate in one matrix per channel) is averaged over channels, and the
    layers from ``start_layer`` on are combined by
    :func:`~captum_mamba.baselines.rollout.attention_rollout` (identity for the
    residual, rows normalised), as :class:`~captum_mamba.baselines.MambaAttentionRollout`
    combines the hidden attention. Token relevance for the output at ``position`` is the
    rollout's row ``position``; tokens after it get zero. The explanation does not depend
    on the explained class (``target`` is accepted for a uniform API and ignored).

    Args:
        model (nn.Module): a transformers Mamba-1 or Mamba-2 model (``MambaModel``,
            ``MambaForCausalLM`` or a classifier built on them); other models are refused
            in one line when explained.
        forward_func (Callable, optional): runs ``model`` on the inputs. Default: for
            Hugging Face models, ``forward(inputs_embeds, attention_mask=None)``.
        start_layer (int, optional): first layer of the rollout, counted from 0
            (negative counts from the last). Default: 0.

    Raises:
        ValueError: if ``start_layer`` is not an int in range.

    Examples::

        >>> rollout = ImplicitAttentionRollout(model)
        >>> scores = rollout.attribute(model.get_input_embeddings()(ids))  # (batch, seq)
    """

    def __init__(
        self,
        model: nn.Module,
        forward_func: Callable[..., Tensor] | None = None,
        start_layer: int = 0,
    ) -> None:
        super().__init__(model, forward_func, start_layer)

    def mixer_attentions(
        self, inputs: Tensor, additional_forward_args: Any = None
    ) -> list[tuple[LayerRecord, MixerAttention]]:
        """The implicit attention of every layer.

        Args:
            inputs (Tensor): ``(batch, seq, hidden)`` input embeddings.
            additional_forward_args (Any, optional): further forward arguments.
                Default: None.

        Returns:
            list of tuple: per layer (first first), its record and its
            :class:`MixerAttention`.
        """
        check_token_embeddings(inputs)
        extra = format_additional_forward_args(additional_forward_args) or ()
        with torch.no_grad():
            _, layers = record_layers(
                self.model, lambda: self.forward_func(inputs.detach(), *extra)
            )
        return [(layer, self._mixer_attention(layer)) for layer in layers]

    def layer_attentions(self, inputs: Tensor, additional_forward_args: Any = None) -> list[Tensor]:
        """The channel mean of every layer's implicit attention.

        Args:
            inputs (Tensor): ``(batch, seq, hidden)`` input embeddings.
            additional_forward_args (Any, optional): further forward arguments.
                Default: None.

        Returns:
            list of Tensor: ``(batch, seq, seq)`` per layer, lower-triangular, with the
            rows and columns of padded positions zeroed.
        """
        return [
            mask_attention(attention.omega.mean(1), layer.padding_mask)
            for layer, attention in self.mixer_attentions(inputs, additional_forward_args)
        ]

    def _mixer_attention(self, layer: LayerRecord) -> MixerAttention:
        return mixer_attention(self.model.get_submodule(layer.path), layer)

    def _layer_attention(self, layer: LayerRecord, rows: int) -> Tensor:
        """The channel mean of the layer's implicit attention over its first ``rows``
        rows (the attention is causal: the rows after them do not change these)."""
        omega = self._mixer_attention(layer).omega[:, :, :rows, :rows]
        return mask_attention(omega.mean(1), layer.padding_mask)


class ImplicitAttentionAttribution(ImplicitAttentionRollout, MambaAttr):
    r"""Gradient-weighted implicit attention of Mamba-1 and Mamba-2 models: the
    attribution method of Zimerman et al. (ICLR 2025), Mamba-Attr's recipe
    (:class:`~captum_mamba.baselines.MambaAttr`, Ali et al.) on the implicit attention.

    Per layer ``l`` (as the authors' released evaluation code computes it):

    - ``P_l = mean_d max(Omega_l[d], 0)``: the channel mean of the positive part of the
      implicit attention (:func:`mixer_attention`);
    - ``s_l[j] = max_h max(dy/dr_l[j, h], 0)``, min-max normalised over the tokens: the
      positive gradient of the explained output ``y`` with respect to the residual
      stream ``r_l`` entering the layer;
    - ``A_l = minmax(P_l[i, j] s_l[j])``, min-max normalised over the whole matrix.

    The layers from ``start_layer`` on are combined by
    :func:`~captum_mamba.baselines.rollout.attention_rollout` and the relevance of token
    ``j`` for the output at ``position`` is the entry ``[position, j]``. Unlike
    :class:`ImplicitAttentionRollout` the explanation depends on the explained output
    (``target``), through the gradients.

    Args:
        model (nn.Module): a transformers Mamba-1 or Mamba-2 model; other models are
            refused in one line when explained.
        forward_func (Callable, optional): runs ``model`` on the inputs. Default: for
            Hugging Face models, ``forward(inputs_embeds, attention_mask=None)``.
        start_layer (int, optional): first layer of the rollout. Default: 0.

    Examples::

        >>> attribution = ImplicitAttentionAttribution(lm)
        >>> scores = attribution.attribute(embeds, target=(-1, token_id))  # (batch, seq)
    """

    def _positive_attention(self, layer: LayerRecord, rows: int) -> tuple[Tensor, Tensor]:
        """``P_l`` over the first ``rows`` rows, and ones (no separate scale)."""
        omega = self._mixer_attention(layer).omega[:, :, :rows, :rows]
        positive = omega.clamp_min(0).mean(1)
        return positive, positive.new_ones(positive.shape[0])

    @staticmethod
    def _weigh(positive: Tensor, largest: Tensor, weight: Tensor) -> Tensor:
        """``minmax(P[i, j] s[j])`` over each example's matrix."""
        return min_max(positive * weight[:, None, :], dim=(1, 2))

r"""Baselines: LaTIM, token-to-token interactions of Mamba layers (Pitorro and Treviso,
ACL 2025, "LaTIM: Measuring Latent Token-to-Token Interactions in Mamba Models").

A Mamba-1 mixer maps its (normalised) input ``a`` to

.. math::

    o_i = W_o\Big(\mathrm{silu}(z_i) \odot \sum_{t \le i} P_{it} \odot s_t \odot
          \big(\textstyle\sum_k w_k \odot x_{t-K+1+k} + b_c\big)\Big) + b_o,

with ``x = W_x a + b_x`` and ``z = W_z a + b_z`` the two halves of the input projection,
``w`` the depthwise causal convolution (kernel ``K``, bias ``b_c``), ``s = sigmoid`` of
the convolution's output (so that ``s_t`` times the convolution's output is the SiLU that
feeds the scan), and ``P`` the scan's per-channel hidden attention plus its skip ``D`` on
the diagonal (:func:`~captum_mamba.baselines.hidden_attention.hidden_attention_matrices`).
With the gates ``s`` and ``silu(z)`` taken as the values of the forward pass, ``o_i`` is
linear in the inputs ``a_j`` of the earlier tokens, and so is exactly a sum

.. math::

    o_i = \sum_{j \le i} T_{ij} + \beta_i, \qquad
    T_{ij} = W_o\Big(\mathrm{silu}(z_i) \odot \sum_{k} P_{i,j+k} \odot s_{j+k} \odot
             w_{K-1-k} \odot W_x a_j\Big),

where ``beta_i`` collects the biases ``b_x``, ``b_c`` and ``b_o`` (no token's).
``T`` is built from the mixer's implicit attention
(:func:`~captum_mamba.baselines.implicit_attention.mixer_attention`, the per-channel
matrices ``Omega`` multiplying ``W_x a_j``). Mamba-2 mixers decompose the same way: the
scan has one scalar decay per head and ``B``, ``C`` per group, and the output gate
``silu(z)`` becomes the gated RMSNorm's factor ``weight * silu(z) / rms_group(y * silu(z))``
with the normaliser held at its forward value (as the gates are; see
:mod:`~captum_mamba.baselines.implicit_attention`). The
decomposition reproduces the mixer's output exactly (``tests/test_latim.py`` checks it
against transformers' own forward). Each residual layer adds its input: the layer output
``h_i + o_i`` has the contributions ``C_{ij} = T_{ij} + [i = j] h_i``.

Two aggregations turn the ``(L, L, hidden)`` contributions into token-to-token scores:

- ``"l2"``: ``||C_ij||_2``, normalised to sum 1 over ``j``;
- ``"alti"`` (ALTI, Ferrando et al., EMNLP 2022): ``max(0, ||y_i||_1 - ||y_i - C_ij||_1)``
  with ``y_i = sum_j C_ij`` the layer output without its biases, normalised to sum 1.

As in ALTI, the token relevance for the output at position ``t`` is row ``t`` of the
product of the layers' score matrices (last layer first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from captum_mamba._captum import format_additional_forward_args
from captum_mamba.adapters import UnsupportedModelError
from captum_mamba.attr.forward import check_model, default_forward
from captum_mamba.attr.targets import TargetType
from captum_mamba.baselines.implicit_attention import mixer_attention
from captum_mamba.baselines.recording import LayerRecord, record_layers
from captum_mamba.baselines.rollout import (
    check_token_embeddings,
    compose_layers,
    target_position,
)

#: The aggregations of :class:`LaTIM`.
AGGREGATIONS = ("l2", "alti")


def latim_contributions(block: nn.Module, layer: LayerRecord) -> tuple[Tensor, Tensor]:
    r"""The LaTIM decomposition of one Mamba-1 or Mamba-2 mixer's output, from its implicit
    attention (:func:`~captum_mamba.baselines.implicit_attention.mixer_attention`).

    Args:
        block (nn.Module): the residual block (``norm`` and ``mixer``), e.g. a
            transformers ``MambaBlock``.
        layer (LayerRecord): its recorded forward pass (input and scan).

    Returns:
        tuple: ``T`` of shape ``(batch, L, L, hidden)`` with ``T[b, i, j]`` the
        contribution of token ``j`` to the mixer's output at ``i`` (zero for ``j > i``),
        and the ``(batch, L, hidden)`` bias part ``beta``; ``T.sum(2) + beta`` is the
        mixer's output.

    Raises:
        UnsupportedModelError: for blocks that are not Mamba-1 or Mamba-2 blocks.
    """
    attention = mixer_attention(block, layer)
    dtype = attention.omega.dtype
    with torch.no_grad():
        bias_x = attention.value_bias
        tokens = attention.values - bias_x  # W_x a_j, without the bias
        weight_out = attention.out_proj.weight.to(dtype)
        inner = attention.omega.permute(0, 2, 3, 1) * tokens[:, None]
        contributions = inner @ weight_out.T
        bias_inner = attention.bias + attention.inner(bias_x.expand_as(tokens))
        beta = bias_inner @ weight_out.T
        if attention.out_proj.bias is not None:
            beta = beta + attention.out_proj.bias.to(dtype)
    return contributions, beta


def aggregate(contributions: Tensor, residual: Tensor, aggregation: str) -> Tensor:
    r"""Token-to-token scores of one residual layer from its contributions.

    Args:
        contributions (Tensor): ``(batch, L, L, hidden)`` mixer contributions ``T``.
        residual (Tensor): ``(batch, L, hidden)`` the layer's input ``h``, added to
            token ``i``'s own contribution.
        aggregation (str): ``"l2"`` or ``"alti"`` (see the module docstring).

    Returns:
        Tensor: ``(batch, L, L)`` non-negative scores, each row summing to 1.

    Raises:
        ValueError: for another aggregation.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    total = contributions + torch.diag_embed(residual.transpose(1, 2)).permute(0, 2, 3, 1)
    if aggregation == "l2":
        scores = total.norm(dim=-1)
    else:
        output = total.sum(2, keepdim=True)
        distance = (output - total).abs().sum(-1)
        scores = (output.abs().sum(-1) - distance).clamp(min=0)
    sums = scores.sum(-1, keepdim=True)
    return scores / torch.where(sums > 0, sums, torch.ones_like(sums))


class LaTIM(Attribution):
    r"""LaTIM token relevance for Mamba-1 and Mamba-2 models (Pitorro and Treviso, ACL 2025).

    Each layer's output is decomposed exactly into contributions of the input tokens
    (:func:`latim_contributions`), scored with the ``"l2"`` or ``"alti"`` aggregation
    (:func:`aggregate`) and composed over the layers as ALTI does; the relevance of the
    output at ``position`` is a row of that product. The explanation does not depend on
    the explained class (``target`` is accepted for a uniform API and ignored), and the
    scores are non-negative and sum to 1.

    Args:
        model (nn.Module): a transformers Mamba-1 or Mamba-2 model (``MambaModel``,
            ``MambaForCausalLM`` or a classifier built on them).
        forward_func (Callable, optional): runs ``model`` on the inputs. Default: for
            Hugging Face models, ``forward(inputs_embeds, attention_mask=None)``.
        aggregation (str, optional): ``"l2"`` or ``"alti"``. Default: ``"alti"``.

    Examples::

        >>> latim = LaTIM(model, aggregation="l2")
        >>> scores = latim.attribute(model.get_input_embeddings()(ids))  # (batch, seq)
        >>> maps = latim.layer_scores(embeds)  # list of (batch, seq, seq), one per layer
    """

    def __init__(
        self,
        model: nn.Module,
        forward_func: Callable[..., Tensor] | None = None,
        aggregation: str = "alti",
    ) -> None:
        check_model(model, None)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        super().__init__(forward_func or default_forward(model, "inputs_embeds"))
        self.model = model
        self.aggregation = aggregation

    def decompositions(
        self, inputs: Tensor, additional_forward_args: Any = None
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        """The decomposition of every layer.

        Args:
            inputs (Tensor): ``(batch, seq, hidden)`` input embeddings.
            additional_forward_args (Any, optional): further forward arguments.
                Default: None.

        Returns:
            list of tuple: per layer, its input ``h``, contributions ``T`` and bias
            part ``beta`` (see :func:`latim_contributions`).
        """
        check_token_embeddings(inputs)
        extra = format_additional_forward_args(additional_forward_args) or ()
        with torch.no_grad():
            _, layers = record_layers(self.model, lambda: self.forward_func(inputs, *extra))
        result = []
        for layer in layers:
            block = self.model.get_submodule(layer.path)
            contributions, beta = latim_contributions(block, layer)
            result.append((layer.hidden_states.detach(), contributions, beta))
        return result

    def layer_scores(self, inputs: Tensor, additional_forward_args: Any = None) -> list[Tensor]:
        """The token-to-token scores of every layer.

        Args:
            inputs (Tensor): ``(batch, seq, hidden)`` input embeddings.
            additional_forward_args (Any, optional): further forward arguments.
                Default: None.

        Returns:
            list of Tensor: ``(batch, seq, seq)`` per layer; row ``i`` scores the tokens
            for the layer's output at ``i``.
        """
        return [
            aggregate(contributions, hidden.to(contributions.dtype), self.aggregation)
            for hidden, contributions, _ in self.decompositions(inputs, additional_forward_args)
        ]

    def attribute(
        self,
        inputs: Tensor,
        target: TargetType = None,
        additional_forward_args: Any = None,
        position: int = -1,
    ) -> Tensor:
        r"""LaTIM relevance of every token for the output at ``position``.

        Args:
            inputs (Tensor): ``(batch, seq, hidden)`` input embeddings.
            target (optional): ignored (LaTIM is class-independent).
            additional_forward_args (Any, optional): further forward arguments.
                Default: None.
            position (int, optional): sequence position of the explained output.
                Default: -1 (the last position).

        Returns:
            Tensor: ``(batch, seq)`` token relevances (non-negative, summing to 1).
        """
        check_token_embeddings(inputs)
        row = target_position(position, inputs.shape[1])
        layers = self.layer_scores(inputs, additional_forward_args)
        if not layers:
            name = type(self.model).__name__
            raise UnsupportedModelError(f"{name} has no Mamba-1 or Mamba-2 layer")
        return compose_layers(layers)[:, row]

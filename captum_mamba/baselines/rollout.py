"""Baselines: attention rollout over Mamba's hidden attention (Ali et al., 2024).

Each layer's hidden attention is averaged over channels (summed over the scans of the
layer, e.g. both directions of a bidirectional Vim block, a backward scan's attention
flipped to the original order); the softmax attention of the attention layers of hybrid
models is averaged over heads and enters the rollout the same way, so a hybrid's rollout
chains Mamba and attention layers in their order. The residual connection is accounted
for by adding the
identity, rows are normalised to sum to one, and the layers are chained by matrix
products (Abnar & Zuidema's rollout). The relevance of token ``j`` for the output at
position ``t`` is the rollout entry ``[t, j]``.

The scans are recorded by :func:`~captum_mamba.baselines.recording.record_layers`, so
rollout runs on every architecture that MambaLRP explains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from captum_mamba._captum import format_additional_forward_args
from captum_mamba.adapters import Plan, plan_rules
from captum_mamba.adapters.backend import KINDS
from captum_mamba.attr.forward import check_model, default_forward
from captum_mamba.attr.targets import AttributionInputError, TargetType
from captum_mamba.baselines.hidden_attention import (
    DEFAULT_CHUNK_ELEMENTS,
    DEFAULT_LEAF_SIZE,
    SelectiveSSMInputs,
    mean_hidden_attention,
)
from captum_mamba.baselines.recording import LayerRecord, SSMRecord, record_layers
from captum_mamba.rules import MambaRules


def compose_layers(matrices: Iterable[Tensor]) -> Tensor:
    r"""The product ``M_K ... M_1`` of per-layer token-to-token matrices (first layer
    first), consumed one at a time: the composition of the layers' maps that rollout,
    LaTIM and the gradient-weighted implicit attention share.

    Args:
        matrices (iterable of Tensor): ``(batch, L, L)`` per layer, first layer first;
            row ``i`` holds the weights of output position ``i``.

    Returns:
        Tensor: ``(batch, L, L)`` their product, last layer leftmost.

    Raises:
        ValueError: if ``matrices`` is empty.
    """
    joint: Tensor | None = None
    for matrix in matrices:
        joint = matrix if joint is None else matrix @ joint
    if joint is None:
        raise ValueError("the composition of the layers needs at least one layer")
    return joint


def _with_residual(attention: Tensor) -> Tensor:
    """``(I + A) / rowsum(I + A)``: one layer of rollout."""
    mixed = attention + torch.eye(
        attention.shape[-1], dtype=attention.dtype, device=attention.device
    )
    total = mixed.sum(-1, keepdim=True)
    # Rows of signed attention can sum to ~0; keep the sign, avoid dividing by 0.
    tiny = torch.finfo(total.dtype).tiny
    total = torch.where(total.abs() < tiny, torch.full_like(total, tiny), total)
    return mixed / total


def attention_rollout(attentions: Iterable[Tensor]) -> Tensor:
    r"""Rollout ``prod_l normalise(I + A_l)`` of per-layer attention matrices.

    The matrices are consumed one at a time (first layer first), so a generator keeps
    only one layer's attention and the running product in memory.

    Args:
        attentions (iterable of Tensor): ``(batch, L, L)`` attention of each layer,
            first layer first; row ``i`` holds the weights of output position ``i``.

    Returns:
        Tensor: ``(batch, L, L)`` rollout ``M_K ... M_1`` with
        ``M_l = (I + A_l) / rowsum(I + A_l)``.

    Raises:
        ValueError: if ``attentions`` is empty.
    """
    return compose_layers(_with_residual(attention) for attention in attentions)


def check_token_embeddings(inputs: Any) -> None:
    """Check that ``inputs`` is a finite floating ``(batch, seq, hidden)`` tensor.

    Raises:
        AttributionInputError: naming what is wrong.
    """
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point() or inputs.dim() != 3:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise AttributionInputError(
            f"inputs must be floating (batch, seq, hidden) embeddings, got {shape}; "
            "embed token ids with model.get_input_embeddings() first"
        )
    if inputs.shape[0] == 0 or inputs.shape[1] == 0:
        raise AttributionInputError(f"inputs has shape {tuple(inputs.shape)}: nothing to explain")
    if not torch.isfinite(inputs).all():
        raise AttributionInputError("inputs contains NaN or inf")


def target_position(position: int, length: int) -> int:
    """Normalise a (possibly negative) sequence position.

    Raises:
        AttributionInputError: if ``position`` is not an int in ``[-length, length)``.
    """
    if isinstance(position, bool) or not isinstance(position, int):
        raise AttributionInputError(f"position must be an int, got {position!r}")
    if not -length <= position < length:
        raise AttributionInputError(
            f"position {position} is out of range for sequences of length {length}"
        )
    return position % length


def mask_attention(attention: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Zero the rows and columns of padded positions of ``(batch, L, L)`` attention."""
    if attention_mask is None:
        return attention
    keep = attention_mask[:, : attention.shape[-1]].to(attention.dtype)
    return attention * keep[:, :, None] * keep[:, None, :]


def scatter_row(row: Tensor, length: int) -> Tensor:
    """Pad ``(batch, t + 1)`` token scores with zeros to ``(batch, length)``."""
    return torch.cat([row, row.new_zeros(row.shape[0], length - row.shape[1])], dim=1)


def scan_inputs(ssm: SSMRecord, stop: int) -> SelectiveSSMInputs:
    """The inputs of a recorded scan over the positions that are computed (all of them
    for a backward scan, else the first ``stop``)."""
    return ssm.inputs if ssm.reverse else ssm.inputs.prefix(stop)


def in_original_order(attention: Tensor, ssm: SSMRecord) -> Tensor:
    """``(..., L, L)`` attention of a scan, flipped back if it ran backwards."""
    return attention.flip(-1).flip(-2) if ssm.reverse else attention


#: Op kinds that mix positions: the layers containing one are the layers of the rollout.
MIXING_KINDS = frozenset(kind.name for kind in KINDS.values() if kind.mixes_positions)


def _mixing_layers(plan: Plan) -> list[str]:
    """Paths of the residual layers that contain a scan or a softmax attention (layers of
    MLPs alone, as in Nemotron-H, are not recorded and do not count)."""
    mixers = [
        entry.path
        for entry in plan.entries
        if entry.handler is not None and set(entry.handler.sites.values()) & MIXING_KINDS
    ]
    return [
        entry.path
        for entry in plan.entries
        if entry.block
        and any(path == entry.path or path.startswith(f"{entry.path}.") for path in mixers)
    ]


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


class MambaAttentionRollout(Attribution):
    r"""Attention rollout over the hidden attention of Mamba models.

    Token relevance for the output at sequence position ``t`` is row ``t`` of the
    rollout of the channel-averaged hidden attention of all layers from
    ``start_layer`` on. The explanation does not depend on the explained class (the
    ``target`` argument is accepted for a uniform API and ignored). In a causal model,
    tokens after ``t`` get zero.

    Args:
        model (nn.Module): a model that MambaLRP explains (any supported architecture).
        forward_func (Callable, optional): function of the inputs (and
            ``additional_forward_args``) that runs ``model``. Default: for Hugging Face
            models, ``forward(inputs_embeds, attention_mask=None)``.
        start_layer (int, optional): first layer of the rollout, counted from 0 (negative
            counts from the last). Default: 0.
        leaf_size (int, optional): see :func:`mean_hidden_attention`. Default: 8.
        chunk_elements (int, optional): work-buffer size. Default: ``2**22``.

    Raises:
        UnsupportedModelError: if a module of ``model`` is not covered by an adapter.
        ValueError: if ``start_layer``, ``leaf_size`` or ``chunk_elements`` is out of
            range.

    Examples::

        >>> rollout = MambaAttentionRollout(model)
        >>> scores = rollout.attribute(model.get_input_embeddings()(ids))  # (batch, seq)
    """

    def __init__(
        self,
        model: nn.Module,
        forward_func: Callable[..., Tensor] | None = None,
        start_layer: int = 0,
        leaf_size: int = DEFAULT_LEAF_SIZE,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        check_model(model, None)
        plan = plan_rules(model, MambaRules.gradient_x_input())
        super().__init__(forward_func or default_forward(model, "inputs_embeds"))
        self.model = model
        layers = len(_mixing_layers(plan)) or 1
        if isinstance(start_layer, bool) or not isinstance(start_layer, int):
            raise ValueError(f"start_layer must be an int, got {start_layer!r}")
        if not -layers <= start_layer < layers:
            raise ValueError(
                f"start_layer {start_layer} is out of range for a model with {layers} layers"
            )
        self.start_layer = start_layer
        self.leaf_size = _check_count("leaf_size", leaf_size)
        self.chunk_elements = _check_count("chunk_elements", chunk_elements)

    def _record(self, inputs: Tensor, extra: tuple[Any, ...]) -> tuple[Tensor, list[LayerRecord]]:
        output, layers = record_layers(self.model, lambda: self.forward_func(inputs, *extra))
        return output, layers[self.start_layer :]

    @staticmethod
    def _prepare(
        inputs: Tensor, position: int, additional_forward_args: Any
    ) -> tuple[int, int, tuple[Any, ...]]:
        """Checked ``(length, stop, extra)``: rows up to ``stop`` are explained."""
        check_token_embeddings(inputs)
        length = inputs.shape[1]
        stop = target_position(position, length) + 1
        return length, stop, format_additional_forward_args(additional_forward_args) or ()

    def _layer_attention(self, layer: LayerRecord, rows: int) -> Tensor:
        """The layer's attention over its first ``rows`` rows: the channel mean of each
        scan's hidden attention plus the head mean of each softmax attention."""
        total = None
        for ssm in layer.ssms:
            mean = mean_hidden_attention(
                scan_inputs(ssm, rows), self.leaf_size, self.chunk_elements
            )
            mean = in_original_order(mean, ssm)[:, :rows, :rows]
            total = mean if total is None else total + mean
        for attention in layer.attentions:
            mean = attention.weights.mean(1)[:, :rows, :rows]
            total = mean if total is None else total + mean
        return mask_attention(total, layer.padding_mask)

    def attribute(
        self,
        inputs: Tensor,
        target: TargetType = None,
        additional_forward_args: Any = None,
        position: int = -1,
    ) -> Tensor:
        r"""Rollout relevance of every token for the output at ``position``.

        Args:
            inputs (Tensor): ``(batch, seq, hidden)`` input embeddings.
            target (optional): ignored (rollout is class-independent).
            additional_forward_args (Any, optional): further forward arguments (e.g.
                the attention mask). Default: None.
            position (int, optional): sequence position of the explained output.
                Default: -1 (the last position).

        Returns:
            Tensor: ``(batch, seq)`` token relevances.
        """
        length, stop, extra = self._prepare(inputs, position, additional_forward_args)
        with torch.no_grad():
            _, layers = self._record(inputs.detach(), extra)
        rows = length if any(layer.bidirectional for layer in layers) else stop
        attentions = (self._layer_attention(layer, rows) for layer in layers)
        return scatter_row(attention_rollout(attentions)[:, stop - 1, :rows], length)


class RawHiddenAttention(MambaAttentionRollout):
    r"""Raw hidden attention of one layer (Ali et al., "The Hidden Attention of Mamba
    Models", ACL 2025): the channel mean of the layer's hidden attention (plus the head
    mean of a softmax attention in the same layer), without rollout.

    Token relevance for the output at sequence position ``t`` is row ``t`` of that
    matrix. The explanation does not depend on the explained class (``target`` is
    accepted for a uniform API and ignored).

    Args:
        model (nn.Module): a model that MambaLRP explains (any supported architecture).
        forward_func (Callable, optional): as for :class:`MambaAttentionRollout`.
        layer (int, optional): the layer, counted from 0 over the layers with a scan or
            an attention (negative counts from the last). Default: -1.
        leaf_size (int, optional): see :func:`mean_hidden_attention`. Default: 8.
        chunk_elements (int, optional): work-buffer size. Default: ``2**22``.

    Examples::

        >>> scores = RawHiddenAttention(model, layer=-1).attribute(embeds)  # (batch, seq)
    """

    def __init__(
        self,
        model: nn.Module,
        forward_func: Callable[..., Tensor] | None = None,
        layer: int = -1,
        leaf_size: int = DEFAULT_LEAF_SIZE,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    ) -> None:
        super().__init__(model, forward_func, layer, leaf_size, chunk_elements)

    def attribute(
        self,
        inputs: Tensor,
        target: TargetType = None,
        additional_forward_args: Any = None,
        position: int = -1,
    ) -> Tensor:
        r"""Raw hidden attention of every token for the output at ``position``.

        Args:
            inputs (Tensor): ``(batch, seq, hidden)`` input embeddings.
            target (optional): ignored (class-independent).
            additional_forward_args (Any, optional): further forward arguments (e.g.
                the attention mask). Default: None.
            position (int, optional): sequence position of the explained output.
                Default: -1 (the last position).

        Returns:
            Tensor: ``(batch, seq)`` token scores.
        """
        length, stop, extra = self._prepare(inputs, position, additional_forward_args)
        with torch.no_grad():
            _, layers = self._record(inputs.detach(), extra)
        layer = layers[0]
        rows = length if layer.bidirectional else stop
        return scatter_row(self._layer_attention(layer, rows)[:, stop - 1, :rows], length)

"""Baselines: attention rollout over Mamba's hidden attention (Ali et al., 2024).

Each layer's hidden attention is averaged over channels, the residual connection is
accounted for by adding the identity, rows are normalised to sum to one, and the
layers are chained by matrix products (Abnar & Zuidema's rollout). The relevance of
token ``j`` for the output at position ``t`` is the rollout entry ``[t, j]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from captum._utils.common import _format_additional_forward_args
from captum.attr import Attribution
from torch import Tensor, nn

from captum_mamba.attr._forward import default_forward
from captum_mamba.attr._targets import AttributionInputError, TargetType
from captum_mamba.baselines.hidden_attention import (
    DEFAULT_CHUNK_ELEMENTS,
    DEFAULT_LEAF_SIZE,
    SSM_INPUTS,
    SelectiveSSMInputs,
    find_mixers,
    mean_hidden_attention,
)


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
    joint: Tensor | None = None
    for attention in attentions:
        mixed = attention + torch.eye(
            attention.shape[-1], dtype=attention.dtype, device=attention.device
        )
        total = mixed.sum(-1, keepdim=True)
        # Rows of signed attention can sum to ~0; keep the sign, avoid dividing by 0.
        tiny = torch.finfo(total.dtype).tiny
        total = torch.where(total.abs() < tiny, torch.full_like(total, tiny), total)
        mixed = mixed / total
        joint = mixed if joint is None else mixed @ joint
    if joint is None:
        raise ValueError("attention_rollout needs at least one layer")
    return joint


@dataclass
class MixerCall:
    """Input of one mixer call, recorded during a forward pass."""

    mixer: nn.Module
    hidden_states: Tensor
    attention_mask: Tensor | None

    def ssm_inputs(self, length: int) -> SelectiveSSMInputs:
        """SSM inputs of the first ``length`` positions (recomputed without grad)."""
        mask = None if self.attention_mask is None else self.attention_mask[:, :length]
        with torch.no_grad():
            return SSM_INPUTS[type(self.mixer)](
                self.mixer, self.hidden_states[:, :length].detach(), mask
            )


@contextmanager
def recorded_calls(modules: Iterable[nn.Module]) -> Iterator[list[tuple[nn.Module, Any, dict]]]:
    """Record ``(module, args, kwargs)`` of every call of ``modules`` inside the block.

    Args:
        modules (iterable of nn.Module): modules to watch.

    Yields:
        list: the calls, in execution order; filled while the block runs.
    """
    calls: list[tuple[nn.Module, Any, dict]] = []

    def hook(module: nn.Module, args: Any, kwargs: dict) -> None:
        calls.append((module, args, kwargs))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def mixer_call(module: nn.Module, args: Any, kwargs: dict) -> MixerCall:
    """A :class:`MixerCall` from a recorded ``(mixer, args, kwargs)`` call."""
    hidden = args[0] if args else kwargs["hidden_states"]
    return MixerCall(module, hidden, kwargs.get("attention_mask"))


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
        AttributionInputError: if ``position`` is outside ``[-length, length)``.
    """
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


class MambaAttentionRollout(Attribution):
    r"""Attention rollout over the hidden attention of Mamba models.

    Token relevance for the output at sequence position ``t`` is row ``t`` of the
    rollout of the channel-averaged hidden attention of all layers from
    ``start_layer`` on. The explanation does not depend on the explained class (the
    ``target`` argument is accepted for a uniform API and ignored). Tokens after
    ``t`` get zero (the model is causal).

    Args:
        model (nn.Module): a model containing supported SSM mixers (transformers
            ``MambaMixer``).
        forward_func (Callable, optional): function of the inputs (and
            ``additional_forward_args``) that runs ``model``. Default: for Hugging Face
            models, ``forward(inputs_embeds, attention_mask=None)``.
        start_layer (int, optional): first layer of the rollout. Default: 0.
        leaf_size (int, optional): see :func:`mean_hidden_attention`. Default: 8.
        chunk_elements (int, optional): work-buffer size. Default: ``2**22``.

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
        super().__init__(forward_func or default_forward(model, "inputs_embeds"))
        self.model = model
        pairs = find_mixers(model)
        self.blocks = [block for block, _ in pairs]
        self.mixers = [mixer for _, mixer in pairs]
        self.start_layer = start_layer
        self.leaf_size = leaf_size
        self.chunk_elements = chunk_elements

    @staticmethod
    def _prepare(
        inputs: Tensor, position: int, additional_forward_args: Any
    ) -> tuple[int, int, tuple[Any, ...]]:
        """Checked ``(length, stop, extra)``: rows up to ``stop`` are explained."""
        check_token_embeddings(inputs)
        length = inputs.shape[1]
        stop = target_position(position, length) + 1
        return length, stop, _format_additional_forward_args(additional_forward_args) or ()

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
        with recorded_calls(self.mixers) as calls, torch.no_grad():
            self.forward_func(inputs.detach(), *extra)
        layers = [mixer_call(*call) for call in calls][self.start_layer :]
        attentions = (
            mask_attention(
                mean_hidden_attention(call.ssm_inputs(stop), self.leaf_size, self.chunk_elements),
                call.attention_mask,
            )
            for call in layers
        )
        return scatter_row(attention_rollout(attentions)[:, stop - 1], length)

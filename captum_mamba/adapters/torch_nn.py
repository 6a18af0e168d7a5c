"""Architecture adapter for the ordinary ``torch.nn`` layers of a user's own network
around Mamba blocks (an input projection, norms, activations, an MLP head, attention
layers of a home-made hybrid):

- norms with the LN-rule (``1 / std`` or ``1 / rms`` constant, as for every norm of a
  Mamba model): ``nn.LayerNorm``, ``nn.RMSNorm`` (over the last dimension) and
  ``nn.GroupNorm`` (over each group of channels and the positions);
- elementwise activations with the identity rule (``f(x) / x`` constant, relevance
  passes unchanged): ``nn.GELU``, ``nn.ReLU``, ``nn.LeakyReLU``, ``nn.Tanh``,
  ``nn.Sigmoid`` (setting ``activation``) and ``nn.SiLU`` (setting ``silu``, as the SiLU
  of the Mamba blocks);
- ``nn.MultiheadAttention`` (AttnLRP or CP-LRP, setting ``attention``; its packed input
  projection with the linear rule), ``nn.TransformerEncoderLayer`` (a residual layer)
  and ``nn.TransformerEncoder``.

Linear and convolutional layers, batch norms in eval mode, dropout, flattening and
pooling over time are on the allow-list of :mod:`captum_mamba.adapters.base`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.families import declare_family
from captum_mamba.rules.functional import attention_weights

FAMILY = declare_family(
    __name__,
    "torch.nn",
    ("nn.MultiheadAttention", "nn.TransformerEncoderLayer", "nn.TransformerEncoder"),
    (),
)


def _last_dims(norm: nn.Module, x: Tensor) -> None:
    shape = tuple(norm.normalized_shape)
    if len(shape) != 1:
        raise NotImplementedError(
            f"{type(norm).__name__} over {len(shape)} dimensions is not supported; "
            "normalise over the last dimension only"
        )


def layer_norm_forward(ops: BlockOps, norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """``nn.LayerNorm`` over the last dimension with the LN-rule."""
    _last_dims(norm, x)
    return ops.layer_norm("", ops.compute(x), norm.weight, norm.bias, norm.eps)


def rms_norm_forward(ops: BlockOps, norm: nn.RMSNorm, x: Tensor) -> Tensor:
    """``nn.RMSNorm`` over the last dimension with the LN-rule."""
    _last_dims(norm, x)
    x = ops.compute(x)
    eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    return ops.rms_norm("", x, norm.weight, eps)


def group_norm_forward(ops: BlockOps, norm: nn.GroupNorm, x: Tensor) -> Tensor:
    """``nn.GroupNorm`` of ``(batch, channels, *positions)`` with the LN-rule: a layer norm
    over each group's channels and positions, with the scale and shift of each channel
    spread over its positions."""
    x = ops.compute(x)
    shape, groups = x.shape, norm.num_groups
    grouped = x.reshape(shape[0], groups, -1)
    positions = grouped.shape[-1] * groups // shape[1]

    def spread(value: Tensor | None) -> Tensor | None:
        if value is None:
            return None
        return value.reshape(groups, -1, 1).expand(-1, -1, positions).reshape(groups, -1)

    out = ops.layer_norm("", grouped, spread(norm.weight), spread(norm.bias), norm.eps)
    return out.reshape(shape)


def silu_forward(ops: BlockOps, act: nn.SiLU, x: Tensor) -> Tensor:
    """``nn.SiLU`` with the identity rule (setting ``silu``)."""
    return ops.silu("", x)


def _activation(function: str) -> Any:
    def forward(ops: BlockOps, act: nn.Module, x: Tensor) -> Tensor:
        return ops.activation("", x, function)

    forward.__doc__ = f"``{function}`` with the identity rule (setting ``activation``)."
    return forward


def gelu_forward(ops: BlockOps, act: nn.GELU, x: Tensor) -> Tensor:
    """``nn.GELU`` (exact or tanh approximation) with the identity rule."""
    function = "gelu" if act.approximate == "none" else "gelu_pytorch_tanh"
    return ops.activation("", x, function)


def leaky_relu_forward(ops: BlockOps, act: nn.LeakyReLU, x: Tensor) -> Tensor:
    """``nn.LeakyReLU`` with the identity rule (``f(x) / x`` is 1 or the slope)."""
    return ops.activation("", x, "leaky_relu", act.negative_slope)


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True: not attended, PyTorch's convention) or a float mask as an
    additive bias."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, torch.finfo(dtype).min
        )
    return mask.to(dtype)


def _attention_bias(
    batch: int,
    heads: int,
    attn_mask: Tensor | None,
    key_padding_mask: Tensor | None,
    dtype: torch.dtype,
) -> Tensor | None:
    """The ``(batch, heads, queries, keys)``-broadcastable bias of ``nn.MultiheadAttention``
    from its ``attn_mask`` (``(queries, keys)`` or ``(batch * heads, queries, keys)``) and
    ``key_padding_mask`` (``(batch, keys)``)."""
    bias = _additive(attn_mask, dtype)
    if bias is not None and bias.dim() == 3:
        bias = bias.reshape(batch, heads, *bias.shape[1:])
    padding = _additive(key_padding_mask, dtype)
    if padding is not None:
        padding = padding[:, None, None, :]
        bias = padding if bias is None else bias + padding
    return bias


def _projection_weights(attention: nn.MultiheadAttention) -> list[tuple[Tensor, Tensor | None]]:
    """``(weight, bias)`` of the query, key and value projections."""
    biases = [None] * 3 if attention.in_proj_bias is None else attention.in_proj_bias.chunk(3)
    if attention._qkv_same_embed_dim:
        weights = attention.in_proj_weight.chunk(3)
    else:
        weights = (
            attention.q_proj_weight,
            attention.k_proj_weight,
            attention.v_proj_weight,
        )
    return list(zip(weights, biases, strict=True))


def multihead_attention_forward(
    ops: BlockOps,
    attention: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``nn.MultiheadAttention`` with AttnLRP or CP-LRP (setting ``attention``); the
    input projections get the linear rule, the output projection is its linear layer.

    ``is_causal`` is a hint of PyTorch's that ``attn_mask`` is the causal mask, which is
    applied as given. The attention weights it returns (``need_weights``) are those of
    the forward, without relevance.

    Raises:
        NotImplementedError: for ``add_bias_kv``, ``add_zero_attn``, and dropout on the
            attention weights in training mode.
    """
    if attention.bias_k is not None or attention.add_zero_attn:
        raise NotImplementedError(
            "nn.MultiheadAttention with add_bias_kv or add_zero_attn is not supported"
        )
    if attention.training and attention.dropout > 0:
        raise NotImplementedError(
            "nn.MultiheadAttention drops attention weights in training mode; call "
            "model.eval() before explaining"
        )
    if not attention.batch_first:  # (length, batch, width) -> (batch, length, width)
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    heads = attention.num_heads
    sites = ("q_projection", "k_projection", "v_projection")
    split = []
    for site, x, (weight, bias) in zip(
        sites, (query, key, value), _projection_weights(attention), strict=True
    ):
        projected = ops.projection(site, ops.compute(x), weight, bias)
        split.append(projected.unflatten(-1, (heads, -1)).transpose(1, 2))
    q, k, v = split
    batch, length = query.shape[0], query.shape[1]
    bias = _attention_bias(batch, heads, attn_mask, key_padding_mask, q.dtype)
    scaling = q.shape[-1] ** -0.5
    out = ops.attention("attention", q, k, v, bias, scaling)
    out = attention.out_proj(out.transpose(1, 2).reshape(batch, length, -1))
    if not attention.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    with torch.no_grad():
        weights = attention_weights(q, k, bias, scaling)
    return out, weights.mean(1) if average_attn_weights else weights


def _encoder_activation(layer: nn.TransformerEncoderLayer) -> str:
    function = layer.activation
    known = {F.relu: "relu", F.gelu: "gelu"}
    if function in known:
        return known[function]
    if type(function) in (nn.ReLU, nn.GELU) and getattr(function, "approximate", "none") == "none":
        return "relu" if isinstance(function, nn.ReLU) else "gelu"
    raise NotImplementedError(
        f"nn.TransformerEncoderLayer with the activation {function!r} is not supported; "
        "use 'relu' or 'gelu'"
    )


def transformer_encoder_layer_forward(
    ops: BlockOps,
    layer: nn.TransformerEncoderLayer,
    src: Tensor,
    src_mask: Tensor | None = None,
    src_key_padding_mask: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    """``nn.TransformerEncoderLayer`` (post- or pre-norm): self-attention and a
    feed-forward block, each in a residual sum; the identity rule on the activation."""
    function = _encoder_activation(layer)

    def attend(x: Tensor) -> Tensor:
        out = layer.self_attn(
            x,
            x,
            x,
            attn_mask=src_mask,
            key_padding_mask=src_key_padding_mask,
            need_weights=False,
            is_causal=is_causal,
        )[0]
        return layer.dropout1(out)

    def feed_forward(x: Tensor) -> Tensor:
        hidden = ops.activation("act", layer.linear1(x), function)
        return layer.dropout2(layer.linear2(layer.dropout(hidden)))

    x = ops.compute(src)
    if layer.norm_first:
        x = ops.add("attention_residual", x, attend(layer.norm1(x)))
        return ops.add("mlp_residual", x, feed_forward(layer.norm2(x)))
    x = layer.norm1(ops.add("attention_residual", x, attend(x)))
    return layer.norm2(ops.add("mlp_residual", x, feed_forward(x)))


def transformer_encoder_forward(
    ops: BlockOps,
    encoder: nn.TransformerEncoder,
    src: Tensor,
    mask: Tensor | None = None,
    src_key_padding_mask: Tensor | None = None,
    is_causal: bool | None = None,
) -> Tensor:
    """``nn.TransformerEncoder``: its layers in turn, then its optional norm (the padded
    positions stay in the sequence, without PyTorch's nested-tensor shortcut)."""
    x = src
    for layer in encoder.layers:
        x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                  is_causal=bool(is_causal))  # fmt: skip
    return x if encoder.norm is None else encoder.norm(x)


ENCODER_LAYER_CALLS = (
    "self_attn",
    "linear1",
    "linear2",
    "norm1",
    "norm2",
    "dropout",
    "dropout1",
    "dropout2",
)
_ACTIVATIONS = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}

TORCH_NN = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(nn.LayerNorm, layer_norm_forward, {"": "layer_norm"}),
            ModuleHandler(nn.RMSNorm, rms_norm_forward, {"": "rms_norm"}),
            ModuleHandler(nn.GroupNorm, group_norm_forward, {"": "layer_norm"}),
            ModuleHandler(nn.SiLU, silu_forward, {"": "silu"}),
            ModuleHandler(nn.GELU, gelu_forward, {"": "activation"}),
            ModuleHandler(nn.LeakyReLU, leaky_relu_forward, {"": "activation"}),
            *(
                ModuleHandler(cls, _activation(function), {"": "activation"})
                for cls, function in _ACTIVATIONS.items()
            ),
            ModuleHandler(
                nn.MultiheadAttention,
                multihead_attention_forward,
                {
                    "q_projection": "projection",
                    "k_projection": "projection",
                    "v_projection": "projection",
                    "attention": "attention",
                },
                ("out_proj",),
            ),
            ModuleHandler(
                nn.TransformerEncoderLayer,
                transformer_encoder_layer_forward,
                {"attention_residual": "add", "mlp_residual": "add", "act": "activation"},
                ENCODER_LAYER_CALLS,
                role="block",
            ),
            ModuleHandler(
                nn.TransformerEncoder, transformer_encoder_forward, {}, ("layers", "norm")
            ),
        ),
        blocks=(nn.MultiheadAttention,),
    )
)

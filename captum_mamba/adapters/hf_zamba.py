"""Architecture adapter for Hugging Face transformers' Zamba (``ZambaModel``,
``ZambaForCausalLM``, ``ZambaForSequenceClassification``): multi-head Mamba-1 layers
and a shared attention block that runs before some of them on the concatenation of the
hidden states with the original input embeddings.

A Mamba layer (``ZambaMambaDecoderLayer``) is ``out = x + mamba(norm(x + t))`` where
``t`` is zero, or in a hybrid layer (``ZambaHybridLayer``, a container) the output of the
shared block through a linear map: ``t = linear(block(x, embeddings))`` with

- ``ZambaAttentionDecoderLayer`` (no residual): ``mlp(norm(attn(norm([x, embeddings]))))``,
  the concatenation a routing of values, so the input embeddings receive relevance
  through every hybrid layer as well as through the residual stream;
- ``ZambaAttention``: softmax attention without position embedding, scaled by
  ``(head_dim / 2) ** -0.5``, grouped key/value heads, the model's causal and padding mask
  (:func:`~captum_mamba.adapters.blocks.self_attention`): AttnLRP or CP-LRP;
- ``ZambaMLP``: gated MLP, identity rule on the activation, half rule on the product.

The shared blocks are separate module instances with tied weights (transformers ties
``layers.*.shared_transf`` to the first one), so every call has its own modules. A model
whose hybrid layers hold one and the same block instance works too: its handler runs at
every depth (MambaLRP and rollout see each use; Captum's LRP gets one leaf per use in
the prepared copy, see :func:`captum_mamba.lrp.prepare_captum_lrp`).

``ZambaMambaMixer`` is Mamba-1 split into ``n_mamba_heads`` heads: the input projection
interleaves scan and gate channels (``x_c``, ``z_c`` = channels ``2c``, ``2c + 1``), and
each head projects its own ``dt``, ``B`` and ``C`` (``x_proj_weight``, ``dt_proj_weight``
as parameters, here grouped linear operations with the linear rule) and scans with them.
Rules: identity rule on both SiLUs, SSM rule on the scan (``B`` and ``C`` per head), half
rule on ``y * silu(z)``; norms (``ZambaRMSNorm``): LN-rule; sums as sums.

With CP-LRP and bias-free layers relevance is conserved exactly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from transformers.models.zamba.modeling_zamba import (
    ZambaAttention,
    ZambaAttentionDecoderLayer,
    ZambaForCausalLM,
    ZambaForSequenceClassification,
    ZambaHybridLayer,
    ZambaMambaDecoderLayer,
    ZambaMambaMixer,
    ZambaMLP,
    ZambaModel,
    ZambaRMSNorm,
)

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    ATTENTION_CALLS,
    ATTENTION_SITES,
    GLU_SITES,
    SELECTIVE_SITES,
    check_no_cached_keys,
    check_silu,
    mask_padding,
    self_attention,
)
from captum_mamba.adapters.hf_llama import MLP_CALLS, mlp_forward
from captum_mamba.adapters.hf_mamba import NORM_SITES, check_no_past_state, norm_forward


def _by_head(x: Tensor, heads: int) -> Tensor:
    """``(batch, seq, heads * dim)`` -> ``(heads * batch * seq, dim)``, rows grouped by head."""
    return x.unflatten(-1, (heads, -1)).permute(2, 0, 1, 3).flatten(0, 2)


def _from_heads(x: Tensor, heads: int, batch: int) -> Tensor:
    """``(heads * batch * seq, dim)`` rows grouped by head -> ``(batch, seq, heads, dim)``."""
    return x.unflatten(0, (heads, batch, -1)).permute(1, 2, 0, 3)


def mixer_forward(
    ops: BlockOps,
    mixer: ZambaMambaMixer,
    hidden_states: Tensor,
    cache: Any = None,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Multi-head Mamba-1 mixer (full-sequence form) with the SiLU, SSM and half rules."""
    check_no_past_state(mixer, {"cache": cache})
    check_silu(mixer, mixer.activation)
    x = ops.compute(hidden_states)
    batch, length, _ = x.shape
    heads, rank, state = mixer.n_mamba_heads, mixer.time_step_rank, mixer.ssm_state_size
    pairs = mixer.in_proj(mask_padding(x, attention_mask)).unflatten(-1, (-1, 2))
    u, z = pairs[..., 0], pairs[..., 1]
    u = mask_padding(ops.silu("conv_act", ops.causal_conv(mixer.conv1d, u)), attention_mask)
    sizes = [batch * length] * heads
    coefficients = ops.grouped_linear("x_proj", _by_head(u, heads), mixer.x_proj_weight, sizes)
    low, B, C = coefficients.split([rank, state, state], dim=-1)
    raw = ops.grouped_linear("dt_proj", low, mixer.dt_proj_weight, sizes)
    raw = _from_heads(raw, heads, batch).flatten(-2)
    dt = ops.time_step("time_step", raw, mixer.dt_proj_bias.flatten())
    A = -torch.exp(mixer.A_log.to(u.dtype)).flatten(0, 1)
    B, C = _from_heads(B, heads, batch), _from_heads(C, heads, batch)
    y = ops.ssm("ssm", u, dt, A, B, C, mixer.D.flatten())
    return mixer.out_proj(ops.gate("gate", y, ops.silu("gate_act", z)))


#: Sites of :func:`mixer_forward`.
MIXER_SITES = {**SELECTIVE_SITES, "x_proj": "grouped_linear", "dt_proj": "grouped_linear"}


def attend_shared(
    ops: BlockOps,
    block: Any,
    hidden_states: Tensor,
    original_hidden_states: Tensor,
    layer_idx: int,
    attention_mask: Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> Tensor:
    """``norm(attn(norm([x, embeddings])))`` of a shared attention block (Zamba and
    Zamba2) at depth ``layer_idx``; ``kwargs`` go to the attention module."""
    check_no_cached_keys(block.self_attn, cache, layer_idx)
    x = ops.compute(hidden_states)
    joined = torch.cat([x, ops.compute(original_hidden_states)], dim=-1)
    attended, _ = block.self_attn(
        block.input_layernorm(joined), layer_idx=layer_idx, attention_mask=attention_mask, **kwargs
    )
    return block.pre_ff_layernorm(attended)


def shared_block_forward(
    ops: BlockOps,
    block: ZambaAttentionDecoderLayer,
    hidden_states: Tensor,
    original_hidden_states: Tensor,
    layer_idx: int,
    attention_mask: Tensor | None = None,
    cache: Any = None,
    use_cache: bool | None = False,
    **kwargs: Any,
) -> Tensor:
    """Shared attention block ``mlp(norm(attn(norm([x, embeddings]))))`` (no residual)."""
    attended = attend_shared(
        ops, block, hidden_states, original_hidden_states, layer_idx, attention_mask, cache
    )
    return block.feed_forward(attended)


#: Children :func:`shared_block_forward` calls.
SHARED_BLOCK_CALLS = ("input_layernorm", "self_attn", "pre_ff_layernorm", "feed_forward")


def mamba_layer_forward(
    ops: BlockOps,
    layer: ZambaMambaDecoderLayer,
    hidden_states: Tensor,
    original_hidden_states: Tensor | None = None,
    layer_idx: int | None = None,
    attention_mask: Tensor | None = None,
    causal_mask: Tensor | None = None,
    cache: Any = None,
    use_cache: bool | None = False,
    position_ids: Tensor | None = None,
    transformer_hidden_states: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Mamba layer (Zamba and Zamba2) ``x + mamba(norm(x + t))``, ``t`` the shared block's
    contribution in a hybrid layer."""
    x = ops.compute(hidden_states)
    mixed = x
    if transformer_hidden_states is not None:
        mixed = ops.add("shared", x, transformer_hidden_states)
    out = layer.mamba(layer.input_layernorm(mixed), cache=cache, attention_mask=attention_mask)
    return ops.add("residual", x, out)


#: Sites of :func:`mamba_layer_forward`.
MAMBA_LAYER_SITES = {"shared": "add", "residual": "add"}


HF_ZAMBA = register_adapter(
    ArchitectureAdapter(
        name="transformers Zamba",
        models=("ZambaModel", "ZambaForCausalLM", "ZambaForSequenceClassification"),
        handlers=(
            ModuleHandler(ZambaRMSNorm, norm_forward, NORM_SITES),
            ModuleHandler(
                ZambaMambaMixer, mixer_forward, MIXER_SITES, ("in_proj", "conv1d", "out_proj")
            ),
            ModuleHandler(ZambaAttention, self_attention, ATTENTION_SITES, ATTENTION_CALLS),
            ModuleHandler(ZambaMLP, mlp_forward, GLU_SITES, MLP_CALLS),
            ModuleHandler(
                ZambaAttentionDecoderLayer,
                shared_block_forward,
                {},
                SHARED_BLOCK_CALLS,
                role="block",
            ),
            ModuleHandler(
                ZambaMambaDecoderLayer,
                mamba_layer_forward,
                MAMBA_LAYER_SITES,
                ("input_layernorm", "mamba"),
                role="block",
            ),
        ),
        containers=(
            ZambaHybridLayer,
            ZambaModel,
            ZambaForCausalLM,
            ZambaForSequenceClassification,
        ),
        blocks=(ZambaMambaMixer, ZambaAttention),
    )
)

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

from torch import Tensor

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    ATTENTION_CALLS,
    ATTENTION_SITES,
    GATED_MLP_CALLS,
    GLU_SITES,
    NORM_SITES,
    SELECTIVE_SITES,
    SHARED_BLOCK_CALLS,
    SHARED_MAMBA_LAYER_SITES,
    SelectiveParams,
    check_no_past_state,
    check_silu,
    gated_mlp_forward,
    mask_padding,
    rms_norm_forward,
    selective_branch,
    self_attention,
    shared_attention,
    shared_mamba_layer_forward,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "transformers Zamba",
    ("ZambaModel", "ZambaForCausalLM", "ZambaForSequenceClassification"),
    ("transformers.models.zamba.modeling_zamba",),
    # the shared block returns a tensor, not a tuple, from 5.4; the conformance suite
    # passes from 5.15 (earlier configurations reject its layer types)
    needs="transformers >= 5.15",
)
(
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
) = FAMILY.load(
    "ZambaAttention",
    "ZambaAttentionDecoderLayer",
    "ZambaForCausalLM",
    "ZambaForSequenceClassification",
    "ZambaHybridLayer",
    "ZambaMambaDecoderLayer",
    "ZambaMambaMixer",
    "ZambaMLP",
    "ZambaModel",
    "ZambaRMSNorm",
)


def _by_head(x: Tensor, heads: int) -> Tensor:
    """``(batch, seq, heads * dim)`` -> ``(heads * batch * seq, dim)``, rows grouped by head."""
    return x.unflatten(-1, (heads, -1)).permute(2, 0, 1, 3).flatten(0, 2)


def _from_heads(x: Tensor, heads: int, batch: int) -> Tensor:
    """``(heads * batch * seq, dim)`` rows grouped by head -> ``(batch, seq, heads, dim)``."""
    return x.unflatten(0, (heads, batch, -1)).permute(1, 2, 0, 3)


def head_params(ops: BlockOps, mixer: ZambaMambaMixer) -> SelectiveParams:
    """Branch parameters with each head's own ``dt``, ``B`` and ``C`` projections
    (grouped linear operations with the linear rule)."""
    heads, rank, state = mixer.n_mamba_heads, mixer.time_step_rank, mixer.ssm_state_size

    def coefficients(u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        batch, length, _ = u.shape
        sizes = [batch * length] * heads
        projected = ops.grouped_linear("x_proj", _by_head(u, heads), mixer.x_proj_weight, sizes)
        low, B, C = projected.split([rank, state, state], dim=-1)
        raw = ops.grouped_linear("dt_proj", low, mixer.dt_proj_weight, sizes)
        raw = _from_heads(raw, heads, batch).flatten(-2)
        return raw, _from_heads(B, heads, batch), _from_heads(C, heads, batch)

    return SelectiveParams(
        mixer.conv1d,
        coefficients,
        mixer.A_log.flatten(0, 1),
        mixer.D.flatten(),
        mixer.dt_proj_bias.flatten(),
    )


def mixer_forward(
    ops: BlockOps,
    mixer: ZambaMambaMixer,
    hidden_states: Tensor,
    cache: Any = None,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """Multi-head Mamba-1 mixer (full-sequence form) with the SiLU, SSM and half rules:
    the scan and gate channels de-interleaved, then the selective branch with per-head
    projections."""
    check_no_past_state(mixer, {"cache": cache})
    check_silu(mixer, mixer.activation)
    x = ops.compute(hidden_states)
    pairs = mixer.in_proj(mask_padding(x, attention_mask)).unflatten(-1, (-1, 2))
    y = selective_branch(ops, head_params(ops, mixer), pairs[..., 0], pairs[..., 1], attention_mask)
    return mixer.out_proj(y)


#: Sites of :func:`mixer_forward`.
MIXER_SITES = {**SELECTIVE_SITES, "x_proj": "grouped_linear", "dt_proj": "grouped_linear"}


def shared_block_forward(
    ops: BlockOps,
    block: ZambaAttentionDecoderLayer,
    hidden_states: Tensor,
    original_hidden_states: Tensor | None = None,
    *,
    layer_idx: int,
    attention_mask: Tensor | None = None,
    cache: Any = None,
    use_cache: bool | None = False,
    **kwargs: Any,
) -> Tensor:
    """Shared attention block ``mlp(norm(attn(norm([x, embeddings]))))`` (no residual);
    from transformers 5.25 the hybrid layer passes the concatenation itself."""
    attended = shared_attention(
        ops, block, hidden_states, original_hidden_states, layer_idx, attention_mask, cache
    )
    return block.feed_forward(attended)


HF_ZAMBA = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(ZambaRMSNorm, rms_norm_forward, NORM_SITES),
            ModuleHandler(
                ZambaMambaMixer, mixer_forward, MIXER_SITES, ("in_proj", "conv1d", "out_proj")
            ),
            ModuleHandler(ZambaAttention, self_attention, ATTENTION_SITES, ATTENTION_CALLS),
            ModuleHandler(ZambaMLP, gated_mlp_forward, GLU_SITES, GATED_MLP_CALLS),
            ModuleHandler(
                ZambaAttentionDecoderLayer,
                shared_block_forward,
                {},
                SHARED_BLOCK_CALLS,
                role="block",
            ),
            ModuleHandler(
                ZambaMambaDecoderLayer,
                shared_mamba_layer_forward,
                SHARED_MAMBA_LAYER_SITES,
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

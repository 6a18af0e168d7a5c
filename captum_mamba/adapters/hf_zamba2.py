"""Architecture adapter for Hugging Face transformers' Zamba2 (``Zamba2Model``,
``Zamba2ForCausalLM``, ``Zamba2ForSequenceClassification``): Mamba-2 layers and
``num_mem_blocks`` shared attention blocks that run, in turn, before some of them on the
concatenation of the hidden states with the original input embeddings.

The layers are those of Zamba (:func:`~captum_mamba.adapters.blocks.shared_attention`): a Mamba
layer is ``x + mamba(norm(x + t))``, ``t = linear(block(x, embeddings))`` in a hybrid layer
(``Zamba2HybridLayer``, a container), the block ``mlp(norm(attn(norm([x, embeddings]))))`` without
residual. What Zamba2 adds:

- the mixer ``Zamba2MambaMixer`` is the Mamba-2 mixer of transformers
  (:func:`~captum_mamba.adapters.blocks.ssd_mixer_forward`) (identity rule after the conv, SSM rule
  on the multi-head scan, identity, half and LN-rules in the gated norm ``Zamba2RMSNormGated``);
- the shared block's attention (``Zamba2Attention``) and MLP (``Zamba2MLP``) add, at each
  depth, the output of that depth's adapter (LoRA-style: two ``nn.Linear`` layers, picked
  by the ``layer_idx`` of the call) to the query, key, value and gate-up projections.
  The adapters are linear maps (linear rule) and their sums are operations, so each use
  of a block is explained with the adapter that ran;
- the attention has an optional rotary embedding (``use_mem_rope``; a function of the
  positions, no relevance passes) and scales the scores by ``(head_dim / 2) ** -0.5``:
  AttnLRP or CP-LRP; the MLP's activation gets the identity rule, its product the half
  rule.

With CP-LRP and bias-free layers relevance is conserved exactly.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    ATTENTION_CALLS,
    CONSTANT_SITES,
    GATED_NORM_SITES,
    GLU_SITES,
    NORM_SITES,
    ROTARY_ATTENTION_SITES,
    SHARED_BLOCK_CALLS,
    SHARED_MAMBA_LAYER_SITES,
    SSD_CALLS,
    SSD_SITES,
    activation_name,
    gated_norm_forward,
    glu,
    rms_norm_forward,
    self_attention,
    shared_attention,
    shared_mamba_layer_forward,
    ssd_mixer_forward,
    unchanged_forward,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "transformers Zamba2",
    ("Zamba2Model", "Zamba2ForCausalLM", "Zamba2ForSequenceClassification"),
    ("transformers.models.zamba2.modeling_zamba2",),
    # the shared block returns a tensor, not a tuple, from 5.4; models with several shared
    # blocks and adapters cannot be built before 5.17 (their weights fail to tie)
    needs="transformers >= 5.17",
)
(
    Zamba2Attention,
    Zamba2AttentionDecoderLayer,
    Zamba2ForCausalLM,
    Zamba2ForSequenceClassification,
    Zamba2HybridLayer,
    Zamba2MambaDecoderLayer,
    Zamba2MambaMixer,
    Zamba2MLP,
    Zamba2Model,
    Zamba2RMSNorm,
    Zamba2RMSNormGated,
    Zamba2RotaryEmbedding,
) = FAMILY.load(
    "Zamba2Attention",
    "Zamba2AttentionDecoderLayer",
    "Zamba2ForCausalLM",
    "Zamba2ForSequenceClassification",
    "Zamba2HybridLayer",
    "Zamba2MambaDecoderLayer",
    "Zamba2MambaMixer",
    "Zamba2MLP",
    "Zamba2Model",
    "Zamba2RMSNorm",
    "Zamba2RMSNormGated",
    "Zamba2RotaryEmbedding",
)


def attention_forward(
    ops: BlockOps,
    attention: Zamba2Attention,
    hidden_states: Tensor,
    layer_idx: int,
    attention_mask: Tensor | None = None,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Shared attention at depth ``layer_idx``: the projections plus that depth's
    adapters, the rotary embedding if the model uses one, softmax attention."""

    def project(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)
        if not attention.config.use_shared_attention_adapter:
            return q, k, v
        slot = attention.layer_dic[layer_idx]
        q = ops.add("q_adapter", q, attention.linear_q_adapter_list[slot](x))
        k = ops.add("k_adapter", k, attention.linear_k_adapter_list[slot](x))
        v = ops.add("v_adapter", v, attention.linear_v_adapter_list[slot](x))
        return q, k, v

    rotary = position_embeddings if attention.config.use_mem_rope else None
    return self_attention(
        ops, attention, hidden_states, attention_mask, rotary, project=project, **kwargs
    )


#: Sites of :func:`attention_forward`.
ATTENTION_SITES = {
    **ROTARY_ATTENTION_SITES,
    "q_adapter": "add",
    "k_adapter": "add",
    "v_adapter": "add",
}


def mlp_forward(ops: BlockOps, mlp: Zamba2MLP, hidden_state: Tensor, layer_idx: int) -> Tensor:
    """Shared gated MLP at depth ``layer_idx``: ``down(act(g) * u)`` with ``g, u`` the
    halves of ``gate_up_proj(x)`` plus that depth's adapter."""
    adapter = mlp.gate_up_proj_adapter_list[mlp.layer_dic[layer_idx]]
    projected = ops.add("adapter", mlp.gate_up_proj(hidden_state), adapter(hidden_state))
    gate, up = projected.chunk(2, dim=-1)
    return mlp.down_proj(glu(ops, gate, up, activation_name(mlp, mlp.act_fn)))


def shared_block_forward(
    ops: BlockOps,
    block: Zamba2AttentionDecoderLayer,
    hidden_states: Tensor,
    original_hidden_states: Tensor,
    layer_idx: int,
    attention_mask: Tensor | None = None,
    cache: Any = None,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    **kwargs: Any,
) -> Tensor:
    """Shared attention block ``mlp(norm(attn(norm([x, embeddings]))))`` at depth
    ``layer_idx`` (no residual)."""
    attended = shared_attention(
        ops,
        block,
        hidden_states,
        original_hidden_states,
        layer_idx,
        attention_mask,
        cache,
        position_embeddings=position_embeddings,
    )
    return block.feed_forward(attended, layer_idx)


HF_ZAMBA2 = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(Zamba2RMSNorm, rms_norm_forward, NORM_SITES),
            ModuleHandler(Zamba2RMSNormGated, gated_norm_forward, GATED_NORM_SITES),
            ModuleHandler(Zamba2RotaryEmbedding, unchanged_forward, CONSTANT_SITES),
            ModuleHandler(Zamba2MambaMixer, ssd_mixer_forward, SSD_SITES, SSD_CALLS),
            ModuleHandler(
                Zamba2Attention,
                attention_forward,
                ATTENTION_SITES,
                (
                    *ATTENTION_CALLS,
                    "linear_q_adapter_list",
                    "linear_k_adapter_list",
                    "linear_v_adapter_list",
                ),
            ),
            ModuleHandler(
                Zamba2MLP,
                mlp_forward,
                {**GLU_SITES, "adapter": "add"},
                ("gate_up_proj", "gate_up_proj_adapter_list", "down_proj"),
            ),
            ModuleHandler(
                Zamba2AttentionDecoderLayer,
                shared_block_forward,
                {},
                SHARED_BLOCK_CALLS,
                role="block",
            ),
            ModuleHandler(
                Zamba2MambaDecoderLayer,
                shared_mamba_layer_forward,
                SHARED_MAMBA_LAYER_SITES,
                ("input_layernorm", "mamba"),
                role="block",
            ),
        ),
        containers=(
            Zamba2HybridLayer,
            Zamba2Model,
            Zamba2ForCausalLM,
            Zamba2ForSequenceClassification,
        ),
        blocks=(Zamba2MambaMixer, Zamba2Attention),
    )
)

"""Conformance case and independent float64 reference: transformers Zamba2 (Mamba-2
layers; shared attention blocks taking turns before some of them, on the hidden states
concatenated with the input embeddings, with per-depth LoRA-style adapters; rotary
embedding or none; eager and SDPA attention, multi-head (transformers' attention adapters
need as many key/value heads as query heads) and multi-query heads; tied embeddings).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): the Mamba-2 mixer of the Mamba-2 case (a loop over time steps),
the shared blocks at their depths (block ``i % num_mem_blocks`` for the ``i``-th hybrid
layer, adapter ``i`` of that block added to the query, key, value and gate-up
projections), causal attention one query position at a time with the rotary embedding
applied pair by pair (the model's own float32 position table), and the rules as
``detach`` calls.
"""

from __future__ import annotations

import torch
from helpers import activation, half_product, linear, rms, rope, rope_table, softmax_attention
from torch import Tensor, nn
from transformers import Zamba2Config, Zamba2ForCausalLM

from cases import ArchitectureCase, Rule, lm_logits, perturbation, random_embeddings, times, tiny_lm
from cases.hf_mamba2 import reference_mixer

CONFIGS = {
    "two-blocks-adapters-rope-eager": dict(
        hidden_size=16, intermediate_size=24, vocab_size=32, num_attention_heads=4,
        num_key_value_heads=4, n_mamba_heads=4, mamba_d_state=4, mamba_ngroups=1,
        chunk_size=4, mamba_d_conv=4, num_mem_blocks=2, use_shared_attention_adapter=True,
        adapter_rank=4, use_mem_rope=True,
        layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "hybrid"],
        attn_implementation="eager",
    ),
    "one-block-mqa-groups-biased-sdpa": dict(
        hidden_size=12, intermediate_size=20, vocab_size=24, num_attention_heads=3,
        num_key_value_heads=1, n_mamba_heads=4, mamba_d_state=5, mamba_ngroups=2,
        chunk_size=3, mamba_d_conv=3, num_mem_blocks=1, adapter_rank=3,
        add_bias_linear=True, hidden_act="silu",
        layers_block_type=["hybrid", "mamba", "hybrid"], attn_implementation="sdpa",
    ),
}  # fmt: skip
LENGTH = 10  # not a multiple of either chunk size


def build_model(config: str, seed: int, zero_biases: bool) -> Zamba2ForCausalLM:
    perturb = perturbation(
        zero_biases,
        Rule(("*q_proj.weight", "*k_proj.weight"), times(40.0)),  # peaked attention
        # adapters as large as the projections they add to
        Rule(("*adapter_list*",), times(15.0)),
    )
    fields = {"num_hidden_layers": len(CONFIGS[config]["layers_block_type"]), **CONFIGS[config]}
    return tiny_lm(Zamba2ForCausalLM, Zamba2Config, fields, seed, perturb)


def _heads(x: Tensor, heads: int) -> Tensor:
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def _with_adapter(x: Tensor, layer: nn.Linear, adapter: nn.Module | None) -> Tensor:
    """``layer(x)`` plus the adapter: two linear maps, an identity slot (adds ``x``), or
    None (attention adapters switched off)."""
    out = linear(x, layer)
    if isinstance(adapter, nn.Sequential):
        return out + linear(linear(x, adapter[0]), adapter[1])
    return out if adapter is None else out + x


def reference_shared(block, x: Tensor, embeds: Tensor, use: int, table, rules) -> Tensor:
    """Shared block at its ``use``-th depth (adapter ``use``)."""
    attention, config = block.self_attn, block.self_attn.config
    norm = block.input_layernorm
    joined = rms(torch.cat([x, embeds], -1), norm.weight, norm.variance_epsilon, rules.norm)
    adapters = (None, None, None)
    if config.use_shared_attention_adapter:
        adapters = tuple(
            getattr(attention, f"linear_{name}_adapter_list")[use] for name in ("q", "k", "v")
        )
    q = _heads(_with_adapter(joined, attention.q_proj, adapters[0]), config.num_attention_heads)
    k = _heads(_with_adapter(joined, attention.k_proj, adapters[1]), config.num_key_value_heads)
    v = _heads(_with_adapter(joined, attention.v_proj, adapters[2]), config.num_key_value_heads)
    if table is not None:
        q, k = rope(q, *table), rope(k, *table)
    scaling = (q.shape[-1] / 2) ** -0.5  # Zamba's attention scale
    out = linear(softmax_attention(q, k, v, scaling, None, rules.attention), attention.o_proj)
    norm, mlp = block.pre_ff_layernorm, block.feed_forward
    normed = rms(out, norm.weight, norm.variance_epsilon, rules.norm)
    projected = _with_adapter(normed, mlp.gate_up_proj, mlp.gate_up_proj_adapter_list[use])
    gate, up = projected.chunk(2, dim=-1)
    product = half_product(activation(gate, config.hidden_act, rules.activation), up, rules.gate)
    return linear(product, mlp.down_proj)


def reference_logits(model: Zamba2ForCausalLM, embeds: Tensor, rules) -> Tensor:
    config = model.config
    table = rope_table(model.model.rotary_emb, embeds.shape[1]) if config.use_mem_rope else None
    hidden, use = embeds, 0
    for layer in model.model.layers:
        mamba_layer, mixed = layer, hidden
        if hasattr(layer, "shared_transformer"):
            block = layer.shared_transformer
            shared = reference_shared(block, hidden, embeds, use, table, rules)
            mamba_layer, mixed = layer.mamba_decoder, hidden + linear(shared, layer.linear)
            use += 1
        norm = mamba_layer.input_layernorm
        normed = rms(mixed, norm.weight, norm.variance_epsilon, rules.norm)
        hidden = hidden + reference_mixer(mamba_layer.mamba, normed, rules)
    final = model.model.final_layernorm
    return linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)


def rollout_layers(model: Zamba2ForCausalLM) -> int:
    """Mamba layers, plus the shared block of every hybrid layer."""
    return sum(2 if hasattr(layer, "shared_transformer") else 1 for layer in model.model.layers)


ADAPTER = "transformers Zamba2"
CASE = ArchitectureCase(
    name="hf_zamba2",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (4, 7)]),
    reference=reference_logits,
    own_output=lm_logits,
    layer="model.layers.3.shared_transformer.feed_forward.down_proj",
    num_layers=rollout_layers,
    rule_kinds=("norm", "silu", "ssm", "gate", "activation", "attention"),
    padding=True,
    conserving="cp_lrp",
    eager_attention=("two-blocks-adapters-rope-eager",),
    # left padding shifts the rotary positions: 3e-8 of the largest relevance here
    padding_rtol=1e-5,
)

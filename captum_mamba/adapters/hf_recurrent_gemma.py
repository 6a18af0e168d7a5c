"""Architecture adapter for Hugging Face transformers' RecurrentGemma (Griffin):
``RecurrentGemmaModel``, ``RecurrentGemmaForCausalLM``. Residual layers alternate a
recurrent block and local (sliding-window) attention, each followed by a GeGLU MLP.

A layer is ``h = x + temporal_block(norm(x)); out = h + mlp(norm(h))`` with

- ``RecurrentGemmaRecurrentBlock``: ``linear_out(rg_lru(conv(linear_x(x))) *
  gelu(linear_y(x)))``: the causal depthwise convolution is linear, the GeLU gets the
  identity rule and the product of the two branches the half rule;
- ``RecurrentGemmaRglru``: the real-gated linear recurrent unit
  ``h[t] = a[t] h[t-1] + sqrt(1 - a[t]^2) i[t] x[t]``, ``a[t] = exp(-8 softplus(Lambda)
  r[t])`` with the sigmoid gates ``i``, ``r`` of its input: the SSM rule keeps ``a``,
  the normaliser and the gates constant, relevance flows through ``x``
  (:func:`~captum_mamba.rules.functional.rg_lru`, computed as the selective scan it
  equals);
- ``RecurrentGemmaAttention``: softmax attention with a partial rotary embedding,
  grouped key/value heads and the sliding window of the model's mask
  (:func:`~captum_mamba.adapters.blocks.self_attention`): AttnLRP or CP-LRP;
- ``RecurrentGemmaMlp``: ``down(gelu(gate(x)) * up(x))``: identity and half rules;
- ``RecurrentGemmaRMSNorm`` (weights ``1 + w``): LN-rule; the residual sums as sums.

The model scales the embeddings by its ``normalizer`` (``sqrt(hidden)`` rounded to
bfloat16) and the language model soft-caps its logits, ``c tanh(logits / c)``: both are
operations (a constant scale; the identity rule on ``tanh`` between two constant
scales), so the explained logits are the model's. With CP-LRP and bias-free layers
relevance is conserved exactly (the argument is in ``docs/architectures.md``). The
recurrence starts at the first position: position ids that restart elsewhere, or a
filled cache, are refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    ATTENTION_CALLS,
    CONSTANT_SITES,
    GATED_MLP_CALLS,
    GLU_SITES,
    NORM_SITES,
    ROTARY_ATTENTION_SITES,
    SOFT_CAP_SITES,
    activation_name,
    check_no_cached_keys,
    gated_mlp_forward,
    keep_logits,
    self_attention,
    soft_capped,
    unchanged_forward,
)
from captum_mamba.adapters.families import declare_family, resolve

FAMILY = declare_family(
    __name__,
    "transformers RecurrentGemma",
    ("RecurrentGemmaModel", "RecurrentGemmaForCausalLM"),
    ("transformers.models.recurrent_gemma.modeling_recurrent_gemma",),
    # checked with 5.24 and 5.25 (older releases pin other versions of httpx and
    # tokenizers than this project's environment and were not run)
    needs="transformers >= 5.24",
)
(
    RecurrentGemmaRMSNorm,
    RecurrentGemmaRotaryEmbedding,
    RecurrentGemmaRglru,
    RecurrentGemmaRecurrentBlock,
    RecurrentGemmaAttention,
    RecurrentGemmaMlp,
    RecurrentGemmaDecoderLayer,
    RecurrentGemmaModel,
    RecurrentGemmaForCausalLM,
) = FAMILY.load(
    "RecurrentGemmaRMSNorm",
    "RecurrentGemmaRotaryEmbedding",
    "RecurrentGemmaRglru",
    "RecurrentGemmaRecurrentBlock",
    "RecurrentGemmaAttention",
    "RecurrentGemmaMlp",
    "RecurrentGemmaDecoderLayer",
    "RecurrentGemmaModel",
    "RecurrentGemmaForCausalLM",
)
#: transformers' factor ``c`` of the RG-LRU's decay ``exp(-c softplus(Lambda) r)``.
DECAY_SCALE = 8.0


def norm_forward(ops: BlockOps, norm: nn.Module, x: Tensor) -> Tensor:
    """RMSNorm with the weights ``1 + w``, LN-rule."""
    x = ops.compute(x)
    return ops.rms_norm("", x, 1.0 + norm.weight.to(x.dtype), norm.eps)


def rglru_forward(
    ops: BlockOps, module: nn.Module, activations: Tensor, position_ids: Tensor
) -> Tensor:
    """The RG-LRU of a sequence starting at its first position (site ``""``)."""
    starts = position_ids == 0
    if not bool(starts[:, 0].all()) or bool(starts[:, 1:].any()):
        raise NotImplementedError(
            f"{type(module).__name__} explains whole sequences: the position ids must "
            "start at 0 and not restart"
        )
    x = ops.compute(activations)
    rate = DECAY_SCALE * F.softplus(module.recurrent_param.to(x.dtype))
    return ops.rg_lru(
        "",
        x,
        module.input_gate_weight,
        module.input_gate_bias,
        module.recurrent_gate_weight,
        module.recurrent_gate_bias,
        rate,
    )


def recurrent_block_forward(
    ops: BlockOps, block: nn.Module, input_states: Tensor, position_ids: Tensor, **kwargs: Any
) -> tuple[Tensor, None]:
    """``linear_out(rg_lru(conv(linear_x(x))) * gelu(linear_y(x)))`` (sites ``y_act``,
    ``gate``); the block's convolution and recurrent states are left untouched."""
    x = ops.compute(input_states)
    y = ops.activation("y_act", block.linear_y(x), activation_name(block, block.act_fn))
    conv = ops.causal_conv(block.conv_1d, block.linear_x(x))
    mixed = block.rg_lru(conv, position_ids=position_ids)  # keyword: not on the relevance path
    return block.linear_out(ops.gate("gate", mixed, y)), None


def attention_forward(
    ops: BlockOps,
    module: nn.Module,
    hidden_states: Tensor,
    position_ids: Tensor,
    attention_mask: Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Local attention with the module's own (partial) rotary embedding."""
    position_embeddings = module.rotary_emb(hidden_states, position_ids)
    return self_attention(
        ops,
        module,
        hidden_states,
        attention_mask=attention_mask,
        position_embeddings=position_embeddings,
        cache=cache,
    )


def layer_forward(
    ops: BlockOps,
    layer: nn.Module,
    activations: Tensor,
    position_ids: Tensor,
    attention_mask: Tensor | None,
    use_cache: bool | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> Tensor:
    """The temporal block's residual sum, then the MLP's."""
    x = ops.compute(activations)
    mixed, _ = layer.temporal_block(
        layer.temporal_pre_norm(x),
        position_ids=position_ids,
        attention_mask=attention_mask,
        cache=cache,
    )
    h = ops.add("residual", x, mixed)
    return ops.add("ff_residual", h, layer.mlp_block(layer.channel_pre_norm(h)))


def model_forward(
    ops: BlockOps,
    model: nn.Module,
    input_ids: Tensor | None = None,
    position_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    use_cache: bool | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> Any:
    """The model's forward for whole sequences without a cache (site
    ``embedding_scale``: the ``normalizer``)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    check_no_cached_keys(model, cache)
    embeds = model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    x = ops.compute(embeds)
    if position_ids is None:
        position_ids = torch.arange(x.shape[1], device=x.device)[None]
    mask = attention_mask
    if not isinstance(mask, dict):
        create = resolve("transformers.masking_utils", "create_sliding_window_causal_mask")
        mask = create(
            config=model.config,
            inputs_embeds=x,
            attention_mask=mask,
            cache=None,
            position_ids=position_ids,
        )
    else:
        mask = mask["sliding_attention"]
    x = ops.scale("embedding_scale", x, model.normalizer.to(x.dtype))
    for layer in model.layers:
        x = layer(x, position_ids, mask)
    output = resolve("transformers.modeling_outputs", "BaseModelOutput")
    return output(last_hidden_state=model.final_norm(x))


def lm_forward(
    ops: BlockOps,
    lm: nn.Module,
    input_ids: Tensor | None = None,
    position_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    labels: Tensor | None = None,
    use_cache: bool | None = None,
    logits_to_keep: int | Tensor = 0,
    cache: Any = None,
    **kwargs: Any,
) -> Any:
    """The language model's forward with the soft-capped logits ``c tanh(logits / c)``
    (:func:`~captum_mamba.adapters.blocks.soft_capped`)."""
    if labels is not None:
        raise NotImplementedError(
            f"explanations compute no loss; call {type(lm).__name__} without labels"
        )
    outputs = lm.model(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=attention_mask,
        inputs_embeds=inputs_embeds,
        cache=cache,
        **kwargs,
    )
    logits = lm.lm_head(keep_logits(outputs.last_hidden_state, logits_to_keep))
    output = resolve("transformers.modeling_outputs", "CausalLMOutput")
    return output(logits=soft_capped(ops, logits, lm.config.logits_soft_cap))


HF_RECURRENT_GEMMA = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(RecurrentGemmaRMSNorm, norm_forward, NORM_SITES),
            ModuleHandler(RecurrentGemmaRotaryEmbedding, unchanged_forward, CONSTANT_SITES),
            ModuleHandler(RecurrentGemmaRglru, rglru_forward, {"": "rglru"}),
            ModuleHandler(
                RecurrentGemmaRecurrentBlock,
                recurrent_block_forward,
                {"y_act": "activation", "gate": "gate"},
                ("linear_y", "linear_x", "conv_1d", "rg_lru", "linear_out"),
            ),
            ModuleHandler(
                RecurrentGemmaAttention,
                attention_forward,
                ROTARY_ATTENTION_SITES,
                (*ATTENTION_CALLS, "rotary_emb"),
            ),
            ModuleHandler(RecurrentGemmaMlp, gated_mlp_forward, GLU_SITES, GATED_MLP_CALLS),
            ModuleHandler(
                RecurrentGemmaDecoderLayer,
                layer_forward,
                {"residual": "add", "ff_residual": "add"},
                ("temporal_pre_norm", "temporal_block", "channel_pre_norm", "mlp_block"),
                role="block",
            ),
            ModuleHandler(
                RecurrentGemmaModel,
                model_forward,
                {"embedding_scale": "scale"},
                ("embed_tokens", "layers", "final_norm"),
            ),
            ModuleHandler(
                RecurrentGemmaForCausalLM,
                lm_forward,
                SOFT_CAP_SITES,
                ("model", "lm_head"),
            ),
        ),
        blocks=(RecurrentGemmaRecurrentBlock, RecurrentGemmaAttention),
    )
)

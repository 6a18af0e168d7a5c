"""Architecture adapter for Hugging Face transformers' Llama and Mistral (``LlamaModel``,
``LlamaForCausalLM``, ``LlamaForSequenceClassification`` and their Mistral twins): pure
transformers, explained with AttnLRP or CP-LRP.

A decoder layer is ``h = x + attn(norm(x)); out = h + mlp(norm(h))`` with

- ``*Attention``: queries, keys and values projected and split into heads, a rotary
  embedding of queries and keys (a linear map with constant, position-dependent
  coefficients: relevance passes by its gradient), softmax attention over the mask the
  model builds (causal, padding, Mistral's sliding window; grouped key/value heads),
  :func:`~captum_mamba.adapters.blocks.self_attention`. AttnLRP: uniform rule on
  ``q k^T`` and ``weights v``, the softmax by its gradient (its AttnLRP rule);
  CP-LRP: the attention weights are constants.
- ``*MLP``: ``down(act(gate(x)) * up(x))``: identity rule on the activation, half
  rule on the product (:func:`~captum_mamba.adapters.blocks.gated_mlp_forward`).
- ``*RMSNorm``: LN-rule. The two residual sums as sums (LRP-0).
- ``*RotaryEmbedding``: a function of the positions only; no relevance passes it.

With CP-LRP and bias-free layers relevance is conserved exactly (every step is then
linear in the path relevance takes, or a product split evenly); AttnLRP loses or gains
the relevance that the softmax's linearisation assigns to its bias term. These rules
reproduce LXT's efficient AttnLRP (``tests/test_lxt_parity.py``).
"""

from __future__ import annotations

from typing import Any

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
    gated_mlp_forward,
    rms_norm_forward,
    self_attention,
    unchanged_forward,
)
from captum_mamba.adapters.families import declare_family

FAMILY = declare_family(
    __name__,
    "transformers Llama and Mistral",
    (
        "LlamaModel",
        "LlamaForCausalLM",
        "LlamaForSequenceClassification",
        "MistralModel",
        "MistralForCausalLM",
        "MistralForSequenceClassification",
    ),
    ("transformers.models.llama.modeling_llama", "transformers.models.mistral.modeling_mistral"),
    # the decoder layers call their attention as the handlers expect from 4.54
    needs="transformers >= 4.54",
)
#: The classes of each model, in the order of :func:`_handlers`, then the containers.
_CLASSES = (
    "RMSNorm",
    "RotaryEmbedding",
    "Attention",
    "MLP",
    "DecoderLayer",
    "Model",
    "ForCausalLM",
    "ForSequenceClassification",
)
LLAMA = FAMILY.load(*(f"Llama{name}" for name in _CLASSES), source=FAMILY.sources[0])
MISTRAL = FAMILY.load(*(f"Mistral{name}" for name in _CLASSES), source=FAMILY.sources[1])


def layer_forward(
    ops: BlockOps,
    layer: nn.Module,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    position_embeddings: tuple[Tensor, Tensor] | None = None,
    **kwargs: Any,
) -> Tensor:
    """Decoder layer: the attention's residual sum, then the MLP's."""
    x = ops.compute(hidden_states)
    attended, _ = layer.self_attn(
        layer.input_layernorm(x),
        attention_mask=attention_mask,
        position_embeddings=position_embeddings,
        **kwargs,
    )
    h = ops.add("residual", x, attended)
    return ops.add("mlp_residual", h, layer.mlp(layer.post_attention_layernorm(h)))


#: Sites of :func:`layer_forward`.
LAYER_SITES = {"residual": "add", "mlp_residual": "add"}
#: Children :func:`layer_forward` calls.
LAYER_CALLS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")


def _handlers(
    norm: type, rotary: type, attention: type, mlp: type, layer: type
) -> tuple[ModuleHandler, ...]:
    return (
        ModuleHandler(norm, rms_norm_forward, NORM_SITES),
        ModuleHandler(rotary, unchanged_forward, CONSTANT_SITES),
        ModuleHandler(attention, self_attention, ROTARY_ATTENTION_SITES, ATTENTION_CALLS),
        ModuleHandler(mlp, gated_mlp_forward, GLU_SITES, GATED_MLP_CALLS),
        ModuleHandler(layer, layer_forward, LAYER_SITES, LAYER_CALLS, role="block"),
    )


HF_LLAMA = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(*_handlers(*LLAMA[:5]), *_handlers(*MISTRAL[:5])),
        containers=(*LLAMA[5:], *MISTRAL[5:]),
        blocks=(LLAMA[2], MISTRAL[2]),
    )
)

"""Architecture adapter for Hugging Face transformers' Qwen3-Next: ``Qwen3NextModel``,
``Qwen3NextForCausalLM``. Residual layers mix tokens with a Gated DeltaNet
(``linear_attention``) or a gated softmax attention (``full_attention``), each followed by
a mixture of experts with a gated shared expert (or a gated MLP).

A layer is ``h = x + mixer(norm(x)); out = h + mlp(norm(h))`` with

- ``Qwen3NextGatedDeltaNet``: ``q, k, v = silu(conv(in_proj(x)))`` (the short causal
  convolution is linear, the SiLU gets the identity rule), ``q`` and ``k``
  l2-normalised (LN-rule: the normaliser is constant; written as an RMSNorm with the
  constant weight ``d^-1/2``, times ``d^-1/2`` for the query scaling), the step size
  ``beta = sigmoid(b)`` and the log decay ``g = -exp(A_log) softplus(a + dt_bias)``,
  then the gated delta rule (:func:`~captum_mamba.rules.functional.gated_delta_rule`:
  decays, step sizes and transitions constant; the uniform rule on its reads and writes
  with ``attention=True``, constant keys and queries with ``"cp_lrp"``), a gated
  RMSNorm ``norm(o) * silu(z)`` (LN-, identity and half rules) and ``out_proj``;
- ``Qwen3NextAttention``: softmax attention with RMS-normalised queries and keys, a
  partial rotary embedding and grouped key/value heads (AttnLRP or CP-LRP), its output
  multiplied by ``sigmoid(gate)`` of a second half of the query projection: the half
  rule on the product, the identity rule on the sigmoid;
- ``Qwen3NextSparseMoeBlock``: softmax top-k router (router rule: the weights of the
  selected experts are constants), gated-MLP experts, plus a shared gated MLP times
  ``sigmoid(shared_expert_gate(x))`` (half and identity rules); ``Qwen3NextMLP``: a
  gated MLP (identity and half rules);
- ``Qwen3NextRMSNorm`` (weights ``1 + w``): LN-rule; the residual sums as sums.

With CP-LRP and bias-free layers relevance is conserved exactly (the argument is in
``docs/architectures.md``). The recurrences start at the first position: a filled cache
is refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from captum_mamba.adapters.backend import BlockOps
from captum_mamba.adapters.base import ArchitectureAdapter, ModuleHandler, register_adapter
from captum_mamba.adapters.blocks import (
    CONSTANT_SITES,
    DELTA_GATE_SITES,
    DELTA_RULE_SITES,
    GATED_MLP_CALLS,
    GATED_MOE_SITES,
    GATED_NORM_SITES,
    GLU_SITES,
    NORM_SITES,
    Experts,
    activation_name,
    attention_bias,
    causal_lm_forward,
    check_no_cached_keys,
    check_silu,
    delta_rule_gates,
    gated_delta_rule,
    gated_mlp_forward,
    gated_rms_norm_before_gate,
    mask_padding,
    mixture_of_experts,
    suffixed,
    top_k_dense,
    unchanged_forward,
    whole_sequence_inputs,
)
from captum_mamba.adapters.families import declare_family, resolve

FAMILY = declare_family(
    __name__,
    "transformers Qwen3-Next",
    ("Qwen3NextModel", "Qwen3NextForCausalLM"),
    ("transformers.models.qwen3_next.modeling_qwen3_next",),
    # checked with 5.25 only (the ``cache`` argument names and the experts' layout)
    needs="transformers >= 5.25",
)
(
    Qwen3NextRMSNorm,
    Qwen3NextRMSNormGated,
    Qwen3NextRotaryEmbedding,
    Qwen3NextAttention,
    Qwen3NextGatedDeltaNet,
    Qwen3NextMLP,
    Qwen3NextSparseMoeBlock,
    Qwen3NextDecoderLayer,
    Qwen3NextModel,
    Qwen3NextForCausalLM,
) = FAMILY.load(
    "Qwen3NextRMSNorm",
    "Qwen3NextRMSNormGated",
    "Qwen3NextRotaryEmbedding",
    "Qwen3NextAttention",
    "Qwen3NextGatedDeltaNet",
    "Qwen3NextMLP",
    "Qwen3NextSparseMoeBlock",
    "Qwen3NextDecoderLayer",
    "Qwen3NextModel",
    "Qwen3NextForCausalLM",
)
#: Sites of :func:`gated_delta_net_forward`.
DELTA_NET_SITES = {"conv_act": "silu", **DELTA_GATE_SITES, **DELTA_RULE_SITES}


def norm_forward(ops: BlockOps, norm: nn.Module, x: Tensor) -> Tensor:
    """RMSNorm with the weights ``1 + w``, LN-rule."""
    x = ops.compute(x)
    return ops.rms_norm("", x, 1.0 + norm.weight.to(x.dtype), norm.eps)


def gated_delta_net_forward(
    ops: BlockOps,
    net: nn.Module,
    hidden_states: Tensor,
    cache: Any = None,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """The Gated DeltaNet of a whole sequence (sites :data:`DELTA_NET_SITES`)."""
    check_silu(net, net.activation)
    check_no_cached_keys(net, cache)
    x = mask_padding(ops.compute(hidden_states), attention_mask)
    q, k, v, z, b, a = net.fix_query_key_value_ordering(net.in_proj_qkvz(x), net.in_proj_ba(x))
    mixed = torch.cat([t.flatten(2) for t in (q, k, v)], -1)
    mixed = ops.silu("conv_act", ops.causal_conv(net.conv1d, mixed))
    q, k, v = mixed.split([net.key_dim, net.key_dim, net.value_dim], -1)
    beta, log_decay = delta_rule_gates(ops, a, b, net.A_log, net.dt_bias)
    out = gated_delta_rule(ops, q, k, v, beta, log_decay, net.num_k_heads, net.num_v_heads)
    out = net.norm(out, z)
    return net.out_proj(out.flatten(2))


def gated_attention_forward(
    ops: BlockOps,
    module: nn.Module,
    hidden_states: Tensor,
    position_embeddings: tuple[Tensor, Tensor],
    attention_mask: Tensor | None,
    cache: Any = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Softmax attention with normalised queries and keys and the output gate
    ``sigmoid(gate)`` (sites ``q_rotary``, ``k_rotary``, ``attention``, ``gate_act``,
    ``gate``)."""
    check_no_cached_keys(module, cache)
    x = ops.compute(hidden_states)
    batch, length, _ = x.shape
    q, gate = module.q_proj(x).view(batch, length, -1, 2 * module.head_dim).chunk(2, -1)
    q = module.q_norm(q).transpose(1, 2)
    k = module.k_norm(module.k_proj(x).view(batch, length, -1, module.head_dim)).transpose(1, 2)
    v = module.v_proj(x).view(batch, length, -1, module.head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    q, k = ops.rotary("q_rotary", q, cos, sin), ops.rotary("k_rotary", k, cos, sin)
    bias, causal = attention_bias(module, attention_mask, q, k)
    out = ops.attention("attention", q, k, v, bias, module.scaling, causal)
    out = out.transpose(1, 2).reshape(batch, length, -1)
    gated = ops.gate("gate", out, ops.activation("gate_act", gate.flatten(2), "sigmoid"))
    return module.o_proj(gated), None


#: Sites of :func:`gated_attention_forward`.
GATED_ATTENTION_SITES = {
    "q_rotary": "rotary",
    "k_rotary": "rotary",
    "attention": "attention",
    "gate_act": "activation",
    "gate": "gate",
}


def router_weights(router: nn.Module, x: Tensor) -> Tensor:
    """``(tokens, experts)`` weights of the softmax top-k router (renormalised over the
    top-k with ``norm_topk_prob``), zero for the experts a token is not sent to."""
    probabilities = torch.softmax(F.linear(x, router.weight.to(x.dtype)), dim=-1)
    weights, index = torch.topk(probabilities, router.top_k, dim=-1)
    if router.norm_topk_prob:
        weights = weights / weights.sum(-1, keepdim=True)
    return top_k_dense(weights, index, router.num_experts)


#: Suffix of the routed experts' sites (the block has a child ``gate``, its router).
ROUTED = "_routed"
#: Sites of :func:`moe_forward`.
MOE_BLOCK_SITES = {
    **suffixed(GATED_MOE_SITES, ROUTED),
    "shared_act": "activation",
    "shared_gate": "gate",
    "shared_sum": "add",
}


def moe_forward(ops: BlockOps, moe: nn.Module, hidden_states: Tensor) -> Tensor:
    """Routed gated-MLP experts plus the shared expert times
    ``sigmoid(shared_expert_gate(x))``: router, identity and half rules."""
    x = ops.compute(hidden_states)
    flat = x.reshape(-1, x.shape[-1])
    function = activation_name(moe.experts, moe.experts.act_fn)
    experts = Experts(moe.experts.gate_up_proj, moe.experts.down_proj, function, gated=True)
    routed = mixture_of_experts(
        ops, experts, flat, lambda u: router_weights(moe.gate, u), flat, ROUTED
    )
    weight = ops.activation("shared_act", moe.shared_expert_gate(flat), "sigmoid")
    shared = ops.gate("shared_gate", moe.shared_expert(flat), weight)
    return ops.add("shared_sum", routed, shared).reshape(x.shape)


def layer_forward(
    ops: BlockOps,
    layer: nn.Module,
    hidden_states: Tensor,
    position_embeddings: tuple[Tensor, Tensor],
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    cache: Any = None,
    **kwargs: Any,
) -> Tensor:
    """The token mixer's residual sum, then the MLP's (sites ``residual``,
    ``ff_residual``)."""
    x = ops.compute(hidden_states)
    normed = layer.input_layernorm(x)
    if layer.block_type == "linear_attention":
        mixed = layer.linear_attn(normed, cache=cache, attention_mask=attention_mask)
    else:
        mixed, _ = layer.self_attn(
            normed,
            position_embeddings=position_embeddings,
            attention_mask=attention_mask,
            cache=cache,
        )
    h = ops.add("residual", x, mixed)
    return ops.add("ff_residual", h, layer.mlp(layer.post_attention_layernorm(h)))


def model_forward(
    ops: BlockOps,
    model: nn.Module,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
    cache: Any = None,
    inputs_embeds: Tensor | None = None,
    use_cache: bool | None = None,
    **kwargs: Any,
) -> Any:
    """The model's forward for whole sequences without a cache."""
    x, position_ids, masks = whole_sequence_inputs(
        ops, model, input_ids, attention_mask, position_ids, cache, inputs_embeds
    )
    position_embeddings = model.rotary_emb(x, position_ids)
    for layer, kind in zip(model.layers, model.config.layer_types, strict=False):
        x = layer(
            x,
            position_embeddings=position_embeddings,
            attention_mask=masks[kind],
            position_ids=position_ids,
        )
    output = resolve("transformers.modeling_outputs", "BaseModelOutput")
    return output(last_hidden_state=model.norm(x))


HF_QWEN3_NEXT = register_adapter(
    ArchitectureAdapter(
        name=FAMILY.name,
        models=FAMILY.models,
        handlers=(
            ModuleHandler(Qwen3NextRMSNorm, norm_forward, NORM_SITES),
            ModuleHandler(Qwen3NextRMSNormGated, gated_rms_norm_before_gate, GATED_NORM_SITES),
            ModuleHandler(Qwen3NextRotaryEmbedding, unchanged_forward, CONSTANT_SITES),
            ModuleHandler(
                Qwen3NextGatedDeltaNet,
                gated_delta_net_forward,
                DELTA_NET_SITES,
                ("in_proj_qkvz", "in_proj_ba", "conv1d", "norm", "out_proj"),
            ),
            ModuleHandler(
                Qwen3NextAttention,
                gated_attention_forward,
                GATED_ATTENTION_SITES,
                ("q_proj", "k_proj", "v_proj", "q_norm", "k_norm", "o_proj"),
            ),
            ModuleHandler(Qwen3NextMLP, gated_mlp_forward, GLU_SITES, GATED_MLP_CALLS),
            ModuleHandler(
                Qwen3NextSparseMoeBlock,
                moe_forward,
                MOE_BLOCK_SITES,
                ("shared_expert", "shared_expert_gate"),
            ),
            ModuleHandler(
                Qwen3NextDecoderLayer,
                layer_forward,
                {"residual": "add", "ff_residual": "add"},
                ("input_layernorm", "linear_attn", "self_attn", "post_attention_layernorm", "mlp"),
                role="block",
            ),
            ModuleHandler(
                Qwen3NextModel,
                model_forward,
                {},
                ("embed_tokens", "rotary_emb", "layers", "norm"),
            ),
            ModuleHandler(Qwen3NextForCausalLM, causal_lm_forward, {}, ("model", "lm_head")),
        ),
        blocks=(Qwen3NextGatedDeltaNet, Qwen3NextAttention),
    )
)

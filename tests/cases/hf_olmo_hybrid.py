"""Conformance case and independent float64 reference: transformers OLMo-Hybrid (pre-norm
Gated DeltaNet layers with grouped value heads and ``allow_neg_eigval``, post-norm
softmax attention layers with whole-projection query/key norms, with a rotary embedding
or in NoPE mode, gated MLPs; eager and SDPA attention).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): the convolution tap by tap, the gated delta rule one time step at
a time on the state matrix (``helpers.delta_loop``), attention one query position at a
time, and the rules as ``detach`` calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import (
    causal_conv,
    delta_loop,
    gated_mlp,
    half_product,
    l2_normalised,
    linear,
    rms,
    rope,
    rope_table,
    sigmoid,
    silu,
    softmax_attention,
)
from torch import Tensor
from transformers import OlmoHybridConfig, OlmoHybridForCausalLM

from cases import (
    ArchitectureCase,
    Rule,
    add_noise,
    lm_logits,
    perturbation,
    random_embeddings,
    tiny_model,
)

SHAPE = dict(vocab_size=32, tie_word_embeddings=False, initializer_range=0.2, pad_token_id=0,
             eos_token_id=None)  # fmt: skip
CONFIGS = {
    "grouped-rope-eager": dict(
        hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, linear_conv_kernel_dim=3, linear_key_head_dim=4,
        linear_value_head_dim=6, linear_num_key_heads=2, linear_num_value_heads=4,
        layer_types=["linear_attention", "full_attention", "linear_attention"],
        attn_implementation="eager",
    ),
    "nope-sdpa": dict(
        hidden_size=12, intermediate_size=20, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, linear_conv_kernel_dim=4, linear_key_head_dim=5,
        linear_value_head_dim=3, linear_num_key_heads=3, linear_num_value_heads=3,
        linear_allow_neg_eigval=False, attention_bias=True,
        layer_types=["linear_attention", "linear_attention", "full_attention"],
        rope_parameters=dict(rope_type="default", rope_theta=None),
        attn_implementation="sdpa",
    ),
}  # fmt: skip
LENGTH = 9


def tiny_config(name: str = "grouped-rope-eager", **changes) -> OlmoHybridConfig:
    """A tiny OLMo-Hybrid configuration of this case (``changes`` override its fields),
    for toy tasks and benchmarks that need one built offline."""
    fields = {**SHAPE, **CONFIGS[name], **changes}
    implementation = fields.pop("attn_implementation", None)
    config = OlmoHybridConfig(**fields)
    if implementation is not None:
        config._attn_implementation = implementation
    return config


def build_model(config: str, seed: int, zero_biases: bool) -> OlmoHybridForCausalLM:
    decays = Rule(("*A_log",), add_noise(0.5))
    time_steps = Rule(("*dt_bias",), add_noise(0.5))
    perturb = perturbation(zero_biases, decays, time_steps, weights=None)
    return tiny_model(lambda: OlmoHybridForCausalLM(tiny_config(config)), seed, perturb)


def reference_delta_net(net, x: Tensor, rules) -> Tensor:
    nk, nv, dk = net.num_k_heads, net.num_v_heads, net.head_k_dim
    batch, length, _ = x.shape
    mixed = torch.cat([linear(x, net.q_proj), linear(x, net.k_proj), linear(x, net.v_proj)], -1)
    mixed = silu(causal_conv(mixed, net.conv1d), rules.silu)
    q, k, v = mixed.split([nk * dk, nk * dk, net.value_dim], -1)
    heads = lambda t, n: t.view(batch, length, n, -1).transpose(1, 2)  # noqa: E731
    q = heads(q, nk).repeat_interleave(nv // nk, 1)
    k = heads(k, nk).repeat_interleave(nv // nk, 1)
    q = l2_normalised(q, rules.norm) * dk**-0.5
    k = l2_normalised(k, rules.norm)
    beta = sigmoid(linear(x, net.b_proj), rules.activation).transpose(1, 2)
    if net.allow_neg_eigval:
        beta = 2.0 * beta
    a = linear(x, net.a_proj)
    decay = torch.exp(-torch.exp(net.A_log) * F.softplus(a + net.dt_bias)).transpose(1, 2)
    out = delta_loop(q, k, heads(v, nv), beta, decay, rules.attention).transpose(1, 2)
    normed = rms(out, net.o_norm.weight, net.o_norm.variance_epsilon, rules.norm)
    gate = linear(x, net.g_proj).view(out.shape)
    gated = half_product(normed, silu(gate, rules.silu), rules.gate)
    return linear(gated.flatten(2), net.o_proj)


def reference_attention(attention, x: Tensor, table, rules) -> Tensor:
    hd = attention.head_dim
    batch, length, _ = x.shape
    q = rms(linear(x, attention.q_proj), attention.q_norm.weight,
            attention.q_norm.variance_epsilon, rules.norm)  # fmt: skip
    k = rms(linear(x, attention.k_proj), attention.k_norm.weight,
            attention.k_norm.variance_epsilon, rules.norm)  # fmt: skip
    q, k, v = (t.view(batch, length, -1, hd).transpose(1, 2)
               for t in (q, k, linear(x, attention.v_proj)))  # fmt: skip
    if table is not None:
        q, k = rope(q, *table), rope(k, *table)
    out = softmax_attention(q, k, v, hd**-0.5, None, rules.attention)
    return linear(out, attention.o_proj)


def _norm(norm, x: Tensor, rules) -> Tensor:
    return rms(x, norm.weight, norm.variance_epsilon, rules.norm)


def _mlp(mlp, x: Tensor, rules) -> Tensor:
    weights = (mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight)
    return gated_mlp(x, *weights, "silu", rules)


def reference_logits(model: OlmoHybridForCausalLM, embeds: Tensor, rules) -> Tensor:
    hidden = embeds
    rotary = model.model.rotary_emb
    table = None if rotary is None else rope_table(rotary, embeds.shape[1])
    for layer in model.model.layers:
        if hasattr(layer, "linear_attn"):
            normed = _norm(layer.input_layernorm, hidden, rules)
            hidden = hidden + reference_delta_net(layer.linear_attn, normed, rules)
            hidden = hidden + _mlp(layer.mlp, _norm(layer.post_attention_layernorm, hidden, rules),
                                   rules)  # fmt: skip
        else:
            mixed = reference_attention(layer.self_attn, hidden, table, rules)
            hidden = hidden + _norm(layer.post_attention_layernorm, mixed, rules)
            hidden = hidden + _norm(layer.post_feedforward_layernorm,
                                    _mlp(layer.mlp, hidden, rules), rules)  # fmt: skip
    return linear(_norm(model.model.norm, hidden, rules), model.lm_head)


ADAPTER = "transformers OLMo-Hybrid"
CASE = ArchitectureCase(
    name="hf_olmo_hybrid",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (4, 7)]),
    reference=reference_logits,
    own_output=lm_logits,
    layer="model.layers.0.linear_attn.o_proj",
    num_layers=lambda model: model.config.num_hidden_layers,
    rule_kinds=("norm", "silu", "gate", "activation", "attention"),
    conserving="cp_lrp",
)

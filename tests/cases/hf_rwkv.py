"""Conformance case and independent float64 reference: transformers RWKV (RWKV-4: time
mixing with the WKV recurrence, channel mixing with a squared ReLU, token shift, layer
norms, the inference-time rescaling of ``rescale_every``).

The reference re-implements the language model from its parameters with plain tensor ops
(no captum_mamba code): the token shift position by position, WKV as its definition (for
each query position the weighted mean of the values over the earlier and current
positions, one key at a time, without stabilisation), the layer norms from their
formula, and the rules as ``detach`` calls. The rescaling follows transformers' forward:
in eval mode the output weights of block ``i`` act divided by ``2 ** (i // every)``
(whether or not they are already stored that way) and the residual stream is halved
after every ``every`` blocks.

:func:`tiny_rwkv` builds the case's tiny models (for other suites, e.g. toy tasks).
"""

from __future__ import annotations

from typing import Any

import torch
from helpers import half_product, linear
from torch import Tensor
from transformers import RwkvConfig, RwkvForCausalLM

from cases import (
    ArchitectureCase,
    Rule,
    add_noise,
    perturbation,
    random_embeddings,
    tiny_lm,
)

SHAPE = dict(vocab_size=24)
CONFIGS = {
    "narrow-attention-rescale2": dict(
        hidden_size=8, attention_hidden_size=6, intermediate_size=12, num_hidden_layers=3,
        rescale_every=2,
    ),
    "default-widths-no-rescale": dict(hidden_size=6, num_hidden_layers=2, rescale_every=0),
    "rescale-every-block": dict(
        hidden_size=4, attention_hidden_size=8, intermediate_size=10, num_hidden_layers=2,
        rescale_every=1,
    ),
}  # fmt: skip
LENGTH = 9


def tiny_rwkv(config: str, seed: int, zero_biases: bool = False, **fields: Any) -> RwkvForCausalLM:
    """A tiny float64 ``RwkvForCausalLM`` in eval mode with perturbed parameters.

    Args:
        config (str): a key of ``CONFIGS``.
        seed (int): seed of the initialisation and the perturbation.
        zero_biases (bool, optional): zero the layer norms' biases (RWKV's only biases).
        **fields: configuration fields that replace the configuration's (e.g.
            ``vocab_size`` for a toy task).

    Returns:
        RwkvForCausalLM: the model.
    """
    return tiny_lm(
        RwkvForCausalLM,
        RwkvConfig,
        {**SHAPE, **CONFIGS[config], **fields},
        seed,
        perturbation(
            zero_biases,
            Rule(("*time_decay", "*time_first"), add_noise(1.0)),
            Rule(("*time_mix_*",), add_noise(0.3)),
            Rule(("*ln*.weight",), add_noise(0.3)),
            weights=2.0,
        ),
    )


def _layer_norm(norm, x: Tensor, rules) -> Tensor:
    """``(x - mean) / std * weight + bias``; the LN-rule detaches ``1 / std``."""
    centred = x - x.mean(-1, keepdim=True)
    scale = 1.0 / torch.sqrt((centred * centred).mean(-1, keepdim=True) + norm.eps)
    return centred * (scale.detach() if rules.norm else scale) * norm.weight + norm.bias


def _shift(x: Tensor, mix: Tensor) -> Tensor:
    """``x[t] m + x[t-1] (1 - m)``, position by position (``x[-1] = 0``)."""
    rows = [x[:, t] * mix[0, 0] + (x[:, t - 1] if t > 0 else 0.0) * (1 - mix[0, 0])
            for t in range(x.shape[1])]  # fmt: skip
    return torch.stack(rows, 1)


def _sigmoid(x: Tensor, rules) -> Tensor:
    """``sigmoid(x) = x * [sigmoid(x) / x]`` under the identity rule."""
    ratio = torch.sigmoid(x) / x
    return x * (ratio.detach() if rules.activation else ratio)


def _squared_relu(x: Tensor, rules) -> Tensor:
    """``relu(x) * relu(x)``; the squared ReLU's rule is the uniform rule on the product."""
    return half_product(torch.relu(x), torch.relu(x), rules.activation)


def reference_wkv(k: Tensor, v: Tensor, time_decay: Tensor, time_first: Tensor, rules) -> Tensor:
    """``sum_s e[t, s] v[s] / sum_s e[t, s]`` with ``e[t, s] = exp(k[s] - (t - 1 - s) w)``
    (``exp(k[t] + u)`` at ``s = t``), one query and one key at a time. CP-LRP: the weights
    constant; AttnLRP: the uniform rule on ``weights * v``."""
    w = torch.exp(time_decay)
    keys = k.detach() if rules.attention == "cp_lrp" else k
    outputs = []
    for t in range(k.shape[1]):
        terms = [torch.exp(keys[:, s] + time_first) if s == t else
                 torch.exp(keys[:, s] - (t - 1 - s) * w) for s in range(t + 1)]  # fmt: skip
        total = sum(terms)
        out = 0.0
        for s, term in enumerate(terms):
            out = out + half_product(term / total, v[:, s], rules.attention is True)
        outputs.append(out)
    return torch.stack(outputs, 1)


def _output_factor(model: RwkvForCausalLM, index: int) -> float:
    """The factor by which transformers' forward leaves block ``index``'s output weights
    as stored: it rescales them first to ``W / 2 ** (index // every)`` in eval mode."""
    every = model.config.rescale_every
    if every <= 0:
        return 1.0
    power = 2.0 ** (index // every)
    stored = power if model.rwkv.layers_are_rescaled else 1.0
    return stored / (1.0 if model.training else power)


def reference_time_mixing(attention, x: Tensor, factor: float, rules) -> Tensor:
    k = linear(_shift(x, attention.time_mix_key), attention.key)
    v = linear(_shift(x, attention.time_mix_value), attention.value)
    r = linear(_shift(x, attention.time_mix_receptance), attention.receptance)
    mixed = reference_wkv(k, v, attention.time_decay, attention.time_first, rules)
    gated = half_product(mixed, _sigmoid(r, rules), rules.gate)
    return factor * (gated @ attention.output.weight.T)


def reference_channel_mixing(feed_forward, x: Tensor, factor: float, rules) -> Tensor:
    k = linear(_shift(x, feed_forward.time_mix_key), feed_forward.key)
    r = linear(_shift(x, feed_forward.time_mix_receptance), feed_forward.receptance)
    value = factor * (_squared_relu(k, rules) @ feed_forward.value.weight.T)
    return half_product(value, _sigmoid(r, rules), rules.gate)


def reference_logits(model: RwkvForCausalLM, embeds: Tensor, rules) -> Tensor:
    hidden = embeds
    every = model.config.rescale_every
    for index, block in enumerate(model.rwkv.blocks):
        if index == 0:
            hidden = _layer_norm(block.pre_ln, hidden, rules)
        factor = _output_factor(model, index)
        hidden = hidden + reference_time_mixing(
            block.attention, _layer_norm(block.ln1, hidden, rules), factor, rules
        )
        hidden = hidden + reference_channel_mixing(
            block.feed_forward, _layer_norm(block.ln2, hidden, rules), factor, rules
        )
        if every > 0 and not model.training and (index + 1) % every == 0:
            hidden = hidden / 2
    return _layer_norm(model.rwkv.ln_out, hidden, rules) @ model.head.weight.T


def own_logits(model: RwkvForCausalLM, embeds: Tensor) -> Tensor:
    """The language model's own logits (its first eval forward rescales its weights)."""
    return model(inputs_embeds=embeds, use_cache=False).logits


ADAPTER = "transformers RWKV"
CASE = ArchitectureCase(
    name="hf_rwkv",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=tiny_rwkv,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (4, 7)]),
    reference=reference_logits,
    own_output=own_logits,
    layer="rwkv.blocks.0.attention.output",
    num_layers=lambda model: model.config.num_hidden_layers,
    rule_kinds=("norm", "activation", "gate", "attention"),
    conserving="cp_lrp",
)

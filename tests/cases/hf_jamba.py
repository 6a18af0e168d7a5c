"""Conformance case and independent float64 reference: transformers Jamba (Mamba layers
with gated MLPs; configurations without attention and mixture-of-experts layers).

The reference re-implements the language model from its parameters with plain tensor ops
and a loop over time steps (no captum_mamba code) and applies the rules as ``detach``
calls, reading the switches of the ``rules`` object it is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import causal_conv, gate, linear, rms, silu
from torch import Tensor
from transformers import JambaConfig, JambaForCausalLM

from cases import ArchitectureCase

CONFIGS = {
    "two-layers": dict(
        hidden_size=16, intermediate_size=24, num_hidden_layers=2, vocab_size=32,
        mamba_d_state=4, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=2,
    ),
    "three-layers-biased": dict(
        hidden_size=12, intermediate_size=20, num_hidden_layers=3, vocab_size=24,
        mamba_d_state=3, mamba_d_conv=3, mamba_expand=1, mamba_dt_rank=3,
        mamba_proj_bias=True,
    ),
}  # fmt: skip
#: No attention or mixture-of-experts layer in these configurations.
MAMBA_ONLY = dict(
    attn_layer_period=8, attn_layer_offset=7, num_experts=1, num_attention_heads=2,
    num_key_value_heads=1,
)  # fmt: skip
LENGTH = 8


def build_model(config: str, seed: int, zero_biases: bool) -> JambaForCausalLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = JambaForCausalLM(JambaConfig(**CONFIGS[config], **MAMBA_ONLY)).double().eval()
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith(".D"):  # a small skip: the scan dominates the mixer output
                    parameter.copy_(0.1 * torch.randn_like(parameter))
                elif name.endswith(("norm.weight", "layernorm.weight", "A_log")):
                    parameter.add_(0.3 * torch.randn_like(parameter))
                elif name.endswith("dt_proj.bias"):  # time steps in [0.05, 1]
                    dt = torch.exp(torch.empty_like(parameter).uniform_(-3.0, 0.0))
                    parameter.copy_(dt + torch.log(-torch.expm1(-dt)))
                elif name.endswith("bias"):
                    parameter.copy_(torch.zeros_like(parameter) if zero_biases else
                                    0.1 * torch.randn_like(parameter))  # fmt: skip
                elif name.endswith(("x_proj.weight", "in_proj.weight")):
                    parameter.mul_(10.0)  # initializer_range 0.02 would make the scan negligible
    return model


def reference_mamba(mixer, u: Tensor, rules) -> Tensor:
    inner, state, rank = mixer.intermediate_size, mixer.ssm_state_size, mixer.time_step_rank
    projected = linear(u, mixer.in_proj)
    x, z = projected[..., :inner], projected[..., inner:]
    x = silu(causal_conv(x, mixer.conv1d), rules.silu)
    coefficients = x @ mixer.x_proj.weight.T
    eps = mixer.dt_layernorm.variance_epsilon
    time_step = rms(coefficients[..., :rank], mixer.dt_layernorm.weight, eps, rules.norm)
    B = rms(coefficients[..., rank : rank + state], mixer.b_layernorm.weight, eps, rules.norm)
    C = rms(coefficients[..., rank + state :], mixer.c_layernorm.weight, eps, rules.norm)
    dt = F.softplus(linear(time_step, mixer.dt_proj))
    if rules.ssm:
        dt, B, C = dt.detach(), B.detach(), C.detach()
    A = -torch.exp(mixer.A_log)
    h = x.new_zeros(x.shape[0], inner, state)
    outputs = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None]
        outputs.append((h * C[:, t, None]).sum(-1) + mixer.D * x[:, t])
    y = torch.stack(outputs, dim=1)
    return linear(gate(y, silu(z, rules.silu), rules.gate), mixer.out_proj)


def reference_logits(model: JambaForCausalLM, embeds: Tensor, rules) -> Tensor:
    hidden = embeds
    for layer in model.model.layers:
        norm = layer.input_layernorm
        hidden = hidden + reference_mamba(
            layer.mamba, rms(hidden, norm.weight, norm.variance_epsilon, rules.norm), rules
        )
        norm, mlp = layer.pre_ff_layernorm, layer.feed_forward
        normed = rms(hidden, norm.weight, norm.variance_epsilon, rules.norm)
        activated = silu(linear(normed, mlp.gate_proj), rules.silu)
        hidden = hidden + linear(gate(activated, linear(normed, mlp.up_proj), rules.gate),
                                 mlp.down_proj)  # fmt: skip
    final = model.model.final_layernorm
    return linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)


def model_logits(model: JambaForCausalLM, embeds: Tensor, **kwargs) -> Tensor:
    """The model's own forward, without the float32 cast of the logits."""
    hidden = model.model(inputs_embeds=embeds, use_cache=False, **kwargs).last_hidden_state
    return model.lm_head(hidden)


def inputs(model: JambaForCausalLM, config: str, seed: int) -> tuple[Tensor, list]:
    generator = torch.Generator().manual_seed(1000 + seed)
    embeds = torch.randn(2, LENGTH, model.config.hidden_size, generator=generator)
    return embeds.double(), [(LENGTH - 1, 3), (2, 7)]


ADAPTER = "transformers Jamba"
CASE = ArchitectureCase(
    name="hf_jamba",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=inputs,
    reference=reference_logits,
    own_output=model_logits,
    layer="model.layers.0.mamba.out_proj",
    num_layers=lambda model: len(model.model.layers),
    padding=True,
)

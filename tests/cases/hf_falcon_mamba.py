"""Conformance case and independent float64 reference: transformers FalconMamba.

The reference re-implements the FalconMamba language model from its parameters with
plain tensor ops and a loop over time steps (no captum_mamba code), and applies the
MambaLRP rules by detaching the same factors (it reads the rule switches of the
``rules`` object it is given).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import causal_conv, gate, linear, rms, silu
from torch import Tensor
from transformers import FalconMambaConfig, FalconMambaForCausalLM

from cases import ArchitectureCase, lm_logits, perturbation, random_embeddings, tiny_lm

CONFIGS = {
    "small": dict(
        hidden_size=16, state_size=4, conv_kernel=4, num_hidden_layers=2, vocab_size=24,
    ),
    "rank3-biased": dict(
        hidden_size=12, state_size=6, conv_kernel=3, num_hidden_layers=3, vocab_size=20,
        time_step_rank=3, use_bias=True, mixer_rms_eps=1e-5,
    ),
}  # fmt: skip
LENGTH = 9


def build_model(config: str, seed: int, zero_biases: bool) -> FalconMambaForCausalLM:
    perturb = perturbation(zero_biases, weights=None)
    return tiny_lm(FalconMambaForCausalLM, FalconMambaConfig, CONFIGS[config], seed, perturb)


def reference_mixer(mixer, u: Tensor, rules) -> Tensor:
    inner, state, rank = mixer.intermediate_size, mixer.ssm_state_size, mixer.time_step_rank
    projected = linear(u, mixer.in_proj)
    x, z = projected[..., :inner], projected[..., inner:]
    x = silu(causal_conv(x, mixer.conv1d), rules.silu)
    coefficients = x @ mixer.x_proj.weight.T
    time_step = rms(coefficients[..., :rank], None, mixer.rms_eps, rules.norm)
    B = rms(coefficients[..., rank : rank + state], None, mixer.rms_eps, rules.norm)
    C = rms(coefficients[..., rank + state :], None, mixer.rms_eps, rules.norm)
    dt = F.softplus(linear(time_step, mixer.dt_proj))
    if rules.ssm:
        dt, B, C = dt.detach(), B.detach(), C.detach()
    A = -torch.exp(mixer.A_log)  # (inner, state)
    h = x.new_zeros(x.shape[0], inner, state)
    outputs = []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None]
        outputs.append((h * C[:, t, None]).sum(-1) + mixer.D * x[:, t])
    y = torch.stack(outputs, dim=1)
    return linear(gate(y, silu(z, rules.silu), rules.gate), mixer.out_proj)


def reference_logits(model: FalconMambaForCausalLM, embeds: Tensor, rules) -> Tensor:
    hidden = embeds
    for block in model.backbone.layers:
        normed = rms(hidden, block.norm.weight, block.norm.variance_epsilon, rules.norm)
        hidden = hidden + reference_mixer(block.mixer, normed, rules)
    final = model.backbone.norm_f
    return linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)


ADAPTER = "transformers FalconMamba"

CASE = ArchitectureCase(
    name="hf_falcon_mamba",
    adapter=ADAPTER,
    configs=tuple(CONFIGS),
    build=build_model,
    inputs=random_embeddings(LENGTH, [(LENGTH - 1, 3), (4, 7)]),
    reference=reference_logits,
    own_output=lm_logits,
    layer="backbone.layers.0.mixer.out_proj",
    num_layers=lambda model: len(model.backbone.layers),
    padding=True,
)

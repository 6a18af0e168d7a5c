"""Conformance case and independent float64 reference: transformers Mamba-2.

The reference re-implements the Mamba-2 language model from its parameters with plain
tensor ops and a loop over time steps (no chunking, no captum_mamba code), and applies
the MambaLRP rules by detaching the same factors (it reads the rule switches of the
``rules`` object it is given).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import causal_conv, gate, linear, rms, silu
from torch import Tensor
from transformers import Mamba2Config, Mamba2ForCausalLM

from cases import ArchitectureCase, lm_logits, perturbation, random_embeddings, tiny_lm

CONFIGS = {
    "one-group": dict(
        hidden_size=16, num_heads=4, head_dim=8, n_groups=1, state_size=4, chunk_size=4,
        conv_kernel=4, num_hidden_layers=2, vocab_size=24,
    ),
    "three-groups-clamped-biased": dict(
        hidden_size=12, num_heads=6, head_dim=4, n_groups=3, state_size=5, chunk_size=3,
        conv_kernel=3, num_hidden_layers=2, vocab_size=20, time_step_limit=(0.0, 0.05),
        use_bias=True,
    ),
}  # fmt: skip
LENGTH = 10  # not a multiple of either chunk size: padding and several chunks


def build_model(config: str, seed: int, zero_biases: bool) -> Mamba2ForCausalLM:
    perturb = perturbation(zero_biases, weights=None)
    return tiny_lm(Mamba2ForCausalLM, Mamba2Config, CONFIGS[config], seed, perturb)


def sequential_ssd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """``x`` (b, L, H, P), ``dt`` (b, L, H), ``A`` (H,), ``B``/``C`` (b, L, G, N)."""
    batch, length, heads, head_dim = x.shape
    group_of_head = torch.arange(heads) // (heads // B.shape[2])
    state = x.new_zeros(batch, heads, head_dim, B.shape[-1])
    outputs = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        drive = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, group_of_head, None, :]
        state = decay * state + drive
        outputs.append((state * C[:, t, group_of_head, None, :]).sum(-1))
    return torch.stack(outputs, dim=1)


def reference_mixer(mixer, u: Tensor, rules) -> Tensor:
    inner, groups, state = mixer.intermediate_size, mixer.n_groups, mixer.ssm_state_size
    heads, head_dim = mixer.num_heads, mixer.head_dim
    batch, length, _ = u.shape
    projected = linear(u, mixer.in_proj)
    z = projected[..., :inner]
    xBC = projected[..., inner : inner + mixer.conv_dim]
    dt_raw = projected[..., inner + mixer.conv_dim :]
    xBC = silu(causal_conv(xBC, mixer.conv1d), rules.silu)
    x = xBC[..., :inner]
    B = xBC[..., inner : inner + groups * state].reshape(batch, length, groups, state)
    C = xBC[..., inner + groups * state :].reshape(batch, length, groups, state)
    low, high = mixer.time_step_limit
    dt = torch.clamp(F.softplus(dt_raw + mixer.dt_bias), low, high)
    if rules.ssm:
        dt, B, C = dt.detach(), B.detach(), C.detach()
    A = -torch.exp(mixer.A_log)
    x_heads = x.reshape(batch, length, heads, head_dim)
    y = sequential_ssd(x_heads, dt, A, B, C) + mixer.D[:, None] * x_heads
    gated = gate(y.reshape(batch, length, inner), silu(z, rules.silu), rules.gate)
    # transformers normalises groups of group_size channels, before 5.23 whole rows
    grouped = gated.unflatten(-1, (-1, getattr(mixer.norm, "group_size", inner)))
    normed = rms(grouped, None, mixer.norm.variance_epsilon, rules.norm)
    return linear(normed.reshape(batch, length, inner) * mixer.norm.weight, mixer.out_proj)


def reference_logits(model: Mamba2ForCausalLM, embeds: Tensor, rules) -> Tensor:
    hidden = embeds
    for block in model.backbone.layers:
        normed = rms(hidden, block.norm.weight, block.norm.variance_epsilon, rules.norm)
        hidden = hidden + reference_mixer(block.mixer, normed, rules)
    final = model.backbone.norm_f
    return linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)


ADAPTER = "transformers Mamba-2"

CASE = ArchitectureCase(
    name="hf_mamba2",
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

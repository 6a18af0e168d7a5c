"""Tests: MambaLRP on transformers' FalconMamba against a sequential float64 reference.

The reference below re-implements the FalconMamba language model from its parameters
with plain tensor ops and a loop over time steps (no captum_mamba code), and applies
the MambaLRP rules by detaching the same factors. Gradient x Input of the reference is
the expected relevance.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import FalconMambaConfig, FalconMambaForCausalLM
from transformers.models.falcon_mamba.modeling_falcon_mamba import FalconMambaBlock

from captum_mamba import (
    LayerMambaLRP,
    MambaLRP,
    MambaRules,
    UnsupportedModelError,
    rules_applied,
)

CONFIGS = {
    "small": dict(
        hidden_size=16, state_size=4, conv_kernel=4, num_hidden_layers=2, vocab_size=24,
    ),
    "rank3-biased": dict(
        hidden_size=12, state_size=6, conv_kernel=3, num_hidden_layers=3, vocab_size=20,
        time_step_rank=3, use_bias=True, mixer_rms_eps=1e-5,
    ),
}  # fmt: skip
SEEDS = (0, 1, 2)
LENGTH = 9
ABLATIONS = {
    "norm": MambaRules(norm=False),
    "silu": MambaRules(silu=False),
    "ssm": MambaRules(ssm=False),
    "gate": MambaRules(gate=False),
}


def build_model(config: str, seed: int, zero_biases: bool) -> FalconMambaForCausalLM:
    torch.manual_seed(seed)
    model = FalconMambaForCausalLM(FalconMambaConfig(**CONFIGS[config])).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D")):
                parameter.add_(0.3 * torch.randn_like(parameter))
            elif name.endswith("bias") and not name.endswith("dt_proj.bias"):
                parameter.copy_(torch.zeros_like(parameter) if zero_biases else
                                0.1 * torch.randn_like(parameter))  # fmt: skip
    return model


def linear(x: Tensor, layer: nn.Linear) -> Tensor:
    out = x @ layer.weight.T
    return out if layer.bias is None else out + layer.bias


def rms(x: Tensor, weight: Tensor | None, eps: float, ln_rule: bool) -> Tensor:
    scale = 1.0 / torch.sqrt((x * x).mean(-1, keepdim=True) + eps)
    out = x * (scale.detach() if ln_rule else scale)
    return out if weight is None else out * weight


def silu(x: Tensor, identity_rule: bool) -> Tensor:
    sigmoid = 1.0 / (1.0 + torch.exp(-x))
    return x * (sigmoid.detach() if identity_rule else sigmoid)


def gate(a: Tensor, b: Tensor, half_rule: bool) -> Tensor:
    if half_rule:
        return 0.5 * (a * b.detach() + a.detach() * b)
    return a * b


def causal_conv(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """Depthwise causal conv over time, tap by tap: ``x`` is ``(batch, length, channels)``."""
    kernel = conv.weight.shape[-1]
    out = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for k in range(kernel):
            source = t - (kernel - 1) + k
            if source >= 0:
                out[:, t] = out[:, t] + conv.weight[:, 0, k] * x[:, source]
    return out if conv.bias is None else out + conv.bias


def reference_mixer(mixer, u: Tensor, rules: MambaRules) -> Tensor:
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


def reference_logits(model: FalconMambaForCausalLM, embeds: Tensor, rules: MambaRules) -> Tensor:
    hidden = embeds
    for block in model.backbone.layers:
        normed = rms(hidden, block.norm.weight, block.norm.variance_epsilon, rules.norm)
        hidden = hidden + reference_mixer(block.mixer, normed, rules)
    final = model.backbone.norm_f
    return linear(rms(hidden, final.weight, final.variance_epsilon, rules.norm), model.lm_head)


def reference_relevance(model, embeds: Tensor, targets: list, rules: MambaRules) -> Tensor:
    leaf = embeds.clone().requires_grad_()
    logits = reference_logits(model, leaf, rules)
    picked = torch.stack([logits[i, pos, tok] for i, (pos, tok) in enumerate(targets)])
    (grad,) = torch.autograd.grad(picked.sum(), leaf)
    return leaf.detach() * grad


def model_logits(model: FalconMambaForCausalLM, embeds: Tensor, **kwargs) -> Tensor:
    """The model's own forward, without the float32 cast of the logits."""
    hidden = model.backbone(inputs_embeds=embeds, use_cache=False, **kwargs).last_hidden_state
    return model.lm_head(hidden)


def inputs(model: FalconMambaForCausalLM, seed: int) -> tuple[Tensor, list]:
    generator = torch.Generator().manual_seed(1000 + seed)
    embeds = torch.randn(2, LENGTH, model.config.hidden_size, generator=generator)
    return embeds.double(), [(LENGTH - 1, 3), (4, 7)]


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("config", CONFIGS)
def test_relevance_matches_sequential_reference(config: str, seed: int) -> None:
    model = build_model(config, seed, zero_biases=False)
    embeds, targets = inputs(model, seed)
    relevance = MambaLRP(model).attribute(embeds, target=targets)
    expected = reference_relevance(model, embeds, targets, MambaRules())
    assert relevance.dtype == torch.float64
    assert relative_error(relevance, expected) < 1e-10


@pytest.mark.parametrize("rules", [*ABLATIONS, "gradient_x_input"])
@pytest.mark.parametrize("config", CONFIGS)
def test_ablated_relevance_matches_sequential_reference(config: str, rules: str) -> None:
    chosen = ABLATIONS.get(rules, MambaRules.gradient_x_input())
    model = build_model(config, 0, zero_biases=False)
    embeds, targets = inputs(model, 0)
    relevance = MambaLRP(model, rules=chosen).attribute(embeds, target=targets)
    expected = reference_relevance(model, embeds, targets, chosen)
    assert relative_error(relevance, expected) < 1e-10


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("config", CONFIGS)
def test_relevance_is_conserved_with_zero_biases(config: str, seed: int) -> None:
    model = build_model(config, seed, zero_biases=True)
    embeds, targets = inputs(model, seed)
    relevance, delta = MambaLRP(model).attribute(
        embeds, target=targets, return_convergence_delta=True
    )
    logits = reference_logits(model, embeds, MambaRules())
    explained = torch.stack([logits[i, pos, tok] for i, (pos, tok) in enumerate(targets)])
    total = relevance.sum(dim=(1, 2))
    assert ((total - explained).abs() / explained.abs()).max() <= 1e-9
    assert (delta.abs() / explained.abs()).max() <= 1e-9


@pytest.mark.parametrize("rule", ABLATIONS)
@pytest.mark.parametrize("config", CONFIGS)
def test_each_rule_is_needed_for_conservation(config: str, rule: str) -> None:
    model = build_model(config, 0, zero_biases=True)
    embeds, targets = inputs(model, 0)
    _, delta = MambaLRP(model, rules=ABLATIONS[rule]).attribute(
        embeds, target=targets, return_convergence_delta=True
    )
    explained = torch.stack(
        [model_logits(model, embeds)[i, pos, tok] for i, (pos, tok) in enumerate(targets)]
    )
    assert (delta.abs() / explained.abs()).max() > 1e-4


@pytest.mark.parametrize("config", CONFIGS)
def test_forward_is_unchanged_under_the_rules(config: str) -> None:
    model = build_model(config, 0, zero_biases=False)
    embeds, _ = inputs(model, 0)
    own = model_logits(model, embeds)
    reference = reference_logits(model, embeds, MambaRules())
    for rules in (MambaRules(), MambaRules.gradient_x_input()):
        with torch.no_grad(), rules_applied(model, rules):
            ruled = model_logits(model, embeds)
        assert ruled.dtype == torch.float64
        assert relative_error(ruled, own) < 1e-6  # transformers casts parts to float32
        assert relative_error(ruled, reference) < 1e-12
    assert "forward" not in vars(model.backbone.layers[0].mixer)


def test_forward_with_padding_mask_matches_the_model() -> None:
    model = build_model("rank3-biased", 0, zero_biases=False)
    embeds, _ = inputs(model, 0)
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    mask[0, :3] = 0
    own = model_logits(model, embeds, attention_mask=mask)
    with torch.no_grad(), rules_applied(model, MambaRules()):
        ruled = model_logits(model, embeds, attention_mask=mask)
    assert relative_error(ruled, own) < 1e-6


def test_token_ids_through_layer_mamba_lrp_are_conserved() -> None:
    model = build_model("small", 1, zero_biases=True)
    ids = torch.randint(0, model.config.vocab_size, (2, LENGTH), generator=torch.Generator())
    relevance, delta = LayerMambaLRP(model, model.get_input_embeddings()).attribute(
        ids, target=(LENGTH - 1, 5), return_convergence_delta=True
    )
    explained = model_logits(model, model.get_input_embeddings()(ids))[:, -1, 5]
    assert relevance.shape == (2, LENGTH, model.config.hidden_size)
    assert (delta.abs() / explained.abs()).max() <= 1e-9


def test_attention_next_to_falcon_mamba_blocks_is_rejected() -> None:
    hybrid = nn.ModuleDict(
        {
            "mamba": FalconMambaBlock(FalconMambaConfig(**CONFIGS["small"]), layer_idx=0),
            "attn": nn.MultiheadAttention(16, 2),
        }
    )
    with pytest.raises(UnsupportedModelError, match=r"attn \(.*MultiheadAttention\).*FalconMamba"):
        MambaLRP(hybrid)

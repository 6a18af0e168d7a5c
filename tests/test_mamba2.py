"""Tests: MambaLRP on transformers' Mamba-2 against a sequential float64 reference.

The reference below re-implements the Mamba-2 language model from its parameters
with plain tensor ops and a loop over time steps (no chunking, no captum_mamba code),
and applies the MambaLRP rules by detaching the same factors. Gradient x Input of the
reference is the expected relevance.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Mamba2Config, Mamba2ForCausalLM
from transformers.models.mamba2.modeling_mamba2 import Mamba2Block

from captum_mamba import (
    LayerMambaLRP,
    MambaLRP,
    MambaRules,
    UnsupportedModelError,
    rules_applied,
)
from captum_mamba.ops.ssd_scan import ssd_scan

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
SEEDS = (0, 1, 2)
LENGTH = 10  # not a multiple of either chunk size: padding and several chunks
ABLATIONS = {
    "norm": MambaRules(norm=False),
    "silu": MambaRules(silu=False),
    "ssm": MambaRules(ssm=False),
    "gate": MambaRules(gate=False),
}


def build_model(config: str, seed: int, zero_biases: bool) -> Mamba2ForCausalLM:
    torch.manual_seed(seed)
    model = Mamba2ForCausalLM(Mamba2Config(**CONFIGS[config])).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("norm.weight", "norm_f.weight", ".D")):
                parameter.add_(0.3 * torch.randn_like(parameter))
            elif name.endswith("bias") and not name.endswith("dt_bias"):
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


def reference_mixer(mixer, u: Tensor, rules: MambaRules) -> Tensor:
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
    grouped = gated.reshape(batch, length, groups, inner // groups)
    normed = rms(grouped, None, mixer.norm.variance_epsilon, rules.norm)
    return linear(normed.reshape(batch, length, inner) * mixer.norm.weight, mixer.out_proj)


def reference_logits(model: Mamba2ForCausalLM, embeds: Tensor, rules: MambaRules) -> Tensor:
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


def model_logits(model: Mamba2ForCausalLM, embeds: Tensor, **kwargs) -> Tensor:
    """The model's own forward, without the float32 cast of the logits."""
    hidden = model.backbone(inputs_embeds=embeds, use_cache=False, **kwargs).last_hidden_state
    return model.lm_head(hidden)


def inputs(model: Mamba2ForCausalLM, seed: int) -> tuple[Tensor, list]:
    generator = torch.Generator().manual_seed(1000 + seed)
    embeds = torch.randn(2, LENGTH, model.config.hidden_size, generator=generator)
    return embeds.double(), [(LENGTH - 1, 3), (4, 7)]


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


# --- the SSD scan op --------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 4, 16])
def test_ssd_scan_matches_sequential_scan(chunk: int) -> None:
    generator = torch.Generator().manual_seed(chunk)
    batch, length, heads, head_dim, groups, state = 2, 11, 6, 3, 2, 5

    def rand(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    x, grad_y = rand(batch, length, heads, head_dim), rand(batch, length, heads, head_dim)
    dt = torch.rand(batch, length, heads, generator=generator, dtype=torch.float64)
    A = -2 * torch.rand(heads, generator=generator, dtype=torch.float64)
    B, C = rand(batch, length, groups, state), rand(batch, length, groups, state)
    expected = sequential_ssd(x, dt, A, B, C)
    torch.testing.assert_close(ssd_scan(x, dt, A, B, C, chunk), expected, rtol=1e-12, atol=1e-12)

    # Only x requires a gradient: the transposed (reverse-time) scan.
    x_leaf, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(ssd_scan(x_leaf, dt, A, B, C, chunk), x_leaf, grad_y)
    (grad_ref,) = torch.autograd.grad(sequential_ssd(x_ref, dt, A, B, C), x_ref, grad_y)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-12, atol=1e-12)

    # Every input requires a gradient (SSM rule off).
    leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, dt, A, B, C)]
    grads = torch.autograd.grad(ssd_scan(*leaves, chunk), leaves, grad_y)
    ref_grads = torch.autograd.grad(sequential_ssd(*ref_leaves), ref_leaves, grad_y)
    for name, actual, wanted in zip(["x", "dt", "A", "B", "C"], grads, ref_grads, strict=True):
        torch.testing.assert_close(actual, wanted, rtol=1e-10, atol=1e-12, msg=name)


def test_ssd_scan_rejects_mismatched_groups() -> None:
    x, dt, A = torch.randn(1, 3, 4, 2), torch.rand(1, 3, 4), -torch.rand(4)
    B = torch.randn(1, 3, 3, 2)
    with pytest.raises(ValueError, match="divisible"):
        ssd_scan(x, dt, A, B, B)


# --- the model under the rules ----------------------------------------------------------


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
        assert relative_error(ruled, own) < 1e-6  # transformers runs the scan in float32
        assert relative_error(ruled, reference) < 1e-12
    assert "forward" not in vars(model.backbone.layers[0].mixer)


def test_forward_with_padding_mask_matches_the_model() -> None:
    model = build_model("three-groups-clamped-biased", 0, zero_biases=False)
    embeds, _ = inputs(model, 0)
    mask = torch.ones(2, LENGTH, dtype=torch.long)
    mask[0, :3] = 0
    own = model_logits(model, embeds, attention_mask=mask)
    with torch.no_grad(), rules_applied(model, MambaRules()):
        ruled = model_logits(model, embeds, attention_mask=mask)
    assert relative_error(ruled, own) < 1e-6


def test_token_ids_through_layer_mamba_lrp_are_conserved() -> None:
    model = build_model("one-group", 1, zero_biases=True)
    ids = torch.randint(0, model.config.vocab_size, (2, LENGTH), generator=torch.Generator())
    relevance, delta = LayerMambaLRP(model, model.get_input_embeddings()).attribute(
        ids, target=(LENGTH - 1, 5), return_convergence_delta=True
    )
    explained = model_logits(model, model.get_input_embeddings()(ids))[:, -1, 5]
    assert relevance.shape == (2, LENGTH, model.config.hidden_size)
    assert (delta.abs() / explained.abs()).max() <= 1e-9


# --- unsupported blocks -----------------------------------------------------------------


class HybridBlock(nn.Module):
    """A Mamba-2 block followed by an attention layer, as in hybrid models."""

    def __init__(self, attention: nn.Module) -> None:
        super().__init__()
        config = Mamba2Config(**CONFIGS["one-group"])
        self.mamba = Mamba2Block(config, layer_idx=0)
        self.attention = attention


def test_attention_next_to_mamba_blocks_is_rejected_with_its_path_and_type() -> None:
    hybrid = nn.Sequential(HybridBlock(nn.MultiheadAttention(16, 2, batch_first=True)))
    with pytest.raises(UnsupportedModelError) as error:
        MambaLRP(hybrid)
    message = str(error.value)
    assert "0.attention" in message
    assert "torch.nn.modules.activation.MultiheadAttention" in message
    assert "transformers Mamba-2" in message and "transformers Mamba " in message
    with pytest.raises(UnsupportedModelError), rules_applied(hybrid, MambaRules()):
        pass


def test_transformers_attention_module_is_rejected() -> None:
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention

    config = LlamaConfig(hidden_size=16, num_attention_heads=2, num_key_value_heads=2)
    hybrid = HybridBlock(LlamaAttention(config, layer_idx=1))
    with pytest.raises(UnsupportedModelError, match=r"attention \(.*LlamaAttention\)"):
        MambaLRP(hybrid)

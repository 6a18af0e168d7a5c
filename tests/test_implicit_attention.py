"""The implicit attention of Mamba-1 (captum_mamba.baselines.implicit_attention) against an
independent float64 reference.

The reference is written here from the parameters of a transformers ``MambaMixer`` with
loops over time: the mixer's forward pass, and the implicit attention
``Omega[d, i, j] = silu(z_i) sum_t P[d, i, t] s_t w[d, K-1-(t-j)]`` with the hidden
attention ``P`` unrolled as a product of per-step decays.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import mamba2_model, mamba2_reference, rms_norm_float64
from torch import Tensor, nn

from captum_mamba.adapters import UnsupportedModelError
from captum_mamba.baselines.captum_methods import (
    IMPLICIT_ATTRIBUTION,
    IMPLICIT_ROLLOUT,
    MAMBA1_METHODS,
    build_method,
)
from captum_mamba.baselines.implicit_attention import (
    ImplicitAttentionAttribution,
    ImplicitAttentionRollout,
)
from captum_mamba.models import mamba_config, random_mamba_lm

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _model(seed: int, hidden: int, layers: int, biases: bool) -> nn.Module:
    config = mamba_config(hidden_size=hidden, num_hidden_layers=layers, state_size=4)
    config.use_bias = biases
    config.use_conv_bias = biases
    config.residual_in_fp32 = False
    model = random_mamba_lm(config, seed=seed, dtype=torch.float64)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") and "dt_proj" not in name:
                parameter.copy_(0.2 * torch.randn_like(parameter))
            elif name.endswith(".D"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def _reference(mixer: nn.Module, a: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Loops over time: the mixer's output, ``Omega`` (batch, channels, L, L), the
    values ``x = W_x a + b_x`` and the conv-bias term ``beta`` (batch, L, channels)."""
    batch, length, _ = a.shape
    channels = mixer.out_proj.weight.shape[1]
    projected = mixer.in_proj(a)
    x, z = projected[..., :channels], projected[..., channels:]
    kernel = mixer.conv1d.weight[:, 0]
    width = kernel.shape[1]
    conv = torch.zeros_like(x)
    for t in range(length):
        for k in range(width):
            source = t - (width - 1) + k
            if source >= 0:
                conv[:, t] = conv[:, t] + kernel[:, k] * x[:, source]
    conv_bias = mixer.conv1d.bias if mixer.conv1d.bias is not None else torch.zeros(channels)
    conv = conv + conv_bias
    s = torch.sigmoid(conv)
    u = conv * s
    rank, state = mixer.dt_proj.weight.shape[1], mixer.A_log.shape[1]
    xp = mixer.x_proj(u)
    dt = F.softplus(mixer.dt_proj(xp[..., :rank]))
    B, C = xp[..., rank : rank + state], xp[..., rank + state :]
    A = -torch.exp(mixer.A_log)
    gate = F.silu(z)
    # hidden attention with the skip, by products of the per-step decays
    P = torch.zeros(batch, channels, length, length, dtype=a.dtype)
    for i in range(length):
        for t in range(i + 1):
            decay = torch.ones(batch, channels, state, dtype=a.dtype)
            for k in range(t + 1, i + 1):
                decay = decay * torch.exp(dt[:, k, :, None] * A)
            weight = C[:, i, None] * decay * dt[:, t, :, None] * B[:, t, None]
            P[:, :, i, t] = weight.sum(-1) + (mixer.D if t == i else 0)
    omega = torch.zeros_like(P)
    beta = torch.zeros_like(x)
    for i in range(length):
        for j in range(i + 1):
            for t in range(j, min(i, j + width - 1) + 1):
                omega[:, :, i, j] += P[:, :, i, t] * s[:, t] * kernel[:, width - 1 - (t - j)]
            omega[:, :, i, j] *= gate[:, i]
        for t in range(i + 1):
            beta[:, i] += gate[:, i] * P[:, :, i, t] * s[:, t] * conv_bias
    # the mixer itself: the recurrence over time, then the gate and W_o
    h = torch.zeros(batch, channels, state, dtype=a.dtype)
    ys = []
    for t in range(length):
        h = (
            torch.exp(dt[:, t, :, None] * A) * h
            + dt[:, t, :, None] * B[:, t, None] * u[:, t, :, None]
        )
        ys.append((h * C[:, t, None]).sum(-1) + mixer.D * u[:, t])
    out = mixer.out_proj(torch.stack(ys, 1) * gate)
    return out, omega, x, beta


@pytest.mark.parametrize(
    ("seed", "groups", "length", "biases"),
    [(0, 1, 7, True), (1, 2, 6, False), (2, 2, 3, True), (3, 4, 9, True)],
)
def test_mamba2_implicit_attention_reproduces_every_mixer_exactly(
    seed: int, groups: int, length: int, biases: bool
) -> None:
    model = mamba2_model(seed, groups, 2, biases)
    inputs = torch.randn(2, length, 16, generator=torch.Generator().manual_seed(seed))
    pairs = ImplicitAttentionRollout(model).mixer_attentions(inputs.double())
    assert len(pairs) == 2
    for (layer, attention), block in zip(pairs, model.backbone.layers, strict=True):
        with torch.no_grad():
            expected, omega, values, beta = mamba2_reference(
                block.mixer, rms_norm_float64(block.norm, layer.hidden_states)
            )
            own = block.mixer(block.norm(layer.hidden_states))
        scale = omega.abs().max()
        assert (attention.omega - omega).abs().max() <= 1e-12 * scale
        torch.testing.assert_close(attention.values, values, rtol=1e-13, atol=1e-13)
        assert (attention.bias - beta).abs().max() <= 1e-12 * scale
        relative = (attention.output() - expected).abs().max() / expected.abs().max()
        assert relative <= 1e-12
        again = mixer_from(omega, values, beta, block.mixer.out_proj)
        assert (again - expected).abs().max() / expected.abs().max() <= 1e-12
        # transformers rounds its norms through float32
        assert (attention.output() - own).abs().max() / own.abs().max() <= 1e-6


@pytest.mark.parametrize(
    ("seed", "hidden", "length", "biases"),
    [(0, 12, 7, True), (1, 12, 7, False), (2, 8, 11, True), (3, 8, 3, True), (4, 16, 5, False)],
)
def test_implicit_attention_reproduces_every_mixer_exactly(
    seed: int, hidden: int, length: int, biases: bool
) -> None:
    model = _model(seed, hidden, 2, biases)
    inputs = torch.randn(2, length, hidden, generator=torch.Generator().manual_seed(seed))
    inputs = inputs.double()
    pairs = ImplicitAttentionRollout(model).mixer_attentions(inputs)
    assert len(pairs) == 2
    for (layer, attention), block in zip(pairs, model.backbone.layers, strict=True):
        with torch.no_grad():
            a = rms_norm_float64(block.norm, layer.hidden_states)
            expected, omega, values, beta = _reference(block.mixer, a)
            own = block.mixer(block.norm(layer.hidden_states))
        scale = omega.abs().max()
        assert (attention.omega - omega).abs().max() <= 1e-12 * scale
        torch.testing.assert_close(attention.values, values, rtol=1e-13, atol=1e-13)
        assert (attention.bias - beta).abs().max() <= 1e-12 * scale
        if not biases:
            assert attention.bias.abs().max() == 0
        upper = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)
        assert attention.omega[:, :, upper].abs().max() == 0  # causal
        # the key property: Omega applied to the mixer's values (+ the bias term) is
        # the mixer's output, with the gates at their forward values
        relative = (attention.output() - expected).abs().max() / expected.abs().max()
        assert relative <= 1e-12  # measured <= 5e-16
        # the reference's own Omega does the same (the identity is not circular)
        again = mixer_from(omega, values, beta, block.mixer.out_proj)
        assert (again - expected).abs().max() / expected.abs().max() <= 1e-12
        # transformers' own forward rounds its RMSNorm and A = -exp(A_log.float()) to
        # float32
        assert (attention.output() - own).abs().max() / own.abs().max() <= 1e-6


def mixer_from(omega: Tensor, values: Tensor, beta: Tensor, out_proj: nn.Linear) -> Tensor:
    """``W_o (sum_j Omega[:, i, j] x_j + beta_i) + b_o`` by loops over positions."""
    inner = torch.zeros_like(values)
    for i in range(values.shape[1]):
        for j in range(i + 1):
            inner[:, i] += omega[:, :, i, j] * values[:, j]
    return out_proj(inner + beta)


def _rollout(matrices: list[Tensor]) -> Tensor:
    joint = None
    for matrix in matrices:
        mixed = matrix + torch.eye(matrix.shape[-1], dtype=matrix.dtype)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        joint = mixed if joint is None else torch.einsum("bij,bjk->bik", mixed, joint)
    return joint


@pytest.mark.parametrize("start_layer", [0, 1, -1])
def test_rollout_of_the_channel_means(start_layer: int) -> None:
    model = _model(5, 12, 3, True)
    inputs = torch.randn(2, 6, 12, generator=torch.Generator().manual_seed(5)).double()
    explainer = ImplicitAttentionRollout(model, start_layer=start_layer)
    means = []
    for layer, _ in explainer.mixer_attentions(inputs):
        block = model.get_submodule(layer.path)
        with torch.no_grad():
            _, omega, _, _ = _reference(
                block.mixer, rms_norm_float64(block.norm, layer.hidden_states)
            )
        means.append(omega.mean(1))
    joint = _rollout(means[start_layer:])
    for position in (-1, 2):
        relevance = explainer.attribute(inputs, position=position)
        assert relevance.shape == (2, 6)
        assert (relevance - joint[:, position]).abs().max() <= 1e-9
    assert (explainer.attribute(inputs, position=2)[:, 3:] == 0).all()
    with pytest.raises(ValueError, match="start_layer"):
        ImplicitAttentionRollout(model, start_layer=3).attribute(inputs)


def test_other_architectures_are_refused_in_one_line() -> None:
    from transformers import BambaConfig, BambaForCausalLM

    config = BambaConfig(
        hidden_size=8, intermediate_size=12, num_hidden_layers=2, vocab_size=16,
        num_attention_heads=2, num_key_value_heads=1, attn_layer_indices=[1],
        mamba_n_heads=2, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=4,
        mamba_chunk_size=4, mamba_d_conv=4, mamba_expand=2,
    )  # fmt: skip
    config._attn_implementation = "eager"
    model = BambaForCausalLM(config).double().eval()
    inputs = torch.randn(1, 4, 8, dtype=torch.float64)
    with pytest.raises(UnsupportedModelError, match="Mamba-1 and Mamba-2"):
        ImplicitAttentionRollout(model).attribute(inputs)


def test_implicit_attention_is_in_the_method_catalogue() -> None:
    model = _model(6, 12, 2, True)
    embeds = torch.randn(1, 5, 12, generator=torch.Generator().manual_seed(6)).double()
    assert IMPLICIT_ROLLOUT in MAMBA1_METHODS
    expected = ImplicitAttentionRollout(model).attribute(embeds)
    torch.testing.assert_close(build_method(IMPLICIT_ROLLOUT, model)(embeds, (-1, 1)), expected)


def test_falcon_mamba_mixers_are_reproduced() -> None:
    # FalconMamba's extra norms of dt, B and C sit inside the recorded scan inputs; the
    # reference is transformers' own forward (its norms rounded through float32)
    from transformers import FalconMambaConfig, FalconMambaForCausalLM

    torch.manual_seed(7)
    config = FalconMambaConfig(
        hidden_size=12, num_hidden_layers=2, state_size=4, vocab_size=32, use_bias=True
    )
    model = FalconMambaForCausalLM(config).double().eval()
    inputs = torch.randn(2, 7, 12, dtype=torch.float64)
    for layer, attention in ImplicitAttentionRollout(model).mixer_attentions(inputs):
        block = model.get_submodule(layer.path)
        with torch.no_grad():
            own = block.mixer(block.norm(layer.hidden_states))
        assert (attention.output() - own).abs().max() / own.abs().max() <= 1e-6


@pytest.mark.parametrize("name", MAMBA1_METHODS)
def test_the_catalogue_explains_mamba2(name: str) -> None:
    model = mamba2_model(8, 2, 2, True)
    embeds = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(8)).double()
    scores = build_method(name, model)(embeds, (-1, 1))
    assert scores.shape == (1, 5)
    assert torch.isfinite(scores).all() and scores.abs().sum() > 0


def _loop_forward(model: nn.Module, inputs: Tensor, reference) -> tuple[Tensor, list[Tensor]]:
    """The whole LM in float64 with the loop mixers: the logits and the residual stream
    entering each layer (``r + mixer(norm(r))`` per layer, then the final norm and head)."""
    streams, r = [], inputs
    for block in model.backbone.layers:
        streams.append(r)
        r = r + reference(block.mixer, rms_norm_float64(block.norm, r))[0]
    return model.lm_head(rms_norm_float64(model.backbone.norm_f, r)), streams


def _unit(values: Tensor, dims: tuple[int, ...]) -> Tensor:
    low = values.amin(dim=dims, keepdim=True)
    return (values - low) / (values.amax(dim=dims, keepdim=True) - low)


@pytest.mark.parametrize(
    ("family", "seed", "length", "token", "position"),
    [
        ("mamba", 0, 6, 3, -1),
        ("mamba", 1, 5, 7, 3),
        ("mamba2", 2, 6, 5, -1),
        ("mamba2", 3, 4, 1, 2),
    ],
)
def test_gradient_weighted_implicit_attention_against_loops(
    family: str, seed: int, length: int, token: int, position: int
) -> None:
    """Zimerman et al.'s attribution, written out: per layer the channel mean of the
    positive loop-reference Omega times the min-max normalised positive gradient of the
    explained logit at the layer's input (autograd through the loop forward), min-max
    normalised, then the rollout ``prod normalise(I + A_l)``, row ``position``."""
    if family == "mamba":
        model, reference, hidden = _model(seed, 12, 2, True), _reference, 12
    else:
        model, reference, hidden = mamba2_model(seed, 2, 2, True), mamba2_reference, 16
    inputs = torch.randn(2, length, hidden, generator=torch.Generator().manual_seed(seed))
    inputs = inputs.double().requires_grad_()
    logits, streams = _loop_forward(model, inputs, reference)
    grads = torch.autograd.grad(logits[:, position, token].sum(), streams)
    rows = position % length + 1
    matrices = []
    for block, stream, grad in zip(model.backbone.layers, streams, grads, strict=True):
        with torch.no_grad():
            omega = reference(block.mixer, rms_norm_float64(block.norm, stream))[1]
        positive = omega[:, :, :rows, :rows].clamp(min=0).mean(1)
        weight = _unit(grad[:, :rows].clamp(min=0).amax(-1), (1,))
        matrices.append(_unit(positive * weight[:, None, :], (1, 2)))
    expected = _rollout(matrices)[:, rows - 1]
    explainer = ImplicitAttentionAttribution(model)
    relevance = explainer.attribute(inputs.detach(), target=(position, token), position=position)
    assert relevance.shape == (2, length)
    assert (relevance[:, :rows] - expected).abs().max() <= 1e-9
    assert (relevance[:, rows:] == 0).all()
    # the gradients make it depend on the explained logit, unlike the rollout
    other = explainer.attribute(inputs.detach(), target=(position, token + 1), position=position)
    assert (other - relevance).abs().max() > 1e-6


def test_gradient_weighted_implicit_attention_is_in_the_catalogue() -> None:
    model = _model(9, 12, 2, True)
    embeds = torch.randn(1, 5, 12, generator=torch.Generator().manual_seed(9)).double()
    assert IMPLICIT_ATTRIBUTION in MAMBA1_METHODS
    expected = ImplicitAttentionAttribution(model).attribute(embeds, target=(-1, 2))
    scores = build_method(IMPLICIT_ATTRIBUTION, model)(embeds, (-1, 2))
    torch.testing.assert_close(scores, expected)

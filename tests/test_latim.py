"""LaTIM (captum_mamba.baselines.latim) against an independent float64 reference.

The reference is a Mamba-1 mixer written here with a loop over time, from the
parameters of a transformers ``MambaMixer``; with the gates (the sigmoid of the
convolution's output and ``silu(z)``) frozen at their values and the biases dropped, it is
linear in its input, and feeding it one token alone gives that token's contribution.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import mamba2_model, mamba2_reference, rms_norm_float64
from torch import Tensor, nn

from captum_mamba.adapters import UnsupportedModelError
from captum_mamba.baselines.captum_methods import LATIM_ALTI, MAMBA1_METHODS, build_method
from captum_mamba.baselines.latim import LaTIM, aggregate
from captum_mamba.models import mamba_config, random_mamba_lm

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _model(seed: int, hidden: int = 12, layers: int = 2, biases: bool = True) -> nn.Module:
    config = mamba_config(hidden_size=hidden, num_hidden_layers=layers, state_size=4)
    config.use_bias = biases
    config.residual_in_fp32 = False
    model = random_mamba_lm(config, seed=seed, dtype=torch.float64)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") and "dt_proj" not in name:
                parameter.copy_(0.2 * torch.randn_like(parameter) if biases else 0 * parameter)
            elif name.endswith(".D"):
                parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def _conv(mixer: nn.Module, x: Tensor) -> Tensor:
    """Depthwise causal convolution without its bias, by loops."""
    kernel = mixer.conv1d.weight[:, 0]
    width = kernel.shape[1]
    out = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for k in range(width):
            source = t - (width - 1) + k
            if source >= 0:
                out[:, t] = out[:, t] + kernel[:, k] * x[:, source]
    return out


def _mixer(mixer: nn.Module, a: Tensor, frozen: tuple[Tensor, Tensor, Tensor] | None = None):
    """Mamba-1 mixer by a loop over time. With ``frozen = (sigmoid of the conv output,
    silu(z), scan input u)`` of a full forward pass, the gates and the scan's
    coefficients are those values and every bias is dropped: a linear map of ``a``.

    Returns the output and ``(sigmoid(conv), silu(z), u)`` of this pass."""
    channels = mixer.out_proj.weight.shape[1]
    weight, bias = mixer.in_proj.weight, mixer.in_proj.bias
    use_bias = frozen is None
    x, z = a @ weight[:channels].T, a @ weight[channels:].T
    conv = _conv(mixer, x + (bias[:channels] if bias is not None and use_bias else 0))
    if mixer.conv1d.bias is not None and use_bias:
        conv = conv + mixer.conv1d.bias
    if bias is not None:
        z = z + bias[channels:]
    sigmoid, gate, u = torch.sigmoid(conv), F.silu(z), None
    if frozen is not None:
        sigmoid, gate, u = frozen
    scan_in = conv * sigmoid
    projected = mixer.x_proj(scan_in if u is None else u)
    rank = mixer.dt_proj.weight.shape[1]
    dt = F.softplus(mixer.dt_proj(projected[..., :rank]))
    state = mixer.A_log.shape[1]
    B, C = projected[..., rank : rank + state], projected[..., rank + state :]
    A = -torch.exp(mixer.A_log)
    h = torch.zeros(a.shape[0], channels, state, dtype=a.dtype)
    ys = []
    for t in range(a.shape[1]):
        drive = dt[:, t, :, None] * B[:, t, None] * scan_in[:, t, :, None]
        h = torch.exp(dt[:, t, :, None] * A) * h + drive
        ys.append((h * C[:, t, None]).sum(-1) + mixer.D * scan_in[:, t])
    out = (torch.stack(ys, 1) * gate) @ mixer.out_proj.weight.T
    if mixer.out_proj.bias is not None and use_bias:
        out = out + mixer.out_proj.bias
    return out, (sigmoid, gate, scan_in)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("biases", [True, False])
def test_decomposition_reproduces_every_layer_exactly(seed: int, biases: bool) -> None:
    model = _model(seed, biases=biases)
    inputs = torch.randn(2, 7, 12, generator=torch.Generator().manual_seed(seed)).double()
    decompositions = LaTIM(model).decompositions(inputs)
    assert len(decompositions) == 2
    torch.testing.assert_close(decompositions[0][0], inputs, rtol=0, atol=0)
    for (hidden, contributions, beta), block in zip(
        decompositions, model.backbone.layers, strict=True
    ):
        with torch.no_grad():
            # transformers' RMSNorm rounds through float32; the reference is float64
            norm = block.norm
            a = (
                norm.weight
                * hidden
                * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
            )
            expected, frozen = _mixer(block.mixer, a)
            own = block.mixer(norm(hidden))
            # each token's contribution: the frozen, bias-free mixer fed that token alone
            for j in range(a.shape[1]):
                alone = torch.zeros_like(a)
                alone[:, j] = a[:, j]
                single, _ = _mixer(block.mixer, alone, frozen)
                # measured up to about 1e-15 (with the norm in float64, not float32)
                scale = contributions.abs().max()
                assert (contributions[:, :, j] - single).abs().max() / scale <= 1e-12
        reconstructed = contributions.sum(2) + beta
        assert (reconstructed - expected).abs().max() / expected.abs().max() <= 1e-12
        # transformers' own forward rounds its norm and A = -exp(A_log.float()) to float32
        assert (reconstructed - own).abs().max() / own.abs().max() <= 1e-6
        upper = torch.triu(torch.ones(7, 7, dtype=torch.bool), diagonal=1)
        assert contributions[:, upper].abs().max() == 0  # causal
        if not biases:
            assert beta.abs().max() <= 1e-12 * expected.abs().max()


def test_aggregations_on_hand_made_contributions() -> None:
    # one example, two tokens, hidden 2; residual h added on the diagonal
    contributions = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[3.0, -4.0], [0.0, 1.0]]]])
    residual = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    # totals C: row 0: [1, 1], [0, 0]; row 1: [3, -4], [1, 1]
    l2 = aggregate(contributions, residual, "l2")
    torch.testing.assert_close(l2[0, 0], torch.tensor([1.0, 0.0]))
    norms = torch.tensor([5.0, 2.0**0.5])
    torch.testing.assert_close(l2[0, 1], norms / norms.sum())
    alti = aggregate(contributions, residual, "alti")
    # row 1: y = [4, -3], ||y||_1 = 7; ||y - C_10||_1 = 2, ||y - C_11||_1 = 7
    torch.testing.assert_close(alti[0, 1], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(alti[0, 0], torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(contributions, residual, "mean")


@pytest.mark.parametrize("aggregation", ["l2", "alti"])
def test_attribution_is_the_product_of_the_layers(aggregation: str) -> None:
    model = _model(3, layers=3)
    inputs = torch.randn(2, 6, 12, generator=torch.Generator().manual_seed(3)).double()
    latim = LaTIM(model, aggregation=aggregation)
    layers = latim.layer_scores(inputs)
    joint = layers[0]
    for scores in layers[1:]:
        joint = torch.einsum("bij,bjk->bik", scores, joint)
    for position in (-1, 3):
        relevance = latim.attribute(inputs, position=position)
        torch.testing.assert_close(relevance, joint[:, position], rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(relevance.sum(-1), torch.ones(2, dtype=torch.float64))
        assert (relevance >= 0).all()
    assert (latim.attribute(inputs, position=3)[:, 4:] == 0).all()


@pytest.mark.parametrize(("seed", "groups", "biases"), [(0, 1, True), (1, 2, False), (2, 4, True)])
def test_mamba2_decomposition_reproduces_every_layer_exactly(
    seed: int, groups: int, biases: bool
) -> None:
    # the reference: a Mamba-2 mixer by loops over time (gated RMSNorm's normaliser and
    # the gates at their forward values), from tests/test_implicit_attention.py
    model = mamba2_model(seed, groups, 2, biases)
    inputs = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(seed)).double()
    decompositions = LaTIM(model).decompositions(inputs)
    assert len(decompositions) == 2
    for (hidden, contributions, beta), block in zip(
        decompositions, model.backbone.layers, strict=True
    ):
        mixer = block.mixer
        with torch.no_grad():
            a = rms_norm_float64(block.norm, hidden)
            expected, omega, _, conv_beta = mamba2_reference(mixer, a)
            channels = omega.shape[1]
            tokens = a @ mixer.in_proj.weight[channels : 2 * channels].T  # W_x a_j
            for j in range(a.shape[1]):
                single = (omega[:, :, :, j].transpose(1, 2) * tokens[:, None, j]) @ (
                    mixer.out_proj.weight.T
                )
                scale = contributions.abs().max()
                assert (contributions[:, :, j] - single).abs().max() / scale <= 1e-12
        reconstructed = contributions.sum(2) + beta
        assert (reconstructed - expected).abs().max() / expected.abs().max() <= 1e-12
        upper = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
        assert contributions[:, upper].abs().max() == 0  # causal
        if not biases:
            assert beta.abs().max() == 0 and conv_beta.abs().max() == 0
    scores = LaTIM(model).attribute(inputs)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2, dtype=torch.float64))


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
        LaTIM(model).attribute(inputs)


def test_latim_is_in_the_method_catalogue() -> None:
    model = _model(4)
    embeds = torch.randn(1, 5, 12, generator=torch.Generator().manual_seed(4)).double()
    for name in MAMBA1_METHODS:
        scores = build_method(name, model)(embeds, (-1, 1))
        assert scores.shape == (1, 5)
        assert torch.isfinite(scores).all() and scores.sum() > 0
    expected = LaTIM(model, aggregation="alti").attribute(embeds)
    torch.testing.assert_close(build_method(LATIM_ALTI, model)(embeds, (-1, 1)), expected)

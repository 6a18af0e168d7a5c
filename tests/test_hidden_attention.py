"""Hidden attention of Mamba's selective SSM against an independent sequential scan."""

from __future__ import annotations

import pytest
import torch
from cases.hf_mamba import _rms, reference_forward
from torch import Tensor, nn

from captum_mamba import UnsupportedModelError
from captum_mamba.attr.forward import default_forward
from captum_mamba.baselines.hidden_attention import (
    SelectiveSSMInputs,
    hidden_attention_matrices,
    mean_hidden_attention,
    positive_hidden_attention,
)
from captum_mamba.baselines.recording import record_layers


def reference_mixer_inputs(mixer: nn.Module, u: Tensor) -> dict[str, Tensor]:
    """x, z, dt, A, B, C, D of a transformers MambaMixer, written out in float64 with
    an explicit loop over the causal conv taps (no call of the mixer's modules)."""
    u = u.double()
    inner = mixer.intermediate_size
    xz = u @ mixer.in_proj.weight.double().T
    if mixer.in_proj.bias is not None:
        xz = xz + mixer.in_proj.bias.double()
    x, z = xz[..., :inner], xz[..., inner:]
    kernel = mixer.conv1d.weight.double()[:, 0, :]  # (inner, width)
    width = kernel.shape[1]
    conv = torch.zeros_like(x)
    for t in range(x.shape[1]):
        for tap in range(width):
            source = t - (width - 1) + tap
            if source >= 0:
                conv[:, t] += kernel[:, tap] * x[:, source]
    if mixer.conv1d.bias is not None:
        conv = conv + mixer.conv1d.bias.double()
    x = conv * torch.sigmoid(conv)
    rank, state = mixer.time_step_rank, mixer.ssm_state_size
    proj = x @ mixer.x_proj.weight.double().T
    time_step, B, C = proj[..., :rank], proj[..., rank : rank + state], proj[..., rank + state :]
    dt = torch.log1p(torch.exp(time_step @ mixer.dt_proj.weight.double().T + mixer.dt_proj.bias))
    A = -torch.exp(mixer.A_log.double())
    return {"x": x, "z": z, "dt": dt, "A": A, "B": B, "C": C, "D": mixer.D.double()}


def sequential_ssm(p: dict[str, Tensor]) -> Tensor:
    """y[t] = C[t] h[t] with h[t] = exp(dt[t] A) h[t-1] + dt[t] B[t] x[t] (no skip)."""
    x, dt, A, B, C = p["x"], p["dt"], p["A"], p["B"], p["C"]
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])
    ys = []
    for t in range(x.shape[1]):
        h = (
            torch.exp(dt[:, t, :, None] * A) * h
            + (dt[:, t, :, None] * B[:, t, None, :]) * x[:, t, :, None]
        )
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1)


def mixers_of(model: nn.Module) -> list[nn.Module]:
    return [layer.mixer for layer in model.backbone.layers]


def mixer_inputs_of(model: nn.Module, embeds: Tensor) -> list[Tensor]:
    """Input of every mixer in a float64 forward pass: the normalised residual stream of
    the independent reference (transformers itself computes the norms in float32)."""
    with torch.no_grad():
        _, residuals = reference_forward(model, embeds)
    return [
        _rms(residual, layer.norm, rule=False)
        for residual, layer in zip(residuals, model.backbone.layers, strict=False)
    ]


def _inputs(make_lm, seed: int = 0, batch: int = 2, length: int = 11, **kw):
    model = make_lm(seed=seed, **kw)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=gen)
    embeds = model.get_input_embeddings()(ids).detach()
    return model, embeds


def recorded_ssms(model: nn.Module, embeds: Tensor) -> list[SelectiveSSMInputs]:
    """The scan inputs the recording backend saw, one per layer."""
    with torch.no_grad():
        _, layers = record_layers(model, lambda: default_forward(model, "inputs_embeds")(embeds))
    assert all(len(layer.ssms) == 1 for layer in layers)
    return [layer.ssms[0].inputs for layer in layers]


def test_recorded_scan_inputs_equal_the_independent_ones(make_lm) -> None:
    model, embeds = _inputs(make_lm, seed=3, num_hidden_layers=3)
    recorded = recorded_ssms(model, embeds)
    assert len(recorded) == 3
    for mixer, u, ssm in zip(
        mixers_of(model), mixer_inputs_of(model, embeds), recorded, strict=True
    ):
        reference = reference_mixer_inputs(mixer, u)
        for name in ("x", "dt", "A", "B", "C", "D"):
            torch.testing.assert_close(
                getattr(ssm, name), reference[name], rtol=1e-12, atol=1e-14, msg=name
            )
        y_loop = sequential_ssm(vars(ssm)) + ssm.x * ssm.D
        alpha = hidden_attention_matrices(ssm, leaf_size=2)
        y_attention = torch.einsum("bdij,bjd->bid", alpha, ssm.x) + ssm.x * ssm.D
        assert (y_attention - y_loop).abs().max() <= 1e-12 * y_loop.abs().max()
        assert torch.all(alpha.triu(1) == 0)


def test_hidden_attention_gives_the_transformers_mixer_output(make_lm) -> None:
    # transformers runs the scan in float32, hence the float32-level tolerance.
    model, embeds = _inputs(make_lm, seed=4)
    mixer, u = mixers_of(model)[0], mixer_inputs_of(model, embeds)[0]
    with torch.no_grad():
        ssm = recorded_ssms(model, embeds)[0]
        y = torch.einsum("bdij,bjd->bid", hidden_attention_matrices(ssm), ssm.x) + ssm.x * ssm.D
        z = mixer.in_proj(u).chunk(2, dim=-1)[1]
        expected = mixer(u)
        got = mixer.out_proj(y * torch.nn.functional.silu(z))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))


@pytest.mark.parametrize(("leaf", "chunk"), [(1, 1 << 22), (3, 700), (64, 1 << 22)])
def test_blocking_does_not_change_the_result(make_lm, leaf: int, chunk: int) -> None:
    model, embeds = _inputs(make_lm, seed=5, length=29)
    ssm = recorded_ssms(model, embeds)[1]
    y_loop = sequential_ssm(vars(ssm))
    alpha = hidden_attention_matrices(ssm, leaf_size=leaf, chunk_elements=chunk)
    y = torch.einsum("bdij,bjd->bid", alpha, ssm.x)
    assert (y - y_loop).abs().max() <= 1e-12 * y_loop.abs().max()
    mean = mean_hidden_attention(ssm, leaf_size=leaf, chunk_elements=chunk)
    torch.testing.assert_close(mean, alpha.mean(1), rtol=1e-12, atol=1e-15)
    positive, largest = positive_hidden_attention(ssm, leaf_size=leaf, chunk_elements=chunk)
    torch.testing.assert_close(positive, alpha.clamp_min(0).mean(1), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(largest, alpha.clamp_min(0).amax(dim=(1, 2, 3)))


def _random_ssm(length: int, dtype: torch.dtype, decay: float, seed: int) -> SelectiveSSMInputs:
    gen = torch.Generator().manual_seed(seed)
    channels, state = 5, 3

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    ssm = SelectiveSSMInputs(
        x=rand(1, length, channels) - 0.5,
        dt=decay * rand(1, length, channels),
        A=-(1 + 15 * rand(channels, state)),
        B=rand(1, length, state) - 0.5,
        C=rand(1, length, state) - 0.5,
        D=rand(channels),
    )
    return SelectiveSSMInputs(*(None if t is None else t.to(dtype) for t in vars(ssm).values()))


def test_long_sequences_with_strong_decay_stay_finite_and_exact() -> None:
    # sum_k dt_k A reaches about -8000: exp(-A S_j) alone would overflow float64.
    ssm = _random_ssm(length=300, dtype=torch.float64, decay=2.0, seed=0)
    loop = {"x": ssm.x, "dt": ssm.dt, "A": ssm.A, "B": ssm.B, "C": ssm.C}
    y_loop = sequential_ssm(loop)
    alpha = hidden_attention_matrices(ssm)
    assert torch.isfinite(alpha).all()
    y = torch.einsum("bdij,bjd->bid", alpha, ssm.x)
    assert (y - y_loop).abs().max() <= 1e-12 * y_loop.abs().max()
    ssm32 = _random_ssm(length=300, dtype=torch.float32, decay=2.0, seed=0)
    mean32 = mean_hidden_attention(ssm32)
    assert torch.isfinite(mean32).all()
    torch.testing.assert_close(mean32.double(), alpha.mean(1), rtol=1e-4, atol=1e-5)


def test_prefix_of_inputs_gives_the_leading_block() -> None:
    ssm = _random_ssm(length=20, dtype=torch.float64, decay=0.5, seed=1)
    full = hidden_attention_matrices(ssm)
    torch.testing.assert_close(hidden_attention_matrices(ssm.prefix(7)), full[:, :, :7, :7])


def test_recording_rejects_models_without_mamba_and_names_layers(make_lm) -> None:
    with pytest.raises(UnsupportedModelError, match="no supported block"):
        record_layers(nn.Sequential(nn.Linear(2, 2)), lambda: None)
    model, embeds = _inputs(make_lm, num_hidden_layers=3)
    with torch.no_grad():
        _, layers = record_layers(model, lambda: default_forward(model, "inputs_embeds")(embeds))
    assert [layer.path for layer in layers] == [f"backbone.layers.{i}" for i in range(3)]
    assert [layer.ssms[0].path for layer in layers] == [
        f"backbone.layers.{i}.mixer.ssm" for i in range(3)
    ]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hidden_attention_on_gpu_matches_cpu() -> None:
    ssm = _random_ssm(length=40, dtype=torch.float64, decay=1.0, seed=2)
    on_gpu = SelectiveSSMInputs(*(t.cuda() for t in vars(ssm).values()))
    torch.testing.assert_close(
        mean_hidden_attention(on_gpu).cpu(), mean_hidden_attention(ssm), rtol=1e-10, atol=1e-12
    )

"""Attention rollout, Mamba-Attr, Random and the uniform method wrappers against naive
implementations written out here."""

from __future__ import annotations

import pytest
import torch
from test_hidden_attention import mixer_inputs_of, reference_mixer_inputs
from torch import Tensor, nn

from captum_mamba.attr import MambaLRP
from captum_mamba.baselines import (
    MambaAttentionRollout,
    MambaAttr,
    RandomAttribution,
    RawHiddenAttention,
)
from captum_mamba.baselines.captum_methods import (
    HYBRID_METHODS,
    INPUT_X_GRADIENT,
    INTEGRATED_GRADIENTS,
    MAMBA1_METHODS,
    MAMBA_LRP,
    METHOD_NAMES,
    METHODS,
    NO_RULES,
    POSITION_BASELINES,
    SALIENCY,
    SMOOTHGRAD,
    MethodSettings,
    build_method,
)


def naive_attention(p: dict[str, Tensor]) -> Tensor:
    """alpha[b, d, i, j] = sum_n C_i[n] prod_{k=j+1..i} exp(dt_k[d] A[d, n]) dt_j[d] B_j[n],
    with explicit loops over i, j, k."""
    x, dt, A, B, C = p["x"], p["dt"], p["A"], p["B"], p["C"]
    batch, length, channels = x.shape
    alpha = x.new_zeros(batch, channels, length, length)
    for i in range(length):
        for j in range(i + 1):
            decay = torch.ones(batch, channels, A.shape[1], dtype=x.dtype)
            for k in range(j + 1, i + 1):
                decay = decay * torch.exp(dt[:, k, :, None] * A)
            term = C[:, i, None, :] * decay * dt[:, j, :, None] * B[:, j, None, :]
            alpha[:, :, i, j] = term.sum(-1)
    return alpha


def naive_rollout(matrices: list[Tensor]) -> Tensor:
    """prod_l (I + A_l) / rowsum, one example, explicit row loop for the normalisation."""
    length = matrices[0].shape[-1]
    joint = torch.eye(length, dtype=matrices[0].dtype)
    for attention in matrices:
        mixed = attention + torch.eye(length, dtype=attention.dtype)
        for row in range(length):
            mixed[row] = mixed[row] / mixed[row].sum()
        joint = mixed @ joint
    return joint


def _model_and_embeds(make_lm, seed: int, length: int = 7, batch: int = 2, layers: int = 3):
    model = make_lm(seed=seed, num_hidden_layers=layers)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, length), generator=gen)
    return model, model.get_input_embeddings()(ids).detach()


@pytest.mark.parametrize("position", [-1, 4])
def test_rollout_matches_naive_loops(make_lm, position: int) -> None:
    model, embeds = _model_and_embeds(make_lm, seed=0)
    length = embeds.shape[1]
    stop = position % length + 1
    mixers = [layer.mixer for layer in model.backbone.layers]
    layer_attention = [
        naive_attention(reference_mixer_inputs(mixer, u[:, :stop])).mean(1)
        for mixer, u in zip(mixers, mixer_inputs_of(model, embeds), strict=True)
    ]
    got = MambaAttentionRollout(model).attribute(embeds, position=position)
    assert got.shape == (2, length)
    for b in range(2):
        expected = naive_rollout([a[b] for a in layer_attention])[stop - 1]
        torch.testing.assert_close(got[b, :stop], expected, rtol=1e-9, atol=1e-12)
    assert torch.all(got[:, stop:] == 0)
    start_two = MambaAttentionRollout(model, start_layer=2).attribute(embeds, position=position)
    expected = naive_rollout([layer_attention[2][0]])[stop - 1]
    torch.testing.assert_close(start_two[0, :stop], expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("position", [-1, 3])
def test_raw_hidden_attention_matches_naive_loops(make_lm, position: int) -> None:
    model, embeds = _model_and_embeds(make_lm, seed=1)
    length = embeds.shape[1]
    stop = position % length + 1
    mixers = [layer.mixer for layer in model.backbone.layers]
    inputs = mixer_inputs_of(model, embeds)
    for layer in (-1, 0):
        got = RawHiddenAttention(model, layer=layer).attribute(embeds, position=position)
        expected = naive_attention(reference_mixer_inputs(mixers[layer], inputs[layer][:, :stop]))
        torch.testing.assert_close(
            got[:, :stop], expected.mean(1)[:, stop - 1], rtol=1e-9, atol=1e-12
        )
        assert torch.all(got[:, stop:] == 0)


def residual_gradients(model: nn.Module, embeds: Tensor, position: int, token: int) -> list[Tensor]:
    """d logit[:, position, token] / d (input of every MambaBlock), via retain_grad."""
    kept: list[Tensor] = []

    def keep(module: nn.Module, args: tuple) -> None:
        args[0].retain_grad()
        kept.append(args[0])

    handles = [layer.register_forward_pre_hook(keep) for layer in model.backbone.layers]
    leaf = embeds.clone().requires_grad_()
    try:
        hidden = model.backbone(inputs_embeds=leaf, use_cache=False).last_hidden_state
        model.lm_head(hidden)[:, position, token].sum().backward()
    finally:
        for handle in handles:
            handle.remove()
    return [t.grad for t in kept]


@pytest.mark.parametrize("position", [-1, 3])
def test_mamba_attr_matches_naive_loops(make_lm, position: int) -> None:
    model, embeds = _model_and_embeds(make_lm, seed=1)
    length, token = embeds.shape[1], 5
    stop = position % length + 1
    grads = residual_gradients(model, embeds, position, token)
    mixers = [layer.mixer for layer in model.backbone.layers]
    inputs = mixer_inputs_of(model, embeds)
    got = MambaAttr(model).attribute(embeds, target=(position, token), position=position)
    for b in range(2):
        fused = []
        for mixer, u, g in zip(mixers, inputs, grads, strict=True):
            alpha = naive_attention(reference_mixer_inputs(mixer, u[b : b + 1, :stop]))[0]
            positive = alpha.clamp_min(0)
            attention = positive.mean(0) / positive.max()
            s = g[b, :stop].clamp_min(0).max(-1).values
            s = (s - s.min()) / (s.max() - s.min())
            fused.append(attention * s[None, :])
        expected = naive_rollout(fused)[stop - 1]
        torch.testing.assert_close(got[b, :stop], expected, rtol=1e-6, atol=1e-9)
    assert torch.all(got[:, stop:] == 0)


def test_rollout_ignores_padded_positions(make_lm) -> None:
    model, embeds = _model_and_embeds(make_lm, seed=2, batch=1)
    mask = torch.ones(1, embeds.shape[1], dtype=torch.long)
    mask[0, :2] = 0
    scores = MambaAttentionRollout(model).attribute(embeds, additional_forward_args=(mask,))
    assert torch.all(scores[0, :2] == 0)
    assert torch.isfinite(scores).all()


def test_random_is_reproducible_and_uniform() -> None:
    embeds = torch.zeros(3, 50, 4)
    first = RandomAttribution(seed=7).attribute(embeds)
    assert torch.equal(first, RandomAttribution(seed=7).attribute(embeds))
    assert not torch.equal(first, RandomAttribution(seed=8).attribute(embeds))
    assert first.shape == (3, 50) and first.min() >= 0 and first.max() < 1
    assert abs(float(first.mean()) - 0.5) < 0.1


def test_token_wrappers_against_autograd(make_lm) -> None:
    model, embeds = _model_and_embeds(make_lm, seed=3, batch=1)
    target = (-1, 2)
    leaf = embeds.clone().requires_grad_()
    hidden = model.backbone(inputs_embeds=leaf, use_cache=False).last_hidden_state
    output = model.lm_head(hidden)[0, -1, 2]
    (grad,) = torch.autograd.grad(output, leaf)
    gxi = (grad * embeds).sum(-1)
    torch.testing.assert_close(build_method(INPUT_X_GRADIENT, model)(embeds, target), gxi)
    # MambaLRP computes in float64; transformers' scan (used by autograd here) in float32.
    torch.testing.assert_close(
        build_method(NO_RULES, model)(embeds, target), gxi, rtol=1e-5, atol=1e-8
    )
    saliency = grad.abs().sum(-1)
    torch.testing.assert_close(build_method(SALIENCY, model)(embeds, target), saliency)


def test_integrated_gradients_and_mambalrp_are_complete(make_lm) -> None:
    model = make_lm(seed=4, zero_biases=True)
    ids = torch.randint(0, model.config.vocab_size, (1, 6), generator=torch.Generator())
    embeds = model.get_input_embeddings()(ids).detach()
    with torch.no_grad():
        logits = model(inputs_embeds=embeds).logits[0, -1]
        at_zero = model(inputs_embeds=torch.zeros_like(embeds)).logits[0, -1]
    settings = MethodSettings(ig_steps=64)
    ig = build_method(INTEGRATED_GRADIENTS, model, settings=settings)(embeds, (-1, 3))
    torch.testing.assert_close(ig.sum(), (logits[3] - at_zero[3]).to(ig.dtype), rtol=1e-2, atol=0)
    lrp = build_method(MAMBA_LRP, model)(embeds, (-1, 3))
    # transformers computes the logit with a float32 scan, MambaLRP in float64.
    torch.testing.assert_close(lrp.sum(), logits[3].to(lrp.dtype), rtol=1e-6, atol=0)


def test_smoothgrad_is_seeded_and_nonnegative(make_lm) -> None:
    model, embeds = _model_and_embeds(make_lm, seed=5, batch=1)
    settings = MethodSettings(smoothgrad_samples=4, seed=11)
    first = build_method(SMOOTHGRAD, model, settings=settings)(embeds, (-1, 0))
    again = build_method(SMOOTHGRAD, model, settings=settings)(embeds, (-1, 0))
    torch.testing.assert_close(first, again)
    assert first.shape == embeds.shape[:2] and torch.all(first >= 0)


def test_every_method_builds_and_returns_token_scores(make_lm) -> None:
    model, embeds = _model_and_embeds(make_lm, seed=6, batch=1, layers=2)
    settings = MethodSettings(ig_steps=4, smoothgrad_samples=2)
    for name in METHOD_NAMES:
        scores = build_method(name, model, settings=settings)(embeds, (-1, 1))
        assert scores.shape == (1, embeds.shape[1]), name
        assert torch.isfinite(scores).all(), name
    with pytest.raises(ValueError, match="unknown method"):
        build_method("LIME", model)


def test_the_catalogue_describes_what_each_method_does(make_lm) -> None:
    """Every method is in the catalogue once; the seeded ones, and only they, change
    with the seed; the batchable ones score a batch as they score its texts one by one;
    signed token scores are sums over the hidden dimension."""
    names = [name for name in METHODS if name not in MAMBA1_METHODS + HYBRID_METHODS]
    assert tuple(names) == (*METHOD_NAMES, *POSITION_BASELINES)
    model, embeds = _model_and_embeds(make_lm, seed=8, batch=2, layers=2)
    target = (-1, 1)
    for name, spec in METHODS.items():
        method = build_method(name, model, settings=MethodSettings(ig_steps=4, seed=3))
        assert method.name == name and method.signed == spec.signed, name
        other = build_method(name, model, settings=MethodSettings(ig_steps=4, seed=4))
        first = method(embeds[:1], target)
        assert torch.equal(first, other(embeds[:1], target)) != spec.seeded, name
        if spec.batchable:
            one_by_one = torch.cat([method(embeds[i : i + 1], target) for i in range(2)])
            torch.testing.assert_close(method(embeds, target), one_by_one)
    relevance = MambaLRP(model).attribute(embeds, target=target)
    torch.testing.assert_close(build_method(MAMBA_LRP, model)(embeds, target), relevance.sum(-1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_rollout_and_mamba_attr_on_gpu_match_cpu(make_lm) -> None:
    model, embeds = _model_and_embeds(make_lm, seed=7)
    cpu_rollout = MambaAttentionRollout(model).attribute(embeds)
    cpu_attr = MambaAttr(model).attribute(embeds, target=(-1, 1))
    model = model.cuda()
    gpu_rollout = MambaAttentionRollout(model).attribute(embeds.cuda())
    gpu_attr = MambaAttr(model).attribute(embeds.cuda(), target=(-1, 1))
    torch.testing.assert_close(gpu_rollout.cpu(), cpu_rollout, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(gpu_attr.cpu(), cpu_attr, rtol=1e-6, atol=1e-9)

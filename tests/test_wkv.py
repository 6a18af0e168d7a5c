"""RWKV-4's WKV operation (``captum_mamba.ops.wkv``, ``captum_mamba.rules.functional.wkv``)
against its definition written as a double loop: the weighted mean over ``s <= t`` of
``exp(k[s] - (t - 1 - s) exp(time_decay))`` (``exp(k[t] + time_first)`` at ``s = t``)
times ``v[s]``. Values and gradients of the sequential and chunked implementations, the
implicit attention weights (also as the baselines' recorder files them for a model), and
the two rules (CP-LRP, AttnLRP)."""

from __future__ import annotations

import pytest
import torch
from cases.hf_rwkv import CASE, tiny_rwkv
from torch import Tensor

from captum_mamba.attr.forward import default_forward
from captum_mamba.baselines.recording import record_layers
from captum_mamba.ops.wkv import wkv_chunked, wkv_sequential, wkv_weights
from captum_mamba.rules import functional as R


def _inputs(seed: int, batch: int, length: int, channels: int, key_scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)

    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return (
        key_scale * normal(batch, length, channels),
        normal(batch, length, channels),
        normal(channels),
        normal(channels),
    )


def _loop_weights(k: Tensor, time_decay: Tensor, time_first: Tensor) -> Tensor:
    """``(batch, channels, t, s)`` weights, one query and one key at a time."""
    length = k.shape[1]
    w = torch.exp(time_decay)
    rows = []
    for t in range(length):
        terms = [
            torch.exp(k[:, s] + time_first) if s == t else torch.exp(k[:, s] - (t - 1 - s) * w)
            for s in range(t + 1)
        ]
        total = sum(terms)
        row = [term / total for term in terms] + [torch.zeros_like(total)] * (length - t - 1)
        rows.append(torch.stack(row, -1))
    return torch.stack(rows, -2)


def _loop(k: Tensor, v: Tensor, time_decay: Tensor, time_first: Tensor, weights_constant=False):
    weights = _loop_weights(k.detach() if weights_constant else k, time_decay, time_first)
    out = torch.zeros_like(v)
    for t in range(v.shape[1]):
        for s in range(t + 1):
            out[:, t] = out[:, t] + weights[:, :, t, s] * v[:, s]
    return out


def _gradients(function, inputs: tuple[Tensor, ...], seed: int) -> tuple[Tensor, list[Tensor]]:
    inputs = [x.clone().requires_grad_() for x in inputs]
    out = function(*inputs)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    (out * probe).sum().backward()
    return out.detach(), [x.grad for x in inputs]


SHAPES = [(0, 2, 7, 3), (1, 1, 12, 5), (2, 3, 9, 2)]


@pytest.mark.parametrize("chunk", [None, 1, 4, 5, 64])
@pytest.mark.parametrize(("seed", "batch", "length", "channels"), SHAPES)
def test_wkv_equals_its_definition(
    chunk: int | None, seed: int, batch: int, length: int, channels: int
) -> None:
    inputs = _inputs(seed, batch, length, channels)
    expected, expected_grads = _gradients(_loop, inputs, seed)
    if chunk is None:
        implementation = wkv_sequential
    else:
        implementation = lambda *x: wkv_chunked(*x, chunk_size=chunk)  # noqa: E731
    out, grads = _gradients(implementation, inputs, seed)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-13)
    for grad, reference in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, reference, rtol=1e-11, atol=1e-12)


def test_large_keys_stay_finite_and_agree() -> None:
    """Keys whose exponentials overflow float64 (``exp(800)``): both implementations
    stabilise and agree."""
    k, v, time_decay, time_first = _inputs(3, 2, 40, 4, key_scale=400.0)
    sequential = wkv_sequential(k, v, time_decay, time_first)
    chunked = wkv_chunked(k, v, time_decay, time_first, chunk_size=8)
    assert k.abs().max() > 800 and torch.isfinite(sequential).all()
    torch.testing.assert_close(chunked, sequential, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("seed", "batch", "length", "channels"), SHAPES)
def test_weights_equal_the_loop_and_reconstruct_the_output(
    seed: int, batch: int, length: int, channels: int
) -> None:
    k, v, time_decay, time_first = _inputs(seed, batch, length, channels)
    weights = wkv_weights(k, time_decay, time_first)
    torch.testing.assert_close(
        weights, _loop_weights(k, time_decay, time_first), rtol=1e-12, atol=0
    )
    out = torch.einsum("bcts,bsc->btc", weights, v)
    torch.testing.assert_close(
        out, wkv_sequential(k, v, time_decay, time_first), rtol=1e-12, atol=1e-13
    )


@pytest.mark.parametrize(("seed", "batch", "length", "channels"), SHAPES)
def test_cp_lrp_passes_relevance_through_the_values_and_conserves(
    seed: int, batch: int, length: int, channels: int
) -> None:
    inputs = _inputs(seed, batch, length, channels)
    rule = lambda *x: R.wkv(*x, uniform_rule=False, constant_weights=True)  # noqa: E731
    loop = lambda *x: _loop(*x, weights_constant=True)  # noqa: E731
    out, grads = _gradients(rule, inputs, seed)
    expected, expected_grads = _gradients(loop, inputs, seed)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(grads[1], expected_grads[1], rtol=1e-11, atol=1e-12)
    assert all(grad is None for i, grad in enumerate(grads) if i != 1)
    # each output position and channel: Gradient x Input over the values sums to its value
    k, v = inputs[0], inputs[1].clone().requires_grad_()
    for t in range(length):
        (grad,) = torch.autograd.grad(R.wkv(k, v, *inputs[2:], False, True)[:, t].sum(), v)
        torch.testing.assert_close((grad * v).sum(1), out[:, t], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(("seed", "batch", "length", "channels"), SHAPES)
def test_attn_lrp_halves_the_gradient_and_no_rule_keeps_it(
    seed: int, batch: int, length: int, channels: int
) -> None:
    inputs = _inputs(seed, batch, length, channels)
    _, expected = _gradients(_loop, inputs, seed)
    for uniform, factor in ((True, 0.5), (False, 1.0)):
        rule = lambda *x, u=uniform: R.wkv(*x, uniform_rule=u, constant_weights=False)  # noqa: E731
        _, grads = _gradients(rule, inputs, seed)
        for grad, reference in zip(grads[:2], expected[:2], strict=True):
            torch.testing.assert_close(grad, factor * reference, rtol=1e-11, atol=1e-12)
        if uniform:  # the decays are constants of the backward
            assert grads[2] is None and grads[3] is None


def _layer_norm(norm, x: Tensor) -> Tensor:
    centred = x - x.mean(-1, keepdim=True)
    return (
        centred / torch.sqrt((centred * centred).mean(-1, keepdim=True) + norm.eps) * (norm.weight)
        + norm.bias
    )


@pytest.mark.parametrize("config", ["narrow-attention-rescale2", "rescale-every-block"])
def test_recorded_implicit_attention_of_a_model_equals_the_loop(config: str) -> None:
    """The baselines' recorder files each block's WKV weights (channels as heads): equal to
    the loop's weights of the keys computed from the block's recorded input."""
    model = tiny_rwkv(config, 3)
    inputs, _ = CASE.inputs(model, config, 3)
    with torch.no_grad():
        _, layers = record_layers(model, lambda: default_forward(model, "inputs_embeds")(inputs))
        assert len(layers) == model.config.num_hidden_layers
        for index, (block, layer) in enumerate(zip(model.rwkv.blocks, layers, strict=True)):
            (record,) = layer.attentions
            x = layer.hidden_states
            if index == 0:
                x = _layer_norm(block.pre_ln, x)
            x = _layer_norm(block.ln1, x)
            mix = block.attention.time_mix_key[0, 0]
            shifted = torch.stack(
                [
                    x[:, t] * mix + (x[:, t - 1] if t else 0.0) * (1 - mix)
                    for t in range(x.shape[1])
                ],
                1,
            )
            keys = shifted @ block.attention.key.weight.T
            expected = _loop_weights(keys, block.attention.time_decay, block.attention.time_first)
            assert record.weights.shape == expected.shape
            torch.testing.assert_close(record.weights, expected, rtol=1e-10, atol=1e-13)

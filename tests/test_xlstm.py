"""The mLSTM cell of xLSTM (operation kind ``mlstm``): its scans against transformers' own
recurrence, the chunked fast path against the sequential reference (values and
gradients), both rules against their closed forms, the recorded attention matrix
against a loop, and the refusals of the adapter. The model-level checks are the
conformance case ``tests/cases/hf_xlstm.py``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from captum_mamba.ops.mlstm import mlstm_attention, mlstm_denominator, mlstm_gates, mlstm_scan
from captum_mamba.rules import functional as R

modeling_xlstm = pytest.importorskip(
    "transformers.models.xlstm.modeling_xlstm", reason="this transformers has no xLSTM"
)
if not hasattr(modeling_xlstm, "mlstm_recurrent_sequence_native"):
    pytest.skip("transformers' xLSTM runs the external xlstm package", allow_module_level=True)

EPS = 1e-6


def _adapter_case():
    """The conformance case module, or a skip when the adapter is unavailable (the
    family needs a newer transformers)."""
    from captum_mamba.adapters import family_statuses

    (status,) = [s for s in family_statuses() if s.name == "transformers xLSTM"]
    if not status.available:
        pytest.skip(status.describe())
    from cases import hf_xlstm

    return hf_xlstm


def _inputs(seed: int, heads: int, length: int, d_qk: int, d_v: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, scale: float = 1.0, shift: float = 0.0) -> Tensor:
        return shift + scale * torch.randn(*shape, generator=generator, dtype=torch.float64)

    return {
        "q": normal(2, heads, length, d_qk),
        "k": normal(2, heads, length, d_qk),
        "v": normal(2, heads, length, d_v),
        "igate": normal(2, heads, length, scale=3.0),
        "fgate": normal(2, heads, length, scale=2.0, shift=1.0),
    }


def _cell(p: dict[str, Tensor], chunk_size: int | None, cap: float | None) -> Tensor:
    log_i, log_f = mlstm_gates(p["igate"], p["fgate"], cap)
    values = torch.cat([p["v"], torch.ones_like(p["v"][..., :1])], -1)
    read_out, m = mlstm_scan(p["q"], p["k"], values, log_i, log_f, chunk_size)
    return read_out[..., :-1] / mlstm_denominator(read_out[..., -1], m, EPS)[..., None]


SHAPES = [(1, 7, 3, 2), (2, 9, 4, 5), (3, 16, 2, 3)]


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 4, 64])
@pytest.mark.parametrize("shape", SHAPES)
def test_scan_equals_transformers_recurrence(shape: tuple[int, ...], chunk_size: int) -> None:
    p = _inputs(0, *shape)
    expected = modeling_xlstm.mlstm_recurrent_sequence_native(
        p["q"], p["k"], p["v"], p["igate"], p["fgate"], eps=EPS, dtype_state=torch.float64
    )
    actual = _cell(p, chunk_size, None)
    assert (actual - expected).abs().max() <= 1e-12 * expected.abs().max()


@pytest.mark.parametrize("chunk_size", [2, 3, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunked_path_has_the_values_and_gradients_of_the_sequential_one(
    seed: int, chunk_size: int
) -> None:
    p = _inputs(seed, 2, 11, 3, 4)
    weights = torch.randn(2, 2, 11, 4, generator=torch.Generator().manual_seed(9)).double()
    results = []
    for size in (None, chunk_size):
        leaves = {name: value.clone().requires_grad_() for name, value in p.items()}
        out = _cell(leaves, size, 4.0)
        grads = torch.autograd.grad((out * weights).sum(), list(leaves.values()))
        results.append((out, grads))
    (out, grads), (out_c, grads_c) = results
    assert (out_c - out).abs().max() <= 1e-12 * out.abs().max()
    for grad, grad_c in zip(grads, grads_c, strict=True):
        assert grad.abs().max() > 0
        assert (grad_c - grad).abs().max() <= 1e-11 * grad.abs().max()


def _relevances(p: dict[str, Tensor], uniform: bool, cp: bool, g: Tensor):
    leaves = {name: value.clone().requires_grad_() for name, value in p.items()}
    out = R.mlstm(**leaves, gate_cap=5.0, eps=EPS, chunk_size=4, uniform_rule=uniform,
                  constant_keys=cp)  # fmt: skip
    grads = torch.autograd.grad((out * g).sum(), list(leaves.values()), allow_unused=True)
    relevance = {
        name: torch.zeros(()) if grad is None else (value * grad).sum()
        for (name, value), grad in zip(p.items(), grads, strict=True)
    }
    return out.detach(), relevance


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_rules_conserve_and_share_as_derived(seed: int) -> None:
    p = _inputs(seed, 2, 9, 3, 4)
    g = torch.randn(2, 2, 9, 4, generator=torch.Generator().manual_seed(seed)).double()
    plain = R.mlstm(**p, gate_cap=5.0, eps=EPS, chunk_size=None, uniform_rule=False,
                    constant_keys=False)  # fmt: skip
    out, uniform = _relevances(p, True, False, g)
    total = (out * g).sum()
    assert (out - plain).abs().max() <= 1e-12 * plain.abs().max()  # the value is unchanged
    for name in ("q", "k", "v"):  # a third each: the output is trilinear in q, k, v
        assert abs(float(uniform[name] - total / 3)) <= 1e-12 * float(total.abs())
    assert float(uniform["igate"]) == float(uniform["fgate"]) == 0.0
    _, cp = _relevances(p, False, True, g)
    assert abs(float(cp["v"] - total)) <= 1e-12 * float(total.abs())
    assert all(float(cp[name]) == 0.0 for name in ("q", "k", "igate", "fgate"))
    _, none = _relevances(p, False, False, g)
    assert abs(float(sum(none.values()) - total)) > 1e-3 * float(total.abs())


def _loop_attention(q: Tensor, k: Tensor, log_i: Tensor, log_f: Tensor) -> Tensor:
    """``A[t, s] = (q_t . k_s / sqrt(d)) exp(i_s + sum_{s<r<=t} log f_r - m_t) / denom_t``,
    element by element, with ``m`` stepped from 0."""
    batch, heads, length, d = q.shape
    A = torch.zeros(batch, heads, length, length, dtype=q.dtype)
    for b in range(batch):
        for h in range(heads):
            m = 0.0
            for t in range(length):
                m = max(float(log_f[b, h, t]) + m, float(log_i[b, h, t]))
                for s in range(t + 1):
                    decay = float(log_i[b, h, s]) + float(log_f[b, h, s + 1 : t + 1].sum()) - m
                    A[b, h, t, s] = float(q[b, h, t] @ k[b, h, s]) / d**0.5 * math.exp(decay)
                denominator = max(abs(float(A[b, h, t].sum())), math.exp(-m))
                A[b, h, t] /= denominator + EPS
    return A


def test_attention_matrix_equals_a_loop_and_gives_the_output() -> None:
    p = _inputs(3, 2, 8, 3, 4)
    log_i, log_f = mlstm_gates(p["igate"], p["fgate"], 5.0)
    A = mlstm_attention(p["q"], p["k"], log_i, log_f, EPS)
    expected = _loop_attention(p["q"], p["k"], log_i, log_f)
    assert (A - expected).abs().max() <= 1e-12 * expected.abs().max()
    assert (A @ p["v"] - _cell(p, 3, 5.0)).abs().max() <= 1e-12 * A.abs().max()


def test_recorded_attention_is_each_layers_matrix() -> None:
    case = _adapter_case()
    from captum_mamba.attr.forward import default_forward
    from captum_mamba.baselines.recording import record_layers

    model = case.tiny_xlstm("single-2heads", 0, False)
    inputs = torch.randn(2, case.LENGTH, model.config.hidden_size, dtype=torch.float64)
    seen = []
    hooks = [
        block.mlstm_layer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        for block in model.backbone.blocks
    ]
    with torch.no_grad():
        _, layers = record_layers(model, lambda: default_forward(model, "inputs_embeds")(inputs))
    for hook in hooks:
        hook.remove()
    assert len(layers) == len(seen) == model.config.num_hidden_layers
    for layer, x, block in zip(layers, seen, model.backbone.blocks, strict=True):
        cell = block.mlstm_layer
        heads = model.config.num_heads

        def split(y: Tensor, heads: int = heads) -> Tensor:
            return y.unflatten(-1, (heads, -1)).transpose(1, 2)

        q, k = split(cell.q(x)), split(cell.k(x))
        cap = model.config.gate_soft_cap
        log_i = cap * torch.tanh(cell.igate_preact(x).transpose(1, 2) / cap)
        log_f = F.logsigmoid(cap * torch.tanh(cell.fgate_preact(x).transpose(1, 2) / cap))
        (record,) = layer.attentions
        expected = _loop_attention(q.detach(), k.detach(), log_i.detach(), log_f.detach())
        assert record.path.endswith("mlstm_layer.mlstm")
        assert (record.weights - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_adapter_refuses_a_filled_cache_and_attention_masks() -> None:
    case = _adapter_case()
    from captum_mamba import MambaLRP

    model = case.tiny_xlstm("single-1head-recurrent", 0, False)
    inputs = torch.randn(1, 5, model.config.hidden_size, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="attention mask"):
        MambaLRP(model).attribute(
            inputs, target=(4, 1), additional_forward_args=torch.ones(1, 5, dtype=torch.long)
        )
    cache = modeling_xlstm.xLSTMCache(model.config, 1, dtype=torch.float64)
    cache.seqlen_offset += 3
    lrp = MambaLRP(model, forward_func=lambda x: model(inputs_embeds=x, cache=cache).logits)
    with pytest.raises(NotImplementedError, match="whole sequences"):
        lrp.attribute(inputs, target=(4, 1))


def test_mamba_implicit_attention_and_latim_refuse_xlstm_in_one_line() -> None:
    case = _adapter_case()
    from captum_mamba.adapters import UnsupportedModelError
    from captum_mamba.baselines.implicit_attention import ImplicitAttentionRollout
    from captum_mamba.baselines.latim import LaTIM

    model = case.tiny_xlstm("single-1head-recurrent", 0, False)
    inputs = torch.randn(1, 5, model.config.hidden_size, dtype=torch.float64)
    for method in (ImplicitAttentionRollout(model), LaTIM(model)):
        with pytest.raises(UnsupportedModelError, match="xLSTMBlock") as error:
            method.attribute(inputs, target=(4, 1))
        assert "\n" not in str(error.value)

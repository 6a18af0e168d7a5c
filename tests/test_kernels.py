"""Dispatch of the scan ops to their implementations, and the wiring of the fused kernels.

The fused kernels (mamba-ssm's ``selective_scan_fn`` and ``mamba_chunk_scan_combined``,
causal-conv1d's ``causal_conv1d_fn``) need CUDA. Here they are replaced by stand-ins
written below as obvious loops with the kernels' signatures and layouts, which also
reject the fused activations that would drop MambaLRP rules. mamba-ssm's own
pure-PyTorch references are used the same way in ``test_kernel_wiring.py``.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from cases.hf_mamba import sequential_scan
from conftest import build_lm
from scan_cases import relative_error, selective_inputs, ssd_inputs, values_and_gradients
from torch import Tensor, nn
from transformers import Mamba2Config, Mamba2ForCausalLM

from captum_mamba import MambaLRP, MambaRules
from captum_mamba.ops import (
    causal_conv1d,
    get_implementation,
    implementation,
    replaced_kernels,
    selective_scan,
    set_implementation,
    ssd_scan,
)
from captum_mamba.ops.backends import choose

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --- stand-ins with the kernels' signatures -------------------------------------------

#: Calls of each stand-in, so that a test can tell the fused path really ran.
CALLS: Counter[str] = Counter()


def loop_selective_scan_fn(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False
) -> Tensor:
    """``selective_scan_fn`` without its fused extras: u, delta ``(b, d, l)``, B ``(b, n, l)``."""
    CALLS["selective_scan"] += 1
    assert D is None and z is None and delta_bias is None and delta_softplus is False
    assert A.dtype == torch.float32 and u.dtype == delta.dtype == B.dtype == C.dtype
    A = A.to(u.dtype)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    outputs = []
    for t in range(u.shape[2]):
        drive = delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        h = torch.exp(delta[:, :, t, None] * A) * h + drive
        outputs.append((h * C[:, None, :, t]).sum(-1))
    return torch.stack(outputs, dim=2)


def loop_chunk_scan_combined(
    x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, dt_softplus=False
) -> Tensor:
    """``mamba_chunk_scan_combined`` without its fused extras: x ``(b, l, h, p)``."""
    CALLS["ssd_scan"] += 1
    assert D is None and z is None and dt_bias is None and dt_softplus is False
    assert A.dtype == torch.float32 and isinstance(chunk_size, int)
    heads, groups = x.shape[2], B.shape[2]
    group_of_head = torch.arange(heads) // (heads // groups)
    h = x.new_zeros(x.shape[0], heads, x.shape[3], B.shape[3])
    outputs = []
    for t in range(x.shape[1]):
        decay = torch.exp(dt[:, t] * A.to(x.dtype))[:, :, None, None]
        B_t, C_t = B[:, t, group_of_head], C[:, t, group_of_head]  # (b, heads, n)
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B_t[:, :, None, :]
        outputs.append((h * C_t[:, :, None, :]).sum(-1))
    return torch.stack(outputs, dim=1)


def loop_causal_conv1d_fn(x, weight, bias=None, activation=None) -> Tensor:
    """``causal_conv1d_fn`` without activation: x ``(b, d, l)``, weight ``(d, width)``."""
    CALLS["causal_conv1d"] += 1
    assert activation is None
    width = weight.shape[1]
    steps = []
    for t in range(x.shape[2]):
        acc = x.new_zeros(x.shape[:2]) if bias is None else bias.expand(x.shape[:2])
        for k in range(width):
            if t - width + 1 + k >= 0:
                acc = acc + weight[:, k] * x[:, :, t - width + 1 + k]
        steps.append(acc)
    return torch.stack(steps, dim=2)


STAND_INS = dict(
    selective_scan=loop_selective_scan_fn,
    ssd_scan=loop_chunk_scan_combined,
    causal_conv1d=loop_causal_conv1d_fn,
)


def mamba1_inputs(seed: int, length: int = 19) -> list[Tensor]:
    return selective_inputs(2, length, 6, 4, seed)


def mamba2_inputs(seed: int, length: int = 16) -> list[Tensor]:
    return ssd_inputs(2, length, 6, 3, 3, 5, seed)


def scan_and_x_gradient(scan, inputs: list[Tensor], weight: Tensor) -> tuple[Tensor, Tensor]:
    """Values and the x-gradient with ``dt``, ``A``, ``B``, ``C`` detached (the SSM rule)."""
    y, (grad,) = values_and_gradients(scan, inputs, weight, ("x",))
    return y, grad


# --- dispatch -----------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_auto_picks_this_package_scans_off_cuda(device: str) -> None:
    like = torch.empty(1, device=device)
    assert choose("selective_scan", None, like) == "sequential"
    assert choose("ssd_scan", None, like) == "chunked"
    assert choose("causal_conv1d", None, like) == "torch"
    with replaced_kernels(**STAND_INS):  # a stand-in is used only when asked for
        assert choose("selective_scan", "auto", like.float()) == "sequential"


def test_auto_off_cuda_never_imports_the_kernel_packages() -> None:
    if {"mamba_ssm", "causal_conv1d"} & set(sys.modules):
        pytest.skip("mamba_ssm or causal_conv1d was imported earlier in this process")
    for device in ("cpu", "meta"):
        for dtype in (torch.float32, torch.float64):
            x, dt, A, B, C = (t.to(device, dtype) for t in mamba1_inputs(0))
            selective_scan(x, dt, A, B, C)
            ssd_scan(*(t.to(device, dtype) for t in mamba2_inputs(0)))
            causal_conv1d(x, torch.ones(6, 4, device=device, dtype=dtype))
    assert not {"mamba_ssm", "causal_conv1d"} & set(sys.modules)


def test_auto_on_cuda_falls_back_where_the_kernel_cannot_take_the_dtype() -> None:
    # ``choose`` reads only the device type and dtype of ``like``: CUDA without a GPU.
    like = SimpleNamespace(device=torch.device("cuda"), dtype=torch.float64)
    assert choose("selective_scan", None, like) == "parallel"
    assert choose("ssd_scan", None, like) == "chunked"
    assert choose("causal_conv1d", None, like) == "torch"
    with pytest.raises(ValueError, match="float32, bfloat16 or float16"):
        choose("ssd_scan", "fused", like)


def test_settings_apply_inside_the_block_and_are_restored() -> None:
    like = torch.empty(1)
    assert get_implementation("selective_scan") == "auto"
    with implementation(selective_scan="parallel", causal_conv1d="torch"):
        assert get_implementation("selective_scan") == "parallel"
        assert choose("selective_scan", None, like) == "parallel"
        assert choose("selective_scan", "sequential", like) == "sequential"  # impl= wins
    assert get_implementation("selective_scan") == "auto"
    with pytest.raises(RuntimeError, match="inside"), implementation(ssd_scan="chunked"):
        raise RuntimeError("inside")
    assert get_implementation("ssd_scan") == "auto"
    set_implementation(selective_scan="parallel")
    try:
        assert choose("selective_scan", None, like) == "parallel"
        with implementation(selective_scan="sequential"):  # a block wins over the default
            assert get_implementation("selective_scan") == "sequential"
    finally:
        set_implementation(selective_scan="auto")


def test_blocks_nest_and_stay_in_their_thread() -> None:
    seen: list[str] = []
    with implementation(selective_scan="parallel"):
        with implementation(ssd_scan="chunked"):
            assert get_implementation("selective_scan") == "parallel"
            assert get_implementation("ssd_scan") == "chunked"
            thread = threading.Thread(target=lambda: seen.append(get_implementation("ssd_scan")))
            thread.start()
            thread.join()
        assert get_implementation("ssd_scan") == "auto"
    assert seen == ["auto"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: set_implementation(selective_scan="cuda"), "no implementation 'cuda'"),
        (lambda: set_implementation(conv="torch"), "unknown scan op 'conv'"),
        (lambda: choose("ssd_scan", "parallel", torch.empty(1)), "choose one of"),
        (lambda: choose("selective_scan", "fused", torch.empty(1)), "needs CUDA tensors"),
        (lambda: choose("ssd_scan", "fused", torch.empty(1)), "needs CUDA tensors"),
        (lambda: replaced_kernels(scan=loop_selective_scan_fn).__enter__(), "unknown scan op"),
    ],
)
def test_bad_choices_are_reported(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_fused_refuses_inputs_the_kernels_cannot_take() -> None:
    with replaced_kernels(**STAND_INS):
        x, dt, A, B, C = mamba1_inputs(0)
        with pytest.raises(ValueError, match=r"float32, bfloat16 or float16, got torch\.float64"):
            selective_scan(x, dt, A, B, C, impl="fused")
        big_state = [x.float(), dt.float(), A.float().repeat(1, 65), B.float(), C.float()]
        big_state[3:] = [t.repeat(1, 1, 65) for t in big_state[3:]]
        with pytest.raises(ValueError, match="state sizes up to 256, got 260"):
            selective_scan(*big_state, impl="fused")
        with pytest.raises(ValueError, match="widths 2 to 4, got 5"):
            causal_conv1d(x.float(), torch.ones(6, 5), impl="fused")
        with pytest.raises(ValueError, match="bias of its dtype"):
            causal_conv1d(x.float(), torch.ones(6, 4), torch.ones(6).double(), impl="fused")


def test_kernel_import_errors_are_reported(monkeypatch) -> None:
    from captum_mamba.ops import backends

    monkeypatch.setitem(backends.KERNELS, "causal_conv1d", ("no_such_module_here", "fn"))
    monkeypatch.setitem(backends.KERNELS, "ssd_scan", ("math", "sqrt"))
    backends._import_kernel.cache_clear()
    try:
        assert "No module named 'no_such_module_here'" in backends.fused_kernel_error(
            "causal_conv1d"
        )
        with pytest.raises(RuntimeError, match=r"no_such_module_here\.fn, which does not import"):
            backends.fused_kernel("causal_conv1d")
        assert backends.fused_kernel_error("ssd_scan") is None
        assert backends.fused_kernel("ssd_scan") is __import__("math").sqrt
    finally:
        backends._import_kernel.cache_clear()


@pytest.mark.parametrize("seed", [0, 1])
def test_mamba_lrp_with_each_selective_scan_matches_the_default(seed: int) -> None:
    model = build_lm(seed=seed, state_size=3)
    ids = torch.randint(0, 64, (2, 21), generator=torch.Generator().manual_seed(seed))
    embeds = model.get_input_embeddings()(ids).detach()
    for rules in (MambaRules(), MambaRules.gradient_x_input()):
        expected = MambaLRP(model, rules=rules).attribute(embeds, target=(-1, 3))
        with implementation(selective_scan="parallel"):
            parallel = MambaLRP(model, rules=rules).attribute(embeds, target=(-1, 3))
        assert relative_error(parallel, expected) <= 1e-10
        model_32 = build_lm(seed=seed, state_size=3, dtype=torch.float32)
        calls = CALLS["selective_scan"]
        with replaced_kernels(**STAND_INS), implementation(selective_scan="fused"):
            fused = MambaLRP(model_32, rules=rules).attribute(embeds.float(), target=(-1, 3))
        assert CALLS["selective_scan"] == calls + 2  # one per layer
        assert relative_error(fused, expected) <= 1e-4


def test_mamba2_lrp_with_the_fused_scan_matches_the_default() -> None:
    torch.manual_seed(0)
    config = Mamba2Config(
        hidden_size=16, num_heads=4, head_dim=8, n_groups=2, state_size=4, chunk_size=4,
        conv_kernel=4, num_hidden_layers=2, vocab_size=24,
    )  # fmt: skip
    model = Mamba2ForCausalLM(config).double().eval()
    embeds = model.get_input_embeddings()(torch.randint(0, 24, (2, 10))).detach()
    expected = MambaLRP(model).attribute(embeds, target=(-1, 5))
    calls = CALLS["ssd_scan"]
    with replaced_kernels(**STAND_INS), implementation(ssd_scan="fused"):
        fused = MambaLRP(model.float()).attribute(embeds.float(), target=(-1, 5))
    assert CALLS["ssd_scan"] == calls + 2  # one per layer
    assert relative_error(fused, expected) <= 1e-4


# --- wiring of the fused kernels (stand-ins) ------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_selective_scan_wiring(seed: int) -> None:
    inputs = mamba1_inputs(seed)
    weight = torch.randn(inputs[0].shape, dtype=torch.float64)
    y_ref, grad_ref = scan_and_x_gradient(sequential_scan, inputs, weight)
    calls = CALLS["selective_scan"]
    with replaced_kernels(**STAND_INS):
        y, grad = scan_and_x_gradient(
            lambda *args: selective_scan(*args, impl="fused"), [t.float() for t in inputs], weight
        )
    assert CALLS["selective_scan"] == calls + 1
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    assert relative_error(y, y_ref) <= 1e-5  # the kernels compute in float32
    assert relative_error(grad, grad_ref) <= 1e-5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fused_ssd_scan_wiring(seed: int) -> None:
    inputs = mamba2_inputs(seed)
    weight = torch.randn(inputs[0].shape, dtype=torch.float64)
    y_ref, grad_ref = scan_and_x_gradient(lambda *a: ssd_scan(*a, 4), inputs, weight)
    calls = CALLS["ssd_scan"]
    with replaced_kernels(**STAND_INS):
        y, grad = scan_and_x_gradient(
            lambda *args: ssd_scan(*args, 4, impl="fused"), [t.float() for t in inputs], weight
        )
    assert CALLS["ssd_scan"] == calls + 1
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    assert relative_error(y, y_ref) <= 1e-5
    assert relative_error(grad, grad_ref) <= 1e-5


@pytest.mark.parametrize("width", [2, 3, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_causal_conv1d_matches_the_mixers_conv_module(width: int, bias: bool) -> None:
    torch.manual_seed(width)
    conv = nn.Conv1d(6, 6, width, groups=6, padding=width - 1, bias=bias).double()
    x = torch.randn(2, 11, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 11, 6, dtype=torch.float64)
    expected = conv(x.transpose(1, 2))[..., :11].transpose(1, 2)
    (grad_ref,) = torch.autograd.grad((expected * weight).sum(), x)
    actual = causal_conv1d(x, conv.weight[:, 0], conv.bias)
    (grad,) = torch.autograd.grad((actual * weight).sum(), x)
    torch.testing.assert_close(actual, expected, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-13, atol=1e-13)
    calls = CALLS["causal_conv1d"]
    with replaced_kernels(**STAND_INS):
        bias_32 = None if conv.bias is None else conv.bias.float()
        fused = causal_conv1d(x.float(), conv.weight[:, 0].float(), bias_32, impl="fused")
        (grad_fused,) = torch.autograd.grad((fused.double() * weight).sum(), x)
    assert CALLS["causal_conv1d"] == calls + 1
    assert relative_error(fused, expected.detach()) <= 1e-6
    assert relative_error(grad_fused, grad_ref) <= 1e-6


def test_causal_conv1d_rejects_a_channel_mismatch() -> None:
    with pytest.raises(ValueError, match=r"conv.weight\[:, 0\]"):
        causal_conv1d(torch.randn(1, 5, 6), torch.randn(4, 3))


# --- on a GPU -----------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
def test_auto_on_cuda_picks_a_gpu_implementation() -> None:
    like = torch.empty(1, device="cuda")
    assert choose("selective_scan", None, like) in ("fused", "parallel")
    assert choose("selective_scan", None, like.double()) == "parallel"
    assert choose("ssd_scan", None, like.double()) == "chunked"
    assert choose("causal_conv1d", None, like.double()) == "torch"


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("impl", ["auto", "parallel"])
def test_selective_scan_on_cuda_matches_cpu_float64(impl: str) -> None:
    inputs = mamba1_inputs(3, length=200)
    weight = torch.randn(inputs[0].shape, dtype=torch.float64)
    y_ref, grad_ref = scan_and_x_gradient(sequential_scan, inputs, weight)
    y, grad = scan_and_x_gradient(
        lambda *args: selective_scan(*args, impl=impl),
        [t.float().cuda() for t in inputs],
        weight.cuda(),
    )
    assert relative_error(y.cpu(), y_ref) <= 1e-5
    assert relative_error(grad.cpu(), grad_ref) <= 1e-5

"""The fused-kernel wiring with mamba-ssm's own pure-PyTorch references as the kernels.

``selective_scan(impl="fused")`` and ``ssd_scan(impl="fused")`` call mamba-ssm's
``selective_scan_fn`` and ``mamba_chunk_scan_combined``. On a CPU these are replaced
(:func:`captum_mamba.ops.replaced_kernels`) by ``selective_scan_ref`` and
``ssd_chunk_scan_combined_ref``, which take the same arguments and layouts, and the
results are compared with this package's float64 scans. Both references compute in
float32, so values and gradients agree to about 1e-6 relative; the tests allow 1e-5.

Importing mamba-ssm rebinds transformers' Mamba models, so these tests run in the
subprocess of :func:`test_kernel_wiring_in_subprocess` (see ``mamba_ssm_subprocess.py``).
The tests marked ``gpu`` run the real kernels on CUDA against the CPU float64 scans.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from cases.hf_mamba import sequential_scan
from conftest import build_lm
from mamba_ssm_subprocess import run_in_mamba_ssm_subprocess, subprocess_only
from scan_cases import NAMES, relative_error, values_and_gradients
from test_kernels import mamba1_inputs, mamba2_inputs, scan_and_x_gradient
from transformers import Mamba2Config, Mamba2ForCausalLM

from captum_mamba import MambaLRP, MambaRules
from captum_mamba.ops import (
    causal_conv1d,
    implementation,
    replaced_kernels,
    selective_scan,
    ssd_scan,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

#: Arguments through which the kernels would fuse the softplus, skip term, gate or SiLU.
FUSED_EXTRAS = ("D", "z", "delta_bias", "delta_softplus", "dt_bias", "dt_softplus", "activation")


@pytest.mark.slow
def test_kernel_wiring_in_subprocess(tmp_path: Path) -> None:
    run_in_mamba_ssm_subprocess(tmp_path, __file__)


def rule_preserving(kernel: Callable, calls: list[str]) -> Callable:
    """``kernel``, asserting that it is called with none of its fused extras."""

    def checked(*args, **kwargs):
        fused = {k: v for k, v in kwargs.items() if k in FUSED_EXTRAS and v not in (None, False)}
        assert not fused, f"a fused extra would drop a MambaLRP rule: {fused}"
        calls.append(kernel.__name__)
        return kernel(*args, **kwargs)

    return checked


def reference_kernels(calls: list[str]) -> dict[str, Callable]:
    from mamba_ssm.ops.selective_scan_interface import selective_scan_ref
    from mamba_ssm.ops.triton.ssd_combined import ssd_chunk_scan_combined_ref

    return dict(
        selective_scan=rule_preserving(selective_scan_ref, calls),
        ssd_scan=rule_preserving(ssd_chunk_scan_combined_ref, calls),
    )


@subprocess_only
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selective_scan_with_selective_scan_ref(seed: int) -> None:
    calls: list[str] = []
    inputs = mamba1_inputs(seed, length=23)
    weight = torch.randn(inputs[0].shape, dtype=torch.float64)
    inputs_32 = [t.float() for t in inputs]

    def fused(*args):
        return selective_scan(*args, impl="fused")

    y_ref, grad_ref = scan_and_x_gradient(sequential_scan, inputs, weight)
    with replaced_kernels(**reference_kernels(calls)):
        y, grad = scan_and_x_gradient(fused, inputs_32, weight)
        grads = values_and_gradients(fused, inputs_32, weight, NAMES)[1]
    assert calls == ["selective_scan_ref"] * 2
    assert relative_error(y, y_ref) <= 1e-5
    assert relative_error(grad, grad_ref) <= 1e-5
    grads_ref = values_and_gradients(sequential_scan, inputs, weight, NAMES)[1]
    for name, g, g_ref in zip(NAMES, grads, grads_ref, strict=True):
        assert relative_error(g, g_ref) <= 1e-5, name


@subprocess_only
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [4, 8])
def test_ssd_scan_with_ssd_chunk_scan_combined_ref(seed: int, chunk: int) -> None:
    calls: list[str] = []
    inputs = mamba2_inputs(seed, length=16)  # the reference needs whole chunks
    weight = torch.randn(inputs[0].shape, dtype=torch.float64)
    y_ref, grad_ref = scan_and_x_gradient(lambda *a: ssd_scan(*a, chunk), inputs, weight)
    with replaced_kernels(**reference_kernels(calls)):
        y, grad = scan_and_x_gradient(
            lambda *a: ssd_scan(*a, chunk, impl="fused"), [t.float() for t in inputs], weight
        )
    assert calls == ["ssd_chunk_scan_combined_ref"]
    assert relative_error(y, y_ref) <= 1e-5
    assert relative_error(grad, grad_ref) <= 1e-5


@subprocess_only
@pytest.mark.parametrize("rules", [MambaRules(), MambaRules.gradient_x_input()], ids=str)
def test_mamba_lrp_through_the_reference_kernels(rules: MambaRules) -> None:
    calls: list[str] = []
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    model = build_lm(seed=1, state_size=3)
    embeds = model.get_input_embeddings()(ids).detach()
    expected = MambaLRP(model, rules=rules).attribute(embeds, target=(-1, 3))
    model_32 = build_lm(seed=1, state_size=3, dtype=torch.float32)
    with replaced_kernels(**reference_kernels(calls)), implementation(selective_scan="fused"):
        fused = MambaLRP(model_32, rules=rules).attribute(embeds.float(), target=(-1, 3))
    assert calls == ["selective_scan_ref"] * 2
    assert relative_error(fused, expected) <= 1e-4

    torch.manual_seed(0)
    config = Mamba2Config(
        hidden_size=16, num_heads=4, head_dim=8, n_groups=2, state_size=4, chunk_size=4,
        conv_kernel=4, num_hidden_layers=2, vocab_size=24,
    )  # fmt: skip
    mamba2 = Mamba2ForCausalLM(config).double().eval()
    embeds = mamba2.get_input_embeddings()(ids % 24).detach()
    expected = MambaLRP(mamba2, rules=rules).attribute(embeds, target=(-1, 5))
    with replaced_kernels(**reference_kernels(calls)), implementation(ssd_scan="fused"):
        fused = MambaLRP(mamba2.float(), rules=rules).attribute(embeds.float(), target=(-1, 5))
    assert calls[2:] == ["ssd_chunk_scan_combined_ref"] * 2
    assert relative_error(fused, expected) <= 1e-4


@subprocess_only
def test_causal_conv1d_with_causal_conv1d_ref() -> None:
    if find_spec("causal_conv1d") is None:
        pytest.skip(
            "causal-conv1d is not installed (it does not build without CUDA); its wiring is "
            "tested with a loop in test_kernels.py (test_causal_conv1d_matches_*)"
        )
    from causal_conv1d import causal_conv1d_ref

    calls: list[str] = []

    x = torch.randn(2, 9, 8, dtype=torch.float64)
    weight, bias = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    with replaced_kernels(causal_conv1d=rule_preserving(causal_conv1d_ref, calls)):
        fused = causal_conv1d(x.float(), weight.float(), bias.float(), impl="fused")
    assert calls == ["causal_conv1d_ref"]
    assert relative_error(fused, causal_conv1d(x, weight, bias, impl="torch")) <= 1e-6


# --- the real kernels on CUDA -------------------------------------------------------


def fused_selective_scan_is_built() -> bool:
    """True unless ``selective_scan_cuda`` is the stand-in (a ``.py`` file) or missing."""
    spec = find_spec("selective_scan_cuda")
    return spec is not None and not str(spec.origin).endswith(".py")


@subprocess_only
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_selective_scan_on_cuda_matches_cpu_float64(dtype: torch.dtype) -> None:
    if not fused_selective_scan_is_built():
        pytest.skip("selective_scan_cuda is not built here (a stand-in or missing)")
    inputs = [t.to(dtype).double() for t in mamba1_inputs(5, length=300)]  # rounded inputs
    weight = torch.randn(inputs[0].shape, dtype=torch.float64)
    y_ref, grad_ref = scan_and_x_gradient(sequential_scan, inputs, weight)
    y, grad = scan_and_x_gradient(
        lambda *a: selective_scan(*a, impl="fused"), [t.to("cuda", dtype) for t in inputs], weight
    )
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bf16 output rounding
    assert relative_error(y.cpu(), y_ref) <= tolerance
    assert relative_error(grad.cpu(), grad_ref) <= tolerance


@subprocess_only
@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_ssd_scan_on_cuda_matches_cpu_float64(dtype: torch.dtype, monkeypatch) -> None:
    monkeypatch.setenv("TRITON_F32_DEFAULT", "ieee")  # float32 dots, not TF32
    inputs = [t.to(dtype).double() for t in mamba2_inputs(5, length=300)]
    weight = torch.randn(inputs[0].shape, dtype=torch.float64)
    y_ref, grad_ref = scan_and_x_gradient(lambda *a: ssd_scan(*a, 64), inputs, weight)
    y, grad = scan_and_x_gradient(
        lambda *a: ssd_scan(*a, 64, impl="fused"), [t.to("cuda", dtype) for t in inputs], weight
    )
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert relative_error(y.cpu(), y_ref) <= tolerance
    assert relative_error(grad.cpu(), grad_ref) <= tolerance

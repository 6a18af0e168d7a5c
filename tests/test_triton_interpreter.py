"""mamba-ssm's Triton kernels run on CPU tensors by Triton's interpreter, through the
package's fused path, against the float64 references.

:func:`test_triton_kernels_in_interpreter_subprocess` re-runs this file in the mamba-ssm
subprocess with ``TRITON_INTERPRET=1`` (``triton_interpreter.py``); there, the tests that
take the ``triton_interpreter`` fixture run with mamba-ssm's CUDA assumptions replaced
and ``implementation(ssd_scan="fused")`` calls ``mamba_chunk_scan_combined`` on CPU
tensors exactly as on a GPU (``dt``, ``A``, ``B``, ``C`` as the rules pass them, no fused
softplus, skip term or gate). In float32 they must match the float64 references of
``tests/cases`` for every rule preset and single-rule ablation: the explained output (the
forward pass) and the relevance (the backward pass). Each parity test prints its row of
the parity table in ``docs/performance.md``; to print them::

    TRITON_INTERPRET=1 CAPTUM_MAMBA_SSM_SUBPROCESS=1 PYTHONPATH=STUB_DIR:. \\
        python -m pytest tests/test_triton_interpreter.py -q -s | grep -o '| .*'

where ``STUB_DIR`` holds the stand-in ``selective_scan_cuda.py`` of
``mamba_ssm_subprocess.py``. The tests here are marked ``triton_interpreter`` (CI runs
them with ``-m triton_interpreter``).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import torch
from helpers import gradient_x_input, relative_error
from mamba_ssm_subprocess import IN_SUBPROCESS, ROOT
from scan_cases import selective_inputs, ssd_inputs, values_and_gradients
from torch import Tensor, nn
from triton_interpreter import (
    IN_INTERPRETER,
    _first_config,
    _NoDevice,
    interpreter_shims,
    patched_targets,
    run_in_interpreter_subprocess,
)

from captum_mamba import MambaLRP, MambaRules
from captum_mamba.ops import implementation, ssd_scan
from captum_mamba.ops.backends import choose

pytestmark = pytest.mark.triton_interpreter

#: Largest relative error of float32 through the kernels against the float64 references.
MODEL_RTOL = 1e-5
#: The same for one scan (no layers around it to amplify the rounding).
SCAN_RTOL = 1e-5
PRESETS = {
    "mamba_lrp": MambaRules(),
    "cp_lrp": MambaRules.cp_lrp(),
    "gradient_x_input": MambaRules.gradient_x_input(),
    "norm_only": MambaRules.norm_only(),
    **{f"no_{kind}": MambaRules(**{kind: False}) for kind in MambaRules.kinds()},
}
#: Presets also run on the memory-lean path (one rule-free, one with every rule).
LEAN_PRESETS = ("mamba_lrp", "gradient_x_input")
LENGTH = 6  # two chunks of 4, the second padded


@pytest.mark.slow
def test_triton_kernels_in_interpreter_subprocess(tmp_path: Path) -> None:
    run_in_interpreter_subprocess(tmp_path, __file__)
    # The shims lived in the subprocess only.
    assert torch.cuda.device is not _NoDevice
    assert torch.cuda.get_device_properties.__module__ == "torch.cuda"
    if "triton.runtime.autotuner" in sys.modules:
        autotuner = sys.modules["triton.runtime.autotuner"].Autotuner
        assert autotuner.prune_configs is not _first_config


@pytest.mark.skipif(IN_SUBPROCESS, reason="runs in the main test process")
def test_package_runs_on_cpu_without_triton(tmp_path: Path) -> None:
    """With Triton unimportable and ``TRITON_INTERPRET=1`` set, every module of the
    package imports and MambaLRP explains a Mamba-2 and a Bamba model on CPU (``"auto"``):
    the package never needs Triton or mamba-ssm there."""
    script = tmp_path / "no_triton.py"
    script.write_text(
        "import importlib, pkgutil, sys\n"
        "sys.modules['triton'] = None  # any import of triton raises ImportError\n"
        "import torch\n"
        "import captum_mamba\n"
        "from captum_mamba import MambaLRP\n"
        "for info in pkgutil.walk_packages(captum_mamba.__path__, 'captum_mamba.'):\n"
        "    if not info.name.startswith('captum_mamba.adapters.mamba_ssm'):  # need mamba-ssm\n"
        "        importlib.import_module(info.name)\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_triton_interpreter import hf_bamba, hf_mamba2\n"
        "for build in (hf_mamba2, hf_bamba):\n"
        "    model, _, inputs, targets = build()\n"
        "    relevance = MambaLRP(model.float()).attribute(inputs.float(), target=targets)\n"
        "    assert torch.isfinite(relevance).all()\n"
        "assert not {'triton', 'mamba_ssm'} & {k for k, v in sys.modules.items() if v}\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


# --- tiny float64 models (one Mamba-2 mixer each) and their references -----------------


def _perturbed(model: nn.Module, seed: int) -> nn.Module:
    """``model`` in float64 and eval mode, parameters moved off their initial values."""
    generator = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.endswith(("A_log", "dt_bias")):
                noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
                parameter.add_(0.2 * noise)
    return model


def _embeddings(hidden: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(100 + seed)
    return torch.randn(1, LENGTH, hidden, generator=generator, dtype=torch.float64)


@cache
def hf_mamba2() -> tuple[nn.Module, Callable, Tensor, list]:
    """transformers Mamba-2: ``(model, reference, embeddings, targets)``."""
    from cases.hf_mamba2 import reference_logits
    from transformers import Mamba2Config, Mamba2ForCausalLM

    torch.manual_seed(0)
    config = Mamba2Config(
        hidden_size=8, num_heads=2, head_dim=8, n_groups=1, state_size=4, chunk_size=4,
        conv_kernel=4, num_hidden_layers=1, vocab_size=16,
    )  # fmt: skip
    return _perturbed(Mamba2ForCausalLM(config), 0), reference_logits, _embeddings(8, 0), [(-1, 3)]


@cache
def hf_bamba() -> tuple[nn.Module, Callable, Tensor, list]:
    """transformers Bamba (a Mamba-2 layer, then an attention layer)."""
    from cases.hf_bamba import reference_logits
    from transformers import BambaConfig, BambaForCausalLM

    torch.manual_seed(1)
    config = BambaConfig(
        hidden_size=8, intermediate_size=12, num_hidden_layers=2, vocab_size=16,
        num_attention_heads=2, num_key_value_heads=1, attn_layer_indices=[1],
        mamba_n_heads=2, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=4,
        mamba_chunk_size=4, mamba_d_conv=4, mamba_expand=2,
    )  # fmt: skip
    config._attn_implementation = "eager"
    return _perturbed(BambaForCausalLM(config), 1), reference_logits, _embeddings(8, 1), [(-1, 5)]


@cache
def mamba_ssm_mamba2() -> tuple[nn.Module, Callable, Tensor, list]:
    """mamba-ssm's ``MambaLMHeadModel`` with one ``Mamba2`` mixer."""
    from cases.mamba_ssm import _lm_logits
    from mamba_ssm import MambaLMHeadModel
    from mamba_ssm.models.config_mamba import MambaConfig

    torch.manual_seed(2)
    config = MambaConfig(
        d_model=8, n_layer=1, vocab_size=16, pad_vocab_size_multiple=8, d_intermediate=0,
        ssm_cfg={"layer": "Mamba2", "d_state": 4, "headdim": 8, "chunk_size": 4},
    )  # fmt: skip
    return _perturbed(MambaLMHeadModel(config), 2), _lm_logits, _embeddings(8, 2), [(-1, 7)]


MODELS = {"hf_mamba2": hf_mamba2, "hf_bamba": hf_bamba, "mamba_ssm_mamba2": mamba_ssm_mamba2}


# --- in the interpreter subprocess ------------------------------------------------------


@pytest.fixture
def kernel_calls(triton_interpreter: None, monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts of the forward and backward of ``mamba_chunk_scan_combined``, so that a test
    can tell the kernels really ran."""
    from mamba_ssm.ops.triton import ssd_combined

    calls = {"forward": 0, "backward": 0}
    for direction, name in [
        ("forward", "_mamba_chunk_scan_combined_fwd"),
        ("backward", "_mamba_chunk_scan_combined_bwd"),
    ]:
        original = getattr(ssd_combined, name)

        def counted(*args, _original=original, _direction=direction, **kwargs):
            calls[_direction] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(ssd_combined, name, counted)
    return calls


SHIMS = list(patched_targets()) if IN_INTERPRETER else []
#: How the kernels fail without each shim on a CPU-only torch (torch 2.13, triton 3.9).
FAILURES = {
    "torch.cuda.device": TypeError,  # its device index is None on a CPU tensor
    "torch.cuda.get_device_properties": AssertionError,  # torch not compiled with CUDA
    "Autotuner.prune_configs": RuntimeError,  # no driver to time the configurations on
}


@pytest.mark.skipif(not IN_INTERPRETER, reason="needs the interpreter subprocess")
@pytest.mark.parametrize("left_out", [None, *SHIMS])
def test_each_shim_is_needed_and_all_are_restored(left_out: str | None) -> None:
    originals = {name: getattr(owner, attr) for name, (owner, attr, _) in patched_targets().items()}
    # A state size of its own per case: the autotuner caches its choice per shape.
    state = 4 + (SHIMS.index(left_out) + 1 if left_out else 0)
    x, dt, A, B, C = (t.float() for t in ssd_inputs(1, 4, 1, 4, 1, state, seed=0))
    x.requires_grad_()
    with interpreter_shims():
        if left_out is None:
            ssd_scan(x, dt, A, B, C, 4, impl="fused").sum().backward()
            assert torch.isfinite(x.grad).all()
        else:
            owner, attr, _ = patched_targets()[left_out]
            setattr(owner, attr, originals[left_out])
            with pytest.raises(FAILURES[left_out]):
                ssd_scan(x, dt, A, B, C, 4, impl="fused").sum().backward()
    with pytest.raises(KeyError), interpreter_shims():
        raise KeyError("inside")
    for name, (owner, attr, _) in patched_targets().items():
        assert getattr(owner, attr) is originals[name]


@pytest.mark.skipif(not IN_INTERPRETER, reason="needs the interpreter subprocess")
def test_auto_still_picks_the_chunked_scan_on_cpu() -> None:
    like = torch.empty(1)
    assert choose("ssd_scan", None, like) == "chunked"
    assert choose("ssd_scan", "fused", like) == "fused"
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        choose("ssd_scan", "fused", torch.empty(1, device="meta"))
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        choose("selective_scan", "fused", like)  # a CUDA C++ kernel: no interpreter


@pytest.mark.parametrize("ssm_rule", [True, False], ids=["ssm_rule", "no_ssm_rule"])
@pytest.mark.parametrize("shape", [(2, 6, 2, 4, 2, 5, 4), (1, 7, 3, 2, 1, 3, 8)])
def test_fused_ssd_scan_matches_the_float64_chunked_scan(
    kernel_calls: dict[str, int], shape: tuple[int, ...], ssm_rule: bool
) -> None:
    *sizes, chunk = shape
    inputs = ssd_inputs(*sizes, seed=chunk)
    weight = torch.randn(inputs[0].shape, dtype=torch.float64)
    requires = ("x",) if ssm_rule else ("x", "dt", "A", "B", "C")
    expected, expected_grads = values_and_gradients(
        lambda *a: ssd_scan(*a, chunk), inputs, weight, requires
    )
    y, grads = values_and_gradients(
        lambda *a: ssd_scan(*a, chunk, impl="fused"), [t.float() for t in inputs], weight, requires
    )
    assert kernel_calls == {"forward": 1, "backward": 1}
    assert y.dtype == torch.float32
    forward_error = relative_error(y, expected)
    backward_error = max(
        relative_error(grad, expected_grad)
        for grad, expected_grad in zip(grads, expected_grads, strict=True)
    )
    print(
        f"| mamba_chunk_scan_combined | ssd_scan, shape {shape} | - "
        f"| {'SSM rule (x)' if ssm_rule else 'no SSM rule (x, dt, A, B, C)'} "
        f"| {forward_error:.1e} | {backward_error:.1e} |"
    )
    assert forward_error <= SCAN_RTOL
    assert backward_error <= SCAN_RTOL


CASES = [
    *(pytest.param(m, p, "fast", id=f"{m}-{p}-fast") for m in MODELS for p in PRESETS),
    *(pytest.param(m, p, "lean", id=f"{m}-{p}-lean") for m in MODELS for p in LEAN_PRESETS),
]


@pytest.mark.parametrize(("model_name", "preset", "path"), CASES)
def test_parity_of_mamba_lrp_through_the_kernel(
    kernel_calls: dict[str, int], model_name: str, preset: str, path: str
) -> None:
    model, reference, embeds, targets = MODELS[model_name]()
    rules = PRESETS[preset]
    expected, explained = gradient_x_input(lambda e: reference(model, e, rules), embeds, targets)
    model_32 = copy.deepcopy(model).float()
    with implementation(ssd_scan="fused"):
        relevance, delta = MambaLRP(model_32, rules=rules, lean=path == "lean").attribute(
            embeds.float(), target=targets, return_convergence_delta=True
        )
    output = delta + relevance.sum((1, 2))  # the explained output of the same forward pass
    forward_error = relative_error(output, explained)
    backward_error = relative_error(relevance, expected)
    print(
        f"| mamba_chunk_scan_combined | {model_name} | {path} | {preset} "
        f"| {forward_error:.1e} | {backward_error:.1e} |"
    )
    # One Mamba-2 mixer: its forward once (and once more when the lean path recomputes
    # the layer), its backward once.
    assert kernel_calls == {"forward": 2 if path == "lean" else 1, "backward": 1}
    assert relevance.dtype == torch.float32 and expected.abs().max() > 1e-3
    assert forward_error <= MODEL_RTOL
    assert backward_error <= MODEL_RTOL


# --- selective_state_update: the one-token step of mamba-ssm's generation ---------------


@pytest.mark.parametrize("layout", ["mamba1", "mamba2"])
def test_selective_state_update_matches_the_packages_one_token_step(
    triton_interpreter: None, layout: str
) -> None:
    """mamba-ssm's Triton ``selective_state_update`` against the package's own step of
    generation (``selective_scan_with_state`` / ``ssd_scan_with_state`` on one token,
    float64). The package does not call this kernel (generation steps through its own
    scans); this records that the kernel computes the same step."""
    from mamba_ssm.ops.triton.selective_state_update import selective_state_update

    from captum_mamba.ops import selective_scan_with_state, ssd_scan_with_state

    generator = torch.Generator().manual_seed(5)
    if layout == "mamba1":
        x, dt, A, B, C = selective_inputs(2, 1, 6, 4, seed=5)
        state = torch.randn(2, 6, 4, generator=generator, dtype=torch.float64)
        expected, expected_state = selective_scan_with_state(x, dt, A, B, C, state)
        step = (x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    else:
        x, dt, A, B, C = ssd_inputs(2, 1, 4, 3, 2, 5, seed=5)
        state = torch.randn(2, 4, 3, 5, generator=generator, dtype=torch.float64)
        expected, expected_state = ssd_scan_with_state(x, dt, A, B, C, state=state)
        # mamba-ssm's Mamba2.step: dt and A broadcast over the head channels and states.
        dt_heads = dt[:, 0, :, None].expand(-1, -1, 3)
        step = (x[:, 0], dt_heads, A[:, None, None].expand(-1, 3, 5), B[:, 0], C[:, 0])
    kernel_state = state.float()
    # mamba-ssm 2.3.2 cannot launch the kernel without dt_bias and D (it unpacks
    # ``*(...) if dt_bias is not None else 0``): zeros keep the step a plain scan step.
    zeros = torch.zeros(A.shape[0], *([3] if layout == "mamba2" else []))
    y = selective_state_update(
        kernel_state, *(t.float() for t in step), D=zeros, dt_bias=zeros, dt_softplus=False
    )
    errors = relative_error(y, expected[:, 0]), relative_error(kernel_state, expected_state)
    print(
        f"| selective_state_update | {layout} step (not called by the package) | - | - "
        f"| {errors[0]:.1e} (state {errors[1]:.1e}) | no backward |"
    )
    assert max(errors) <= SCAN_RTOL  # the output, and the state updated in place

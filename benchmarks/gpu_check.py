"""GPU check of captum-mamba's numerics: parity, speed and half-precision models, one command.

Run from the repository root (about 5 minutes on an H200; ``--parts`` runs a subset)::

    python benchmarks/gpu_check.py --device cuda --out $OUT

and, with tiny sizes, on a CPU (what ``tests/test_gpu_check.py`` runs)::

    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/gpu-check

It prints three Markdown tables and writes them, with the environment, to
``OUT/gpu_check.json``:

1. **parity**: ``MambaLRP`` relevance of tiny transformers Mamba, Mamba2 and
   FalconMamba models and of a random model with the shape of mamba-130m, computed on
   the device in float32 with each scan implementation (mamba-ssm's fused kernels when
   they import, the chunked parallel scan, this package's chunked SSD scan), against
   the CPU float64 result: the largest relevance difference over the largest relevance
   (target 1e-5), the same for the CPU in float32 (the float32 floor), and the
   conservation delta relative to the relevances, ``|output - sum(R)| / sum(|R|)`` (all
   biases are zero, so it is rounding only). Parity and half precision run without TF32
   (PyTorch's flags off, ``TRITON_F32_DEFAULT=ieee`` unless set otherwise); speed runs
   with PyTorch's defaults.
2. **speed**: the 130M shape, batch 1, 2k and 16k tokens: ``MambaLRP`` with each
   implementation, the model's own forward + backward (the gradient of the explained
   logit for the input embeddings), Captum ``Saliency`` and a no-grad forward: median
   seconds and peak device memory. A method whose time at one length predicts more
   than ``--cap`` seconds at the next is skipped there.
3. **half precision**: bfloat16 and float16 models explained (in float32, as
   ``MambaLRP`` does): relative difference to the CPU float64 explanation of the same
   rounded weights, and the conservation delta.

This is a script, not part of the package: it checks one machine once and names the
exact packages to carry there.

Kernels on the GPU machine (no network there; Python 3.12, torch 2.11 + CUDA 13, triton
3.6, transformers 5.17 as last seen). PyPI has only source distributions of mamba-ssm
and causal-conv1d (their binary wheels are GitHub release assets, which cannot be
reached from here), so carry the sources and captum's wheel. Here, in the repository
root::

    echo /.whl/ >> .git/info/exclude
    python -m pip download --no-deps --no-binary :all: -d .whl \\
        mamba-ssm==2.3.2.post1 causal-conv1d==1.7.0
    python -m pip download --no-deps --only-binary :all: -d .whl captum==0.9.0

and on the GPU machine (``run`` with ``carry=[".whl"]``), before this script::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/captum-0.9.0-*.whl
    MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE python3 -m pip install -q \\
        --no-index --no-deps --no-build-isolation --target /tmp/site \\
        .whl/mamba_ssm-2.3.2.post1.tar.gz
    tar -xzf .whl/mamba_ssm-2.3.2.post1.tar.gz -C /tmp
    export PYTHONPATH=/tmp/site:$PWD

That installs mamba-ssm's Python code: its Triton SSD kernel (Mamba-2) works, and this
script supplies a stand-in for the compiled ``selective_scan_cuda`` so that it imports.
The compiled Mamba-1 kernel is built by ``--build-selective-scan
/tmp/mamba_ssm-2.3.2.post1`` (the ten sources of ``selective_scan_cuda``, for this GPU's
architecture only, with ninja on all cores; not yet timed). mamba-ssm's own setup.py
compiles them for every architecture its CUDA knows (nine with CUDA 13 on its main
branch), which takes far longer. causal-conv1d is not used by ``MambaLRP`` (its conv op,
``captum_mamba.ops.causal_conv1d``, is not wired into the adapters); its sources build
with ``CAUSAL_CONV1D_FORCE_BUILD=TRUE pip install --no-build-isolation``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Full float32 in Triton's dot products (mamba-ssm's SSD kernel), not TF32, unless set.
os.environ.setdefault("TRITON_F32_DEFAULT", "ieee")

# transformers binds mamba-ssm's kernels (or its own torch code) when its model modules
# are imported: import them before a stand-in makes mamba-ssm importable.
from transformers import (  # noqa: E402
    FalconMambaConfig,
    FalconMambaForCausalLM,
    Mamba2Config,
    Mamba2ForCausalLM,
)

from captum_mamba import MambaLRP  # noqa: E402
from captum_mamba.models import mamba_130m_config, mamba_config, random_mamba_lm  # noqa: E402
from captum_mamba.ops import implementation, set_implementation  # noqa: E402
from captum_mamba.ops.backends import choose, fused_kernel_error  # noqa: E402

TARGET = 7


# --- kernels ------------------------------------------------------------------------------


@contextmanager
def ieee_float32() -> Iterator[None]:
    """No TF32 in PyTorch's CUDA matrix products and convolutions inside the block."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def build_selective_scan(source: Path, build: Path) -> None:
    """Compile mamba-ssm's ``selective_scan_cuda`` for this GPU only and make it importable.

    Args:
        source (Path): unpacked mamba-ssm source distribution (with ``csrc/selective_scan``).
        build (Path): build folder; it is put on ``sys.path``.
    """
    from torch.utils.cpp_extension import load

    major, minor = torch.cuda.get_device_capability()
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    folder = source / "csrc" / "selective_scan"
    build.mkdir(parents=True, exist_ok=True)
    load(
        name="selective_scan_cuda",
        sources=[str(folder / "selective_scan.cpp"), *map(str, sorted(folder.glob("*.cu")))],
        extra_include_paths=[str(folder)],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=[
            "-O3",
            "-std=c++17",
            "-U__CUDA_NO_HALF_OPERATORS__",
            "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_OPERATORS__",
            "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT162_OPERATORS__",
            "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
            "--expt-relaxed-constexpr",
            "--expt-extended-lambda",
            "--use_fast_math",
        ],
        build_directory=str(build),
        verbose=False,
    )
    sys.path.insert(0, str(build))


def kernel_status(device: torch.device) -> dict[str, str]:
    """Which fused kernels run here: ``"ok"`` or why not. Never imports mamba-ssm on a CPU."""
    if device.type != "cuda":
        return dict.fromkeys(("selective_scan", "ssd_scan", "causal_conv1d"), "n/a off CUDA")
    status = {}
    if find_spec("mamba_ssm") is not None and find_spec("selective_scan_cuda") is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from mamba_ssm_subprocess import STUB

        stub_dir = Path(tempfile.mkdtemp(prefix="selective-scan-stub-"))
        (stub_dir / "selective_scan_cuda.py").write_text(STUB)
        sys.path.insert(0, str(stub_dir))
        status["selective_scan"] = "not built (stand-in extension; see --build-selective-scan)"
        set_implementation(selective_scan="parallel")  # "auto" would pick the stand-in
    for op in ("selective_scan", "ssd_scan", "causal_conv1d"):
        if op not in status:
            error = fused_kernel_error(op)
            status[op] = "ok" if error is None else error[:120]
    return status


# --- models -------------------------------------------------------------------------------


def perturbed(model: nn.Module, seed: int) -> nn.Module:
    """Move weights off their structured initialisation (by 20 %); zero biases; ``dt`` in
    (0.05, 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=gen).to(parameter.dtype)
            if name.endswith(("dt_proj.bias", "dt_bias")):
                dt = 0.05 + 0.95 * torch.rand(parameter.shape, generator=gen)
                parameter.copy_(torch.log(torch.expm1(dt)))
            elif name.endswith("bias"):
                parameter.zero_()
            elif not name.endswith("A_log"):
                scale = parameter.std() if parameter.dim() > 1 else 1.0
                parameter.add_(0.2 * scale * noise)
    return model.eval()


def build_models(quick: bool) -> dict[str, tuple[nn.Module, str]]:
    """Float64 CPU models by name, each with the scan op its mixers use."""
    torch.manual_seed(0)
    mamba = random_mamba_lm(mamba_config(hidden_size=16, state_size=4), dtype=torch.float64)
    mamba2 = Mamba2ForCausalLM(
        Mamba2Config(
            hidden_size=32, num_heads=4, head_dim=16, n_groups=2, state_size=16,
            chunk_size=16, conv_kernel=4, num_hidden_layers=2, vocab_size=64,
        )
    )  # fmt: skip
    falcon = FalconMambaForCausalLM(
        FalconMambaConfig(hidden_size=16, state_size=4, num_hidden_layers=2, vocab_size=64)
    )
    shape = mamba_config(hidden_size=64, state_size=16) if quick else mamba_130m_config()
    big = random_mamba_lm(shape, dtype=torch.float64)
    models = {
        "mamba tiny": (mamba, "selective_scan"),
        "mamba2 tiny": (mamba2, "ssd_scan"),
        "falcon-mamba tiny": (falcon, "selective_scan"),
        "mamba 130m-shape" if not quick else "mamba small": (big, "selective_scan"),
    }
    return {
        name: (perturbed(model.double(), seed), op)
        for seed, (name, (model, op)) in enumerate(models.items())
    }


def implementations(op: str, device: torch.device, kernels: dict[str, str]) -> list[str]:
    """Implementations of ``op`` to run on ``device``: the fused one only where it runs."""
    names = ["fused", "parallel"] if op == "selective_scan" else ["fused", "chunked"]
    if device.type != "cuda" or kernels[op] != "ok":
        names.remove("fused")
    if device.type != "cuda" and op == "selective_scan":
        names.append("sequential")
    return names


# --- measurements -------------------------------------------------------------------------


def relevance(
    model: nn.Module, embeds: Tensor, choices: dict[str, str] | None = None
) -> tuple[Tensor, float]:
    """MambaLRP relevance (on the CPU, float64) and the conservation delta relative to the
    summed magnitude of the relevances, ``|output - sum(R)| / sum(|R|)``."""
    with implementation(**(choices or {})):
        result, delta = MambaLRP(model).attribute(
            embeds, target=(-1, TARGET), return_convergence_delta=True
        )
    magnitude = result.abs().sum((1, 2)).clamp_min(1e-30)
    return result.detach().to("cpu", torch.float64), (delta.abs() / magnitude).max().item()


def relative_error(actual: Tensor, expected: Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def on(model: nn.Module, device: torch.device, dtype: torch.dtype) -> nn.Module:
    return copy.deepcopy(model).to(device, dtype)


def token_embeddings(model: nn.Module, length: int, seed: int) -> Tensor:
    vocab = model.get_input_embeddings().num_embeddings
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(seed))
    return model.get_input_embeddings()(ids).detach()


def parity(args: argparse.Namespace, models, kernels) -> list[dict]:
    rows = []
    for name, (model, op) in models.items():
        length = 32 if args.quick else (128 if "130m" in name else 40)
        embeds = token_embeddings(model, length, seed=1)
        expected, _ = relevance(model, embeds)
        floor, _ = relevance(on(model, torch.device("cpu"), torch.float32), embeds.float())
        device_model = on(model, args.device, torch.float32)
        for impl in implementations(op, args.device, kernels):
            actual, delta = relevance(device_model, embeds.float().to(args.device), {op: impl})
            error = relative_error(actual, expected)
            rows.append(
                dict(
                    model=name, tokens=length, impl=impl, relative_error=error,
                    cpu_float32_error=relative_error(floor, expected), relative_delta=delta,
                    within_1e_5=error <= 1e-5,
                )
            )  # fmt: skip
            print(f"parity {name} {impl}: {error:.2e}", file=sys.stderr)
    return rows


def timed(run: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """Median seconds of ``run`` and its peak device memory in GiB (NaN off CUDA)."""
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else math.nan
    return statistics.median(times), peak


def speed_methods(model: nn.Module, kernels, device) -> dict[str, Callable[[Tensor], object]]:
    from captum.attr import Saliency

    def logit(embeds: Tensor) -> Tensor:
        return model(inputs_embeds=embeds, use_cache=False).logits[:, -1, TARGET]

    def forward_backward(embeds: Tensor) -> Tensor:
        leaf = embeds.detach().requires_grad_()
        return torch.autograd.grad(logit(leaf).sum(), leaf)[0]

    def no_grad_forward(embeds: Tensor) -> None:
        with torch.no_grad():
            logit(embeds)

    methods: dict[str, Callable[[Tensor], object]] = {}
    names = implementations("selective_scan", device, kernels)
    for impl in names + ["sequential"] * (device.type == "cuda"):

        def explain(embeds: Tensor, impl: str = impl) -> Tensor:
            with implementation(selective_scan=impl):
                return MambaLRP(model).attribute(embeds, target=(-1, TARGET))

        methods[f"MambaLRP ({impl})"] = explain
    methods["forward+backward (model)"] = forward_backward
    methods["Saliency (Captum)"] = lambda e: Saliency(logit).attribute(e, abs=False)
    methods["no-grad forward (model)"] = no_grad_forward
    return methods


def speed(args: argparse.Namespace, models, kernels) -> list[dict]:
    name = "mamba small" if args.quick else "mamba 130m-shape"
    model = on(models[name][0], args.device, torch.float32)
    lengths = (64, 256) if args.quick else (2048, 16384)
    rows = []
    for method, run in speed_methods(model, kernels, args.device).items():
        run(token_embeddings(model, 16, seed=0).to(args.device))  # warm-up, kernel compiles
        previous: tuple[int, float] | None = None
        for length in lengths:
            embeds = token_embeddings(model, length, seed=2).to(args.device)
            estimate = previous[1] * length / previous[0] if previous else None
            row = dict(method=method, tokens=length, seconds=None, peak_gib=None, note="")
            rows.append(row)
            if estimate is not None and estimate > args.cap:
                row["note"] = f"skipped: about {estimate:.0f} s"
                continue
            repeats = 1 if estimate is not None and estimate > 5 else args.repeats
            try:
                row["seconds"], row["peak_gib"] = timed(partial(run, embeds), args.device, repeats)
            except torch.cuda.OutOfMemoryError:
                row["note"] = "out of device memory"
                torch.cuda.empty_cache()
                break
            previous = (length, row["seconds"])
            print(f"speed {method} {length}: {row['seconds']:.3f} s", file=sys.stderr)
    return rows


def half_precision(args: argparse.Namespace, models, kernels) -> list[dict]:
    rows = []
    names = ["mamba tiny", "mamba small" if args.quick else "mamba 130m-shape"]
    for name in names:
        model = models[name][0]
        embeds = token_embeddings(model, 32 if args.quick else 128, seed=3)
        impl = choose("selective_scan", None, embeds.float().to(args.device))
        for dtype in (torch.bfloat16, torch.float16):
            rounded = on(model, torch.device("cpu"), dtype)
            reference = on(rounded, torch.device("cpu"), torch.float64)
            expected, _ = relevance(reference, embeds.to(dtype).double())
            actual, delta = relevance(
                on(rounded, args.device, dtype), embeds.to(args.device, dtype)
            )
            rows.append(
                dict(model=name, dtype=str(dtype).removeprefix("torch."), impl=impl,
                     relative_error=relative_error(actual, expected), relative_delta=delta)
            )  # fmt: skip
    return rows


# --- report -------------------------------------------------------------------------------


def markdown(rows: list[dict]) -> str:
    if not rows:
        return "(none)"

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else f"{value:.3g}"
        return "-" if value is None else str(value)

    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", type=torch.device)
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for testing)")
    parser.add_argument("--parts", default="parity,speed,half", help="comma-separated subset")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per measurement")
    parser.add_argument("--cap", type=float, default=30.0, help="seconds; see the speed table")
    parser.add_argument("--build-selective-scan", type=Path, metavar="MAMBA_SSM_SOURCES")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Run the check; returns what it writes to ``OUT/gpu_check.json`` (after each part)."""
    args = parser().parse_args(argv)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device; use --device cpu --quick")
    start = time.perf_counter()
    report: dict = dict(
        device=torch.cuda.get_device_name() if args.device.type == "cuda" else platform.machine(),
        torch=torch.__version__, python=platform.python_version(), quick=args.quick,
        triton_f32_default=os.environ["TRITON_F32_DEFAULT"], seconds={},
    )  # fmt: skip
    if args.build_selective_scan is not None:
        build_selective_scan(args.build_selective_scan, Path(tempfile.gettempdir()) / "ss_build")
        report["seconds"]["build"] = time.perf_counter() - start
    kernels = report["kernels"] = kernel_status(args.device)
    print(f"kernels: {kernels}")
    models = build_models(args.quick)
    parts = {"parity": parity, "speed": speed, "half": half_precision}
    args.out.mkdir(parents=True, exist_ok=True)
    for part in args.parts.split(","):
        began = time.perf_counter()
        if part == "speed":  # PyTorch's defaults, as a user runs it
            report[part] = parts[part](args, models, kernels)
        else:
            with ieee_float32():
                report[part] = parts[part](args, models, kernels)
        report["seconds"][part] = time.perf_counter() - began
        print(f"\n## {part}\n\n{markdown(report[part])}", flush=True)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    total = time.perf_counter() - start
    print(f"\n{total:.0f} s in all; wrote {args.out / 'gpu_check.json'}")
    return report


if __name__ == "__main__":
    main()

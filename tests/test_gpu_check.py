"""The prepared GPU check script runs on a CPU with tiny sizes and reports sane numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_quick(tmp_path: Path) -> None:
    command = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick"]
    command += ["--out", str(tmp_path), "--repeats", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for part in ("## parity", "## speed", "## half"):
        assert part in done.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["kernels"].values()) == {"n/a off CUDA"}  # no mamba-ssm import on CPU

    parity = report["parity"]
    assert {row["model"] for row in parity} == {
        "mamba tiny", "mamba2 tiny", "falcon-mamba tiny", "mamba small"
    }  # fmt: skip
    assert {row["impl"] for row in parity} == {"parallel", "sequential", "chunked"}
    for row in parity:  # CPU float32 against CPU float64
        assert 0 < row["relative_error"] <= 1e-5, row
        assert row["relative_delta"] <= 1e-6, row

    speed = report["speed"]
    assert {row["tokens"] for row in speed} == {64, 256}
    assert any(row["method"] == "Saliency (Captum)" for row in speed)
    assert all(row["seconds"] > 0 for row in speed if not row["note"])

    half = report["half"]
    assert {row["dtype"] for row in half} == {"bfloat16", "float16"}
    for row in half:
        assert row["impl"] == "sequential" and row["relative_error"] <= 1e-5, row

"""Running a test file again in a subprocess that may import mamba-ssm.

mamba-ssm imports only with its compiled extension ``selective_scan_cuda``, and once it
imports, transformers' Mamba models bind to its CUDA kernels and break on CPU. Test
files that need it call :func:`run_in_mamba_ssm_subprocess` from one test of the main
process; it re-runs the file with ``CAPTUM_MAMBA_SSM_SUBPROCESS=1`` and, where the
extension is missing, with a stand-in ``selective_scan_cuda`` module on ``PYTHONPATH``
(importable, raising if called). Tests marked :data:`subprocess_only` run only there.
Where mamba-ssm is not installed they are skipped, or fail with
``CAPTUM_MAMBA_REQUIRE_MAMBA_SSM=1`` (set by ``.ci/run``, which installs it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path

import pytest

IN_SUBPROCESS = os.environ.get("CAPTUM_MAMBA_SSM_SUBPROCESS") == "1"
#: Set to 1 (CI does) to fail instead of skipping when mamba-ssm is not installed.
REQUIRE = "CAPTUM_MAMBA_REQUIRE_MAMBA_SSM"
ROOT = Path(__file__).resolve().parents[1]

#: Stand-in for mamba-ssm's compiled CUDA extension, enough to import mamba_ssm on CPU.
STUB = '''"""Stand-in for mamba-ssm's compiled selective_scan_cuda: importable, not callable."""


def _unavailable(*args, **kwargs):
    raise RuntimeError("selective_scan_cuda is a CPU stand-in; use captum_mamba's rule forwards")


fwd = bwd = _unavailable
'''

#: Why tests that import mamba-ssm are skipped in the main process.
SKIP_REASON = (
    "needs mamba_ssm imported, which rebinds transformers' Mamba to CUDA kernels; runs in "
    "the isolated subprocess of its file's *_in_subprocess test"
)
subprocess_only = pytest.mark.skipif(not IN_SUBPROCESS, reason=SKIP_REASON)


def run_in_mamba_ssm_subprocess(
    tmp_path: Path, *test_files: str, env: Mapping[str, str] | None = None
) -> None:
    """Run ``pytest test_files`` in a subprocess that can import mamba-ssm; fail on failures.

    Args:
        tmp_path (Path): folder for the stand-in extension module.
        *test_files (str): paths of the test files (e.g. the caller's ``__file__``).
        env (Mapping, optional): further environment variables of the subprocess.
            Default: None.
    """
    if IN_SUBPROCESS:
        pytest.skip("already inside the mamba-ssm subprocess")
    if find_spec("mamba_ssm") is None:
        reason = (
            "mamba-ssm is not installed; on CPU install it with MAMBA_FORCE_BUILD=TRUE "
            "MAMBA_SKIP_CUDA_BUILD=TRUE pip install --no-build-isolation mamba-ssm"
        )
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{reason} ({REQUIRE}=1, as in CI)")
        pytest.skip(reason)
    env = dict(os.environ, CAPTUM_MAMBA_SSM_SUBPROCESS="1", OMP_NUM_THREADS="1", **(env or {}))
    paths = [str(ROOT)]
    if find_spec("selective_scan_cuda") is None:
        (tmp_path / "selective_scan_cuda.py").write_text(STUB)
        paths.insert(0, str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "pytest", *test_files, "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    report = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, report
    assert " passed" in result.stdout and " failed" not in result.stdout, report

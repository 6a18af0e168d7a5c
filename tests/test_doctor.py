"""``captum-mamba doctor``: the report for bug reports (versions, device, model families)."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata

import pytest
import torch

from captum_mamba.adapters import family_statuses
from captum_mamba.adapters.families import FamilyStatus
from captum_mamba.apps import doctor


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def test_command_prints_versions_device_and_every_family() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "captum_mamba", "doctor"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"python: {platform.python_version()} ")
    for distribution in ("captum-mamba", "torch", "captum", "transformers", "mamba-ssm", "numpy"):
        assert f"{distribution}: {_version(distribution)}" in lines
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert any(line.startswith(f"device: {device}") for line in lines)
    families = lines[lines.index("model families:") + 1 :]
    expected = [
        ("available  " if status.available else "unavailable") + " " + status.name
        for status in family_statuses()
    ]
    assert [line.strip()[: len(e)] for line, e in zip(families, expected, strict=True)] == expected
    assert "falling back" not in run.stderr


def test_unavailable_family_shows_reason_and_needed_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = FamilyStatus(
        "transformers Example",
        "captum_mamba.adapters.hf_example",
        ("ExampleModel",),
        False,
        "transformers 4.46.0 is installed",
        "transformers >= 5.13",
    )
    monkeypatch.setattr(doctor, "family_statuses", lambda: (missing,))
    lines = doctor.report()
    assert lines[-1] == (
        "  unavailable transformers Example (transformers 4.46.0 is installed; "
        "needs transformers >= 5.13)"
    )


def test_mamba_ssm_kernels_reported_without_importing_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(doctor, "release", lambda name: "2.3.2")
    monkeypatch.setattr(
        doctor, "find_spec", lambda name: object() if name == "selective_scan_cuda" else None
    )
    line = next(x for x in doctor.report() if x.startswith("mamba-ssm kernels"))
    assert line == (
        "mamba-ssm kernels: not importable: causal_conv1d_cuda (importable: selective_scan_cuda)"
    )

"""``captum-mamba doctor``: what this installation runs on, for bug reports.

It reports Python and the platform, the releases of the package and of the libraries it
depends on (torch, captum, transformers, mamba-ssm with whether its compiled kernels
import, numpy), the device explanations run on, and every model family with whether it can
be explained here and, where not, why and which release it needs. It imports no optional
library (mamba-ssm's import binds transformers' Mamba models to its CUDA kernels), so
running it changes nothing.
"""

from __future__ import annotations

import platform
from importlib.util import find_spec

import torch

from captum_mamba.adapters import family_statuses
from captum_mamba.adapters.families import installed_release

#: The distributions whose releases are reported, in this order.
DISTRIBUTIONS: tuple[str, ...] = (
    "captum-mamba",
    "torch",
    "captum",
    "transformers",
    "mamba-ssm",
    "numpy",
)

#: mamba-ssm's compiled (CUDA) extensions, reported as importable or not.
MAMBA_SSM_KERNELS: tuple[str, ...] = ("selective_scan_cuda", "causal_conv1d_cuda")


def release(distribution: str) -> str:
    """The installed release of ``distribution``, or ``"not installed"``."""
    return installed_release(distribution) or "not installed"


def kernels_line() -> str:
    """Which of mamba-ssm's compiled kernels import (found without importing them)."""
    found = [name for name in MAMBA_SSM_KERNELS if find_spec(name) is not None]
    missing = [name for name in MAMBA_SSM_KERNELS if name not in found]
    if not missing:
        return "importable: " + ", ".join(found)
    return (
        "not importable: "
        + ", ".join(missing)
        + (f" (importable: {', '.join(found)})" if found else "")
    )


def device_line() -> str:
    """The device: the first CUDA device if there is one, else the CPU and why."""
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        name = torch.cuda.get_device_name(0)
        return f"cuda: {name} ({count} device(s), CUDA {torch.version.cuda})"
    why = "torch built without CUDA" if torch.version.cuda is None else "no CUDA device found"
    return f"cpu: {torch.get_num_threads()} threads ({why})"


def report() -> list[str]:
    """The lines of the report.

    Returns:
        list of str: one line per item, with headings for the families.
    """
    lines = [
        f"python: {platform.python_version()} ({platform.platform()})",
        *(f"{name}: {release(name)}" for name in DISTRIBUTIONS),
    ]
    if release("mamba-ssm") != "not installed":
        lines.append(f"mamba-ssm kernels: {kernels_line()}")
    lines += [f"device: {device_line()}", "model families:"]
    lines += [
        f"  {'available  ' if status.available else 'unavailable'} {status.describe()}"
        for status in family_statuses()
    ]
    return lines

"""Running mamba-ssm's Triton kernels on CPU tensors under Triton's interpreter.

With ``TRITON_INTERPRET=1`` set before Triton is imported, Triton's interpreter runs
``@triton.jit`` kernels on CPU tensors with NumPy. mamba-ssm's host code around its
kernels assumes a CUDA device in three places, which :func:`interpreter_shims` replaces
for the duration of a ``with`` block:

- ``torch.cuda.device(index)``, entered around every launch: a context that does nothing;
- Triton's autotuner, which would time every configuration on the device: it runs the
  first configuration of each kernel (``Autotuner.prune_configs``);
- ``torch.cuda.get_device_properties(device)``, read for ``multi_processor_count`` to
  size some grids: an object with :data:`PROCESSORS` processors.

Nothing here is imported by the package. Tests that need the interpreter run in the
subprocess of :func:`run_in_interpreter_subprocess` (the mamba-ssm subprocess of
``mamba_ssm_subprocess.py`` with ``TRITON_INTERPRET=1``), are marked
``triton_interpreter`` and take the ``triton_interpreter`` fixture of ``conftest.py``,
which enters :func:`interpreter_shims` and leaves it after the test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from mamba_ssm_subprocess import IN_SUBPROCESS, run_in_mamba_ssm_subprocess

#: Whether this process runs Triton kernels with the interpreter (inside the subprocess).
IN_INTERPRETER = IN_SUBPROCESS and os.environ.get("TRITON_INTERPRET") == "1"
#: Processor count answered by the replaced ``torch.cuda.get_device_properties``.
PROCESSORS = 4


class _NoDevice:
    """Stand-in for ``torch.cuda.device(index)``: a context manager that does nothing."""

    def __init__(self, index: Any) -> None:
        self.index = index

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


def _device_properties(device: Any = None) -> SimpleNamespace:
    return SimpleNamespace(multi_processor_count=PROCESSORS)


def _first_config(self: Any, kwargs: dict[str, Any]) -> list[Any]:
    return list(self.configs[:1])


def patched_targets() -> dict[str, tuple[Any, str, Any]]:
    """The objects :func:`interpreter_shims` replaces: name -> ``(owner, attribute,
    replacement)``. Imports Triton."""
    from triton.runtime.autotuner import Autotuner

    properties = "get_device_properties"
    return {
        "torch.cuda.device": (torch.cuda, "device", _NoDevice),
        f"torch.cuda.{properties}": (torch.cuda, properties, _device_properties),
        "Autotuner.prune_configs": (Autotuner, "prune_configs", _first_config),
    }


@contextmanager
def interpreter_shims() -> Iterator[None]:
    """Context manager: the three CUDA assumptions of mamba-ssm's host code replaced.

    Restores the original objects on exit, also after an exception.

    Raises:
        RuntimeError: outside a process started with ``TRITON_INTERPRET=1``.
    """
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the shims are for Triton's interpreter: set TRITON_INTERPRET=1")
    targets = patched_targets().values()
    originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in targets]
    try:
        for owner, name, replacement in targets:
            setattr(owner, name, replacement)
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)


def run_in_interpreter_subprocess(tmp_path: Path, *test_files: str) -> None:
    """Run ``pytest test_files`` in the mamba-ssm subprocess with ``TRITON_INTERPRET=1``.

    Args:
        tmp_path (Path): folder for mamba-ssm's stand-in extension module.
        *test_files (str): paths of the test files.
    """
    run_in_mamba_ssm_subprocess(tmp_path, *test_files, env={"TRITON_INTERPRET": "1"})

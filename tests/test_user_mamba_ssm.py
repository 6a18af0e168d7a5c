"""A user's own network on mamba-ssm (``tests/cases/mamba_ssm_user.py``, checked by the
conformance suite in the mamba-ssm subprocess): refused naming the innermost module no
rule covers. Runs in the mamba-ssm subprocess (see ``mamba_ssm_subprocess.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mamba_ssm_subprocess import run_in_mamba_ssm_subprocess, subprocess_only
from torch import nn

from captum_mamba import MambaLRP, UnsupportedModelError


def test_in_mamba_ssm_subprocess(tmp_path: Path) -> None:
    run_in_mamba_ssm_subprocess(tmp_path, __file__)


@subprocess_only
def test_innermost_unsupported_module_of_a_mamba_ssm_network_is_named() -> None:
    from cases.mamba_ssm_user import build

    model = build("mamba2-2-layers", 0, False)
    model.head[1] = nn.Hardtanh()
    with pytest.raises(UnsupportedModelError, match=r"^head\.1 \(torch\.nn\.[\w.]*Hardtanh\)"):
        MambaLRP(model)
    model.head[1] = nn.GELU()
    model.stem = nn.Sequential(nn.Conv1d(3, 8, 3, padding=1), nn.Softsign())
    with pytest.raises(UnsupportedModelError, match=r"^stem\.1 \(torch\.nn\.[\w.]*Softsign\)"):
        MambaLRP(model)

"""One family's absence never breaks another.

In a subprocess, one family's transformers module is hidden (or one of its classes
renamed) while captum-mamba loads (:mod:`families_subprocess`): that family is reported
unavailable with the reason, explaining its model raises a one-line error naming it, and
every other family is still explained exactly (against its independent reference). A
class renamed to a name listed in the rename table is still found. The process of the
test suite is never changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cases import load_cases

from captum_mamba.adapters import FamilyStatus, describe_architectures, family_statuses
from captum_mamba.adapters.families import RENAMED, Family, FamilyUnavailable, resolve

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
CASES, _ = load_cases()
AVAILABLE = {status.name for status in family_statuses() if status.available}


def run_changed(*arguments: str) -> dict:
    """The report of :mod:`families_subprocess` for one change."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    completed = subprocess.run(
        [sys.executable, str(TESTS / "families_subprocess.py"), *arguments],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


CHANGES = {
    "hide-bamba-module": (
        "transformers Bamba",
        "hf_bamba",
        ("hide", "transformers.models.bamba.modeling_bamba"),
        "has no module transformers.models.bamba.modeling_bamba",
    ),
    "rename-falcon-mamba-mixer": (
        "transformers FalconMamba",
        "hf_falcon_mamba",
        (
            "rename",
            "transformers.models.falcon_mamba.modeling_falcon_mamba",
            "FalconMambaMixer",
            "FalconMambaMixerRenamed",
        ),
        "has no FalconMambaMixer in transformers.models.falcon_mamba.modeling_falcon_mamba",
    ),
    "rename-kimi-linear-forget-gate": (
        "transformers Kimi-Linear",
        "hf_kimi_linear",
        (
            "rename",
            "transformers.models.kimi_linear.modeling_kimi_linear",
            "KimiLinearForgetGate",
            "KimiLinearForgetGateRenamed",
        ),
        "has no KimiLinearForgetGate in transformers.models.kimi_linear.modeling_kimi_linear",
    ),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_one_missing_family_breaks_no_other(change: str) -> None:
    family, case_name, arguments, reason = CHANGES[change]
    if family not in AVAILABLE:
        pytest.skip(f"{family} is unavailable with the installed transformers")
    report = run_changed(*arguments)
    statuses = {status["name"]: status for status in report["statuses"]}
    assert statuses[family]["available"] is False
    assert reason in statuses[family]["reason"]
    assert {name for name, s in statuses.items() if s["available"]} == AVAILABLE - {family}
    needs = statuses[family]["needs"]
    assert "; unavailable: " in report["supported"]
    assert f"{family} ({statuses[family]['reason']}; needs {needs})" in report["supported"]
    others = {case.name for case in CASES} - {case_name}
    assert set(report["exact"]) == others
    assert all(error <= 1e-10 for error in report["exact"].values()), report["exact"]
    message = report["errors"][case_name]
    assert "\n" not in message
    assert message.startswith(family.split()[-1].replace("-", ""))
    assert f"belongs to {family}, which is unavailable here: " in message
    assert reason in message


def test_a_renamed_class_is_found_under_its_earlier_name() -> None:
    module = "transformers.models.mamba2.modeling_mamba2"
    (current,) = (key.rsplit(".", 1)[1] for key in RENAMED if key.startswith(module + "."))
    (earlier,) = RENAMED[f"{module}.{current}"]
    if "transformers Mamba-2" not in AVAILABLE:
        pytest.skip("Mamba-2 is unavailable with the installed transformers")
    installed = resolve(module, current).__name__
    report = run_changed("rename", module, installed, earlier if installed == current else current)
    statuses = {status["name"]: status for status in report["statuses"]}
    assert statuses["transformers Mamba-2"]["available"] is True
    assert {name for name, s in statuses.items() if s["available"]} == AVAILABLE
    assert set(report["exact"]) == {case.name for case in CASES}
    assert all(error <= 1e-10 for error in report["exact"].values()), report["exact"]


def test_statuses_name_every_family_with_the_release_it_needs() -> None:
    statuses = family_statuses()
    assert all(isinstance(status, FamilyStatus) for status in statuses)
    names = {status.name for status in statuses}
    assert {"transformers Mamba", "transformers Mamba-2", "transformers Bamba"} <= names
    for status in statuses:
        assert status.available == (status.reason == "")
        if status.name.startswith("transformers "):
            assert status.needs.startswith("transformers >= ")
    text = describe_architectures()
    for status in statuses:
        if not status.available:
            assert status.describe() in text
        assert "\n" not in status.describe()


def test_a_family_needing_a_newer_release_is_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    family = Family("tests.probe", "probe", ("Probe",), ("probe.module",), "transformers >= 999")
    with pytest.raises(FamilyUnavailable, match=r"^transformers \S+ is installed$"):
        family.check_release()
    with pytest.raises(FamilyUnavailable, match=r"^numpy \S+ has no module numpy\.no_such_module$"):
        resolve("numpy.no_such_module", "Anything")
    with pytest.raises(FamilyUnavailable, match=r"^torch \S+ has no NoSuchClass in torch\.nn$"):
        resolve("torch.nn", "NoSuchClass")
    (tmp_path / "broken_probe.py").write_text("raise RuntimeError('broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(FamilyUnavailable, match=r"fails to import broken_probe: RuntimeError$"):
        resolve("broken_probe", "Anything")

"""Packaging: ``python -m build`` makes an sdist and a wheel with everything they need.

The wheel holds every subpackage and the package data, and no tests; the sdist holds
the full source (tests with their helpers, documentation sources, tutorials); the
metadata names the extras. The wheel, installed into an empty folder, passes the smoke
test (``tests/package_smoke.py``) run from outside the checkout. ``.ci/check_dist`` does
the same in a clean virtual environment that installs the dependencies from PyPI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from importlib.util import find_spec
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if find_spec("build") is None:
        pytest.skip("the build package is not installed: pip install -e '.[dev]'")
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} installed; the build needs >= 77")
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the installed setuptools builds, so no network is needed.
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def _only(folder: Path, pattern: str) -> Path:
    (path,) = folder.glob(pattern)
    return path


def test_wheel_has_every_subpackage_and_the_package_data(dist: Path) -> None:
    names = set(zipfile.ZipFile(_only(dist, "*.whl")).namelist())
    packages = {
        path.parent.relative_to(ROOT).as_posix()
        for path in (ROOT / "captum_mamba").rglob("__init__.py")
    }
    missing = [p for p in sorted(packages) if f"{p}/__init__.py" not in names]
    assert not missing, missing
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "captum_mamba").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "captum_mamba/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "docs/", "tutorials/"))]


def test_metadata_names_the_extras(dist: Path) -> None:
    wheel = zipfile.ZipFile(_only(dist, "*.whl"))
    (path,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = Parser().parsestr(wheel.read(path).decode())
    assert set(metadata.get_all("Provides-Extra")) >= {"dev", "docs", "mamba-ssm"}
    requirements = metadata.get_all("Requires-Dist")
    for needed in ("torch", "captum", "transformers", "sphinx", "mamba-ssm", "pytest"):
        assert any(r.startswith(needed) for r in requirements), needed
    assert metadata["License-Expression"] == "BSD-3-Clause"
    entry_points = next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))
    assert "captum-mamba = captum_mamba.apps.cli:main" in wheel.read(entry_points).decode()


def test_sdist_is_the_full_source(dist: Path) -> None:
    sdist = _only(dist, "*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in (
        "pyproject.toml", "README.md", "MANIFEST.in", "captum_mamba/py.typed",
        "tests/conftest.py", "tests/helpers.py", "tests/cases/__init__.py",
        "tests/package_smoke.py", "docs/conf.py", "docs/_ext/api_pages.py",
        "docs/developer_guide.md", "tutorials/01_quick_start.ipynb",
    ):  # fmt: skip
        assert needed in names, needed
    assert not [n for n in names if n.startswith("docs/_build") or "__pycache__" in n]


def test_installed_wheel_passes_the_smoke_test(dist: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--target", str(site), str(_only(dist, "*.whl"))],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "package_smoke.py"),
         "--expect-under", str(site), "--scripts", str(site / "bin")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert "smoke test passed" in result.stdout

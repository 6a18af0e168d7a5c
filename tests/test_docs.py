"""The documentation site: it builds with warnings as errors, and its API reference
documents every public name.

Public names are those in ``captum_mamba.__all__`` and in the ``__all__`` of every
subpackage. A name that the package namespace re-exports is documented once, as
``captum_mamba.NAME``, and the subpackage's page links to it. The build needs the
``[docs]`` extra; without it the build test is skipped with that reason. With
``CAPTUM_MAMBA_DOCS_BUILD=<folder>`` the tests check that site instead of building one
(``.ci/run`` builds it with warnings as errors in a step of its own).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import posixpath
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

import captum_mamba

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api"
DOC_PACKAGES = ("sphinx", "myst_parser", "myst_nb", "furo")


def public_packages() -> list[str]:
    """``captum_mamba`` and each of its subpackages that declares ``__all__``."""
    names = ["captum_mamba"]
    for info in pkgutil.iter_modules(captum_mamba.__path__, "captum_mamba."):
        if info.ispkg and hasattr(importlib.import_module(info.name), "__all__"):
            names.append(info.name)
    return names


def expected_entries() -> dict[str, tuple[str, str]]:
    """Every public name -> (full name documented in the API reference, its page)."""
    entries = {}
    for package in public_packages():
        module = importlib.import_module(package)
        for name in module.__all__:
            value = getattr(module, name)
            top = name in captum_mamba.__all__ and getattr(captum_mamba, name) is value
            full = f"captum_mamba.{name}" if top else f"{package}.{name}"
            entries[f"{package}.{name}"] = (full, package)
    return entries


def test_every_public_package_has_an_api_page() -> None:
    pages = {path.stem for path in API.glob("*.rst")}
    missing = sorted(set(public_packages()) - pages)
    assert not missing, f"add docs/api/<name>.rst (and the toctree entry) for {missing}"
    index = (API / "index.md").read_text(encoding="utf-8")
    assert all(f"\n{page}\n" in index for page in pages), "every API page in api/index.md"


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("CAPTUM_MAMBA_DOCS_BUILD")
    if prebuilt:  # .ci/run builds the site with -W just before the tests
        assert (Path(prebuilt) / "objects.inv").is_file(), f"no site built in {prebuilt}"
        return Path(prebuilt)
    missing = [name for name in DOC_PACKAGES if find_spec(name) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-E", "-q", "-W", "--keep-going", "-b", "html",
         str(DOCS), str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    warnings = [line for line in result.stderr.splitlines() if "[transformers]" not in line]
    assert result.returncode == 0, "\n".join(warnings[-60:])
    return out


@pytest.mark.slow
def test_site_builds_without_warnings_and_has_every_page(built_site: Path) -> None:
    for page in (
        "index", "getting_started", "concepts", "architectures", "comparing_methods", "study",
        "visualization", "captum_workflows", "datasets", "performance", "tutorials",
        "guarantees", "package_layout", "developer_guide", "api/index",
    ):  # fmt: skip
        assert (built_site / f"{page}.html").is_file(), page
    notebooks = sorted(path.stem for path in (ROOT / "tutorials").glob("*.ipynb"))
    rendered = sorted(path.stem for path in (built_site / "tutorials").glob("*.html"))
    assert rendered == notebooks
    guarantees = (built_site / "guarantees.html").read_text(encoding="utf-8")
    assert "Bad inputs: one-line errors" in guarantees and "Property-based tests" in guarantees


@pytest.mark.slow
def test_api_reference_documents_every_public_name(built_site: Path) -> None:
    from sphinx.util.inventory import InventoryFile

    with open(built_site / "objects.inv", "rb") as stream:
        inventory = InventoryFile.load(stream, "", posixpath.join)
    documented = {
        name for role, items in inventory.items() if role.startswith("py:") for name in items
    }
    missing, unlinked = [], []
    for public, (full, package) in expected_entries().items():
        if full not in documented:
            missing.append(public)
        elif full != public:  # re-exported: the subpackage's page links to it
            page = (built_site / "api" / f"{package}.html").read_text(encoding="utf-8")
            if f'captum_mamba.html#{full}"' not in page:
                unlinked.append(public)
    assert not missing, f"not in the API reference: {missing}"
    assert not unlinked, f"not linked from their subpackage's page: {unlinked}"
    assert len(expected_entries()) > 150

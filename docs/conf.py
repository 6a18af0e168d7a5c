"""Sphinx configuration of the captum-mamba documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (warnings are
errors). The tutorials are copied from ``tutorials/`` into ``docs/tutorials/`` before each
build (not committed) and rendered without being executed (``tests/test_tutorials.py``
executes them). ``architectures.md`` includes the README's table of supported architectures.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))

import captum_mamba  # noqa: E402

project = "captum-mamba"
author = "captum-mamba developers"
copyright = "2026, captum-mamba developers"
version = release = captum_mamba.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
    "api_pages",
]

# Docstrings are Captum-style: ``Args:`` / ``Returns:`` / ``Raises:`` sections (Google
# style, read by napoleon) and ``Examples::`` literal blocks (plain reStructuredText).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # no torch or Captum docstrings on overridden methods

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # rendered as committed; tests/test_tutorials.py executes them

exclude_patterns = ["_build"]
html_theme = "furo"
html_title = f"captum-mamba {release}"


def _copy_tutorials() -> None:
    """Copy ``tutorials/*.ipynb`` next to the pages (Sphinx reads only its source folder)."""
    target = DOCS / "tutorials"
    target.mkdir(exist_ok=True)
    for stale in target.glob("*.ipynb"):
        stale.unlink()
    for notebook in sorted((ROOT / "tutorials").glob("*.ipynb")):
        shutil.copy2(notebook, target / notebook.name)


_copy_tutorials()

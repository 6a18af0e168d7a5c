"""Tests of tutorials/: every notebook executes without error (outputs not committed).

Each notebook runs in a fresh Jupyter kernel with ``tutorials/`` as working folder,
as a reader would run it. The notebooks train or load small models on the shared
data (``$CAPTUM_MAMBA_DATA``, default ``<repo>/../shared/data``), so they are marked
slow; CI runs them with ``pytest -m slow tests/test_tutorials.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
SECONDS_PER_NOTEBOOK = 600

nbformat = pytest.importorskip(
    "nbformat", reason="nbformat is not installed (pip install nbformat nbclient ipykernel)"
)


def test_there_is_a_notebook_per_topic() -> None:
    assert len(NOTEBOOKS) >= 5, [path.name for path in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, "a tutorial without code"
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code), (
        "strip the outputs before committing (e.g. jupyter nbconvert --clear-output)"
    )
    assert notebook.cells[0].cell_type == "markdown", "start with a title and the why"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_executes(path: Path) -> None:
    nbclient = pytest.importorskip(
        "nbclient", reason="nbclient is not installed (pip install nbclient ipykernel)"
    )
    pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install ipykernel)")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=SECONDS_PER_NOTEBOOK,
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error

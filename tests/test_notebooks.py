"""The Colab notebooks: built from colab/src, stored without outputs, and
(with NEUROLITE_RUN_NOTEBOOKS=1) executed end to end at small settings."""

import os
import pathlib

import keras
import nbformat
import pytest
from conftest import load_script

REPO = pathlib.Path(__file__).resolve().parent.parent
COLAB = REPO / "colab"
NOTEBOOKS = sorted(path.stem for path in (COLAB / "src").glob("*.py"))


def _builder():
    return load_script(COLAB / "build_notebooks.py")


def test_every_topic_has_a_notebook():
    # Quick start, backends, QAT and LiteRT, memory/routing/rules.
    assert len(NOTEBOOKS) == 4, NOTEBOOKS
    for name in NOTEBOOKS:
        assert (COLAB / f"{name}.ipynb").is_file(), name


def test_notebooks_are_up_to_date_with_their_sources():
    assert _builder().main(["--check"]) == 0


def test_split_cells_reads_the_percent_format():
    cells = _builder().split_cells(
        "# ruff: noqa\n# %% [markdown]\n# # Title\n#\n# text\n"
        "# %%\nx = 1\n\n# %%\n# a comment\ny = 2\n"
    )
    assert cells == [
        ("markdown", "# Title\n\ntext"),
        ("code", "x = 1"),
        ("code", "# a comment\ny = 2"),
    ]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_opens_with_colab_badge_and_install_cell(name):
    notebook = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
    nbformat.validate(notebook)
    first = notebook.cells[0]
    assert first.cell_type == "markdown"
    assert first.source.startswith("[![Open In Colab]")
    assert _builder().colab_url(name) in first.source
    install = notebook.cells[1]
    assert install.cell_type == "code"
    assert (
        "pip" in install.source and "NEUROLITE_SKIP_INSTALL" in install.source
    )
    code = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert "NEUROLITE_SMALL" in code
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, name


@pytest.mark.notebooks
@pytest.mark.skipif(
    os.environ.get("NEUROLITE_RUN_NOTEBOOKS") != "1",
    reason="executing notebooks takes minutes: set NEUROLITE_RUN_NOTEBOOKS=1",
)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_end_to_end(name, tmp_path, monkeypatch, data_dir):
    from nbclient import NotebookClient

    # The kernel inherits this environment: small settings, no pip, the
    # local data and this checkout.
    monkeypatch.setenv("NEUROLITE_SMALL", "1")
    monkeypatch.setenv("NEUROLITE_SKIP_INSTALL", "1")
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p
        ),
    )
    notebook = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors

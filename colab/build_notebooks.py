"""Builds the Colab notebooks `colab/*.ipynb` from `colab/src/*.py`.

The sources are plain Python in the percent format: `# %%` starts a code
cell, `# %% [markdown]` a prose cell whose lines are comments. They lint
and diff like code; the notebooks are generated, stored without outputs.

    python colab/build_notebooks.py           # write the notebooks
    python colab/build_notebooks.py --check   # fail if one is out of date

Each notebook opens with an "Open in Colab" badge pointing at
`colab.research.google.com/github/<OWNER>/<REPOSITORY>/blob/main/colab/`;
`neurolite/neurolite-keras` is a placeholder for the repository the kit is
published under: change `OWNER` and `REPOSITORY` here and rebuild.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

import nbformat

OWNER = "neurolite"
REPOSITORY = "neurolite-keras"
FOLDER = Path(__file__).resolve().parent
SOURCES = FOLDER / "src"
BADGE = (
    "[![Open In Colab](https://colab.research.google.com/assets/"
    "colab-badge.svg)](https://colab.research.google.com/github/"
    "{owner}/{repository}/blob/main/colab/{name}.ipynb)"
)
MARKDOWN = "# %% [markdown]"
CODE = "# %%"


def colab_url(name):
    return (
        f"https://colab.research.google.com/github/{OWNER}/{REPOSITORY}"
        f"/blob/main/colab/{name}.ipynb"
    )


def split_cells(text):
    """(kind, source) pairs of a percent-format file."""
    cells, kind, lines = [], None, []

    def flush():
        body = "\n".join(lines).strip("\n")
        if kind is not None and body:
            cells.append((kind, body))

    for line in text.splitlines():
        if line.strip() == MARKDOWN:
            flush()
            kind, lines = "markdown", []
        elif line.strip() == CODE or line.startswith(CODE + " "):
            flush()
            kind, lines = "code", []
        elif kind == "markdown":
            if line.strip() and not line.startswith("#"):
                raise ValueError(
                    f"A markdown cell line must be a comment: {line!r}"
                )
            lines.append(line[2:] if line.startswith("# ") else line[1:])
        elif kind == "code":
            lines.append(line)
    flush()
    return cells


def build(source):
    """The notebook of one source file, badge first, no outputs."""
    name = source.stem
    cells = split_cells(source.read_text(encoding="utf-8"))
    if not cells or cells[0][0] != "markdown":
        raise ValueError(f"{source} must open with a markdown cell.")
    notebook = nbformat.v4.new_notebook()
    notebook.metadata = {
        "colab": {"name": f"{name}.ipynb", "provenance": []},
        "kernelspec": {
            "display_name": "Python 3",
            "language": "python",
            "name": "python3",
        },
        "language_info": {"name": "python"},
    }
    badge = BADGE.format(owner=OWNER, repository=REPOSITORY, name=name)
    for index, (kind, body) in enumerate(cells):
        if index == 0:
            body = f"{badge}\n\n{body}"
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(body)
        else:
            cell = nbformat.v4.new_code_cell(body)
        # Stable ids keep regenerated notebooks byte-identical.
        cell["id"] = f"{name[:20]}-{index:02d}"
        notebook.cells.append(cell)
    nbformat.validate(notebook)
    return nbformat.writes(notebook) + "\n"


def _write_atomically(path, text):
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check that the notebooks are up to date",
    )
    args = parser.parse_args(argv)
    stale = []
    for source in sorted(SOURCES.glob("*.py")):
        target = FOLDER / f"{source.stem}.ipynb"
        text = build(source)
        current = (
            target.read_text(encoding="utf-8") if target.exists() else None
        )
        if current == text:
            continue
        if args.check:
            stale.append(target.name)
        else:
            _write_atomically(target, text)
            print(f"wrote {target}")
    if stale:
        print(
            f"out of date (run python colab/build_notebooks.py): "
            f"{', '.join(stale)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

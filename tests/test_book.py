"""The book: it builds with warnings as errors, and its chapters follow the rules."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, toc_notebooks

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
REPO_PATH = REPO_URL.split("github.com/")[1]  # owner/name


def _notebook(path):
    return json.loads(Path(path).read_text())


def _code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]


def test_every_notebook_is_a_chapter_in_the_toc():
    listed = {p.resolve() for p in toc_notebooks()}
    on_disk = {p.resolve() for p in (ROOT / "book").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts}
    assert on_disk - listed == set(), "notebooks missing from _toc.yml"
    assert listed, "the book has no notebook at all"


@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_chapter_is_stored_with_outputs_and_starts_with_the_setup(path):
    nb = _notebook(path)
    cells = _code_cells(nb)
    assert any(c.get("outputs") for c in cells), f"{path.name} has no stored outputs"
    assert all(c.get("execution_count") for c in cells), f"{path.name} has cells that were never run"
    counts = [c["execution_count"] for c in cells]
    assert counts == sorted(counts), f"{path.name} was not run top to bottom: {counts}"
    assert "setup_notebook(" in "".join(cells[0]["source"]), "the first code cell must call setup_notebook()"
    first = "".join(nb["cells"][0]["source"])
    badge = f"https://colab.research.google.com/github/{REPO_PATH}/blob/main/{path.relative_to(ROOT).as_posix()}"
    assert badge in first, f"{path.name} must open with a Colab badge linking to {badge}"


def test_repository_url_is_written_in_one_place():
    """Every link to the repository agrees with `repository.url` in _config.yml."""
    files = [ROOT / "README.md", ROOT / "pyproject.toml", *toc_notebooks()]
    pattern = re.compile(r"github(?:\.com)?/([\w.-]+/[\w.-]+?)(?:\.git)?(?=[/\"'\s)]|$)")
    found = set()
    for path in files:
        for match in pattern.finditer(path.read_text()):
            found.add(match.group(1))
    assert found <= {REPO_PATH}, f"links to other repositories than {REPO_URL}: {found - {REPO_PATH}}"


def test_book_builds_without_warnings(tmp_path):
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    if not jupyter_book.exists():
        pytest.skip(f"Jupyter Book is the `book` extra: {jupyter_book} is missing (pip install '.[book]')")
    result = subprocess.run(
        [str(jupyter_book), "build", str(ROOT), "--path-output", str(tmp_path),
         "--warningiserror", "--keep-going"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    html = tmp_path / "_build" / "html"
    for path in toc_notebooks():
        page = html / path.relative_to(ROOT).with_suffix(".html")
        assert page.exists(), f"{page} was not built"
    intro = (html / "book" / "intro.html").read_text()
    assert "colab.research.google.com/github/" + REPO_PATH in intro  # launch button
    assert "Siarohin" in intro  # the citation resolved against references.bib
    assert "largest change under the identity grid" in intro  # stored outputs are rendered
    assert 'class="math' in intro or "\\(" in intro  # MyST math reached the page


# Runs a notebook as Jupyter or Colab would and prints the text of its stderr outputs as JSON.
STDERR_SCRIPT = """
import json, sys
import nbclient, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                        resources={"metadata": {"path": sys.argv[2]}}).execute()
print(json.dumps([out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                  for out in cell.outputs if out.get("name") == "stderr"]))
"""


def _stderr_outside_pytest(path, cwd):
    """What a notebook prints to stderr, file-descriptor writes (C++ logs) included.

    A kernel started under pytest, as nbval starts them, sees PYTEST_CURRENT_TEST and
    then leaves file descriptors 1 and 2 alone, so C++ logs never reach a cell there.
    """
    pytest.importorskip("nbclient", reason="nbclient is in the `test` extra: pip install '.[test]'")
    env = {key: value for key, value in os.environ.items() if key != "PYTEST_CURRENT_TEST"}
    result = subprocess.run([sys.executable, "-c", STDERR_SCRIPT, str(path), str(cwd)], env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_stderr_check_sees_file_descriptor_writes(tmp_path):
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None,
                     "source": "import os\nos.write(2, b'written to fd 2\\n')"}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "fd.ipynb"
    path.write_text(json.dumps(nb))
    assert "written to fd 2" in "".join(_stderr_outside_pytest(path, tmp_path))


def test_the_intro_prints_nothing_to_stderr_outside_pytest(tmp_path):
    """No TensorFlow notice reaches a chapter (e.g. `failed call to cuInit` from the full
    `tensorflow` package on a CPU-only machine, as on Colab's CPU runtime)."""
    assert _stderr_outside_pytest(ROOT / "book" / "intro.ipynb", tmp_path) == []

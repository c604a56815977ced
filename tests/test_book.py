"""The book: it builds with warnings as errors, and its chapters follow the rules."""

import json
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
    result = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT), "--path-output", str(tmp_path),
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

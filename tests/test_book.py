"""The book: it builds with warnings as errors, and its chapters follow the rules."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, toc_notebooks

CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO_URL = CONFIG["repository"]["url"].rstrip("/")
REPO_PATH = REPO_URL.split("github.com/")[1]  # owner/name
ORIGINAL_PATH = "AliaksandrSiarohin/first-order-model"  # the original FOMM code, which chapters cite


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
    allowed = {REPO_PATH, ORIGINAL_PATH}
    assert found <= allowed, f"links to other repositories than {REPO_URL} and the original: {found - allowed}"


def test_book_builds_without_warnings(built_book):
    result, html = built_book
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    for path in toc_notebooks():
        page = html / path.relative_to(ROOT).with_suffix(".html")
        assert page.exists(), f"{page} was not built"
    intro = (html / "book" / "intro.html").read_text()
    assert "colab.research.google.com/github/" + REPO_PATH in intro  # launch button
    assert "Siarohin" in intro  # the citation resolved against references.bib
    assert "largest change under the identity grid" in intro  # stored outputs are rendered
    assert 'class="math' in intro or "\\(" in intro  # MyST math reached the page
    # The book works offline: MathJax is served from the site, not from a CDN.
    assert (html / "_static" / "mathjax" / "tex-chtml.js").exists(), "MathJax was not copied into _static"
    for path in toc_notebooks():
        page = (html / path.relative_to(ROOT).with_suffix(".html")).read_text()
        assert "_static/mathjax/tex-chtml.js" in page and "cdn.jsdelivr.net/npm/mathjax" not in page, path.name
    # Chapters link into the API reference (nitpicky: a link to a missing entry fails the build).
    for name in ("01_optical_flow", "02_taylor_series", "03_bilinear_interpolation", "04_warping", "intro"):
        page = (html / "book" / f"{name}.html").read_text()
        assert re.search(r'href="api/[a-z_]+\.html#fomm_lessons\.', page), f"{name} links to no API entry"
    grid_sample = (html / "book" / "api" / "geometry.html").read_text()
    assert 'id="fomm_lessons.sampling.grid_sample"' in grid_sample  # autodoc rendered the docstrings


CODE_COLUMNS = 88  # what a code cell shows at 1280 px without scrolling (tests/test_browser.py measures it)


@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_code_lines_fit_the_column(path):
    long = [f"cell {k}: {len(line)} characters: {line[:60]}..."
            for k, cell in enumerate(_notebook(path)["cells"]) if cell["cell_type"] == "code"
            for line in "".join(cell["source"]).splitlines() if len(line) > CODE_COLUMNS]
    assert not long, f"{path.name}: code lines longer than {CODE_COLUMNS} characters:\n" + "\n".join(long)


WIDGET = "application/vnd.jupyter.widget-view+json"
# Chapters re-executed since widget cells hide their output in the book; the others follow when re-run.
WIDGETS_HIDDEN = ["01_optical_flow.ipynb", "02_taylor_series.ipynb", "03_bilinear_interpolation.ipynb",
                  "04_warping.ipynb"]


@pytest.mark.parametrize("name", WIDGETS_HIDDEN)
def test_widget_cells_hide_their_output_behind_a_static_figure(name):
    """The book has no kernel: a widget's output would show as ``interactive(children=...``.

    Each widget cell is tagged ``remove-output``, and the chapter shows a static figure
    (a PNG output) in the cell before or after it.
    """
    cells = _notebook(ROOT / "book" / name)["cells"]
    code = [k for k, c in enumerate(cells) if c["cell_type"] == "code"]
    widgets = [k for k in code if any(WIDGET in o.get("data", {}) for o in cells[k].get("outputs", []))]
    assert widgets, f"{name}: no widget output found (is the chapter stored with outputs?)"

    def has_figure(k):
        return any("image/png" in o.get("data", {}) for o in cells[k].get("outputs", []))

    for k in widgets:
        tags = cells[k]["metadata"].get("tags", [])
        assert "remove-output" in tags, f"{name}, cell {k}: a widget cell without the tag remove-output"
        position = code.index(k)
        neighbours = code[max(position - 1, 0):position] + code[position + 1:position + 2]
        assert any(has_figure(j) for j in neighbours), f"{name}, cell {k}: no static figure beside the widget"


def _exercise_blocks(nb):
    """Exercises and gated solutions of a notebook: ({label: cell index}, [(label, options, cells)])."""
    exercises, solutions, open_solution = {}, [], None
    for k, cell in enumerate(nb["cells"]):
        text = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            for match in re.finditer(r"^(`{3,})\{exercise\}.*\n((?::[\w-]+:.*\n)*)", text, re.M):
                label = re.search(r"^:label:\s*(\S+)", match[2], re.M)
                assert label, f"cell {k}: an exercise without a :label:"
                exercises[label[1]] = k
            start = re.search(r"^`{3,}\{solution-start\}\s*(\S+)\n((?::[\w-]+:.*\n)*)", text, re.M)
            if start:
                assert open_solution is None, f"cell {k}: a solution starts inside another one"
                open_solution = (start[1], start[2], [])
            if re.search(r"^`{3,}\{solution-end\}", text, re.M):
                assert open_solution is not None, f"cell {k}: a solution-end without a solution-start"
                solutions.append(open_solution)
                open_solution = None
            assert "{solution}" not in text, f"cell {k}: use solution-start/-end, so the solution's code runs"
        elif open_solution is not None:
            open_solution[2].append(k)
    assert open_solution is None, f"solution {open_solution[0]} has no solution-end"
    return exercises, solutions


@pytest.mark.parametrize("path", toc_notebooks(), ids=lambda p: p.name)
def test_solutions_are_hidden_dropdowns_whose_code_runs(path):
    """One mechanism for every exercise (README, "Writing a chapter"): sphinx-exercise.

    Each ``{exercise}`` has a label and exactly one gated solution after it
    (``{solution-start} label`` with ``:class: dropdown`` ... ``{solution-end}``)
    holding at least one code cell, which nbval runs like any other cell: no
    tag may hide it from the reader's click or skip it. Everything below an
    "Exercises" heading is an exercise or a solution.
    """
    nb = _notebook(path)
    exercises, solutions = _exercise_blocks(nb)
    labels = [label for label, _, _ in solutions]
    assert sorted(labels) == sorted(exercises), f"exercises {sorted(exercises)} but solutions {labels}"
    cells_in_solutions = set()
    for label, options, cells in solutions:
        assert re.search(r"^:class:\s*dropdown\s*$", options, re.M), f"solution {label} is not a dropdown"
        code = [k for k in cells if nb["cells"][k]["cell_type"] == "code"]
        assert code, f"solution {label} has no code cell"
        assert min(cells) > exercises[label], f"solution {label} comes before its exercise"
        for k in code:
            tags = set(nb["cells"][k]["metadata"].get("tags", []))
            hiding = {t for t in tags if t.startswith(("hide-", "remove-")) or t in {"skip-execution", "nbval-skip"}}
            assert not hiding, f"solution {label}, cell {k}: tags {hiding} (the dropdown is the only fold)"
        cells_in_solutions.update(cells)
    heading = next((k for k, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"
                    and re.search(r"^#+\s*Exercises\s*$", "".join(c["source"]), re.M)), None)
    if heading is not None:
        loose = [k for k in range(heading, len(nb["cells"])) if nb["cells"][k]["cell_type"] == "code"
                 and k not in cells_in_solutions]
        assert not loose, f"code cells {loose} below the Exercises heading are not inside a solution"
    else:
        assert not exercises, "exercises belong under an 'Exercises' heading"
    for k, cell in enumerate(nb["cells"]):  # the old mechanism: a folded code cell
        if cell["cell_type"] == "code" and k not in cells_in_solutions:
            text = "".join(cell["source"]).lstrip()
            assert not text.lower().startswith("# solution"), f"cell {k} is a solution outside the mechanism"


def test_exercise_extension_is_configured():
    extensions = CONFIG["sphinx"]["extra_extensions"]
    assert "sphinx_exercise" in extensions and "sphinx-mathjax-offline" in extensions


def test_api_reference_documents_every_module():
    """Every module of fomm_lessons has an automodule entry in book/api/, and every API page is in the toc."""
    import pkgutil

    import fomm_lessons

    modules = {"fomm_lessons"} | {m.name for m in pkgutil.walk_packages(fomm_lessons.__path__, "fomm_lessons.")}
    pages = sorted((ROOT / "book" / "api").glob("*.md"))
    documented = {m for p in pages for m in re.findall(r"^\.\. automodule:: (\S+)", p.read_text(), re.M)}
    assert modules - documented == set(), f"modules missing from book/api/*.md: {sorted(modules - documented)}"
    assert documented - modules == set(), f"book/api/ documents modules that do not exist: {documented - modules}"
    toc = (ROOT / "_toc.yml").read_text()
    for page in pages:
        assert f"book/api/{page.stem}\n" in toc, f"{page.name} is not in _toc.yml"



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


# ---------------------------------------------------------------------------
# nbval's cell timeout (issue 21, item 14)
# ---------------------------------------------------------------------------

def _make_variable(name, *assignments):
    """The value GNU make gives ``$(name)`` in the repository's Makefile (envs.mk included)."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("GNU make is not installed")
    result = subprocess.run([make, "-s", "--no-print-directory", "--eval", f"print-it: ; @echo $({name})",
                             "print-it", *assignments], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_every_nbval_run_of_the_makefiles_has_the_cell_timeout():
    """Every recipe that runs nbval passes $(NBVAL) or $(NBVAL_TIMED), and neither is without the timeout:
    nbval's default waits 2000 s for a cell, and as long for a kernel that has died."""
    text = "\n".join((ROOT / name).read_text().replace("\\\n", " ") for name in ("Makefile", "envs.mk"))
    runs = [line for line in text.splitlines() if "nbval" in line.lower() and not line.lstrip().startswith("#")
            and not re.match(r"NBVAL\w* \??=", line)]
    assert len(runs) == 2, runs  # test-chapters, test-colab
    assert all("$(NBVAL)" in line or "$(NBVAL_TIMED)" in line for line in runs), runs
    assert not [line for line in runs if re.search(r"--nbval(\s|$)", line)], runs
    for name in ("NBVAL", "NBVAL_TIMED"):
        flags = _make_variable(name)
        timeouts = [flag for flag in flags if flag.startswith("--nbval-cell-timeout=")]
        assert len(timeouts) == 1, flags
        assert 300 <= int(timeouts[0].split("=")[1]) <= 1200, timeouts


DEAD_KERNEL_CELLS = ["print('before')", "import os\nos.kill(os.getpid(), 9)", "print('after')"]


def test_a_dead_kernel_fails_its_cell_at_the_makefiles_timeout(tmp_path):
    """A kernel that dies (a crash in TensorFlow, say) fails its cell once $(NBVAL)'s timeout
    has passed, here set to 5 s, and the notebook's later cells at once, instead of hanging."""
    pytest.importorskip("nbval", reason="nbval is in the `test` extra: pip install '.[test]'")
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": s}
                    for s in DEAD_KERNEL_CELLS],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "dead.ipynb").write_text(json.dumps(nb))
    flags = _make_variable("NBVAL", "NBVAL_CELL_TIMEOUT=5")
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist",
               f"--rootdir={tmp_path}", *flags, "--nbval-lax", "dead.ipynb"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "Timeout of 5 seconds exceeded while executing cell" in result.stdout, result.stdout[-3000:]
    assert "1 failed, 1 passed" in result.stdout, result.stdout[-3000:]


ANY_MODEL = "whatever the model"  # the comment that marks an assertion true for any weights


def _asserts_outside_guards(tree):
    """Line numbers of the ``assert`` statements not under ``if NAME == "sample-64":`` or in a function."""
    found = []

    def visit(node, guarded):
        if isinstance(node, ast.Assert) and not guarded:
            found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            inside = guarded or isinstance(node, (ast.FunctionDef, ast.Lambda)) or (
                isinstance(node, ast.If) and child in node.body and "sample-64" in ast.unparse(node.test))
            visit(child, inside)

    visit(tree, False)
    return found


def test_chapter_11_asserts_only_what_holds_for_any_model():
    """Run all with vox-256 (Colab's USE_VOX) must not stop at a claim about what sample-64 learnt:
    such claims go through check() or sit under `if NAME == "sample-64":`; a bare assert says why
    it holds for any weights."""
    bare = []
    for cell in _code_cells(_notebook(ROOT / "book" / "11_animating_a_face.ipynb")):
        source = "".join(cell["source"])
        lines = source.splitlines()
        bare += [f"{cell['id']}: {lines[n - 1].strip()}" for n in _asserts_outside_guards(ast.parse(source))
                 if ANY_MODEL not in lines[n - 1]]
    assert not bare, ("chapter 11: asserts about a model's results outside check() or a sample-64 guard "
                      f"(or without '# ... {ANY_MODEL}'):\n" + "\n".join(bare))

"""Shared pytest set-up for ``tests/`` and for ``pytest --nbval`` over the book.

* TensorFlow is quietened before anything imports it, and notebook kernels
  (child processes) inherit the same environment.
* Matplotlib's font cache is built here, once, so that a fresh machine's
  "building the font cache" notice never lands in a notebook's output.
* triton, when installed (with PyPI's CUDA torch), is imported before TensorFlow.
* Only the notebooks listed in ``_toc.yml`` are collected by nbval.
* ``shared_dir``/``parity`` fixtures read ``../shared`` and skip with a reason
  when it is absent.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# PyPI's torch for Linux is a CUDA build that brings triton, which torch loads lazily (the
# first torch.optim optimiser, say). TensorFlow >= 2.20 puts its own LLVM into the global
# symbol table, and triton loaded after it segfaults; loaded before it, both work.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
os.environ.setdefault("PYTHONHASHSEED", "0")

ROOT = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("FOMM_SHARED_DIR", ROOT.parent / "shared"))
PARITY_DIR = SHARED / "fomm-parity"


def toc_notebooks(root=ROOT):
    """Paths of the notebooks that ``_toc.yml`` lists (the book's chapters)."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    files = []

    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if key in node:
                    files.append(node[key])
            for value in node.values():
                if isinstance(value, (list, dict)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    return [root / f"{name}.ipynb" for name in files if (root / f"{name}.ipynb").exists()]


def pytest_configure(config):
    try:
        import matplotlib.font_manager  # noqa: F401  (builds the font cache once)
    except ImportError:  # the legacy tfa environment has no matplotlib
        pass


def pytest_ignore_collect(collection_path, config):
    path = Path(collection_path)
    if path.suffix == ".ipynb":
        if ".ipynb_checkpoints" in path.parts or "_build" in path.parts:
            return True
        if os.environ.get("FOMM_NBVAL_ALL"):  # a chapter in progress, not yet in _toc.yml
            return None
        return path.resolve() not in {p.resolve() for p in toc_notebooks()}
    if path.name in {".venv", ".venv-legacy", "_build"}:
        return True
    return None


@pytest.fixture(scope="session")
def shared_dir():
    if not SHARED.is_dir():
        pytest.skip(f"../shared not found at {SHARED} (set FOMM_SHARED_DIR to point at it)")
    return SHARED


@pytest.fixture(scope="session")
def parity_json():
    path = PARITY_DIR / "parity-128.json"
    if not path.exists():
        pytest.skip(f"parity fixtures not found: {path} is missing (they live in ../shared/fomm-parity)")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def parity():
    """The arrays of ``parity-128.npz`` as a dict of NumPy arrays."""
    import numpy as np

    path = PARITY_DIR / "parity-128.npz"
    if not path.exists():
        pytest.skip(f"parity fixtures not found: {path} is missing (they live in ../shared/fomm-parity)")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="session")
def built_book(tmp_path_factory):
    """The book built once per test run, as `make book` builds it, for every test that reads it.

    Returns ``(result, html)``: the ``jupyter-book build`` process that ran (``returncode``,
    ``stdout``, ``stderr``) and the html folder. Under pytest-xdist the workers share one build:
    the first to ask builds it under a lock, the others wait and read it. Skips when Jupyter Book
    (the ``book`` extra) is not installed.
    """
    import fcntl
    import types

    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    if not jupyter_book.exists():
        pytest.skip(f"Jupyter Book is the `book` extra: {jupyter_book} is missing (pip install '.[book]')")
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the folder all workers' temporary folders share
    out, record = base / "book-build", base / "book-build.json"
    with open(base / "book-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            result = subprocess.run(
                [str(jupyter_book), "build", str(ROOT), "--path-output", str(out),
                 "--warningiserror", "--keep-going"],
                capture_output=True, text=True, timeout=900,
            )
            record.write_text(json.dumps({"returncode": result.returncode, "stdout": result.stdout,
                                          "stderr": result.stderr}))
    return types.SimpleNamespace(**json.loads(record.read_text())), out / "_build" / "html"


@pytest.fixture(scope="module")
def cpu64_models():
    """The networks of the built-in ``cpu-64`` config with seeded random weights, no discriminator."""
    import keras

    from fomm_lessons.checkpoint import build_models
    from fomm_lessons.config import load_config

    keras.utils.set_random_seed(0)
    return build_models(load_config("cpu-64")["model_params"], discriminator=False)


@pytest.fixture(scope="session")
def sample_new_motions(tmp_path_factory):
    """The offline sample set's training images and unseen face (``extended``) along motions of
    another seed (1; the shipped sample models trained on seed 0), one video per image."""
    from fomm_lessons.data.sample import make_sample_dataset

    root = tmp_path_factory.mktemp("sample-64-eval")
    return make_sample_dataset(root, size=64, seed=1, identities="extended", videos_per_identity=1)

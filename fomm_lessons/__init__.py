"""fomm_lessons: the First Order Motion Model for Image Animation, in TensorFlow.

Submodules are imported on first use (``fomm_lessons.sampling`` and so on), so
that ``import fomm_lessons`` is cheap and :func:`setup_notebook` can quieten
TensorFlow before TensorFlow is imported.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = {
    "sampling", "blocks", "config", "keypoint_detector", "dense_motion", "generator",
    "discriminator", "perceptual", "losses", "checkpoint", "data", "training",
    "animate", "evaluate", "viz", "notebook", "bench", "cli", "torchfile", "gpu_suite",
    "pretrained", "download", "pyramid", "tps", "torchpickle", "registry", "distribute", "budget",
    "run_folder", "train_command",
}


def setup_notebook(seed=0, deterministic=True):
    """Quiet TensorFlow, seed Python/NumPy/TF and make ops deterministic (call first)."""
    from fomm_lessons.notebook import setup_notebook as _setup

    return _setup(seed=seed, deterministic=deterministic)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"fomm_lessons.{name}")
    raise AttributeError(f"module 'fomm_lessons' has no attribute {name!r}")

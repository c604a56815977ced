"""The set-up helper every chapter calls first: quiet, seeded, deterministic."""

import contextlib
import os
import random
import sys
import warnings


@contextlib.contextmanager
def _stderr_silenced():
    """Send file descriptor 2 to /dev/null (C++ logs bypass ``sys.stderr``)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (some embedded interpreters)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly():
    """Import TensorFlow without its start-up notices and return it.

    ``TF_CPP_MIN_LOG_LEVEL=2`` hides most C++ logs, but the oneDNN notice and
    the absl pre-initialisation warning are printed at import regardless, so
    the import runs with file descriptor 2 pointed at /dev/null. oneDNN itself
    stays on (turning it off makes CPU training about twice as slow).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with _stderr_silenced():
        import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    return tf


def setup_notebook(seed=0, deterministic=True):
    """Quiet TensorFlow, seed Python, NumPy and TensorFlow, and make ops deterministic.

    Call it before anything else in a chapter so that its stored outputs are
    reproduced exactly by ``pytest --nbval``.
    """
    tf = import_tensorflow_quietly()
    import keras
    import numpy as np

    warnings.filterwarnings("ignore", module="keras")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)  # Python, NumPy and TensorFlow together
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    np.set_printoptions(precision=4, suppress=True)

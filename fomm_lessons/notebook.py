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
    the absl pre-initialisation warning are printed at import regardless, and
    the full ``tensorflow`` package on a machine without a GPU driver (Colab's
    CPU runtime) logs ``failed call to cuInit ... CUDA error`` when the devices
    are first listed, which the first operation does. So the import and a first
    listing of the devices run with file descriptor 2 pointed at /dev/null;
    ``tf.config.list_physical_devices("GPU")`` still says whether a GPU is there.
    oneDNN itself stays on (turning it off makes CPU training about twice as slow).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()  # loads the GPU platforms: cuInit happens here
    tf.get_logger().setLevel("ERROR")
    return tf


def setup_notebook(seed=0, deterministic=True):
    """Quiet TensorFlow, seed Python, NumPy and TensorFlow, and make ops deterministic.

    Call it before anything else in a chapter so that its stored outputs are
    reproduced exactly by ``pytest --nbval``. It runs one tiny XLA-compiled
    function with stderr silenced: XLA logs its start-up once a process, at the
    first compiled call, and TensorFlow 2.16 does so whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says. That call initialises the devices, so set up
    any (memory growth, logical devices) before calling this.
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
    with _stderr_silenced():
        tf.function(lambda x: x + 1.0, jit_compile=True)(tf.zeros([]))

"""The PyTorch oracle runs next to TensorFlow in one test process, whichever torch build is installed."""

import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import ROOT

# What the test process does: conftest first, then TensorFlow (collection), then an optimiser
# (torch loads triton there when it has it, as in tests/test_torchfile.py).
ORDER = """
import conftest
import tensorflow as tf
import torch
torch.optim.Adam([torch.zeros(2, requires_grad=True)], lr=1e-3)
print(float(tf.reduce_sum(tf.ones(2))), torch.__version__)
"""


def test_torch_optimiser_after_tensorflow_in_the_order_of_the_tests():
    pytest.importorskip("torch", reason="PyTorch is the optional oracle: pip install -e '.[oracle]'")
    if importlib.util.find_spec("triton") is None:
        pytest.skip("this torch build has no triton (the CPU build), so nothing can clash with TensorFlow")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", ORDER], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert result.stdout.split()[0] == "2.0"

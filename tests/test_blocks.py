"""The convolutional blocks against PyTorch's own layers (conv, batch norm, pooling, nearest upsampling)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from fomm_lessons.blocks import DownBlock2d, Hourglass, ResBlock2d, SameBlock2d, UpBlock2d
from fomm_lessons.checkpoint import load_torch_state, torch_state_shapes

TORCH_REASON = "PyTorch is the optional oracle: pip install -e '.[oracle]'"


def nchw(array):
    return np.ascontiguousarray(np.transpose(array, (0, 3, 1, 2)))


def nhwc(array):
    return np.transpose(array, (0, 2, 3, 1))


def torch_reference(torch, kind, in_features, out_features, kernel_size=3):
    """The original block written with plain PyTorch layers, named as the original names them."""
    nn, F = torch.nn, torch.nn.functional
    pad = kernel_size // 2

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            if kind == "res":
                self.conv1 = nn.Conv2d(in_features, in_features, kernel_size, padding=pad)
                self.conv2 = nn.Conv2d(in_features, in_features, kernel_size, padding=pad)
                self.norm1, self.norm2 = nn.BatchNorm2d(in_features), nn.BatchNorm2d(in_features)
            else:
                self.conv = nn.Conv2d(in_features, out_features, kernel_size, padding=pad)
                self.norm = nn.BatchNorm2d(out_features)

        def forward(self, x):
            if kind == "res":
                out = self.conv1(F.relu(self.norm1(x)))
                return self.conv2(F.relu(self.norm2(out))) + x
            if kind == "up":
                x = F.interpolate(x, scale_factor=2)
            out = F.relu(self.norm(self.conv(x)))
            return F.avg_pool2d(out, 2) if kind == "down" else out

    block = Block()
    with torch.no_grad():  # non-trivial running statistics and affine parameters
        for module in block.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return block


KINDS = {
    "same": lambda: SameBlock2d(3, 5, kernel_size=7),
    "down": lambda: DownBlock2d(3, 5),
    "up": lambda: UpBlock2d(3, 5),
    "res": lambda: ResBlock2d(3),
}


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_block_matches_torch(kind, training):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    torch.manual_seed(0)
    reference = torch_reference(torch, kind, 3, 5, kernel_size=7 if kind == "same" else 3)
    block = KINDS[kind]()
    block.build()
    load_torch_state(block, {k: v.numpy() for k, v in reference.state_dict().items()}, kind)
    x = np.random.default_rng(0).normal(size=(2, 9, 11, 3)).astype(np.float32)  # odd sizes: pooling floors
    reference.train(training)
    expected = reference(torch.from_numpy(nchw(x))).detach().numpy()
    got = block(x, training=training).numpy()
    np.testing.assert_allclose(got, nhwc(expected), atol=1e-5)
    if training:  # PyTorch momentum 0.1 is Keras momentum 0.9 for the running mean
        norm = block.norm1 if kind == "res" else block.norm
        torch_norm = reference.norm1 if kind == "res" else reference.norm
        np.testing.assert_allclose(norm.moving_mean.numpy(), torch_norm.running_mean.numpy(), atol=1e-6)


def test_hourglass_shapes_and_state_names():
    hourglass = Hourglass(block_expansion=4, in_features=3, num_blocks=3, max_features=8)
    out = hourglass(tf.zeros([2, 16, 24, 3]))
    assert out.shape == (2, 16, 24, 4 + 3) and hourglass.out_filters == 7
    shapes = torch_state_shapes(hourglass)
    # widths min(max_features, block_expansion * 2^i) as in the original
    assert shapes["encoder.down_blocks.0.conv.weight"] == (8, 3, 3, 3)
    assert shapes["encoder.down_blocks.2.conv.weight"] == (8, 8, 3, 3)
    assert shapes["decoder.up_blocks.0.conv.weight"] == (8, 8, 3, 3)
    assert shapes["decoder.up_blocks.1.conv.weight"] == (8, 16, 3, 3)
    assert shapes["decoder.up_blocks.2.conv.weight"] == (4, 16, 3, 3)
    assert len(shapes) == 6 * 7  # conv weight, bias + 5 batch-norm entries per block


def test_conv_initialisation_bound_is_torch_default():
    block = DownBlock2d(16, 256)  # enough biases that the largest nears the bound
    block.build()
    bound = 1 / np.sqrt(16 * 9)
    for weight in (block.conv.kernel.numpy(), block.conv.bias.numpy()):
        assert np.abs(weight).max() <= bound and np.abs(weight).max() > 0.8 * bound


SYNC_SCRIPT = """
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from fomm_lessons.blocks import batch_norm
x = np.random.default_rng(0).normal(3.0, 2.0, size=(4, 5, 6, 3)).astype(np.float32)
single = batch_norm()
single.build((None, None, None, 3))
expected = single(x, training=True).numpy()
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    norm = batch_norm()
    norm.build((None, None, None, 3))
halves = strategy.experimental_distribute_values_from_function(
    lambda ctx: x[2 * ctx.replica_id_in_sync_group: 2 * ctx.replica_id_in_sync_group + 2])
out = strategy.run(tf.function(lambda t: norm(t, training=True)), args=(halves,))
got = np.concatenate([o.numpy() for o in strategy.experimental_local_results(out)])
print(np.abs(got - expected).max(), np.abs(norm.moving_mean.numpy() - single.moving_mean.numpy()).max(),
      np.abs(norm.moving_variance.numpy() - single.moving_variance.numpy()).max())
"""


def test_batch_norm_synchronised_over_two_replicas_equals_one_replica():
    """Two CPU replicas, each with half the batch, normalise and update as one replica with all of it."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", SYNC_SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    differences = [float(v) for v in result.stdout.split()[-3:]]
    assert max(differences) < 1e-5, differences


def test_batch_norm_training_step_against_numpy():
    """One training call normalises with the biased batch variance and moves the running
    variance towards the unbiased one (PyTorch's rule), checked with NumPy, no oracle needed."""
    from fomm_lessons.blocks import batch_norm

    x = np.random.default_rng(1).normal(2.0, 3.0, size=(2, 4, 5, 3)).astype(np.float32)
    norm = batch_norm()
    norm.build((None, None, None, 3))
    got = norm(x, training=True).numpy()
    mean, variance, n = x.mean((0, 1, 2)), x.var((0, 1, 2)), 2 * 4 * 5
    np.testing.assert_allclose(got, (x - mean) / np.sqrt(variance + 1e-5), atol=1e-5)
    np.testing.assert_allclose(norm.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(norm.moving_variance.numpy(), 0.9 + 0.1 * variance * n / (n - 1), rtol=1e-5)


def test_batch_norm_refuses_renorm_and_its_config_round_trips():
    """Batch renormalisation (a Keras 3.14 option) has no PyTorch counterpart: refused by name."""
    from fomm_lessons.blocks import BatchNorm2d, batch_norm

    with pytest.raises(ValueError, match="renorm=True"):
        BatchNorm2d(renorm=True)
    norm = batch_norm()
    copy = BatchNorm2d.from_config(norm.get_config())
    assert (copy.momentum, copy.epsilon, copy.synchronized) == (0.9, 1e-5, True)

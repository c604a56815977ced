"""One training step on 2 logical CPU devices (MirroredStrategy) and on one device.

Run as a script (the logical devices must be set before TensorFlow starts)
with a config as JSON and a scratch folder. From the same weights and the
same global batch it prints, as one JSON line, both steps' losses, the
largest difference between their gradients, and the noise floor: how much
the one-device gradients move when the input changes by one part in 10^6.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
tf.config.experimental.enable_op_determinism()

from fomm_lessons.training import Trainer  # noqa: E402
from sgd_steps import use_sgd, weight_names  # noqa: E402


def steps_from(config, strategy, out, initial, batches):
    """One step from the same weights for each of ``batches``, all with one trace of the step.

    Returns the weights before, the weights after each step, each step's losses, and the names.
    """
    keras.utils.set_random_seed(0)  # the same random VGG19 in every run
    trainer = Trainer(config, out, strategy=strategy, xla=False, mixed_precision="off", vgg_weights="random")
    trainer.load_weights(initial) if initial else None
    use_sgd(trainer)  # a weight's change is its gradient
    weights = trainer.get_weights()
    step = trainer._compiled_step()
    afters, losses = [], []
    for batch in batches:
        trainer.load_weights(weights)
        for item in strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch)):
            values, _ = step(item)
        afters.append(trainer.get_weights())
        losses.append({k: float(v) for k, v in values.items()})
    return weights, afters, losses, weight_names(trainer)


def main():
    config = json.loads(sys.argv[1])
    out = sys.argv[2]
    rng = np.random.default_rng(0)
    size, batch_size = config["dataset_params"]["frame_shape"][0], config["train_params"]["batch_size"]
    points = config["train_params"]["transform_params"]["points_tps"]
    batch = {
        "source": rng.random((batch_size, size, size, 3), np.float32),
        "driving": rng.random((batch_size, size, size, 3), np.float32),
        "tps_theta": (np.eye(2, 3) + rng.normal(0, 0.05, (batch_size, 2, 3))).astype(np.float32),
        "tps_params": rng.normal(0, 0.005, (batch_size, points**2)).astype(np.float32),
    }
    # The noise floor: the same one-device step with the source frames changed by one part in a
    # million, about what a different order of float32 additions does to them.
    nudged = dict(batch, source=(batch["source"] * np.float32(1 + 1e-6)).astype(np.float32))
    initial, (single, noisy), (single_losses, _), names = steps_from(
        config, tf.distribute.get_strategy(), out + "/one", None, [batch, nudged])
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    _, (double,), (double_losses,), _ = steps_from(config, mirrored, out + "/two", initial, [batch])

    # With SGD at rate 1 a trainable variable's change is its gradient. Differences are measured
    # against the largest change in the same network (biases in front of a batch norm have zero
    # gradient); statistics (batch-norm running values, spectral-norm vectors) form their own group.
    changes = [np.abs(a - w).max() for a, w in zip(single, initial)]
    scale = {}
    for name, change in zip(names, changes):
        scale[name.split("/")[0]] = max(scale.get(name.split("/")[0], 0.0), change)

    def relative(other):
        return [float(np.abs(a - b).max() / scale[n.split("/")[0]]) for a, b, n in zip(single, other, names)]

    diffs, noise = relative(double), relative(noisy)
    worst = sorted(zip(diffs, names), reverse=True)[:5]
    print(json.dumps({"replicas": mirrored.num_replicas_in_sync, "max_weight_change": float(max(changes)),
                      "max_relative_difference": max(diffs), "noise_floor": max(noise), "worst": worst,
                      "losses_one": single_losses, "losses_two": double_losses}))


if __name__ == "__main__":
    main()

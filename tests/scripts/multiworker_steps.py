"""A few training steps on the real data path, as one worker of a cluster or as one process.

Run as a script: ``multiworker_steps.py MODE CONFIG_JSON DATA OUT STEPS``, MODE one of

* ``worker``: one worker of ``MultiWorkerMirroredStrategy`` (``TF_CONFIG`` says which);
* ``one``: one process on one device, then again with the source frames changed by
  one part in 10^6 (the model's own float32 noise floor, as in distributed_step.py).

The optimizers are plain SGD at rate 1, so a weight's change is its summed
gradient (Adam's first step, lr * sign(g), would turn float noise in a near-zero
gradient into a full +-lr difference). It writes ``OUT/<name>.npz``: the weights
before and after, and the losses of each step.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fomm_lessons.distribute import make_strategy  # noqa: E402
from sgd_steps import use_sgd, weight_names  # noqa: E402


def run(config, strategy, data, out, steps, nudges=(1.0,)):
    """``steps`` steps from the same weights for each factor in ``nudges`` (the source frames
    times it), with one trace of the step; the weights before, after each run, and the losses."""
    from fomm_lessons.data.loader import FramesDataset
    from fomm_lessons.training import Trainer

    keras.utils.set_random_seed(0)
    trainer = Trainer(config, out, strategy=strategy, xla=False, mixed_precision="off", vgg_weights="random")
    use_sgd(trainer)
    frames = FramesDataset.from_config(data, config["dataset_params"], "train")
    before = trainer.get_weights()
    step = trainer._compiled_step()
    afters, losses = [], []
    for nudge in nudges:  # SGD keeps no state but its step count: setting the weights back starts afresh
        trainer.load_weights(before)
        losses.append([])
        for index, batch in enumerate(trainer.epoch_dataset(frames, 0)):  # the same batches each time
            if index == steps:
                break
            if nudge != 1.0:
                batch = dict(batch, source=batch["source"] * np.float32(nudge))
            values, _ = step(batch)
            losses[-1].append({k: float(v) for k, v in values.items()})
        afters.append(trainer.get_weights())
    names = weight_names(trainer)
    trainer.close()
    return before, afters, losses, names


def save(path, before, after, losses, names):
    np.savez(path, *before, *after, losses=json.dumps(losses), names=json.dumps(names))


def main():
    mode, config, data, out, steps = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    tf.config.experimental.enable_op_determinism()
    if mode == "worker":
        strategy = make_strategy("multi-worker")  # before any other TensorFlow work
        index = strategy.cluster_resolver.task_id
        before, (after,), (losses,), names = run(config, strategy, data, out + f"/w{index}", steps)
        save(os.path.join(out, f"worker-{index}.npz"), before, after, losses, names)
    else:
        before, afters, losses, names = run(config, None, data, out + "/one", steps, nudges=(1.0, 1 + 1e-6))
        save(os.path.join(out, "one.npz"), before, afters[0], losses[0], names)
        save(os.path.join(out, "noise.npz"), before, afters[1], losses[1], names)
    print(f"done {mode}", flush=True)


if __name__ == "__main__":
    main()

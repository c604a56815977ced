"""Training as the original does it (its ``train.py``), on one device or many.

A step is a generator + keypoint-detector update on ``generator_losses``,
then, when the GAN is used, a discriminator update on
``discriminator_losses``; one Adam per network with betas (0.5, 0.999) and a
learning rate divided by 10 at each of ``epoch_milestones``.

Every random draw of a step (the pairs and augmentations from the loader, the
thin-plate-spline transform of the equivariance losses) is a pure function of
``(seed, epoch, index in the epoch)``. A checkpoint therefore only needs the
weights, the optimizers and those counters to continue exactly. The initial
weights, and random VGG19 weights when no file is found, follow from the seed
too, so the same seed on the same data and machine gives the same run.

A checkpoint is written only when every weight and optimizer variable is
finite, and a disk that fills up during a save leaves the previous checkpoint
and export as they were (:mod:`fomm_lessons.run_folder`).

The same trainer runs under a ``tf.distribute`` strategy
(:func:`fomm_lessons.distribute.make_strategy`): one machine's GPUs, or
several workers, where each replica takes its rows of every global batch and
only the chief writes the run folder.
"""

import math
import shutil
import signal
import sys
import tempfile
import time
import weakref
from pathlib import Path

import keras
import tensorflow as tf
from tqdm.auto import tqdm

from fomm_lessons.checkpoint import build_models
from fomm_lessons.config import validate_config
from fomm_lessons.distribute import distribute_batches
from fomm_lessons.losses import discriminator_losses, generator_losses
from fomm_lessons.pyramid import ImagePyramid
from fomm_lessons.run_folder import (last_good_checkpoint, last_good_text, log_epoch, non_finite,
                                     restore_newest_good, save_checkpoint)
from fomm_lessons.tps import ThinPlateSplineTransform


class TrainingDiverged(RuntimeError):
    """A loss or a weight became NaN or Inf; the last good checkpoint is kept."""


NATIVE_BFLOAT16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_native_bfloat16(cpuinfo="/proc/cpuinfo"):
    """The CPU's flags that compute bfloat16 natively (AMX, AVX512-BF16); empty when none or unknown."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in NATIVE_BFLOAT16_FLAGS if flag in flags]


def bfloat16_speedup(repeats=5):
    """How many times faster a small convolution stack runs in bfloat16 than in float32 on this CPU.

    A stand-in for a training step (3x3 convolutions on a batch of 8 at 64x64,
    forward and backward); the best of ``repeats`` timings of each.
    """
    import time

    def best_time(dtype):
        x = tf.random.stateless_uniform([8, 64, 64, 32], [0, 0], dtype=tf.float32)
        w = tf.random.stateless_normal([3, 3, 32, 32], [0, 1], dtype=tf.float32) * 0.1
        x, w = tf.cast(x, dtype), tf.Variable(tf.cast(w, dtype))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                y = x
                for _ in range(4):
                    y = tf.nn.relu(tf.nn.conv2d(y, w, 1, "SAME"))
                loss = tf.reduce_mean(tf.cast(y, tf.float32))
            return tape.gradient(loss, w)

        step()  # trace
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step().numpy()
            times.append(time.perf_counter() - start)
        return min(times)

    return best_time(tf.float32) / best_time(tf.bfloat16)


def device_defaults(cpu_probe=None, cpuinfo="/proc/cpuinfo"):
    """The fastest correct (xla, mixed precision) for the accelerator at hand, and why.

    Returns ``(xla, precision, reason)``. On a CPU, bfloat16 is chosen only where
    the CPU computes it natively and ``cpu_probe()`` (default
    :func:`bfloat16_speedup`) measures it at least 1.2x faster: elsewhere it is
    emulated, and was about 5x slower on an AMD EPYC without those instructions.
    """
    if tf.config.list_logical_devices("TPU"):
        return True, "bfloat16", "a TPU"
    if tf.config.list_logical_devices("GPU"):
        return True, "float16", "a GPU"
    # on CPU, XLA skips oneDNN's convolutions and is slower
    native = cpu_native_bfloat16(cpuinfo)
    if not native:
        return False, "off", "a CPU without native bfloat16 (no amx_bf16 or avx512_bf16 flag): float32"
    speedup = (cpu_probe or bfloat16_speedup)()
    if speedup >= 1.2:
        return False, "bfloat16", f"a CPU with {'+'.join(native)}, bfloat16 measured {speedup:.2f}x faster"
    return False, "off", f"a CPU with {'+'.join(native)}, but bfloat16 measured {speedup:.2f}x as fast: float32"


def learning_rate(base, epoch, milestones, factor=0.1):
    """The original's MultiStepLR: ``base * factor ** (number of milestones <= epoch)``."""
    return base * factor ** sum(int(epoch) >= m for m in milestones)


def collapse_monitors(generated):
    """Two numbers that show keypoint collapse while training, from one step's outputs.

    ``kp_spread``: mean distance of the driving keypoints to their centroid as a
    share of the frame width (0 when they sit on one spot); ``masks_in_use``: how
    many of the K+1 masks of Eq. 7 win at least 5% of the batch's pixels.
    """
    kp = tf.cast(generated["kp_driving"]["value"], tf.float32)  # (B, K, 2)
    centroid = tf.reduce_mean(kp, axis=1, keepdims=True)
    spread = tf.reduce_mean(tf.norm(kp - centroid, axis=-1)) / 2.0  # [-1, 1] is 2 units wide
    monitors = {"kp_spread": spread}
    if "mask" in generated:
        mask = tf.cast(generated["mask"], tf.float32)  # (B, h, w, K+1)
        wins = tf.one_hot(tf.argmax(mask, axis=-1), tf.shape(mask)[-1])  # (B, h, w, K+1)
        share = tf.reduce_mean(wins, axis=[0, 1, 2])  # (K+1,)
        monitors["masks_in_use"] = tf.reduce_sum(tf.cast(share >= 0.05, tf.float32))
    return monitors


def _loss_weight_on(weights, name):
    value = weights.get(name, 0)
    return sum(value) != 0 if isinstance(value, (list, tuple)) else value != 0


class Trainer:
    """Models, optimizers, the compiled step and the checkpoints of one run folder."""

    def __init__(self, config, out_dir, strategy=None, xla=None, mixed_precision="auto", seed=0,
                 checkpoint_every=None, vgg_weights="auto", max_to_keep=3):
        config = validate_config(config, command="train")
        self.config = config
        self.train_params = config["train_params"]
        self.out_dir = Path(out_dir)
        self.distributed = strategy is not None
        self.strategy = strategy or tf.distribute.get_strategy()
        # Under several workers every one takes part in each save (TensorFlow's pattern), but only
        # the chief writes the run folder; the others write to a folder of their own, removed after.
        self.chief = bool(self.strategy.extended.should_checkpoint)
        self.write_dir = self.out_dir
        if not self.chief:
            self.write_dir = Path(tempfile.mkdtemp(prefix="fomm-lessons-worker-"))
            self._remove_write_dir = weakref.finalize(self, shutil.rmtree, str(self.write_dir), ignore_errors=True)
        self.max_to_keep = max_to_keep
        self.seed = int(seed)
        auto = xla is None or mixed_precision in (None, "auto")
        default_xla, default_precision, why = device_defaults() if auto else (None, None, "")
        self.xla = default_xla if xla is None else bool(xla)
        self.precision = default_precision if mixed_precision in (None, "auto") else mixed_precision
        self.precision_reason = (f"auto on {why}" if mixed_precision in (None, "auto")
                                 else f"--mixed-precision {mixed_precision}")
        if self.precision not in ("off", "float16", "bfloat16"):
            raise ValueError(f"expected mixed_precision in auto, off, float16, bfloat16, got {mixed_precision!r}")
        if checkpoint_every is not None and (isinstance(checkpoint_every, bool) or int(checkpoint_every) < 1):
            raise ValueError(f"expected checkpoint_every to be a positive number of steps, got {checkpoint_every!r}")
        self.checkpoint_every = checkpoint_every
        self.interrupted = None  # the signal that stopped the last fit, if any
        self.out_of_time = False  # whether the last fit stopped at its time budget
        weights = self.train_params["loss_weights"]
        self.use_gan = _loss_weight_on(weights, "generator_gan")

        keras.mixed_precision.set_global_policy(
            {"off": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}[self.precision])
        # The initial weights (and random VGG19 weights, when no file is found) follow from the seed.
        keras.utils.set_random_seed(self.seed)
        try:
            with self.strategy.scope():
                self.models = build_models(config["model_params"], discriminator=True)
                self.pyramid = ImagePyramid(self.train_params["scales"], config["model_params"]["common_params"]
                                            .get("num_channels", 3))
                self.vgg = None
                if _loss_weight_on(weights, "perceptual"):
                    from fomm_lessons.perceptual import Vgg19Features

                    self.vgg = Vgg19Features(weights=vgg_weights, seed=self.seed)
                self.optimizers = {name: self._adam(self.train_params[f"lr_{name}"])
                                   for name in ("kp_detector", "generator", "discriminator")
                                   if self._network(name) is not None}
                for name, optimizer in self.optimizers.items():
                    optimizer.build(self._network(name).trainable_variables)
                self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
                self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        finally:
            keras.mixed_precision.set_global_policy("float32")
        # Variables are listed explicitly, in the order the networks create them: Keras 3 layers
        # nested in custom layers are not all reachable by TensorFlow's object-graph tracking, and
        # batch-norm statistics would be silently left out of the checkpoint.
        self.checkpoint = tf.train.Checkpoint(
            step=self.step, epoch=self.epoch,
            **{f"{name}_weights": list(self._network(name).weights) for name in self.optimizers},
            **{f"optimizer_{name}": list(opt.variables) for name, opt in self.optimizers.items()})
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.write_dir / "checkpoints", max_to_keep)
        self._step_fn = None

    def _adam(self, lr):
        optimizer = keras.optimizers.Adam(learning_rate=lr, beta_1=0.5, beta_2=0.999)
        if self.precision == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    def _network(self, name):
        return getattr(self.models, name)

    def _all_networks(self):
        return [net for net in (self.models.kp_detector, self.models.generator, self.models.discriminator)
                if net is not None]

    def get_weights(self):
        """Every weight of the three networks (batch-norm statistics included), as NumPy arrays."""
        return [w.numpy() for net in self._all_networks() for w in net.weights]

    def load_weights(self, weights):
        """Set the three networks' weights from :meth:`get_weights`' list."""
        variables = [w for net in self._all_networks() for w in net.weights]
        if len(variables) != len(weights):
            raise ValueError(f"expected {len(variables)} arrays, got {len(weights)}")
        for variable, value in zip(variables, weights):
            variable.assign(value)

    def init_from(self, models):
        """Start from another model's weights (fine-tuning): the keypoint detector and the generator,
        and the discriminator when ``models`` has one and this run trains one.

        ``models`` are networks of the same architecture (:func:`fomm_lessons.pretrained.load` with
        this run's config). Optimizer state, step and epoch stay new. Returns the names of the
        networks that were copied; a network whose weights differ in number or shape is refused
        with one line naming it.
        """
        copied = []
        for name in ("kp_detector", "generator", "discriminator"):
            source, target = getattr(models, name, None), self._network(name)
            if source is None or target is None:
                continue
            if name == "discriminator" and not self.use_gan:
                continue
            theirs, ours = source.weights, target.weights
            if len(theirs) != len(ours):
                raise ValueError(f"cannot start from these weights: their {name} has {len(theirs)} arrays, "
                                 f"this config's has {len(ours)}")
            for mine, other in zip(ours, theirs):
                if tuple(mine.shape) != tuple(other.shape):
                    raise ValueError(f"cannot start from these weights: their {name} array {other.path} has "
                                     f"the shape {tuple(other.shape)}, this config's {tuple(mine.shape)}")
            for variable, value in zip(ours, theirs):
                variable.assign(tf.cast(value, variable.dtype))
            copied.append(name)
        if "kp_detector" not in copied or "generator" not in copied:
            raise ValueError("cannot start from these weights: they lack the keypoint detector or the generator")
        return copied

    # -- the step -----------------------------------------------------------

    def _replica_step(self, batch):
        """One generator + keypoint update then one discriminator update, on this replica's share."""
        replicas = self.strategy.num_replicas_in_sync
        transform = ThinPlateSplineTransform.from_params(batch["tps_theta"], batch["tps_params"])
        kp_vars = self.models.kp_detector.trainable_variables
        gen_vars = self.models.generator.trainable_variables
        with tf.GradientTape() as tape:
            losses, generated = generator_losses(self.models, batch["source"], batch["driving"], self.train_params,
                                                 self.pyramid, vgg=self.vgg, transform=transform, training=True)
            # Each replica averages over its share of the batch; gradients are summed over replicas.
            total = tf.add_n(list(losses.values())) / replicas
            scaled = self.optimizers["generator"].scale_loss(total)
        grads = tape.gradient(scaled, kp_vars + gen_vars)
        # With float16 each optimizer keeps its own loss scale: hand the keypoint
        # detector's optimizer its gradients at its own scale.
        ratio = self.optimizers["kp_detector"].scale_loss(1.0) / self.optimizers["generator"].scale_loss(1.0)
        self._apply("kp_detector", [None if g is None else g * ratio for g in grads[:len(kp_vars)]], kp_vars)
        self._apply("generator", grads[len(kp_vars):], gen_vars)

        if self.use_gan:
            disc_vars = self.models.discriminator.trainable_variables
            with tf.GradientTape() as tape:
                disc = discriminator_losses(self.models.discriminator, batch["driving"], generated,
                                            self.train_params, self.pyramid, training=True)
                scaled = self.optimizers["discriminator"].scale_loss(tf.add_n(list(disc.values())) / replicas)
            self._apply("discriminator", tape.gradient(scaled, disc_vars), disc_vars)
            losses.update(disc)
        losses = {name: value / replicas for name, value in losses.items()}
        images = {key: tf.cast(generated[key], tf.float32) for key in ("prediction", "deformed", "occlusion_map")
                  if key in generated}
        images["kp_driving"] = tf.cast(generated["kp_driving"]["value"], tf.float32)
        if "mask" in generated:
            images["mask"] = tf.cast(generated["mask"], tf.float32)
        return losses, images

    def _apply(self, name, grads, variables):
        """Update the variables that the loss reaches (a config may leave a network out of it)."""
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        if pairs:
            self.optimizers[name].apply([g for g, _ in pairs], [v for _, v in pairs])

    def _compiled_step(self):
        if self._step_fn is None:
            def step(batch):
                losses, images = self.strategy.run(self._replica_step, args=(batch,))
                losses = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                          for k, v in losses.items()}
                images = {k: self.strategy.gather(v, axis=0) for k, v in images.items()}
                self.step.assign_add(1)
                return losses, images

            self._step_fn = tf.function(step, jit_compile=self.xla)
        return self._step_fn

    def train_step(self, batch):
        """One compiled step on a (distributed) batch of ``source``, ``driving``, ``tps_theta``, ``tps_params``."""
        return self._compiled_step()(batch)

    # -- data ---------------------------------------------------------------

    def steps_per_epoch(self, frames):
        return max(1, len(frames) * self.train_params["num_repeats"] // self.train_params["batch_size"])

    def epoch_dataset(self, frames, epoch, skip=0):
        """Batches of one epoch with each item's TPS parameters, from ``skip`` on, distributed."""
        params = self.train_params
        transform = params["transform_params"]
        points = transform.get("points_tps", 5)
        batch_size = params["batch_size"]
        # A fresh pipeline per epoch, seeded by (seed, epoch): its first pass is that epoch's items.
        epoch_seed = self.seed * 100003 + epoch
        dataset = frames.pairs(seed=epoch_seed, num_repeats=params["num_repeats"], batch_size=batch_size,
                               drop_remainder=True, prefetch=None)
        dataset = dataset.take(self.steps_per_epoch(frames))

        def add_transform(index, batch):
            seed = tf.stack([tf.constant(epoch_seed, tf.int64), index])
            tps = ThinPlateSplineTransform(batch_size, transform["sigma_affine"], transform.get("sigma_tps"),
                                           points, seed=seed)
            batch = {key: value for key, value in batch.items() if key != "name"}
            batch["tps_theta"] = tps.theta
            batch["tps_params"] = tps.control_params if tps.has_tps else tf.zeros([batch_size, points**2])
            return batch

        dataset = dataset.enumerate().map(add_transform).skip(skip)
        if self.distributed:  # each replica's rows of every global batch
            return distribute_batches(self.strategy, dataset, batch_size)
        return dataset.prefetch(tf.data.AUTOTUNE)

    # -- the loop -----------------------------------------------------------

    @property
    def vgg_description(self):
        """Which VGG19 weights the perceptual loss uses, for the log."""
        if self.vgg is None:
            return "none (no perceptual loss)"
        source = self.vgg.weights_source
        return f"{source} (seed {self.seed})" if source.startswith("random") else source

    def restore(self):
        """Continue from the newest checkpoint that reads whole and finite; returns its path, or None.

        The newer ones that could not be used are listed in ``self.skipped`` as (path, why).
        """
        manager = self.manager  # a worker that is not the chief reads the chief's checkpoints
        if self.write_dir != self.out_dir:
            manager = tf.train.CheckpointManager(self.checkpoint, self.out_dir / "checkpoints", self.max_to_keep)
        path, self.skipped = restore_newest_good(self.checkpoint, manager)
        return path

    def close(self):
        """Remove the folder a worker that is not the chief wrote its checkpoint copies to."""
        if not self.chief:
            self._remove_write_dir()

    def last_good_checkpoint(self):
        """The newest checkpoint of the run folder whose every tensor reads finite, or None."""
        return last_good_checkpoint(self.manager)

    def save(self):
        """Write a checkpoint named after the step, and the models in Keras' format under ``models/``.

        Raises :class:`TrainingDiverged` (and writes nothing) when a weight is not finite, and
        :class:`fomm_lessons.run_folder.DiskFull` when the disk fills up; either way the previous
        checkpoint and export stay as they were.
        """
        step = int(self.step.numpy())
        variables = ([w for net in self._all_networks() for w in net.weights]
                     + [v for opt in self.optimizers.values() for v in opt.variables])
        bad = non_finite(variables)
        if bad:
            raise TrainingDiverged(f"{len(bad)} weights are NaN or Inf at step {step} (first: {bad[0]}), "
                                   f"so no checkpoint was written; {last_good_text(self.manager)}")
        return save_checkpoint(self.manager, step, self.models, self.write_dir / "models")

    def _set_learning_rates(self, epoch):
        milestones = self.train_params.get("epoch_milestones", [])
        for name, optimizer in self.optimizers.items():
            optimizer.learning_rate.assign(learning_rate(self.train_params[f"lr_{name}"], epoch, milestones))

    def fit(self, frames, steps=None, progress=True, on_step=None, seconds=None):
        """Train on ``frames`` (a :class:`fomm_lessons.data.loader.FramesDataset`) until ``num_epochs``
        or ``steps`` total steps; checkpoint every ``checkpoint_every`` steps, at each epoch's end and on
        SIGINT/SIGTERM. ``on_step(step, losses)`` is called after every step. With ``seconds`` (a time
        budget, the first step's tracing included) training also stops after the first step that ends
        past it, with a checkpoint, and ``self.out_of_time`` is True. Returns the mean losses of the
        last epoch run."""
        if steps is not None and (isinstance(steps, bool) or int(steps) < 1):
            raise ValueError(f"expected steps to be a positive number of steps, got {steps!r}")
        if seconds is not None and not (isinstance(seconds, (int, float)) and seconds > 0):
            raise ValueError(f"expected seconds to be a positive time budget, got {seconds!r}")
        deadline = None if seconds is None else time.monotonic() + float(seconds)
        self.out_of_time = False
        per_epoch = self.steps_per_epoch(frames)
        every = self.checkpoint_every or per_epoch
        num_epochs = int(self.train_params["num_epochs"])
        total = num_epochs * per_epoch if steps is None else int(steps)
        stop = {"signal": None, "saving": False}
        self.interrupted = None

        def on_signal(signum, frame):
            if stop["signal"] == signum and stop["saving"]:  # a half-written save would leave none: finish it
                tqdm.write(f"{signal.Signals(signum).name}: the checkpoint is being written; stopping as soon "
                           "as it is", file=sys.stderr)
                return
            if stop["signal"] == signum:  # asked twice: stop now, without a checkpoint
                signal.signal(signum, handlers.get(signum, signal.SIG_DFL))
                signal.raise_signal(signum)
                return
            stop["signal"] = signum
            tqdm.write(f"{signal.Signals(signum).name}: saving a checkpoint after this step "
                       "(send it again to stop without one)", file=sys.stderr)

        handlers = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                handlers[signum] = signal.signal(signum, on_signal)
            except ValueError:  # not the main thread: no handlers
                pass
        writer = tf.summary.create_file_writer(str(self.write_dir / "tensorboard"))
        step_fn = self._compiled_step()
        bar = tqdm(total=total, initial=int(self.step.numpy()), disable=not progress, desc="train", unit="step")
        epoch_means = {}
        saved = int(self.step.numpy())

        def save():
            stop["saving"] = True
            try:
                self.save()
            finally:
                stop["saving"] = False

        try:
            while int(self.step.numpy()) < total and int(self.epoch.numpy()) < num_epochs:
                epoch = int(self.epoch.numpy())
                done_in_epoch = int(self.step.numpy()) - epoch * per_epoch
                self._set_learning_rates(epoch)
                sums, count = {}, 0
                for batch in self.epoch_dataset(frames, epoch, skip=done_in_epoch):
                    losses, images = step_fn(batch)
                    step = int(self.step.numpy())
                    values = {name: float(value) for name, value in losses.items()}
                    # Watched, not trained on, and logged beside the losses: whether the keypoints spread
                    # out and how many masks share the work, over the whole (gathered) batch.
                    monitors = collapse_monitors({"kp_driving": {"value": images["kp_driving"]},
                                                  **({"mask": images["mask"]} if "mask" in images else {})})
                    values.update({f"monitor_{name}": float(value) for name, value in monitors.items()})
                    for name, value in values.items():
                        if not math.isfinite(value):
                            raise TrainingDiverged(f"loss {name} is {value} at step {step}; "
                                                   f"{last_good_text(self.manager)}")
                        sums[name] = sums.get(name, 0.0) + value
                    count += 1
                    bar.update(1)
                    bar.set_postfix({name: f"{value:.3f}" for name, value in values.items()})
                    with writer.as_default(step=step):
                        for name, value in values.items():
                            tf.summary.scalar(f"loss/{name}", value)
                    if on_step is not None:
                        on_step(step, values)
                    if deadline is not None and time.monotonic() >= deadline:
                        self.out_of_time = True
                    if step % every == 0 or stop["signal"] is not None or self.out_of_time:
                        save()
                        saved = step
                    if stop["signal"] is not None or step >= total or self.out_of_time:
                        break
                if count:
                    epoch_means = {name: value / count for name, value in sums.items()}
                if stop["signal"] is not None or self.out_of_time:
                    break
                if int(self.step.numpy()) - epoch * per_epoch >= per_epoch:
                    self.epoch.assign_add(1)
                    # count == 0: the checkpoint was written at the epoch's last step (a signal, a kill)
                    # before the epoch was counted; there is no batch of it in this process to log.
                    if count:
                        whole = (lambda t: self.strategy.gather(t, axis=0)) if self.distributed else tf.identity
                        log_epoch(self.write_dir, epoch, int(self.step.numpy()), epoch_means, whole(batch["source"]),
                                  whole(batch["driving"]), images, writer)
                    if saved != int(self.step.numpy()):
                        save()
                        saved = int(self.step.numpy())
            if saved != int(self.step.numpy()):
                save()
            unfinished = int(self.step.numpy()) < total and int(self.epoch.numpy()) < num_epochs
            self.interrupted = stop["signal"] if unfinished else None
        finally:
            bar.close()
            writer.flush()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        return epoch_means

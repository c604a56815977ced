"""Training as the original does it (its ``train.py``), on one device or many.

A step is a generator + keypoint-detector update on ``generator_losses``,
then, when the GAN is used, a discriminator update on
``discriminator_losses``; one Adam per network with betas (0.5, 0.999) and a
learning rate divided by 10 at each of ``epoch_milestones``.

Every random draw of a step (the pairs and augmentations from the loader, the
thin-plate-spline transform of the equivariance losses) is a pure function of
``(seed, epoch, index in the epoch)``. A checkpoint therefore only needs the
weights, the optimizers and those counters to continue exactly.
"""

import csv
import math
import signal
from pathlib import Path

import keras
import tensorflow as tf
from tqdm.auto import tqdm

from fomm_lessons.checkpoint import build_models, save_models
from fomm_lessons.losses import discriminator_losses, generator_losses
from fomm_lessons.sampling import ImagePyramid, ThinPlateSplineTransform, keypoints_to_gaussian


class TrainingDiverged(RuntimeError):
    """A loss became NaN or Inf; the last good checkpoint is kept."""


def device_defaults():
    """The fastest correct (xla, mixed precision) for the accelerator at hand."""
    if tf.config.list_logical_devices("TPU"):
        return True, "bfloat16"
    if tf.config.list_logical_devices("GPU"):
        return True, "float16"
    return False, "off"  # on CPU, XLA skips oneDNN's convolutions and is slower


def learning_rate(base, epoch, milestones, factor=0.1):
    """The original's MultiStepLR: ``base * factor ** (number of milestones <= epoch)``."""
    return base * factor ** sum(int(epoch) >= m for m in milestones)


def _loss_weight_on(weights, name):
    value = weights.get(name, 0)
    return sum(value) != 0 if isinstance(value, (list, tuple)) else value != 0


class Trainer:
    """Models, optimizers, the compiled step and the checkpoints of one run folder."""

    def __init__(self, config, out_dir, strategy=None, xla=None, mixed_precision="auto", seed=0,
                 checkpoint_every=None, vgg_weights="auto", max_to_keep=3):
        self.config = config
        self.train_params = config["train_params"]
        self.out_dir = Path(out_dir)
        self.distributed = strategy is not None
        self.strategy = strategy or tf.distribute.get_strategy()
        self.seed = int(seed)
        default_xla, default_precision = device_defaults()
        self.xla = default_xla if xla is None else bool(xla)
        self.precision = default_precision if mixed_precision in (None, "auto") else mixed_precision
        if self.precision not in ("off", "float16", "bfloat16"):
            raise ValueError(f"expected mixed_precision in auto, off, float16, bfloat16, got {mixed_precision!r}")
        self.checkpoint_every = checkpoint_every
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

                    self.vgg = Vgg19Features(weights=vgg_weights)
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
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.out_dir / "checkpoints", max_to_keep)
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

        dataset = dataset.enumerate().map(add_transform).skip(skip).prefetch(tf.data.AUTOTUNE)
        return self.strategy.experimental_distribute_dataset(dataset) if self.distributed else dataset

    # -- the loop -----------------------------------------------------------

    def restore(self):
        """Continue from the newest checkpoint in the run folder; returns whether there was one."""
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        return bool(latest)

    def save(self):
        """Write a checkpoint named after the step, and the models in Keras' format under ``models/``."""
        path = self.manager.save(checkpoint_number=int(self.step.numpy()))
        save_models(self.models, self.out_dir / "models")
        return path

    def _set_learning_rates(self, epoch):
        milestones = self.train_params.get("epoch_milestones", [])
        for name, optimizer in self.optimizers.items():
            optimizer.learning_rate.assign(learning_rate(self.train_params[f"lr_{name}"], epoch, milestones))

    def fit(self, frames, steps=None, progress=True, on_step=None):
        """Train on ``frames`` (a :class:`fomm_lessons.data.loader.FramesDataset`) until ``num_epochs``
        or ``steps`` total steps; checkpoint every ``checkpoint_every`` steps, at each epoch's end and on
        SIGINT/SIGTERM. ``on_step(step, losses)`` is called after every step. Returns the mean losses
        of the last epoch run."""
        per_epoch = self.steps_per_epoch(frames)
        every = self.checkpoint_every or per_epoch
        num_epochs = int(self.train_params["num_epochs"])
        total = num_epochs * per_epoch if steps is None else int(steps)
        stop = {"signal": None}

        def on_signal(signum, frame):
            stop["signal"] = signum

        handlers = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                handlers[signum] = signal.signal(signum, on_signal)
            except ValueError:  # not the main thread: no handlers
                pass
        writer = tf.summary.create_file_writer(str(self.out_dir / "tensorboard"))
        step_fn = self._compiled_step()
        bar = tqdm(total=total, initial=int(self.step.numpy()), disable=not progress, desc="train", unit="step")
        epoch_means = {}
        saved = int(self.step.numpy())
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
                    for name, value in values.items():
                        if not math.isfinite(value):
                            raise TrainingDiverged(
                                f"loss {name} is {value} at step {step}; the last good checkpoint is "
                                f"{self.manager.latest_checkpoint}")
                        sums[name] = sums.get(name, 0.0) + value
                    count += 1
                    bar.update(1)
                    bar.set_postfix({name: f"{value:.3f}" for name, value in values.items()})
                    with writer.as_default(step=step):
                        for name, value in values.items():
                            tf.summary.scalar(f"loss/{name}", value)
                    if on_step is not None:
                        on_step(step, values)
                    if step % every == 0 or stop["signal"] is not None:
                        self.save()
                        saved = step
                    if stop["signal"] is not None or step >= total:
                        break
                if count:
                    epoch_means = {name: value / count for name, value in sums.items()}
                if stop["signal"] is not None:
                    break
                if int(self.step.numpy()) - epoch * per_epoch >= per_epoch:
                    self.epoch.assign_add(1)
                    self._log_epoch(epoch, epoch_means, batch, images, writer)
                    if saved != int(self.step.numpy()):
                        self.save()
                        saved = int(self.step.numpy())
            if saved != int(self.step.numpy()):
                self.save()
        finally:
            bar.close()
            writer.flush()
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
        return epoch_means

    def _log_epoch(self, epoch, means, batch, images, writer):
        """One row of ``log.csv`` and a TensorBoard image grid of the last batch."""
        path = self.out_dir / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            out = csv.writer(f)
            if new:
                out.writerow(["epoch", "step", *sorted(means)])
            out.writerow([epoch, int(self.step.numpy()), *(f"{means[k]:.6f}" for k in sorted(means))])
        local = lambda t: tf.concat(self.strategy.experimental_local_results(t), axis=0)  # noqa: E731
        source, driving = local(batch["source"]), local(batch["driving"])
        size = driving.shape[1:3]
        heat = tf.reduce_max(keypoints_to_gaussian(images["kp_driving"], size, 0.0005), axis=-1, keepdims=True)
        with_kp = driving * (1.0 - heat) + heat * tf.constant([1.0, 0.0, 0.0])
        columns = [source, with_kp, images.get("deformed", driving), images["prediction"]]
        if "occlusion_map" in images:
            columns.append(tf.image.resize(tf.repeat(images["occlusion_map"], 3, axis=-1), size))
        grid = tf.concat([tf.clip_by_value(c, 0.0, 1.0) for c in columns], axis=2)  # (B, H, 5W, 3)
        with writer.as_default(step=int(self.step.numpy())):
            tf.summary.image("source | driving + keypoints | deformed | prediction | occlusion", grid,
                             max_outputs=4)


def main(args):
    """``fomm-lessons train``."""
    from fomm_lessons.config import load_config
    from fomm_lessons.data.loader import FramesDataset

    config = load_config(args.config)
    frames = FramesDataset.from_config(args.data, config.get("dataset_params", {}), "train")
    out = Path(args.out)
    if (out / "checkpoints").exists() and not args.resume and any((out / "checkpoints").iterdir()):
        raise ValueError(f"{out} already holds checkpoints: pass --resume to continue, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, out, xla=args.xla, mixed_precision=args.mixed_precision, seed=args.seed,
                      checkpoint_every=args.checkpoint_every, vgg_weights=getattr(args, "vgg", "auto"))
    if args.resume and not trainer.restore():
        raise ValueError(f"--resume: no checkpoint in {out / 'checkpoints'}")
    try:
        trainer.fit(frames, steps=args.steps)
    except TrainingDiverged as error:
        raise ValueError(str(error)) from None
    print(f"trained to step {int(trainer.step.numpy())}; checkpoints in {out / 'checkpoints'}, "
          f"models in {out / 'models'}")
    return 0


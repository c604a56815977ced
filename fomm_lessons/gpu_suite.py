"""One command that measures a machine: ``python -m fomm_lessons.bench gpu-suite --out DIR``.

Everything the book's performance table needs, as JSON lines (on stdout and
in ``DIR/results.jsonl``), within a time budget (8 minutes by default):

* a full training iteration of vox-adv-256 at 256x256 (generator + keypoint
  step, then discriminator step) at batch 8, 16 and 32, with XLA on and off
  and in float32, float16 and bfloat16: images per second, TFLOP/s counted
  with 673 GFLOP per image per iteration (PyTorch's FLOP counter on the
  original code), and peak accelerator memory; then the largest batch that
  fits, in the fastest mode;
* animation frames per second (keypoints of the driving frame plus
  generation, vox-256) at batch 1 and 16;
* the two ``grid_sample`` workloads of ``bench sampler``.

A configuration that runs out of memory is recorded as ``"status": "oom"``
and the suite goes on. ``--device cpu`` runs the same code with the small
cpu-64 networks at 64x64 and tiny batches in a few seconds, so that the
command is tested where no GPU is. ``--only sampler`` (or ``animate``, ``train``, comma-separated)
runs a part of it.
"""

import argparse
import gc
import json
import os
import resource
import tempfile
import time
import warnings

GFLOP_PER_IMAGE = 673.0  # vox-adv-256, 256x256, one training iteration (forward and backward)
PRECISIONS = ("bfloat16", "float16", "off")
WORKLOADS = ("animate", "sampler", "train")  # in the order they run (--only picks some)

PLANS = {
    "gpu": dict(train_config="vox-adv-256", size=256, batches=(8, 16, 32), xla=(True, False),
                precisions=PRECISIONS, steps=5, warmup=2, largest_from=64,
                animate_config="vox-256", animate_batches=(1, 16),
                sampler_shapes={"dense_motion": (88, 64, 64, 3), "generator": (8, 64, 64, 256)}),
    "cpu": dict(train_config="cpu-64", size=64, batches=(1,), xla=(False,), precisions=("off",),
                steps=1, warmup=1, largest_from=None, animate_config="cpu-64", animate_batches=(1, 2),
                sampler_shapes={"dense_motion": (11, 16, 16, 3), "generator": (1, 16, 16, 32)}),
}


def _is_oom(error):
    import tensorflow as tf

    text = str(error).lower()
    return isinstance(error, tf.errors.ResourceExhaustedError) or "out of memory" in text or "oom" in text


class Suite:
    """Runs measurements under a time budget and writes each result as one JSON line."""

    def __init__(self, out, device, budget_s):
        import tensorflow as tf

        self.out = out
        self.device = device
        self.deadline = time.monotonic() + float(budget_s)
        self.gpu = tf.config.list_logical_devices("GPU")[0].name if device == "gpu" else None
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, "results.jsonl")
        self.file = open(self.path, "a")
        self.records = []

    def write(self, **fields):
        fields = {"device": self.device, **fields}
        line = json.dumps(fields)
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()
        self.records.append(fields)
        return fields

    def left_s(self):
        return self.deadline - time.monotonic()

    def _reset_memory(self):
        import tensorflow as tf

        if self.gpu:
            tf.config.experimental.reset_memory_stats(self.gpu)

    def _peak_memory_mb(self):
        import tensorflow as tf

        if self.gpu:
            return round(tf.config.experimental.get_memory_info(self.gpu)["peak"] / 2**20, 1)
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # process peak RSS

    def measure(self, workload, fn, items, steps, warmup, **fields):
        """Time ``fn`` (which does ``items`` images or frames) after ``warmup`` calls; OOM is recorded."""
        import keras

        if self.left_s() <= 0:
            return self.write(workload=workload, status="skipped", reason="time budget spent", **fields)
        self._reset_memory()
        try:
            start = time.perf_counter()
            for _ in range(warmup):
                fn()
            compile_s = time.perf_counter() - start
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
        except Exception as error:  # noqa: BLE001 (only OOM is expected; anything else is reported too)
            keras.backend.clear_session()
            gc.collect()
            status = "oom" if _is_oom(error) else "error"
            return self.write(workload=workload, status=status, error=" ".join(str(error).split())[:300],
                              **fields)
        times.sort()
        median = times[len(times) // 2]
        return self.write(workload=workload, status="ok", median_s=round(median, 5), min_s=round(times[0], 5),
                          per_s=round(items / median, 3), warmup_s=round(compile_s, 2),
                          peak_memory_mb=self._peak_memory_mb(), **fields)

    def close(self):
        self.file.close()


def _train_step_fn(config_name, size, batch, xla, precision, scratch):
    from fomm_lessons.budget import synthetic_batch
    from fomm_lessons.config import load_config
    from fomm_lessons.training import Trainer

    config = load_config(config_name)
    params = config["train_params"]
    params["batch_size"] = batch
    params["loss_weights"]["generator_gan"] = max(1, params["loss_weights"].get("generator_gan", 0))
    points = params["transform_params"].get("points_tps", 5)
    data = synthetic_batch(batch, size, points_tps=points, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random VGG19 weights take the time ImageNet ones take
        trainer = Trainer(config, scratch, xla=xla, mixed_precision=precision, vgg_weights="random")

    def step():
        losses, _ = trainer.train_step(data)
        return {name: value.numpy() for name, value in losses.items()}

    return step


def run_training(suite, plan):
    """The training-step grid, then the largest batch of the fastest mode that fits."""
    best = None
    for xla in plan["xla"]:
        for precision in plan["precisions"]:
            for batch in plan["batches"]:
                record = _one_train(suite, plan, batch, xla, precision)
                if record["status"] == "ok" and (best is None or record["per_s"] > best["per_s"]):
                    best = record
    if best is None or plan["largest_from"] is None:
        return
    batch, largest = plan["largest_from"], None
    while suite.left_s() > 0:
        record = _one_train(suite, plan, batch, best["xla"], best["mixed_precision"], search="largest")
        if record["status"] != "ok":
            break
        largest, batch = batch, batch * 2
    suite.write(workload="train-step/largest-batch", xla=best["xla"], mixed_precision=best["mixed_precision"],
                largest_batch=largest or max(plan["batches"]))


def _one_train(suite, plan, batch, xla, precision, **extra):
    import keras

    fields = dict(config=plan["train_config"], size=plan["size"], batch=batch, xla=xla,
                  mixed_precision=precision, **extra)
    with tempfile.TemporaryDirectory() as scratch:
        try:
            step = _train_step_fn(plan["train_config"], plan["size"], batch, xla, precision, scratch)
        except Exception as error:  # noqa: BLE001 (building can run out of memory too)
            keras.backend.clear_session()
            status = "oom" if _is_oom(error) else "error"
            return suite.write(workload="train-step", status=status, error=str(error)[:300], **fields)
        record = suite.measure("train-step", step, batch, plan["steps"], plan["warmup"], **fields)
        del step
    keras.backend.clear_session()
    gc.collect()
    if record["status"] == "ok" and plan["train_config"] == "vox-adv-256":
        record["tflops_per_s"] = round(record["per_s"] * GFLOP_PER_IMAGE / 1000, 2)
        suite.write(workload="train-step/flops", batch=batch, xla=xla, mixed_precision=precision,
                    tflops_per_s=record["tflops_per_s"], gflop_per_image=GFLOP_PER_IMAGE)
    return record


def run_animation(suite, plan):
    import numpy as np
    import tensorflow as tf

    from fomm_lessons.checkpoint import build_models
    from fomm_lessons.config import load_config

    models = build_models(load_config(plan["animate_config"])["model_params"], discriminator=False)
    size = plan["size"]
    rng = np.random.default_rng(0)
    for xla in plan["xla"]:
        for batch in plan["animate_batches"]:
            source = tf.constant(rng.random((batch, size, size, 3), np.float32))
            driving = tf.constant(rng.random((batch, size, size, 3), np.float32))
            kp_source = models.kp_detector(source[:1], training=False)
            kp_source = {key: tf.repeat(value, batch, axis=0) for key, value in kp_source.items()}

            @tf.function(jit_compile=xla)
            def frame(source, driving, kp_source):
                kp_driving = models.kp_detector(driving, training=False)
                return models.generator(source, kp_source=kp_source, kp_driving=kp_driving,
                                        training=False)["prediction"]

            suite.measure("animate", lambda: frame(source, driving, kp_source).numpy(), batch,
                          max(plan["steps"], 3), plan["warmup"], config=plan["animate_config"], size=size,
                          batch=batch, xla=xla, unit="frames")


def run_sampler(suite, plan):
    import numpy as np
    import tensorflow as tf

    from fomm_lessons.sampling import grid_sample

    rng = np.random.default_rng(0)
    for name, shape in plan["sampler_shapes"].items():
        images = tf.constant(rng.random(shape, dtype=np.float32))
        grid = tf.constant(rng.uniform(-1.05, 1.05, size=shape[:3] + (2,)).astype(np.float32))
        for xla in plan["xla"]:

            @tf.function(jit_compile=xla)
            def step(images, grid):
                with tf.GradientTape() as tape:
                    tape.watch([images, grid])
                    loss = tf.reduce_sum(grid_sample(images, grid))
                return tape.gradient(loss, [images, grid])

            suite.measure(f"sampler/{name}", lambda: [t.numpy() for t in step(images, grid)], shape[0],
                          10, 2, shape=list(shape), xla=xla)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fomm_lessons.bench gpu-suite", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder for results.jsonl")
    parser.add_argument("--device", choices=("auto", "gpu", "cpu"), default="auto",
                        help="auto: the GPU when there is one, else the CPU plan")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting measurements after this")
    parser.add_argument("--only", default=",".join(WORKLOADS),
                        help=f"comma-separated workloads to run, of {', '.join(WORKLOADS)} (default: all)")
    args = parser.parse_args(argv)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(WORKLOADS))
    if unknown or not only:
        parser.error(f"--only: expected workloads among {', '.join(WORKLOADS)}, got {args.only!r}")

    import tensorflow as tf

    has_gpu = bool(tf.config.list_logical_devices("GPU"))
    device = ("gpu" if has_gpu else "cpu") if args.device == "auto" else args.device
    if device == "gpu" and not has_gpu:
        raise SystemExit("gpu-suite: --device gpu, but TensorFlow sees no GPU (tf.config.list_logical_devices)")
    plan = PLANS[device]
    suite = Suite(args.out, device, args.budget_s)
    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]) \
        if device == "gpu" else {}
    suite.write(workload="machine", tensorflow=tf.__version__, gpu=details.get("device_name"),
                compute_capability=details.get("compute_capability"), cpus=os.cpu_count(),
                budget_s=args.budget_s)
    with tf.device("/GPU:0" if device == "gpu" else "/CPU:0"):
        # Animation and the sampler first: they are short, and the training grid fills what is left.
        for name in WORKLOADS:
            if name in only:
                {"animate": run_animation, "sampler": run_sampler, "train": run_training}[name](suite, plan)
    suite.write(workload="done", results=suite.path,
                oom=sum(r.get("status") == "oom" for r in suite.records),
                skipped=sum(r.get("status") == "skipped" for r in suite.records))
    suite.close()
    return 0

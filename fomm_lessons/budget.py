"""How big a batch and how many steps: from the device's memory, a short probe and a time budget.

A training run on a rented GPU (a Colab session, an hour on a cloud machine)
is limited by two things: the accelerator's memory, which bounds the batch,
and the wall time, which bounds the number of steps. Both follow from a probe
of a few steps of the real training step (:func:`probe`) at one or two small
batch sizes, fitted by straight lines in the batch size ``b``::

    peak memory(b) = base + per_image * b        step time(b) = t_0 + t_1 * b

:func:`plan_training` then takes the largest batch whose predicted peak fits
in a share of the free memory and the number of steps that fit in the budget.
With a single probe the lines go through zero (memory above the probe's
starting point, and time, proportional to ``b``), which overestimates the time
of larger batches on a GPU that was not yet busy: the plan errs on the side of
finishing early. The plan of a run is kept in its folder (:func:`remembered_plan`)
so that a resumed run keeps the batch size it started with. When the planned
batch still runs out of memory (the lines are a fit, and the card may be shared),
:func:`train_halving_on_oom` halves it and rewrites the plan, so that the next
session starts from the batch that fits instead of failing the same way.
"""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

PLAN_FILE = "plan.json"  # in the run folder, written once by remembered_plan


@dataclasses.dataclass(frozen=True)
class Probe:
    """One measured batch size: median step time, and peak and starting device memory (None on CPU)."""

    batch_size: int
    step_s: float
    peak_bytes: float = None
    base_bytes: float = None


@dataclasses.dataclass(frozen=True)
class Plan:
    """Batch size (global and per replica), steps, and what the models predicted for them."""

    batch_size: int
    per_replica: int
    steps: int
    step_s: float
    checkpoint_every: int
    predicted_peak_bytes: float = None
    limited_by: str = "memory"
    halved: int = 0  # times the batch was halved after running out of memory


def _floor(x):
    """``floor`` that forgives the last bits of a least-squares fit (599.9999999 is 600)."""
    return math.floor(x * (1 + 1e-9))


def _line(xs, ys):
    """Least-squares ``(intercept, slope)`` of ys against xs; through zero with one distinct x."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if len(set(xs.tolist())) < 2:
        return 0.0, float(ys.mean() / xs.mean())
    slope, intercept = np.polyfit(xs, ys, 1)
    return float(intercept), float(slope)


def time_model(probes):
    """``(t_0, t_1)`` of step time ``t_0 + t_1 * b``; a non-positive slope falls back to proportional."""
    t0, t1 = _line([p.batch_size for p in probes], [p.step_s for p in probes])
    if t1 <= 0 or t0 < 0:  # noise in a short probe: take the largest batch's time per image
        largest = max(probes, key=lambda p: p.batch_size)
        t0, t1 = 0.0, largest.step_s / largest.batch_size
    return t0, t1


def memory_model(probes):
    """``(base, per_image)`` of peak memory ``base + per_image * b``, or None when nothing was measured."""
    measured = [p for p in probes if p.peak_bytes is not None]
    if not measured:
        return None
    batches = [p.batch_size for p in measured]
    if len(set(batches)) < 2:
        p = max(measured, key=lambda p: p.batch_size)
        base = p.base_bytes or 0.0
        return float(base), float((p.peak_bytes - base) / p.batch_size)
    base, per_image = _line(batches, [p.peak_bytes for p in measured])
    return max(base, 0.0), max(per_image, 0.0)


def plan_training(probes, budget_s, free_bytes=None, replicas=1, headroom=0.85, max_batch=None,
                  max_steps=None, reserve=0.1, checkpoint_s=600.0):
    """The batch size and steps of a run that fits the memory and ``budget_s`` seconds of training.

    ``probes``: :class:`Probe` measured on one replica. ``free_bytes``: the
    memory of one device (None: memory does not limit, as on a CPU); the batch
    per replica is the largest ``b`` with ``base + per_image * b <=
    headroom * free_bytes``, at most ``max_batch``. The global batch is
    ``b * replicas``. Steps fill ``(1 - reserve) * budget_s`` (the reserve pays
    for checkpoints and epoch logs); a checkpoint is due every ``checkpoint_s``
    seconds of steps, so a lost session costs at most that much. ``max_steps``
    caps the steps (a quick run).
    """
    probes = list(probes)
    if not probes or any(p.batch_size < 1 or not p.step_s > 0 for p in probes):
        raise ValueError(f"expected probes with batch sizes >= 1 and positive step times, got {probes}")
    if not budget_s > 0:
        raise ValueError(f"expected a positive time budget in seconds, got {budget_s!r}")
    if int(replicas) < 1:
        raise ValueError(f"expected at least 1 replica, got {replicas!r}")
    memory = memory_model(probes) if free_bytes is not None else None
    if memory is not None:
        base, per_image = memory
        room = headroom * float(free_bytes) - base
        fits = _floor(room / per_image) if per_image > 0 else 2**31
        if fits < 1:
            raise ValueError(f"a batch of 1 needs about {(base + per_image) / 2**30:.2f} GiB, but "
                             f"{headroom:.0%} of the free memory is {headroom * free_bytes / 2**30:.2f} GiB")
        per_replica, limited_by = fits, "memory"
        if max_batch is not None and max_batch < fits:
            per_replica, limited_by = int(max_batch), "max_batch"
    else:
        if max_batch is None:
            raise ValueError("without a memory limit (free_bytes=None or nothing measured) give max_batch")
        per_replica, limited_by = int(max_batch), "max_batch"
    t0, t1 = time_model(probes)
    step_s = t0 + t1 * per_replica
    steps = _floor((1.0 - reserve) * budget_s / step_s)
    if steps < 1:
        raise ValueError(f"one step at batch {per_replica} takes about {step_s:.1f} s, more than the "
                         f"budget of {budget_s:.0f} s leaves for training")
    if max_steps is not None:
        steps = min(steps, int(max_steps))
    peak = None if memory is None else memory[0] + memory[1] * per_replica
    return Plan(batch_size=per_replica * int(replicas), per_replica=per_replica, steps=steps,
                step_s=step_s, checkpoint_every=max(1, min(steps, _floor(checkpoint_s / step_s))),
                predicted_peak_bytes=peak, limited_by=limited_by)


def fit_schedule(train_params, steps, items):
    """``num_repeats``, ``num_epochs`` and ``epoch_milestones`` that make ``steps`` steps the whole run.

    ``items``: what an epoch visits once per repeat (videos, or identities with
    ``id_sampling``). The learning-rate drops stay at the same fractions of the
    run as in ``train_params`` (vox-256: epochs 60 and 90 of 100), so a short run
    still ends at the low learning rates. An epoch is ``items * num_repeats //
    batch_size`` steps, as the trainer counts them.
    """
    batch, epochs_before = int(train_params["batch_size"]), int(train_params["num_epochs"])
    if int(steps) < 1 or int(items) < 1:
        raise ValueError(f"expected at least 1 step and 1 item, got steps={steps!r}, items={items!r}")
    repeats = max(1, math.ceil(int(steps) * batch / (epochs_before * int(items))))
    per_epoch = max(1, int(items) * repeats // batch)
    epochs = math.ceil(int(steps) / per_epoch)
    milestones = sorted({max(1, round(m * epochs / epochs_before))
                         for m in train_params.get("epoch_milestones", [])})
    return {"num_repeats": repeats, "num_epochs": epochs, "epoch_milestones": milestones}


def remembered_plan(run_dir, make):
    """The plan saved in ``run_dir`` by an earlier session, else ``make()``'s, saved there first.

    Returns ``(plan, True)`` when it was read back (a resumed run), ``(plan, False)`` when new.
    """
    path = Path(run_dir) / PLAN_FILE
    if path.is_file():
        try:
            return Plan(**json.loads(path.read_text())), True
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path} is not a plan written by fomm_lessons.budget ({error}); "
                             "move it away or use another run folder") from None
    plan = make()
    save_plan(run_dir, plan)
    return plan, False


def save_plan(run_dir, plan):
    """Write ``plan`` to ``RUN/plan.json`` through a temporary file (a reader never sees half of it)."""
    path = Path(run_dir) / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{PLAN_FILE}.tmp")
    partial.write_text(json.dumps(dataclasses.asdict(plan), indent=1) + "\n")
    os.replace(partial, path)
    return path


def is_out_of_memory(error):
    """Whether ``error`` says the device ran out of memory (TensorFlow's ResourceExhaustedError or its words)."""
    import tensorflow as tf

    text = str(error).lower()
    return isinstance(error, tf.errors.ResourceExhaustedError) or "out of memory" in text or " oom" in text


def train_halving_on_oom(run_dir, plan, train, say=print):
    """``train(plan)``; when it runs out of memory, half the batch per replica, rewrite ``plan.json``, again.

    ``train`` builds what it needs for ``plan.batch_size`` (a trainer of that
    batch, restored from the run's newest checkpoint) and trains. The steps are
    kept: at half the batch a step takes less time, so the run still ends within
    its budget. Returns ``(train's result, the plan it ran with)``; an error
    that is not out-of-memory, or one at a batch of 1 a replica, is raised.
    """
    while True:
        try:
            return train(plan), plan
        except Exception as error:  # noqa: BLE001 - anything but out-of-memory goes on up
            if not is_out_of_memory(error) or plan.per_replica < 2:
                raise
            replicas = plan.batch_size // plan.per_replica
            smaller = plan.per_replica // 2
            plan = dataclasses.replace(plan, per_replica=smaller, batch_size=smaller * replicas,
                                       predicted_peak_bytes=None, limited_by="out of memory",
                                       halved=plan.halved + 1)
            path = save_plan(run_dir, plan)
            say(f"out of memory at batch {2 * smaller * replicas}: batch halved to {plan.batch_size} "
                f"({smaller} a replica), {path} rewritten; training again")


def synthetic_batch(batch_size, size, points_tps=5, seed=0):
    """A training batch of random frames and a small random TPS draw, as the loader gives it."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    b = int(batch_size)
    return {
        "source": tf.constant(rng.random((b, size, size, 3), np.float32)),
        "driving": tf.constant(rng.random((b, size, size, 3), np.float32)),
        "tps_theta": tf.constant(np.eye(2, 3) + rng.normal(0, 0.05, (b, 2, 3)), tf.float32),
        "tps_params": tf.constant(rng.normal(0, 0.005, (b, points_tps**2)), tf.float32),
    }


def _gpu():
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return gpus[0].name if gpus else None


def probe(trainer, batch_sizes, steps=3, warmup=1):
    """Time ``trainer``'s step on random frames at each batch size, then put the trainer back as it was.

    Every variable the trainer checkpoints (weights, optimizers, step and epoch
    counters) is written to a scratch folder first and read back after, so the
    run that follows is the run without the probe. Peak memory is read from the
    first GPU when there is one. Returns a list of :class:`Probe`.
    """
    import tensorflow as tf

    size = int(trainer.config["dataset_params"]["frame_shape"][0])
    points = trainer.train_params["transform_params"].get("points_tps", 5)
    gpu = _gpu()
    scratch = tempfile.mkdtemp(prefix="fomm-probe-")
    try:
        saved = trainer.checkpoint.write(os.path.join(scratch, "before"))
        results = []
        for batch_size in batch_sizes:
            batch = synthetic_batch(batch_size, size, points)
            for _ in range(warmup):  # the first call traces and compiles
                _wait(trainer.train_step(batch))
            base = None
            if gpu:
                tf.config.experimental.reset_memory_stats(gpu)
                base = tf.config.experimental.get_memory_info(gpu)["current"]
            times = []
            for _ in range(steps):
                start = time.perf_counter()
                _wait(trainer.train_step(batch))
                times.append(time.perf_counter() - start)
            peak = tf.config.experimental.get_memory_info(gpu)["peak"] if gpu else None
            results.append(Probe(int(batch_size), float(np.median(times)), peak, base))
        trainer.checkpoint.read(saved).assert_consumed()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results


def _wait(outputs):
    """Block until a step has run (its losses are read back to the host)."""
    losses, _ = outputs
    return {name: float(value) for name, value in losses.items()}


def _nvidia_smi(*arguments):
    """The lines ``nvidia-smi ARGUMENTS --format=csv,noheader,nounits`` prints, or None when it cannot run."""
    if _gpu() is None or shutil.which("nvidia-smi") is None:
        return None
    try:
        return subprocess.run(["nvidia-smi", *arguments, "--format=csv,noheader,nounits"], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return None


def device_memory_bytes():
    """Total memory of the first GPU from ``nvidia-smi`` in bytes, or None (no GPU, no nvidia-smi)."""
    lines = _nvidia_smi("--query-gpu=memory.total", "-i", "0")
    try:
        return float(lines[0].split(",")[0]) * 2**20  # MiB
    except (TypeError, ValueError, IndexError):
        return None


def device_free_memory_bytes():
    """Memory of the first GPU that this process can use, in bytes: free, plus what it holds itself.

    TensorFlow reserves most of the card on first use, so ``nvidia-smi``'s free
    memory alone would be near zero after the trainer is built; what other
    processes hold (another notebook, a second run on a shared card) is not
    counted. None without a GPU or ``nvidia-smi``. Pass it to :func:`plan_training`
    as ``free_bytes``, not the card's total (:func:`device_memory_bytes`).
    """
    free = _nvidia_smi("--query-gpu=memory.free", "-i", "0")
    try:
        total = float(free[0].split(",")[0])
    except (TypeError, ValueError, IndexError):
        return None
    for line in _nvidia_smi("--query-compute-apps=pid,used_memory") or []:
        fields = [field.strip() for field in line.split(",")]
        if len(fields) == 2 and fields[0] == str(os.getpid()) and fields[1].replace(".", "", 1).isdigit():
            total += float(fields[1])  # this process's own reservation is room for its batch
    return total * 2**20  # MiB

"""The run folder of a training run: one run at a time, a plain-text log, healthy checkpoints.

* :func:`lock_run_folder` holds an exclusive ``flock`` on ``train.lock`` (which
  holds the pid of the run) for as long as a run trains there; the kernel
  drops it when the process ends, however it ends, so a lock is never stale.
* :func:`log_line` appends a dated line to ``train.log``: what a run started
  from, which VGG19 weights it uses, how it ended; :func:`log_epoch` a row of
  ``log.csv`` and a TensorBoard image grid.
* :func:`checkpoint_problem` reads every tensor of a checkpoint and says why it
  cannot be used (unreadable, truncated, or holding a NaN or an Inf);
  :func:`restore_newest_good` resumes from the newest one that can.
* :func:`save_checkpoint` turns a full disk (or a file-size limit), as
  TensorFlow's and HDF5's writers report it, into one :class:`DiskFull` line,
  and :func:`export_models` never leaves a half-written ``models/`` file.
"""

import contextlib
import csv
import datetime
import errno
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf

from fomm_lessons.checkpoint import PARTS, WEIGHT_FILES, save_models
from fomm_lessons.sampling import keypoints_to_gaussian

try:
    import fcntl
    import resource
except ImportError:  # not POSIX: no lock, no file-size limit
    fcntl = resource = None

LOCK_FILE = "train.lock"
LOG_FILE = "train.log"


class RunFolderBusy(OSError):
    """Another process trains into the same run folder."""


class DiskFull(OSError):
    """A checkpoint or an export could not be written for lack of space; the last checkpoint is kept."""


@contextlib.contextmanager
def lock_run_folder(folder):
    """Hold the run folder's lock while the block runs; raise :class:`RunFolderBusy` if another run holds it."""
    path = Path(folder) / LOCK_FILE
    handle = open(path, "a+")  # created if missing, never truncated before the lock is ours
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise RunFolderBusy(f"the run folder {folder} is in use by another training run (process "
                                    f"{holder}); wait for it to end, or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield path
    finally:
        handle.close()  # releases the lock


def check_writable(folder, parts=("checkpoints", "models", "tensorboard")):
    """Fail in one line, before the first step, if the run folder or a part of it cannot be written."""
    for path in [Path(folder), *(Path(folder) / part for part in parts)]:
        if not path.exists():
            continue
        try:
            if not path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as error:
            raise OSError(f"cannot write the run folder: {path} is not a writable folder "
                          f"({error.strerror or error}); fix it or choose another --out") from None
    return folder


def log_line(folder, text):
    """Append ``<local time> <text>`` to the run folder's ``train.log``; returns False if it could not.

    Best effort: a full disk must not turn the message that says so into another error.
    """
    stamp = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
    try:
        with open(Path(folder) / LOG_FILE, "a", encoding="utf-8") as log:
            log.write(f"{stamp} {text}\n")
    except OSError:
        return False
    return True


def log_epoch(folder, epoch, step, means, source, driving, images, writer):
    """One row of ``log.csv`` (mean losses) and a TensorBoard grid of the last batch (B, H, W, 3)."""
    path = Path(folder) / "log.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        out = csv.writer(f)
        if new:
            out.writerow(["epoch", "step", *sorted(means)])
        out.writerow([epoch, step, *(f"{means[k]:.6f}" for k in sorted(means))])
    size = driving.shape[1:3]
    heat = tf.reduce_max(keypoints_to_gaussian(images["kp_driving"], size, 0.0005), axis=-1, keepdims=True)
    with_kp = driving * (1.0 - heat) + heat * tf.constant([1.0, 0.0, 0.0])
    columns = [source, with_kp, images.get("deformed", driving), images["prediction"]]
    if "occlusion_map" in images:
        columns.append(tf.image.resize(tf.repeat(images["occlusion_map"], 3, axis=-1), size))
    grid = tf.concat([tf.clip_by_value(c, 0.0, 1.0) for c in columns], axis=2)  # (B, H, 5W, 3)
    with writer.as_default(step=step):
        tf.summary.image("source | driving + keypoints | deformed | prediction | occlusion", grid, max_outputs=4)


def non_finite(variables):
    """The paths of the floating-point variables that hold a NaN or an Inf."""
    bad = []
    for variable in variables:
        if tf.as_dtype(variable.dtype).is_floating:
            if not bool(tf.reduce_all(tf.math.is_finite(tf.convert_to_tensor(variable)))):
                bad.append(getattr(variable, "path", None) or variable.name)
    return bad


def checkpoint_problem(prefix):
    """Why the TensorFlow checkpoint ``prefix`` cannot be resumed from, or None when every tensor reads finite."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        dtypes = reader.get_variable_to_dtype_map()
        bad = []
        for key, dtype in sorted(dtypes.items()):
            value = reader.get_tensor(key)
            if dtype.is_floating and not np.all(np.isfinite(value)):
                bad.append(key)
    except Exception as error:  # a truncated file raises DataLossError, OutOfRangeError, IndexError...
        message = " ".join(str(error).split())[:200]
        return f"it cannot be read ({type(error).__name__}: {message})"
    if bad:
        return f"{len(bad)} of its tensors hold NaN or Inf (first: {bad[0]})"
    return None


def disk_full(error):
    """'the disk is full' or 'a file grew past the file-size limit' when ``error`` means that, else None."""
    codes = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
             errno.EFBIG: "a file is larger than the file-size limit (ulimit -f) allows"}
    if isinstance(error, OSError) and error.errno in codes:
        return codes[error.errno]
    text = str(error)
    if isinstance(error, (tf.errors.OpError, OSError)):  # TensorFlow's and HDF5's writers keep only the text
        for code, reason in codes.items():
            if os.strerror(code) in text:
                return reason
    return None


def restore_newest_good(checkpoint, manager):
    """Restore ``checkpoint`` from the newest of ``manager``'s checkpoints that can be used.

    Returns (its path or None, [(path, why) of the newer ones skipped]).
    """
    skipped = []
    for path in reversed(manager.checkpoints):
        problem = checkpoint_problem(path)
        if problem is None:
            try:
                checkpoint.restore(path).assert_existing_objects_matched()
                return path, skipped
            except Exception as error:  # a checkpoint of another config: say so, try the next
                problem = f"it does not fit this config ({' '.join(str(error).split())[:200]})"
        skipped.append((path, problem))
    return None, skipped


def last_good_checkpoint(manager):
    """The newest of ``manager``'s checkpoints whose every tensor reads finite, or None."""
    return next((path for path in reversed(manager.checkpoints) if checkpoint_problem(path) is None), None)


def last_good_text(manager, kept=False):
    """'the last good checkpoint is ...' (or '..., ..., is kept'), for a message."""
    good = last_good_checkpoint(manager)
    if good is None:
        return "there is no good checkpoint yet"
    return f"the last good checkpoint, {good}, is kept" if kept else f"the last good checkpoint is {good}"


def _check_room(models, folder):
    """Raise ENOSPC/EFBIG before HDF5 starts writing files that would not fit.

    HDF5 is not safe against a write that fails half-way: Keras' ``save_weights``
    can crash the process (a segmentation fault, measured with h5py 3 and Keras 3)
    instead of raising. Each file needs its weights' bytes plus about 1.5 KiB of
    HDF5 metadata per variable (measured); 4 KiB is counted, or the previous
    export's size when that is larger.
    """
    sizes = []
    for part in PARTS:
        model = getattr(models, part)
        if model is not None:
            estimate = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize + 4096 for w in model.weights)
            previous = folder / WEIGHT_FILES[part]
            sizes.append(max(estimate + 65536, previous.stat().st_size if previous.exists() else 0))
    free = shutil.disk_usage(folder).free
    if sum(sizes) > free:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {sum(sizes)} bytes needed, {free} free")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource is not None else -1
    if limit not in (-1, getattr(resource, "RLIM_INFINITY", -1)) and max(sizes) > limit:
        raise OSError(errno.EFBIG, f"{os.strerror(errno.EFBIG)}: {max(sizes)} bytes needed, {limit} allowed")


def export_models(models, folder):
    """``folder/<part>.weights.h5``, each written beside the old one first and then moved in."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _check_room(models, folder)
    partial = folder / ".partial"
    try:
        for path in save_models(models, partial):
            os.replace(path, folder / Path(path).name)
    finally:
        for name in WEIGHT_FILES.values():  # our own leftovers only
            if (partial / name).exists():
                (partial / name).unlink()
        if partial.is_dir() and not any(partial.iterdir()):
            partial.rmdir()


def save_checkpoint(manager, step, models, models_folder):
    """``manager.save`` as checkpoint ``step``, then :func:`export_models`; a full disk raises :class:`DiskFull`."""
    folder = Path(manager.directory)
    what = f"the checkpoint of step {step} to {folder}"
    try:
        path = manager.save(checkpoint_number=step)
        what = f"the models of step {step} to {models_folder} (its checkpoint is written)"
        export_models(models, models_folder)
    except (tf.errors.OpError, OSError) as error:
        reason = disk_full(error)
        if reason is None:
            raise
        temp = folder / f"ckpt-{step}_temp"  # TensorFlow's, emptied when the save failed
        if temp.is_dir() and not any(temp.iterdir()):
            temp.rmdir()
        raise DiskFull(f"{reason}: cannot write {what}; {last_good_text(manager, kept=True)}") from None
    return path

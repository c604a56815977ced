"""The run folder: its lock, checkpoints that are whole and finite, and what a full disk leaves."""

import os
import resource
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from fomm_lessons.run_folder import (LOCK_FILE, DiskFull, RunFolderBusy, checkpoint_problem, export_models,
                                     lock_run_folder, restore_newest_good, save_checkpoint)

HOLD_LOCK = textwrap.dedent("""
    import fcntl, os, sys, time
    with open(sys.argv[1], "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | (fcntl.LOCK_NB if len(sys.argv) > 2 else 0))
        handle.seek(0); handle.truncate(); handle.write(str(os.getpid())); handle.flush()
        print("locked", flush=True)
        if len(sys.argv) == 2:
            sys.stdin.read()  # hold it until the test closes our stdin
""")


def hold_lock(folder):
    """A separate process (plain Python, no TensorFlow) that holds the run folder's lock."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder / LOCK_FILE)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_is_refused_while_the_first_holds_the_folder(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunFolderBusy, match=rf"{tmp_path} is in use by another training run \(process "
                                                rf"{holder.pid}\)"):
            with lock_run_folder(tmp_path):
                pass
    finally:
        holder.communicate("")
    with lock_run_folder(tmp_path) as path:  # free again once the other process ended
        assert path.read_text().strip() == str(os.getpid())
        other = subprocess.run([sys.executable, "-c", HOLD_LOCK, str(path), "nonblocking"],
                               capture_output=True, text=True)
        assert other.returncode != 0 and "BlockingIOError" in other.stderr  # another process sees our lock


def _small_checkpoint(folder, value=1.0):
    weights = tf.Variable(np.full((16, 256), value, np.float32))  # 16 KiB
    step = tf.Variable(0, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(step=step, weights=weights)
    return weights, step, checkpoint, tf.train.CheckpointManager(checkpoint, folder, max_to_keep=5)


def test_truncated_and_non_finite_checkpoints_are_told_apart_and_skipped(tmp_path):
    weights, step, checkpoint, manager = _small_checkpoint(tmp_path)
    for number in (1, 2, 3, 4):
        weights.assign(np.full(weights.shape, number, np.float32))
        step.assign(number)
        manager.save(checkpoint_number=number)
    assert checkpoint_problem(manager.checkpoints[0]) is None
    data = tmp_path / "ckpt-4.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    index = tmp_path / "ckpt-3.index"
    index.write_bytes(index.read_bytes()[:40])
    weights.assign(np.full(weights.shape, np.nan, np.float32))
    tf.train.Checkpoint(step=step, weights=weights).write(str(tmp_path / "ckpt-2"))  # overwritten with NaN
    assert "cannot be read" in checkpoint_problem(str(tmp_path / "ckpt-4"))
    assert "cannot be read" in checkpoint_problem(str(tmp_path / "ckpt-3"))
    assert checkpoint_problem(str(tmp_path / "ckpt-2")) == ("1 of its tensors hold NaN or Inf "
                                                            "(first: weights/.ATTRIBUTES/VARIABLE_VALUE)")

    weights.assign(np.zeros(weights.shape, np.float32))
    path, skipped = restore_newest_good(checkpoint, manager)
    assert path.endswith("ckpt-1") and [p.rsplit("/", 1)[1] for p, _ in skipped] == ["ckpt-4", "ckpt-3", "ckpt-2"]
    assert int(step.numpy()) == 1 and np.all(weights.numpy() == 1.0)


@pytest.fixture
def file_size_limit():
    """Set RLIMIT_FSIZE for this process (writes past it fail with EFBIG, as a full disk fails with ENOSPC)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process

    def limit(size):
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


def test_a_checkpoint_that_does_not_fit_keeps_the_last_one(tmp_path, file_size_limit):
    weights, step, checkpoint, manager = _small_checkpoint(tmp_path / "checkpoints")
    step.assign(1)
    first = manager.save(checkpoint_number=1)
    weights.assign(weights * 2)
    step.assign(2)
    file_size_limit(4 * 1024)  # the data file needs 16 KiB
    with pytest.raises(DiskFull) as error:
        save_checkpoint(manager, 2, None, tmp_path / "models")
    file_size_limit(resource.RLIM_INFINITY)
    assert str(error.value) == (f"a file is larger than the file-size limit (ulimit -f) allows: cannot write the "
                                f"checkpoint of step 2 to {tmp_path / 'checkpoints'}; the last good checkpoint, "
                                f"{first}, is kept")
    assert manager.latest_checkpoint == first and checkpoint_problem(first) is None
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["checkpoint", "ckpt-1.data-00000-of-00001",
                                                            "ckpt-1.index"]  # no temporary folder left


TINY_MODEL = {
    "common_params": {"num_kp": 4, "num_channels": 3, "estimate_jacobian": True},
    "kp_detector_params": {"temperature": 0.1, "block_expansion": 4, "max_features": 16, "scale_factor": 0.5,
                           "num_blocks": 3},
    "generator_params": {"block_expansion": 4, "max_features": 16, "num_down_blocks": 2, "num_bottleneck_blocks": 1,
                         "estimate_occlusion_map": True,
                         "dense_motion_params": {"block_expansion": 4, "max_features": 16, "num_blocks": 3,
                                                 "scale_factor": 0.5}},
}


def test_an_export_that_does_not_fit_leaves_the_previous_files(tmp_path, file_size_limit):
    from fomm_lessons.checkpoint import build_models

    networks = build_models(TINY_MODEL, discriminator=False)
    models = tmp_path / "models"
    export_models(networks, models)
    before = {name: (models / name).read_bytes() for name in os.listdir(models)}
    assert sorted(before) == ["generator.weights.h5", "kp_detector.weights.h5"]
    _, _, _, manager = _small_checkpoint(tmp_path / "checkpoints")
    limit = min(os.path.getsize(models / name) for name in before) // 2
    assert limit > 24 * 1024
    file_size_limit(limit)  # the checkpoint (16 KiB) fits, neither network's file does
    try:
        with pytest.raises(DiskFull, match=r"file-size limit .*: cannot write the models of step 1 to "
                                           rf"{models} \(its checkpoint is written\); the last good checkpoint, "
                                           rf".*ckpt-1, is kept"):
            save_checkpoint(manager, 1, networks, models)
    finally:
        file_size_limit(resource.RLIM_INFINITY)
    assert {name: (models / name).read_bytes() for name in os.listdir(models)} == before  # nothing half-written

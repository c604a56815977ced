"""Training on two worker processes (MultiWorkerMirroredStrategy over 127.0.0.1, CPU only).

Against one process at the same global batch; a killed worker; a restart with --resume.
Also TF_CONFIG's checks and the choice of strategy, in this process.
"""

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from fomm_lessons.data.media import OUTPUT_MARK
from fomm_lessons.distribute import make_strategy, peer_failure, read_tf_config, worker_count
from test_training import PLAIN, untraced

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).parent / "scripts" / "multiworker_steps.py"

# test_training's PLAIN (TINY without the GAN, one perceptual scale), for more epochs than the steps
# any test runs: fewer operations to trace, which is most of a worker's time on a small CPU.
SMALL = copy.deepcopy(PLAIN)
SMALL["train_params"]["num_epochs"] = 100


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from fomm_lessons.data.sample import make_sample_dataset

    root = tmp_path_factory.mktemp("sample-64")
    make_sample_dataset(root, size=64, seed=0)
    return root


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:  # all bound at once, so that no two get the same port
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(tf_config=None):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _launch(args, folder, name):
    """Two workers running ``args`` (after the interpreter), each with its TF_CONFIG; stdout+stderr to files.

    Their temporary folders are made in ``folder/name-tmp``.
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    (folder / f"{name}-tmp").mkdir()
    workers = []
    for index in range(2):
        log = open(folder / f"{name}-{index}.log", "w")
        env = _env({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env["TMPDIR"] = str(folder / f"{name}-tmp")
        workers.append(subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    return workers


def _worker_folders(folder):
    """The folders of checkpoint copies that workers made in ``folder`` (their TMPDIR)."""
    return [p for p in folder.iterdir() if p.name.startswith("fomm-lessons-worker-")]


def _wait(workers, timeout):
    deadline = time.monotonic() + timeout
    try:
        return [w.wait(timeout=max(1, deadline - time.monotonic())) for w in workers]
    finally:
        for w in workers:  # never leave a worker behind
            if w.poll() is None:
                w.kill()
                w.wait()


# -- TF_CONFIG and the choice, in this process (no cluster is started) ---------------------------

def test_tf_config_is_checked_with_one_line_naming_the_value(monkeypatch):
    good = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}
    assert worker_count(read_tf_config(json.dumps(good))) == 2
    assert read_tf_config("") is None and worker_count(None) == 1
    cases = {
        "{not json": "TF_CONFIG is not JSON (Expecting property name enclosed in double quotes at character 1)",
        json.dumps({"cluster": good["cluster"]}): "TF_CONFIG has no task with a type and an index",
        json.dumps({**good, "task": {"type": "worker", "index": 2}}):
            "TF_CONFIG task index 2 is out of range: the cluster has 2 'worker' tasks (index 0 to 1)",
        json.dumps({**good, "task": {"type": "chief", "index": 0}}):
            "TF_CONFIG task type 'chief' is not a job of its cluster ['worker']",
        json.dumps({"cluster": {"worker": ["no-port"]}, "task": {"type": "worker", "index": 0}}):
            "TF_CONFIG cluster job 'worker' must list 'host:port' addresses, got ['no-port']",
        json.dumps({"task": good["task"]}): "TF_CONFIG has no cluster",
    }
    for text, message in cases.items():
        monkeypatch.setenv("TF_CONFIG", text)
        with pytest.raises(ValueError) as error:
            make_strategy("auto")
        assert str(error.value).startswith(message) and "\n" not in str(error.value), str(error.value)
    monkeypatch.delenv("TF_CONFIG")
    assert make_strategy("one") is None
    assert make_strategy("auto") is None  # no cluster, no GPUs here: one device
    with pytest.raises(ValueError, match="^expected a strategy in auto, one, mirrored, multi-worker, got 'two'$"):
        make_strategy("two")


def test_only_errors_that_mean_a_lost_peer_are_named_so():
    lost = tf.errors.UnavailableError(None, None, "Graph execution error: Collective ops is aborted by: "
                                      "recvmsg:Connection reset by peer Additional GRPC error information")
    assert peer_failure(lost) == "UnavailableError: recvmsg:Connection reset by peer"
    assert peer_failure(tf.errors.InvalidArgumentError(None, None, "shapes differ")) is None
    assert peer_failure(ValueError("no")) is None


# -- two worker processes ---------------------------------------------------------------------

def _relative(one, other, initial, names):
    """|one - other| over the largest change of the same network (distributed_step.py's measure), per weight.

    Networks that the losses do not reach (the discriminator without the GAN) do not change and are left out.
    """
    scale = {}
    for a, w, n in zip(one, initial, names):
        scale[n.split("/")[0]] = max(scale.get(n.split("/")[0], 0.0), float(np.abs(a - w).max()))
    return [float(np.abs(a - b).max() / scale[n.split("/")[0]]) if scale[n.split("/")[0]] > 0 else 0.0
            for a, b, n in zip(one, other, names)]


def _load(path):
    with np.load(path) as f:
        arrays = [f[f"arr_{i}"] for i in range(len(f.files) - 2)]
        return arrays[:len(arrays) // 2], arrays[len(arrays) // 2:], json.loads(str(f["losses"])), \
            json.loads(str(f["names"]))


def test_two_workers_equal_one_process_with_the_same_global_batch(data, tmp_path):
    """Two steps of the real data path, each worker its half of every global batch of 4.

    As in test_training.py's two-replica test: SGD at rate 1 (a change is a gradient), the
    first step's losses to float32 rounding (the same weights and batch, batch norm over both
    workers), the weights after both steps within 4 times the model's own noise floor
    (measured: 2.6 times; the noise floor 0.0068 of the largest change).
    """
    config = json.dumps(SMALL)
    args = [str(SCRIPT), "worker", config, str(data), str(tmp_path), "2"]
    workers = _launch(args, tmp_path, "steps")
    single = subprocess.run([sys.executable, str(SCRIPT), "one", config, str(data), str(tmp_path), "2"],
                            env=_env(), capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    codes = _wait(workers, 900)
    assert codes == [0, 0], [(tmp_path / f"steps-{i}.log").read_text()[-3000:] for i in range(2)]

    initial, one, losses_one, names = _load(tmp_path / "one.npz")
    _, noisy, _, _ = _load(tmp_path / "noise.npz")
    _, chief, losses_two, _ = _load(tmp_path / "worker-0.npz")
    _, other, losses_other, _ = _load(tmp_path / "worker-1.npz")
    assert len(losses_two) == len(losses_one) == 2
    assert losses_two == losses_other  # summed over both workers, the same on each
    for name, value in losses_one[0].items():  # step 1: the same weights, the same batch
        np.testing.assert_allclose(losses_two[0][name], value, rtol=1e-5, err_msg=name)
    assert _worker_folders(tmp_path / "steps-tmp") == []  # worker 1 removed its checkpoint copies
    for a, b in zip(chief, other):  # the mirrored copies stay in step
        np.testing.assert_array_equal(a, b)
    assert max(float(np.abs(a - w).max()) for a, w in zip(one, initial)) > 1e-3  # the steps moved the weights
    noise_floor = max(_relative(one, noisy, initial, names))
    difference = _relative(one, chief, initial, names)
    print(f"noise floor {noise_floor:.3g}, two workers {max(difference):.3g}, losses step 1 max abs "
          f"{max(abs(losses_two[0][k] - v) for k, v in losses_one[0].items()):.3g}")
    assert 0 < noise_floor < 0.05
    assert all(np.isfinite(difference))
    assert max(difference) <= 4 * noise_floor, sorted(zip(difference, names), reverse=True)[:5]


def _train(run, data, config, *extra):
    return ["-m", "fomm_lessons.cli", "train", "--strategy", "multi-worker", "--config", str(config),
            "--data", str(data), "--out", str(run), "--vgg", "random", "--checkpoint-every", "1", *extra]


def _last_line(path):
    return path.read_text().strip().splitlines()[-1]


def test_a_killed_worker_stops_the_other_and_a_restart_resumes(data, tmp_path):
    import yaml

    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(SMALL))
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    workers = _launch(_train(run, data, config, "--steps", "50"), tmp_path, "first")
    try:
        deadline = time.monotonic() + 900
        while not (checkpoints / "ckpt-2.index").exists():
            assert time.monotonic() < deadline and all(w.poll() is None for w in workers), \
                [(tmp_path / f"first-{i}.log").read_text()[-3000:] for i in range(2)]
            time.sleep(0.2)
        workers[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = workers[0].wait(timeout=300)  # bounded: never a hang (measured 10 s idle, 59 s at load 7)
        detected = time.monotonic() - killed
    finally:
        _wait(workers, 1)
    print(f"the chief stopped {detected:.1f} s after worker 1 was killed")
    last = sorted(int(p.name[5:-6]) for p in checkpoints.glob("ckpt-*.index"))[-1]
    line = _last_line(tmp_path / "first-0.log")
    assert code == 2, line
    assert line.startswith("fomm-lessons train: error: worker 0 of 2 stops: another worker is gone "
                           "(UnavailableError: "), line
    assert line.endswith(f"restart every worker with --resume to continue from {checkpoints / f'ckpt-{last}'}")
    assert "stopped: worker 0 of 2 stops" in (run / "train.log").read_text()
    # The chief alone wrote the run folder (log.csv may be missing: the epoch's end needs both workers);
    # the killed worker's checkpoint copies are in a temporary folder of its own.
    # (and the mark that claims the folder as a run's: fomm_lessons.data.media.OUTPUT_MARK)
    assert set(os.listdir(run)) <= {"checkpoints", "log.csv", "models", "tensorboard", "train.lock", "train.log",
                                    OUTPUT_MARK}
    assert all(p.name == "checkpoint" or p.name.startswith("ckpt-") for p in checkpoints.iterdir())
    assert len(_worker_folders(tmp_path / "first-tmp")) == 1

    # Both again, from the last checkpoint: the step is the checkpoint's, and so are the weights, which
    # the first step's losses (computed before any update) show against one process restored from it.
    workers = _launch(_train(run, data, config, "--steps", str(last + 1), "--resume"), tmp_path, "again")
    expected = _one_process_step_from(run, data, last)
    codes = _wait(workers, 900)
    logs = [(tmp_path / f"again-{i}.log").read_text() for i in range(2)]
    assert codes == [0, 0], [text[-3000:] for text in logs]
    assert _worker_folders(tmp_path / "again-tmp") == []  # worker 1 removed its checkpoint copies
    for text in logs:
        assert f"resuming from {checkpoints / f'ckpt-{last}'} (step {last})" in text
        assert f"trained to step {last + 1}" in text
    assert "strategy: MultiWorkerMirroredStrategy, 2 replicas on 2 workers (this is worker 1, not the chief)" \
        in logs[1]
    resumed = _tensorboard_losses(run / "tensorboard", last + 1)
    assert set(resumed) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(resumed[name], value, rtol=1e-5, err_msg=name)


def _one_process_step_from(run, data, step):
    """The losses of step ``step + 1`` in this process, from a copy of the run folder's checkpoint ``step``."""
    import shutil

    import keras

    from fomm_lessons.data.loader import FramesDataset
    from fomm_lessons.training import Trainer

    copy_of = run.parent / "one-process"
    shutil.copytree(run / "checkpoints", copy_of / "checkpoints")
    keras.utils.set_random_seed(0)
    trainer = Trainer(copy.deepcopy(SMALL), copy_of, xla=False, mixed_precision="off", vgg_weights="random",
                      checkpoint_every=100)
    path = trainer.restore()
    assert path.endswith(f"ckpt-{step}") and int(trainer.step.numpy()) == step
    frames = FramesDataset.from_config(data, SMALL["dataset_params"], "train")
    seen = {}
    # One step, run op by op: the same numbers to float32 rounding as the traced step, without the
    # ~20 s of tracing it would cost while both workers trace theirs on the same two cores.
    with untraced():
        trainer.fit(frames, steps=step + 1, progress=False, on_step=lambda s, losses: seen.update(losses))
    return seen


def _tensorboard_losses(folder, step):
    """The ``loss/*`` scalars that the run folder's TensorBoard events hold for ``step`` (the latest written)."""
    found = {}
    for path in sorted(Path(folder).glob("events.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            if event.step == step:
                for value in event.summary.value:
                    if value.tag.startswith("loss/") and event.wall_time >= found.get(value.tag[5:], (0, 0))[0]:
                        found[value.tag[5:]] = (event.wall_time, float(tf.make_ndarray(value.tensor)))
    return {name: value for name, (_, value) in found.items()}

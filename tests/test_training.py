"""The trainer: exact resume, checkpoints on signals, NaN stops, schedule, logs, two replicas."""

import contextlib
import copy
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from fomm_lessons.training import Trainer, TrainingDiverged, learning_rate

TINY = {
    "dataset_params": {
        "frame_shape": [64, 64, 3], "id_sampling": False,
        "augmentation_params": {"flip_param": {"horizontal_flip": True, "time_flip": True},
                                "jitter_param": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1}},
    },
    "model_params": {
        "common_params": {"num_kp": 4, "num_channels": 3, "estimate_jacobian": True},
        "kp_detector_params": {"temperature": 0.1, "block_expansion": 4, "max_features": 16, "scale_factor": 0.5,
                               "num_blocks": 3},
        "generator_params": {"block_expansion": 4, "max_features": 16, "num_down_blocks": 2,
                             "num_bottleneck_blocks": 1, "estimate_occlusion_map": True,
                             "dense_motion_params": {"block_expansion": 4, "max_features": 16, "num_blocks": 3,
                                                     "scale_factor": 0.5}},
        "discriminator_params": {"scales": [1], "block_expansion": 4, "max_features": 16, "num_blocks": 4,
                                 "sn": True},
    },
    "train_params": {
        "num_epochs": 3, "num_repeats": 1, "epoch_milestones": [1], "lr_generator": 2e-4,
        "lr_discriminator": 2e-4, "lr_kp_detector": 2e-4, "batch_size": 4, "scales": [1, 0.5],
        "transform_params": {"sigma_affine": 0.05, "sigma_tps": 0.005, "points_tps": 5},
        "loss_weights": {"generator_gan": 1, "discriminator_gan": 1, "feature_matching": [10, 10, 10, 10],
                         "perceptual": [10, 10, 0, 0, 0], "equivariance_value": 10, "equivariance_jacobian": 10},
    },
}


# TINY without the GAN and with one perceptual scale: the same three networks and batch norms with a
# third fewer operations to trace (22 s against 32 s for the first step here). The tests of what the
# command and the trainer do around the step (signals, a full disk, refusals) use it; the tests of the
# step's numbers (resume, non-finite weights, mixed precision, replicas) train the GAN too.
PLAIN = copy.deepcopy(TINY)
PLAIN["train_params"]["scales"] = [1]
PLAIN["train_params"]["loss_weights"].update(generator_gan=0, discriminator_gan=0, feature_matching=[0, 0, 0, 0],
                                             perceptual=[10, 10, 0, 0, 0])


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    from fomm_lessons.data.loader import FramesDataset
    from fomm_lessons.data.sample import make_sample_dataset

    root = tmp_path_factory.mktemp("sample-64")
    make_sample_dataset(root, size=64, seed=0)
    return FramesDataset.from_config(root, TINY["dataset_params"], "train")


@pytest.fixture(autouse=True)
def deterministic():
    tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(0)


@contextlib.contextmanager
def untraced():
    """Inside it, the step runs op by op, untraced (``tf.config.run_functions_eagerly``).

    For the tests of what happens between steps (signals, refusals, skipped checkpoints, what a
    probe puts back), which take a few steps each: a step then costs ~4 s here instead of ~20 s
    of tracing first. The traced step itself is what the other tests of the step run.
    """
    tf.config.run_functions_eagerly(True)
    try:
        with warnings.catch_warnings():  # tf.data's functions stay traced, as they should
            warnings.filterwarnings("ignore", "Even though the `tf.config.experimental_run_functions_eagerly`")
            yield
    finally:
        tf.config.run_functions_eagerly(False)


@pytest.fixture
def eager_step():
    """:func:`untraced` for the whole test."""
    with untraced():
        yield


def _trainer(out, config=TINY, **kwargs):
    keras.utils.set_random_seed(0)  # the same initial weights (and random VGG) in every run
    kwargs.setdefault("vgg_weights", "random")
    kwargs.setdefault("mixed_precision", "off")
    return Trainer(copy.deepcopy(config), out, xla=False, **kwargs)


def test_learning_rate_schedule_is_multistep():
    assert [learning_rate(1.0, e, [60, 90]) for e in (0, 59, 60, 89, 90, 99)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.filterwarnings("ignore:Vgg19Features uses RANDOM weights")
def test_resume_continues_exactly(frames, tmp_path):
    # One run of 4 steps checkpoints at step 3, in the middle of epoch 1 (2 steps an epoch). A second
    # trainer gets only that checkpoint, as a crash between steps 3 and 4 would leave it, and trains
    # step 4: it must end where the run that went on ended. (Two traced trainers, not three.)
    straight = _trainer(tmp_path / "straight", checkpoint_every=3)
    straight.fit(frames, steps=4, progress=False)
    assert int(straight.step.numpy()) == 4 and int(straight.epoch.numpy()) == 2
    written = tmp_path / "straight" / "checkpoints"
    assert sorted(p.name for p in written.glob("ckpt-*.index")) == ["ckpt-2.index", "ckpt-3.index",
                                                                     "ckpt-4.index"]

    left = tmp_path / "split" / "checkpoints"
    left.mkdir(parents=True)
    for path in written.glob("ckpt-3.*"):
        shutil.copy(path, left)
    tf.compat.v1.train.update_checkpoint_state(  # the list CheckpointManager reads: path and time
        str(left), str(left / "ckpt-3"), all_model_checkpoint_paths=[str(left / "ckpt-3")],
        all_model_checkpoint_timestamps=[os.path.getmtime(left / "ckpt-3.index")])
    resumed = _trainer(tmp_path / "split", checkpoint_every=100)
    assert resumed.restore() == str(left / "ckpt-3")
    assert (int(resumed.step.numpy()), int(resumed.epoch.numpy())) == (3, 1)
    resumed.fit(frames, steps=4, progress=False)
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_array_equal(a, b)
    for name in straight.optimizers:  # the Adam moments and the schedule too
        for a, b in zip(straight.optimizers[name].variables, resumed.optimizers[name].variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert float(resumed.optimizers["generator"].learning_rate.numpy()) == pytest.approx(2e-5)  # epoch 1 >= 1

    with open(tmp_path / "straight" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert set(rows[0]) >= {"perceptual", "gen_gan", "feature_matching", "equivariance_value",
                            "equivariance_jacobian", "disc_gan"}
    assert all(np.isfinite(float(v)) for r in rows for v in r.values())
    assert any(p.name.startswith("events") for p in (tmp_path / "straight" / "tensorboard").iterdir())


@pytest.mark.filterwarnings("ignore:Vgg19Features uses RANDOM weights")
def test_sigterm_saves_a_checkpoint_and_stops(frames, tmp_path, eager_step):
    trainer = _trainer(tmp_path / "run", PLAIN, checkpoint_every=100)
    before = signal.getsignal(signal.SIGTERM)
    trainer.fit(frames, steps=6, progress=False,
                on_step=lambda step, losses: step == 2 and signal.raise_signal(signal.SIGTERM))
    assert int(trainer.step.numpy()) == 2 and trainer.interrupted == signal.SIGTERM
    assert trainer.manager.latest_checkpoint.endswith("ckpt-2")
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is given back
    # Stopped at the last step of epoch 0, before the epoch was counted: the next fit goes on from there.
    assert int(trainer.epoch.numpy()) == 0
    trainer.fit(frames, steps=3, progress=False)
    assert (int(trainer.step.numpy()), int(trainer.epoch.numpy()), trainer.interrupted) == (3, 1, None)


@pytest.mark.filterwarnings("ignore:Vgg19Features uses RANDOM weights")
def test_nan_weights_or_losses_stop_training_and_keep_the_last_good_checkpoint(frames, tmp_path):
    trainer = _trainer(tmp_path / "run", checkpoint_every=1)
    trainer.fit(frames, steps=1, progress=False)
    models = {name: (tmp_path / "run" / "models" / name).read_bytes()
              for name in ("kp_detector.weights.h5", "generator.weights.h5", "discriminator.weights.h5")}

    # Adam's update overflows within step 2: that step's loss is finite, the weights after it are not.
    optimizer = trainer.optimizers["kp_detector"]
    momentum = next(v for v in optimizer.variables if "momentum" in v.path)
    momentum.assign(tf.fill(momentum.shape, float("inf")))
    with pytest.raises(TrainingDiverged, match=r"^\d+ weights are NaN or Inf at step 2 .*no checkpoint was "
                                               r"written; the last good checkpoint is .*ckpt-1$") as error:
        trainer.fit(frames, steps=4, progress=False)
    named = str(error.value).rsplit(" ", 1)[1]
    assert all(np.all(np.isfinite(v)) for v in _checkpoint_tensors(named).values()
               if np.issubdtype(v.dtype, np.floating))
    assert [p.rsplit("/", 1)[1] for p in trainer.manager.checkpoints] == ["ckpt-1"]
    assert models == {name: (tmp_path / "run" / "models" / name).read_bytes() for name in models}

    # A non-finite checkpoint, as older versions wrote them, is never named the last good one.
    trainer.manager.save(checkpoint_number=2)
    with pytest.raises(TrainingDiverged, match=r"^loss \w+ is (nan|inf) at step 3; the last good checkpoint is "
                                               r".*ckpt-1$"):
        trainer.fit(frames, steps=4, progress=False)
    assert trainer.manager.latest_checkpoint.endswith("ckpt-2") and trainer.last_good_checkpoint().endswith("ckpt-1")


@pytest.mark.slow
def test_two_replicas_equal_one_device_with_the_same_global_batch(tmp_path):
    """MirroredStrategy over 2 logical CPUs against one device, from the same weights and batch.

    The losses agree to float32 rounding. The gradients are compared with the
    model's own float32 noise floor: this small random model's keypoint
    detector is ill-conditioned, and a change of one part in 10^6 in the input
    already moves its gradients by ~0.3% on one device. The two-replica step
    must stay within a few times that (a wrong loss scaling or an unsynchronised
    batch norm gives differences of tens of percent).
    """
    script = Path(__file__).parent / "scripts" / "distributed_step.py"
    result = subprocess.run([sys.executable, str(script), json.dumps(TINY), str(tmp_path)],
                            capture_output=True, text=True, timeout=900,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["max_weight_change"] > 1e-3  # the step did move the weights
    assert set(report["losses_two"]) == set(report["losses_one"])
    for name, value in report["losses_one"].items():
        np.testing.assert_allclose(report["losses_two"][name], value, rtol=1e-5, err_msg=name)
    assert 0 < report["noise_floor"] < 0.05
    assert report["max_relative_difference"] <= 4 * report["noise_floor"], report["worst"]


@pytest.mark.filterwarnings("ignore:Vgg19Features uses RANDOM weights")
def test_train_command_runs_resumes_and_refuses_to_overwrite(frames, tmp_path, capsys, eager_step):
    import yaml

    from fomm_lessons import cli

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**PLAIN, "dataset_params": {**PLAIN["dataset_params"], "root_dir": frames.root}}))
    args = ["train", "--config", str(config), "--data", str(frames.root), "--out", str(tmp_path / "run"),
            "--vgg", "random", "--checkpoint-every", "1"]
    assert cli.main(args + ["--steps", "2"]) == 0
    assert "VGG19 weights for the perceptual loss: random (seed 0)" in capsys.readouterr().out
    assert cli.main(args + ["--steps", "2"]) == 2  # the run folder already holds a checkpoint
    assert "--resume" in capsys.readouterr().err

    # The newest checkpoint is cut short (a copy interrupted, a disk that failed): resume from the one before.
    checkpoints = tmp_path / "run" / "checkpoints"
    data = checkpoints / "ckpt-2.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    assert cli.main(args + ["--steps", "3", "--resume"]) == 0
    out, err = capsys.readouterr()
    assert f"warning: skipping the checkpoint {checkpoints / 'ckpt-2'}: it cannot be read (" in err
    assert f"resuming from {checkpoints / 'ckpt-1'} (step 1)" in out and "trained to step 3" in out
    assert (checkpoints / "ckpt-3.index").exists() and (tmp_path / "run" / "models").is_dir()
    assert all(np.all(np.isfinite(v)) for v in _checkpoint_tensors(checkpoints / "ckpt-2").values()
               if np.issubdtype(v.dtype, np.floating))  # written again, whole
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("VGG19 weights random (seed 0)") == 2 and log.count("done at step") == 2
    assert "skipped the checkpoint" in log


def _one_line_error(status, err, *fragments):
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("fomm-lessons train: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_train_command_refuses_bad_numbers_and_incomplete_configs(frames, tmp_path, capsys):
    import yaml

    from fomm_lessons import cli

    def train(config, *extra):
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        status = cli.main(["train", "--config", str(path), "--data", str(frames.root), "--out",
                           str(tmp_path / "run"), "--vgg", "random", *extra])
        return status, capsys.readouterr().err

    _one_line_error(*train(TINY, "--steps", "-3"), "--steps must be a positive number of steps, got -3")
    _one_line_error(*train(TINY, "--steps", "0"), "got 0")
    _one_line_error(*train(TINY, "--checkpoint-every", "0"), "--checkpoint-every must be a positive")
    _one_line_error(*train({"model_params": TINY["model_params"]}), "train needs train_params, which is missing",
                    "found sections ['model_params']")
    no_discriminator = {**TINY, "model_params": {k: v for k, v in TINY["model_params"].items()
                                                 if k != "discriminator_params"}}
    _one_line_error(*train(no_discriminator), "train needs model_params.discriminator_params")
    for rate in (1.0e39, -1.0, 0.0):
        config = copy.deepcopy(TINY)
        config["train_params"]["lr_generator"] = rate
        _one_line_error(*train(config), "lr_generator must be", f"got {rate!r}")
    assert not (tmp_path / "run").exists()  # refused before anything was written


LOCK_HOLDER = """
import fcntl, os, sys
with open(sys.argv[1], "a+") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    handle.seek(0); handle.truncate(); handle.write(str(os.getpid())); handle.flush()
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_train_into_the_same_folder_ends_at_once(frames, tmp_path, capsys):
    from fomm_lessons import cli

    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run / "train.lock")], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # as a first run holds it
    try:
        assert other.stdout.readline().strip() == "locked"
        status = cli.main(["train", "--config", "cpu-64", "--data", str(frames.root), "--out", str(run),
                           "--vgg", "random"])
        _one_line_error(status, capsys.readouterr().err, f"the run folder {run} is in use by another training run "
                        f"(process {other.pid})")
    finally:
        other.communicate("")
    assert sorted(os.listdir(run)) == ["train.lock"]


@pytest.mark.filterwarnings("ignore:Vgg19Features uses RANDOM weights")
def test_sigint_saves_says_how_to_resume_and_exits_130(frames, tmp_path, capsys, eager_step):
    import threading
    import time

    import fcntl
    import yaml

    from fomm_lessons import cli

    config = tmp_path / "tiny.yaml"
    long = copy.deepcopy(PLAIN)
    long["train_params"]["num_epochs"] = 100  # the run must still be going when the signal comes
    config.write_text(yaml.safe_dump(long))
    run = tmp_path / "run"
    seen = {}

    def interrupt_after_the_first_checkpoint():
        deadline = time.monotonic() + 600
        while not (run / "checkpoints" / "ckpt-1.index").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(run / "train.lock") as handle:  # the run holds its folder
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen["locked"] = False
            except BlockingIOError:
                seen["locked"] = handle.read().strip() == str(os.getpid())
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=interrupt_after_the_first_checkpoint, daemon=True)
    thread.start()
    status = cli.main(["train", "--config", str(config), "--data", str(frames.root), "--out", str(run),
                       "--vgg", "random", "--steps", "40", "--checkpoint-every", "1"])
    thread.join(timeout=60)
    err = capsys.readouterr().err
    assert status == 130, err
    assert seen["locked"] is True
    last = err.strip().splitlines()[-1]
    steps = sorted(int(p.name[5:-6]) for p in (run / "checkpoints").glob("ckpt-*.index"))
    assert 1 <= steps[-1] < 40
    assert last == (f"fomm-lessons train: interrupted by SIGINT at step {steps[-1]}; the checkpoint "
                    f"{run / 'checkpoints' / f'ckpt-{steps[-1]}'} is saved; continue with: fomm-lessons train "
                    f"--config {config} --data {frames.root} --out {run} --steps 40 --checkpoint-every 1 --vgg random "
                    "--resume")
    assert "interrupted by SIGINT" in (run / "train.log").read_text()


def _plain_config(tmp_path, **train_params):
    import yaml

    config = copy.deepcopy(PLAIN)
    config["train_params"].update(train_params)
    path = tmp_path / "plain.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.filterwarnings("ignore:Vgg19Features uses RANDOM weights")
def test_a_second_sigint_during_the_save_finishes_it_and_logs_the_end(frames, tmp_path, capsys, eager_step,
                                                                      monkeypatch):
    from fomm_lessons import cli

    original = Trainer.save

    def save_under_two_interrupts(trainer):  # Ctrl-C, then Ctrl-C again while the checkpoint is written
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        return original(trainer)

    monkeypatch.setattr(Trainer, "save", save_under_two_interrupts)
    run = tmp_path / "run"
    status = cli.main(["train", "--config", str(_plain_config(tmp_path, num_epochs=100)), "--data",
                       str(frames.root), "--out", str(run), "--vgg", "random", "--steps", "40",
                       "--checkpoint-every", "1"])
    err = capsys.readouterr().err
    assert status == 130, err
    assert "the checkpoint is being written; stopping as soon as it is" in err
    assert (run / "checkpoints" / "ckpt-1.index").exists()
    assert "interrupted by SIGINT at step 1" in (run / "train.log").read_text().splitlines()[-1]


def test_an_unwritable_run_folder_is_refused_before_the_first_step(frames, tmp_path, capsys):
    from fomm_lessons import cli

    from fomm_lessons.data.media import claim_output_folder

    run = tmp_path / "run"
    claim_output_folder(run, "train")  # an earlier run's folder
    (run / "models").write_text("a file where the exported models go")  # root writes any read-only folder
    status = cli.main(["train", "--config", str(_plain_config(tmp_path)), "--data", str(frames.root), "--out",
                       str(run), "--vgg", "random", "--steps", "2"])
    _one_line_error(status, capsys.readouterr().err, f"cannot write the run folder: {run / 'models'} is not a "
                    "writable folder")
    assert not (run / "checkpoints").exists()  # no step was taken
    assert (run / "models").read_text() == "a file where the exported models go"


@pytest.mark.filterwarnings("ignore:Vgg19Features uses RANDOM weights")
def test_an_unexpected_error_still_writes_the_end_line(frames, tmp_path, capsys, monkeypatch):
    from fomm_lessons import cli

    def fail(*args, **kwargs):
        raise RuntimeError("the device went away")

    monkeypatch.setattr(Trainer, "fit", fail)
    run = tmp_path / "run"
    status = cli.main(["train", "--config", str(_plain_config(tmp_path)), "--data", str(frames.root), "--out",
                       str(run), "--vgg", "random", "--steps", "2"])
    assert status == 1 and "unexpected error: RuntimeError: the device went away" in capsys.readouterr().err
    assert (run / "train.log").read_text().splitlines()[-1].endswith(
        "stopped by RuntimeError: the device went away")


def test_train_never_writes_into_a_folder_of_other_files_or_the_data(frames, tmp_path, capsys):
    from fomm_lessons import cli
    from fomm_lessons.data.media import OUTPUT_MARK

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "log.csv").write_text("my own numbers\n")
    base = ["train", "--config", str(_plain_config(tmp_path)), "--data", str(frames.root), "--vgg", "random"]
    _one_line_error(cli.main(base + ["--out", str(mine)]), capsys.readouterr().err,
                    f"refusing to write into {mine}", "log.csv")
    assert sorted(os.listdir(mine)) == ["log.csv"] and (mine / "log.csv").read_text() == "my own numbers\n"
    _one_line_error(cli.main(base + ["--out", str(frames.root)]), capsys.readouterr().err,
                    f"--out {frames.root} is the input --data {frames.root}")
    assert not (Path(frames.root) / OUTPUT_MARK).exists()


@pytest.mark.filterwarnings("ignore:Vgg19Features uses RANDOM weights")
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_step_gives_finite_float32_losses(tmp_path, precision):
    """bfloat16 (TPUs; 1.6x faster on this CPU) and float16 with loss scaling (GPUs)."""
    trainer = _trainer(tmp_path / precision, mixed_precision=precision)
    assert trainer.models.generator.compute_dtype == precision
    assert keras.mixed_precision.global_policy().name == "float32"  # the policy is not left behind
    rng = np.random.default_rng(0)
    batch = {"source": rng.random((4, 64, 64, 3), np.float32), "driving": rng.random((4, 64, 64, 3), np.float32),
             "tps_theta": np.tile(np.eye(2, 3, dtype=np.float32), (4, 1, 1)),
             "tps_params": np.zeros((4, 25), np.float32)}
    before = [w.copy() for w in trainer.get_weights()]
    losses, _ = trainer.train_step({k: tf.constant(v) for k, v in batch.items()})
    assert all(v.dtype == tf.float32 and np.isfinite(v.numpy()) for v in losses.values())
    assert any(not np.array_equal(a, b) for a, b in zip(before, trainer.get_weights()))


def _checkpoint_tensors(prefix):
    reader = tf.train.load_checkpoint(str(prefix))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH"}


@pytest.mark.filterwarnings("ignore:Vgg19Features uses RANDOM weights")
def test_the_seed_sets_the_initial_weights(tmp_path):
    """Same seed, same weights (the networks' and a random VGG19's) whatever ran before; another seed differs.

    With the same weights the steps are the same too: test_resume_continues_exactly compares two runs bit for bit.
    """
    runs = {}
    for name, seed, disturb in (("a", 0, 1), ("b", 0, 2), ("c", 1, 1)):
        keras.utils.set_random_seed(disturb)  # whatever ran before must not matter
        keras.random.uniform([disturb])
        trainer = Trainer(copy.deepcopy(TINY), tmp_path / name, xla=False, mixed_precision="off", seed=seed,
                          vgg_weights="random")
        runs[name] = (trainer.get_weights(), [w.numpy() for w in trainer.vgg.weights])
        paths = [w.path for net in (trainer.models.kp_detector, trainer.models.generator,
                                    trainer.models.discriminator) for w in net.weights]
    (a, vgg_a), (b, vgg_b), (c, vgg_c) = runs["a"], runs["b"], runs["c"]
    assert len(a) == len(b) >= 150
    for x, y in zip(a + vgg_a, b + vgg_b):
        np.testing.assert_array_equal(x, y)
    # Drawn at random: not the zero biases, unit scales, or the identity the Jacobian's bias starts at.
    drawn = [i for i, x in enumerate(a) if x.std() > 0 and not paths[i].endswith("jacobian/bias")]
    assert len(drawn) > 50 and all(not np.array_equal(a[i], c[i]) for i in drawn)
    assert all(not np.array_equal(x, y) for x, y in zip(vgg_a[::2], vgg_c[::2]))  # the 13 kernels


FILL_THE_DISK = """
mount -t tmpfs -o size=64m tmpfs "$1" || exit 99
"$2" -m fomm_lessons.cli train --config "$3" --data "$4" --out "$1/run" --vgg random --steps 6 \\
    --checkpoint-every 1 2>"$5/stderr" &
trainer=$!
while [ ! -e "$1/run/models/discriminator.weights.h5" ] && kill -0 $trainer 2>/dev/null; do sleep 0.01; done
dd if=/dev/zero of="$1/filler" bs=1M 2>/dev/null  # until the disk is full
wait $trainer
status=$?
cp -r "$1/run" "$5/after"
exit $status
"""


@pytest.mark.filterwarnings("ignore:Vgg19Features uses RANDOM weights")
def test_a_full_disk_ends_in_one_line_and_keeps_the_last_checkpoint(frames, tmp_path):
    """A real full disk: a 64 MB tmpfs in a mount namespace of this test's own, filled up after the first checkpoint."""
    import yaml

    mount = tmp_path / "disk"
    mount.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mount}"],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip(f"no tmpfs can be mounted in a user namespace here ({probe and probe.stderr.strip()})")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(PLAIN))
    done = subprocess.run(["unshare", "-rm", "sh", "-c", FILL_THE_DISK, "sh", str(mount), sys.executable, str(config),
                           str(frames.root), str(tmp_path)], capture_output=True, text=True, timeout=900)
    err = (tmp_path / "stderr").read_text()
    assert done.returncode == 2, err[-3000:]
    last = err.strip().splitlines()[-1]
    step = int(last.split("the checkpoint of step ")[1].split()[0])
    checkpoints = mount / "run" / "checkpoints"
    assert last == (f"fomm-lessons train: error: the disk is full: cannot write the checkpoint of step {step} to "
                    f"{checkpoints}; the last good checkpoint, {checkpoints / f'ckpt-{step - 1}'}, is kept")
    after = tmp_path / "after"
    kept = sorted(p.name for p in (after / "checkpoints").iterdir())
    assert kept[-2:] == [f"ckpt-{step - 1}.data-00000-of-00001", f"ckpt-{step - 1}.index"]  # nothing of step N
    assert all(np.all(np.isfinite(v)) for v in _checkpoint_tensors(after / "checkpoints" / f"ckpt-{step - 1}").values()
               if np.issubdtype(v.dtype, np.floating))
    from fomm_lessons.checkpoint import load_models

    load_models(str(after / "models"), PLAIN["model_params"])  # the export is whole
    assert sorted(os.listdir(after / "models")) == ["discriminator.weights.h5", "generator.weights.h5",
                                                    "kp_detector.weights.h5"]



def test_auto_precision_on_a_cpu_takes_bfloat16_only_where_native_and_measured_faster(tmp_path):
    from fomm_lessons.training import bfloat16_speedup, cpu_native_bfloat16, device_defaults

    plain, amx = tmp_path / "plain", tmp_path / "amx"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    amx.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu_native_bfloat16(str(plain)) == [] and cpu_native_bfloat16(str(amx)) == ["amx_bf16", "avx512_bf16"]
    assert cpu_native_bfloat16(str(tmp_path / "missing")) == []

    def never():
        raise AssertionError("no probe where bfloat16 is emulated")

    xla, precision, why = device_defaults(cpu_probe=never, cpuinfo=str(plain))
    assert (xla, precision) == (False, "off") and "without native bfloat16" in why
    assert device_defaults(cpu_probe=lambda: 1.8, cpuinfo=str(amx))[1] == "bfloat16"
    _, precision, why = device_defaults(cpu_probe=lambda: 0.9, cpuinfo=str(amx))
    assert precision == "off" and "0.90x" in why
    assert 0.0 < bfloat16_speedup(repeats=1) < 100.0


def test_collapse_monitors_measure_spread_and_masks_in_use():
    from fomm_lessons.training import collapse_monitors

    kp = np.array([[[0.0, 0.0], [0.5, 0.0], [-0.5, 0.0], [0.0, 0.5]]], np.float32)  # centroid (0, 0.125)
    expected = np.mean(np.linalg.norm(kp[0] - kp[0].mean(0), axis=-1)) / 2
    mask = np.zeros((1, 10, 10, 5), np.float32)
    mask[..., 0] = 1.0  # the background mask wins everywhere ...
    mask[0, :3, :, 0], mask[0, :3, :, 2] = 0.0, 1.0  # ... but on 30% of the pixels, where mask 2 wins
    mask[0, 9, 9, 0], mask[0, 9, 9, 4] = 0.0, 1.0  # mask 4 wins 1% of the pixels: not in use
    monitors = collapse_monitors({"kp_driving": {"value": tf.constant(kp)}, "mask": tf.constant(mask)})
    np.testing.assert_allclose(float(monitors["kp_spread"]), expected, rtol=1e-6)
    assert float(monitors["masks_in_use"]) == 2.0
    same = collapse_monitors({"kp_driving": {"value": tf.constant(np.zeros((2, 5, 2), np.float32))}})
    assert float(same["kp_spread"]) == 0.0 and "masks_in_use" not in same


def test_init_from_starts_from_another_runs_weights_and_refuses_another_architecture(frames, tmp_path, capsys,
                                                                                      eager_step):
    """``train --init-from`` (fine-tuning): the first run's exported networks, not the seed's, start
    the second run, which ``--minutes`` stops after its first step with a checkpoint; a run of another
    architecture is refused in one line before its folder is made."""
    import yaml

    from fomm_lessons import cli
    from fomm_lessons.checkpoint import load_models

    pixels = copy.deepcopy(PLAIN)  # an L1 pyramid, not the perceptual loss: no VGG19 to build three times
    pixels["train_params"]["loss_weights"].update(perceptual=[0, 0, 0, 0, 0], pixel=[10])
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**pixels, "dataset_params": {**PLAIN["dataset_params"], "root_dir": frames.root}}))
    common = ["--config", str(config), "--data", str(frames.root)]
    assert cli.main(["train", *common, "--out", str(tmp_path / "first"), "--steps", "1"]) == 0
    first = load_models(tmp_path / "first" / "models", PLAIN["model_params"])
    second_args = ["train", *common, "--out", str(tmp_path / "second"), "--seed", "1", "--minutes", "0.001",
                   "--init-from", str(tmp_path / "first")]
    assert cli.main(second_args) == 0
    out = capsys.readouterr().out
    assert f"starting from the weights of {tmp_path / 'first'} (kp_detector, generator); new optimizers" in out
    checkpoints = tmp_path / "second" / "checkpoints"
    assert (f"stopped at the time budget of 0.001 minutes at step 1; the checkpoint {checkpoints / 'ckpt-1'}; "
            "continue with: ") in out and "--minutes 0.001" in out and out.rstrip().endswith("--resume")
    log = (tmp_path / "second" / "train.log").read_text()
    assert f"initialized from {tmp_path / 'first'}: kp_detector, generator" in log
    assert "stopped at the time budget (0.001 min) at step 1" in log
    second = load_models(tmp_path / "second" / "models", PLAIN["model_params"])
    seeded = _trainer(tmp_path / "fresh", config=pixels, seed=1).models  # what seed 1 alone starts from
    for name in ("kp_detector", "generator"):
        theirs, started, fresh = (np.concatenate([w.numpy().ravel() for w in getattr(m, name).trainable_weights])
                                  for m in (first, second, seeded))
        # Adam's first step moves each weight by at most about the learning rate (2e-4); another seed
        # starts far away. (Batch-norm statistics are left out: one step moves them by a tenth of the gap.)
        assert np.max(np.abs(started - theirs)) < 1e-3, name
        assert np.max(np.abs(fresh - theirs)) > 0.1, name

    other = copy.deepcopy(pixels)
    other["model_params"]["common_params"]["num_kp"] = 6
    wide = tmp_path / "wide.yaml"
    wide.write_text(yaml.safe_dump({**other, "dataset_params": {**other["dataset_params"], "root_dir": frames.root}}))
    status = cli.main(["train", "--config", str(wide), "--data", str(frames.root),
                       "--out", str(tmp_path / "third"), "--init-from", str(tmp_path / "first")])
    _one_line_error(status, capsys.readouterr().err, f"the checkpoint {tmp_path / 'first' / 'models'} does not match")
    assert not (tmp_path / "third").exists()

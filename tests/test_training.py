"""The trainer: exact resume, checkpoints on signals, NaN stops, schedule, logs, two replicas."""

import copy
import csv
import json
import os
import signal
import subprocess
import sys
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


def _trainer(out, **kwargs):
    keras.utils.set_random_seed(0)  # the same initial weights (and random VGG) in every run
    kwargs.setdefault("vgg_weights", "random")
    kwargs.setdefault("mixed_precision", "off")
    return Trainer(copy.deepcopy(TINY), out, xla=False, **kwargs)


def test_learning_rate_schedule_is_multistep():
    assert [learning_rate(1.0, e, [60, 90]) for e in (0, 59, 60, 89, 90, 99)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.filterwarnings("ignore:Vgg19Features uses RANDOM weights")
def test_resume_continues_exactly(frames, tmp_path):
    straight = _trainer(tmp_path / "straight", checkpoint_every=100)
    straight.fit(frames, steps=4, progress=False)
    assert int(straight.step.numpy()) == 4 and int(straight.epoch.numpy()) == 2  # 2 steps an epoch

    first = _trainer(tmp_path / "split", checkpoint_every=100)
    first.fit(frames, steps=3, progress=False)
    resumed = _trainer(tmp_path / "split", checkpoint_every=100)
    assert resumed.restore()
    assert int(resumed.step.numpy()) == 3
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
def test_sigterm_saves_a_checkpoint_and_stops(frames, tmp_path):
    trainer = _trainer(tmp_path / "run", checkpoint_every=100)
    before = signal.getsignal(signal.SIGTERM)
    trainer.fit(frames, steps=6, progress=False, on_step=lambda step, losses: signal.raise_signal(signal.SIGTERM))
    assert int(trainer.step.numpy()) == 1
    assert trainer.manager.latest_checkpoint.endswith("ckpt-1")
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is given back


@pytest.mark.filterwarnings("ignore:Vgg19Features uses RANDOM weights")
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(frames, tmp_path):
    trainer = _trainer(tmp_path / "run", checkpoint_every=1)
    trainer.fit(frames, steps=1, progress=False)
    kernel = trainer.models.kp_detector.weights[0]
    kernel.assign(tf.fill(kernel.shape, float("nan")))
    with pytest.raises(TrainingDiverged, match=r"loss \w+ is nan at step 2.*ckpt-1"):
        trainer.fit(frames, steps=3, progress=False)
    assert trainer.manager.latest_checkpoint.endswith("ckpt-1")


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
def test_train_command_runs_resumes_and_refuses_to_overwrite(frames, tmp_path, capsys):
    import yaml

    from fomm_lessons import cli

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "dataset_params": {**TINY["dataset_params"], "root_dir": frames.root}}))
    args = ["train", "--config", str(config), "--data", str(frames.root), "--out", str(tmp_path / "run"),
            "--vgg", "random"]
    assert cli.main(args + ["--steps", "1"]) == 0
    assert cli.main(args + ["--steps", "1"]) == 2  # the run folder already holds a checkpoint
    assert "--resume" in capsys.readouterr().err
    assert cli.main(args + ["--steps", "2", "--resume"]) == 0
    assert (tmp_path / "run" / "checkpoints" / "ckpt-2.index").exists()
    assert (tmp_path / "run" / "models").is_dir()


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

"""Batch size and steps from memory, a probe and a time budget (fomm_lessons.budget)."""

import json
import math

import numpy as np
import pytest

from fomm_lessons import budget
from fomm_lessons.budget import Probe, plan_training
from test_training import untraced

GIB = 2.0**30


def _probes(base, per_image, t0, t1, batches):
    return [Probe(b, t0 + t1 * b, base + per_image * b, base) for b in batches]


def _brute_force(base, per_image, t0, t1, free, headroom, budget_s, reserve, max_batch=10**6):
    """The same plan by trying every batch size: the largest that fits, and its steps."""
    fits = [b for b in range(1, 4096) if base + per_image * b <= headroom * free and b <= max_batch]
    b = max(fits)
    return b, int((1 - reserve) * budget_s // (t0 + t1 * b))


@pytest.mark.parametrize("batches", [(2, 4), (2, 4, 8), (1, 3)])
def test_two_probes_recover_the_lines_and_the_plan(batches):
    base, per_image, t0, t1 = 1.3 * GIB, 0.41 * GIB, 0.05, 0.031  # a T4-like vox-256 step
    probes = _probes(base, per_image, t0, t1, batches)
    assert budget.memory_model(probes) == pytest.approx((base, per_image))
    assert budget.time_model(probes) == pytest.approx((t0, t1))
    plan = plan_training(probes, budget_s=3600, free_bytes=15 * GIB, headroom=0.85, reserve=0.1)
    b, steps = _brute_force(base, per_image, t0, t1, 15 * GIB, 0.85, 3600, 0.1)
    assert (plan.per_replica, plan.batch_size, plan.steps) == (b, b, steps)
    assert plan.limited_by == "memory"
    assert plan.predicted_peak_bytes == pytest.approx(base + per_image * b)
    assert plan.predicted_peak_bytes <= 0.85 * 15 * GIB < plan.predicted_peak_bytes + per_image
    assert plan.checkpoint_every == math.floor(600 / (t0 + t1 * b))


def test_one_probe_goes_through_zero_above_its_starting_memory():
    probe = Probe(4, step_s=0.8, peak_bytes=6 * GIB, base_bytes=2 * GIB)
    assert budget.memory_model([probe]) == pytest.approx((2 * GIB, GIB))
    assert budget.time_model([probe]) == pytest.approx((0.0, 0.2))
    plan = plan_training([probe], budget_s=100, free_bytes=10 * GIB, headroom=1.0, reserve=0.0)
    assert plan.per_replica == 8 and plan.steps == math.floor(100 / 1.6)


def test_max_batch_and_replicas():
    probes = _probes(GIB, 0.5 * GIB, 0.1, 0.05, (2, 4))
    plan = plan_training(probes, budget_s=600, free_bytes=40 * GIB, replicas=2, max_batch=16)
    assert (plan.per_replica, plan.batch_size, plan.limited_by) == (16, 32, "max_batch")
    assert plan.steps == math.floor(0.9 * 600 / (0.1 + 0.05 * 16))


def test_cpu_has_no_memory_limit_but_needs_a_cap():
    probes = [Probe(2, 1.5)]
    plan = plan_training(probes, budget_s=30, max_batch=2, reserve=0.0)
    assert (plan.batch_size, plan.steps, plan.predicted_peak_bytes) == (2, 20, None)
    capped = plan_training(probes, budget_s=30, max_batch=2, max_steps=4)
    assert (capped.steps, capped.checkpoint_every) == (4, 4)
    with pytest.raises(ValueError, match="give max_batch"):
        plan_training(probes, budget_s=30)


def test_noisy_probe_with_a_falling_time_is_planned_proportionally():
    probes = [Probe(2, 1.0, GIB, 0.0), Probe(4, 0.9, 2 * GIB, 0.0)]
    assert budget.time_model(probes) == pytest.approx((0.0, 0.225))


def test_what_does_not_fit_says_so():
    probes = _probes(3 * GIB, 2 * GIB, 0.1, 0.1, (1, 2))
    with pytest.raises(ValueError, match="a batch of 1 needs about 5.00 GiB"):
        plan_training(probes, budget_s=60, free_bytes=4 * GIB)
    with pytest.raises(ValueError, match="more than the budget"):
        plan_training(probes, budget_s=0.1, free_bytes=40 * GIB)
    with pytest.raises(ValueError, match="positive time budget"):
        plan_training(probes, budget_s=0, free_bytes=40 * GIB)
    with pytest.raises(ValueError, match="positive step times"):
        plan_training([Probe(2, 0.0)], budget_s=60, max_batch=2)


def test_a_plan_is_remembered_by_its_run_folder(tmp_path):
    made = []

    def make():
        made.append(1)
        return plan_training([Probe(2, 0.5)], budget_s=60, max_batch=2)

    first, resumed = budget.remembered_plan(tmp_path / "run", make)
    assert not resumed and len(made) == 1
    again, resumed = budget.remembered_plan(tmp_path / "run", make)
    assert resumed and again == first and len(made) == 1
    assert json.loads((tmp_path / "run" / budget.PLAN_FILE).read_text())["steps"] == first.steps
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / budget.PLAN_FILE).write_text('{"steps": 3}')
    with pytest.raises(ValueError, match="not a plan written by"):
        budget.remembered_plan(tmp_path / "other", make)


@pytest.mark.slow
def test_probe_leaves_the_trainer_as_it_was(tmp_path):
    import warnings

    from fomm_lessons.config import load_config
    from fomm_lessons.training import Trainer

    config = load_config("cpu-64")
    model = config["model_params"]
    model["common_params"]["num_kp"] = 2
    generator = model["generator_params"]
    for part in (model["kp_detector_params"], generator, generator["dense_motion_params"]):
        part.update(block_expansion=4, max_features=8, **({"num_blocks": 2} if "num_blocks" in part else {}))
    generator["num_bottleneck_blocks"] = 1
    model["discriminator_params"].update(block_expansion=4, max_features=8, num_blocks=2)
    config["dataset_params"]["frame_shape"] = [32, 32, 3]
    config["train_params"].update(batch_size=1, scales=[1])
    config["train_params"]["loss_weights"]["perceptual"] = [10, 0, 0, 0, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random VGG19 weights
        trainer = Trainer(config, tmp_path, seed=0, mixed_precision="off", vgg_weights="random")
    before = trainer.get_weights()
    optimizer_before = [v.numpy() for o in trainer.optimizers.values() for v in o.variables]
    # What is checked is what the probe puts back, not its timing: the steps run op by op,
    # without the ~20 s of tracing a first traced step costs here.
    with untraced():
        probes = budget.probe(trainer, [1], steps=2, warmup=1)
        assert len(probes) == 1 and probes[0].batch_size == 1 and probes[0].step_s > 0
        assert probes[0].peak_bytes is None  # no GPU here
        assert int(trainer.step.numpy()) == 0 and int(trainer.epoch.numpy()) == 0
        after = trainer.get_weights()
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(optimizer_before, [v.numpy() for o in trainer.optimizers.values() for v in o.variables]):
            np.testing.assert_array_equal(a, b)
        assert not list(tmp_path.glob("checkpoints/*"))  # the probe writes nothing into the run folder
        # The restore mattered: one more step of the same kind does change the weights.
        trainer.train_step(budget.synthetic_batch(1, 32))
        assert any(not np.array_equal(a, b) for a, b in zip(before, trainer.get_weights()))

@pytest.mark.parametrize("steps, items, batch", [(3000, 16, 16), (4, 9, 2), (250, 40, 8), (7, 3, 4)])
def test_fit_schedule_makes_the_steps_the_whole_run(steps, items, batch):
    params = {"batch_size": batch, "num_epochs": 100, "num_repeats": 75, "epoch_milestones": [60, 90]}
    schedule = budget.fit_schedule(params, steps, items)
    per_epoch = max(1, items * schedule["num_repeats"] // batch)  # Trainer.steps_per_epoch
    total = per_epoch * schedule["num_epochs"]
    assert steps <= total < steps + per_epoch  # the run stops at `steps`, inside the last epoch
    for before, after in zip([60, 90], schedule["epoch_milestones"]):
        assert after == max(1, round(before * schedule["num_epochs"] / 100))


def test_fit_schedule_of_vox_256_on_a_small_subset():
    params = {"batch_size": 16, "num_epochs": 100, "num_repeats": 75, "epoch_milestones": [60, 90]}
    assert budget.fit_schedule(params, 3000, 16) == {"num_repeats": 30, "num_epochs": 100,
                                                     "epoch_milestones": [60, 90]}
    assert budget.fit_schedule(params, 600, 16) == {"num_repeats": 6, "num_epochs": 100,
                                                    "epoch_milestones": [60, 90]}
    assert budget.fit_schedule(params, 90, 16)["epoch_milestones"] == [54, 81]  # 90 epochs of 1 step
    with pytest.raises(ValueError, match="at least 1 step"):
        budget.fit_schedule(params, 0, 16)


def _plan(batch_size, per_replica):
    return budget.Plan(batch_size=batch_size, per_replica=per_replica, steps=100, step_s=0.5, checkpoint_every=50,
                       predicted_peak_bytes=12e9)


def test_out_of_memory_halves_the_batch_and_rewrites_the_plan(tmp_path):
    import tensorflow as tf

    tried, said = [], []

    def train(plan):  # a card on which 4 images a replica fit, and no more
        tried.append((plan.batch_size, plan.per_replica))
        if plan.per_replica > 4:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape [16,64,256,256]")
        return "trained"

    first, resumed = budget.remembered_plan(tmp_path, lambda: _plan(32, 16))  # two replicas
    assert not resumed
    result, plan = budget.train_halving_on_oom(tmp_path, first, train, say=said.append)
    assert result == "trained" and tried == [(32, 16), (16, 8), (8, 4)]
    assert (plan.batch_size, plan.per_replica, plan.halved, plan.steps) == (8, 4, 2, 100)
    assert plan.limited_by == "out of memory" and plan.predicted_peak_bytes is None
    assert said[0].startswith("out of memory at batch 32: batch halved to 16 (8 a replica)") and len(said) == 2
    # The next session reads the halved plan back instead of running out of memory again.
    assert budget.remembered_plan(tmp_path, lambda: pytest.fail("probed again")) == (plan, True)
    assert json.loads((tmp_path / budget.PLAN_FILE).read_text())["batch_size"] == 8


def test_other_errors_and_a_batch_of_one_are_not_halved(tmp_path):
    import tensorflow as tf

    def broken(plan):
        raise ValueError("not a memory problem")

    plan, _ = budget.remembered_plan(tmp_path, lambda: _plan(8, 8))
    before = (tmp_path / budget.PLAN_FILE).read_text()
    with pytest.raises(ValueError, match="not a memory problem"):
        budget.train_halving_on_oom(tmp_path, plan, broken, say=pytest.fail)
    assert (tmp_path / budget.PLAN_FILE).read_text() == before

    def never_fits(plan):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM")

    with pytest.raises(tf.errors.ResourceExhaustedError):
        budget.train_halving_on_oom(tmp_path, plan, never_fits, say=lambda text: None)
    assert json.loads((tmp_path / budget.PLAN_FILE).read_text())["per_replica"] == 1  # 8, 4, 2, 1 tried


def test_free_memory_is_the_cards_free_memory_plus_this_process_own(monkeypatch):
    import os
    import subprocess

    answers = {"--query-gpu=memory.total": "16384\n", "--query-gpu=memory.free": "1200\n",
               "--query-compute-apps=pid,used_memory": f"{os.getpid()}, 13000\n4242, 2000\n"}

    def fake_run(command, **kwargs):
        assert command[0] == "nvidia-smi" and command[-1] == "--format=csv,noheader,nounits"
        return subprocess.CompletedProcess(command, 0, stdout=answers[command[1]], stderr="")

    monkeypatch.setattr(budget, "_gpu", lambda: "/device:GPU:0")
    monkeypatch.setattr(budget.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(budget.subprocess, "run", fake_run)
    assert budget.device_memory_bytes() == 16384 * 2**20
    assert budget.device_free_memory_bytes() == (1200 + 13000) * 2**20  # not the other process's 2000 MiB
    monkeypatch.setattr(budget, "_gpu", lambda: None)
    assert budget.device_free_memory_bytes() is None and budget.device_memory_bytes() is None

"""The GPU benchmark suite: its CPU plan runs end to end, and running out of memory is recorded."""

import json

import pytest

from fomm_lessons import gpu_suite


@pytest.mark.slow
def test_cpu_plan_writes_every_workload(tmp_path, capsys):
    assert gpu_suite.main(["--out", str(tmp_path), "--device", "cpu"]) == 0
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert capsys.readouterr().out.splitlines() == lines  # the same lines on stdout
    by_workload = {}
    for record in records:
        by_workload.setdefault(record["workload"], []).append(record)
    assert set(by_workload) == {"machine", "animate", "sampler/dense_motion", "sampler/generator",
                                "train-step", "done"}
    timed = [r for r in records if r["workload"] not in ("machine", "done")]
    assert all(r["status"] == "ok" and r["per_s"] > 0 and r["peak_memory_mb"] > 0 for r in timed)
    assert [r["batch"] for r in by_workload["animate"]] == [1, 2]
    assert by_workload["done"][0]["oom"] == 0


def test_out_of_memory_is_recorded_and_the_suite_goes_on(tmp_path):
    import tensorflow as tf

    suite = gpu_suite.Suite(str(tmp_path), "cpu", budget_s=60)

    def too_big():
        return tf.zeros([2**62], tf.float32).numpy()  # far beyond any machine's memory

    record = suite.measure("train-step", too_big, 1, steps=1, warmup=1, batch=1)
    assert record["status"] == "oom", record
    record = suite.measure("animate", lambda: tf.ones([4]).numpy(), 4, steps=3, warmup=1, batch=4)
    assert record["status"] == "ok" and record["per_s"] > 0
    suite.close()
    assert [json.loads(line)["status"] for line in open(tmp_path / "results.jsonl")] == ["oom", "ok"]


def test_a_spent_budget_skips_instead_of_running(tmp_path):
    suite = gpu_suite.Suite(str(tmp_path), "cpu", budget_s=0)
    record = suite.measure("animate", lambda: pytest.fail("must not run"), 1, steps=1, warmup=1)
    assert record["status"] == "skipped"
    suite.close()


def test_only_runs_the_workloads_asked_for(tmp_path):
    assert gpu_suite.main(["--out", str(tmp_path), "--device", "cpu", "--only", "sampler"]) == 0
    workloads = [json.loads(line)["workload"] for line in open(tmp_path / "results.jsonl")]
    assert workloads == ["machine", "sampler/dense_motion", "sampler/generator", "done"]


def test_only_names_an_unknown_workload(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        gpu_suite.main(["--out", str(tmp_path), "--device", "cpu", "--only", "sampler,animation"])
    assert stop.value.code == 2
    assert "--only: expected workloads among animate, sampler, train, got 'sampler,animation'" in \
        capsys.readouterr().err
    assert not (tmp_path / "results.jsonl").exists()

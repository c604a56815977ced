"""The ``animate`` and ``reconstruct`` commands: they work, and every user error is one line, never a traceback."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import subprocess
import sys

import numpy as np
import pytest

from fomm_lessons import cli

PARITY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "fomm-parity")
VIDEO = "grace_hopper#sample#00000.mp4"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny sample dataset, a cpu-64 checkpoint folder with random weights, a source image, bad inputs."""
    import keras

    from fomm_lessons.checkpoint import build_models, save_models
    from fomm_lessons.config import builtin_config_path, load_config
    from fomm_lessons.data.sample import make_sample_dataset

    root = tmp_path_factory.mktemp("cli")
    data = make_sample_dataset(str(root / "data"), size=64, seed=0, num_frames=4, videos_per_identity=1)
    keras.utils.set_random_seed(0)
    save_models(build_models(load_config("cpu-64")["model_params"]), str(root / "checkpoint"))
    source = os.path.join(data, "train", "astronaut#sample#00000.mp4", "0000000.png")
    (root / "text.png").write_text("not an image")
    (root / "text.mp4").write_text("not a video")
    (root / "a-file").write_text("x")
    yaml = builtin_config_path("cpu-64").read_text().replace("num_kp: 10", "num_kp: 5")
    (root / "kp5.yaml").write_text(yaml)
    return {"root": root, "data": data, "checkpoint": str(root / "checkpoint"), "source": source,
            "driving": os.path.join(data, "test", VIDEO), "kp5": str(root / "kp5.yaml")}


def run_cli(argv, capsys):
    """``fomm-lessons ARGV`` in this process: (exit status, stdout, stderr)."""
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(status, err, command, *fragments):
    assert status == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fomm-lessons {command}: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def animate_args(files, **changes):
    options = {"config": "cpu-64", "checkpoint": files["checkpoint"], "source": files["source"],
               "driving": files["driving"], "out": str(files["root"] / "out.gif"), **changes}
    return ["animate"] + [item for key, value in options.items() for item in (f"--{key}", value)]


@pytest.mark.parametrize("command", ["animate", "reconstruct"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0
    assert "--checkpoint" in capsys.readouterr().out


def test_animate_writes_a_video(files, capsys):
    from fomm_lessons.data.frames import read_video

    out = files["root"] / "animation.gif"
    status, printed, err = run_cli(animate_args(files, out=out) + ["--find-best-frame", "--adapt-scale"], capsys)
    assert status == 0, err
    assert printed.strip().splitlines()[-1] == str(out)
    assert read_video(out).shape == (4, 64, 64, 3)


def test_animate_keeps_the_audio_and_frame_rate(files, capsys):
    from fomm_lessons.data import media as anim
    from fomm_lessons.data.frames import read_video

    driving = files["root"] / "talking.mp4"
    subprocess.run([anim.ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=48x48:rate=8",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", "1", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(driving)], check=True, capture_output=True)
    out = files["root"] / "talking-out.mp4"
    status, _, err = run_cli(animate_args(files, driving=driving, out=out) + ["--audio"], capsys)
    assert status == 0, err
    assert anim.has_audio(out) and anim.video_fps(out) == pytest.approx(8.0)
    assert read_video(out).shape == (8, 64, 64, 3)  # resized to the config's frame shape
    status, _, err = run_cli(animate_args(files, out=files["root"] / "silent.mp4") + ["--audio"], capsys)
    assert status == 0 and "has no audio" in err and not anim.has_audio(files["root"] / "silent.mp4")


def test_reconstruct_writes_metrics(files, capsys):
    out = files["root"] / "reconstruction"
    argv = ["reconstruct", "--config", "cpu-64", "--checkpoint", files["checkpoint"], "--data", files["data"],
            "--out", out]
    status, printed, err = run_cli(argv, capsys)
    assert status == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["reconstruction"]["videos"]) == [VIDEO]
    assert 0 < metrics["reconstruction"]["l1"] < 1
    assert metrics["aed"]["computed"] is False and "AED: not computed" in printed
    assert metrics["motion"]["epe"] >= 0 and "motion EPE" in printed
    assert len(os.listdir(out / "reconstruction" / VIDEO)) == 4


@pytest.mark.parametrize("key, value, fragments", [  # value: a name in the temporary folder, or @ a fixture file
    ("source", "text.png", ["text.png", "is not an image"]),
    ("source", "missing.png", ["no source image", "missing.png"]),
    ("driving", "text.mp4", ["text.mp4", "is not a video"]),
    ("driving", "@source", ["is not a video", "expected a folder of frames"]),
    ("config", "@kp5", ["does not match the config", "kp5.yaml"]),
    ("checkpoint", "text.mp4", ["text.mp4", "is not a PyTorch .pth.tar"]),
    ("out", "a-file/out.mp4", ["cannot write the output", "a-file"]),
    ("out", "out.avi", ["expected an output path ending in .mp4/.mov/.gif", "out.avi"]),
])
def test_animate_user_errors_are_one_line(files, capsys, key, value, fragments):
    value = files[value[1:]] if value.startswith("@") else files["root"] / value
    status, _, err = run_cli(animate_args(files, **{key: value}), capsys)
    assert_one_line_error(status, err, "animate", *fragments)


def test_reconstruct_user_errors_are_one_line(files, capsys):
    base = {"--config": "cpu-64", "--checkpoint": files["checkpoint"], "--data": files["data"],
            "--out": str(files["root"] / "rec")}
    for change, fragments in [({"--config": files["kp5"]}, ["does not match the config"]),
                              ({"--data": str(files["root"])}, ["no test split"]),
                              ({"--out": str(files["root"] / "a-file" / "rec")}, ["cannot write the output"])]:
        argv = ["reconstruct"] + [item for pair in {**base, **change}.items() for item in pair]
        status, _, err = run_cli(argv, capsys)
        assert_one_line_error(status, err, "reconstruct", *fragments)


def test_audio_needs_an_mp4_output(files, capsys):
    status, _, err = run_cli(animate_args(files) + ["--audio"], capsys)
    assert_one_line_error(status, err, "animate", "audio", ".mp4")


def test_a_torch_checkpoint_of_another_model_is_one_line(files, capsys):
    torch = pytest.importorskip("torch")
    path = os.path.join(PARITY, "parity-128.npz")
    if not os.path.exists(path):
        pytest.skip(f"parity fixtures not found at {os.path.abspath(PARITY)}")
    weights = np.load(path)
    state = {}
    for key in weights.files:
        if key.startswith("weights/"):
            _, part, name = key.split("/", 2)
            state.setdefault(part, {})[name] = torch.from_numpy(weights[key])
    checkpoint = files["root"] / "parity-128.pth.tar"
    torch.save(state, checkpoint)
    status, _, err = run_cli(animate_args(files, checkpoint=checkpoint), capsys)
    assert_one_line_error(status, err, "animate", "does not match the config cpu-64", "state_dict")


def test_the_installed_command_prints_no_traceback(files):
    """As a user runs it: a separate process, the real stderr."""
    argv = animate_args(files, source=files["root"] / "text.png")
    done = subprocess.run([sys.executable, "-m", "fomm_lessons.cli", *map(str, argv)], capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=120)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("fomm-lessons animate: error: the source")


def test_a_training_run_folder_is_a_checkpoint(files, capsys):
    import shutil

    from fomm_lessons.checkpoint import load_checkpoint
    from fomm_lessons.checkpoint import load_models
    from fomm_lessons.config import load_config

    run = files["root"] / "run"
    shutil.copytree(files["checkpoint"], run / "models")
    params = load_config("cpu-64")["model_params"]
    loaded, expected = load_checkpoint(run, params), load_models(files["checkpoint"], params)
    for a, b in zip(loaded.generator.weights, expected.generator.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    (files["root"] / "empty").mkdir()
    status, _, err = run_cli(animate_args(files, checkpoint=files["root"] / "empty"), capsys)
    assert_one_line_error(status, err, "animate", "no checkpoint in the folder", "kp_detector.weights.h5")


def _inference_config(model_params, path, **sections):
    """A config as people write one for inference: the networks' parameters, no discriminator, no root_dir."""
    import yaml

    model = {key: value for key, value in model_params.items() if key != "discriminator_params"}
    path.write_text(yaml.safe_dump({"model_params": model, **sections}))
    return path


def test_animate_needs_only_the_networks_parameters(files, capsys, tmp_path):
    from fomm_lessons.config import load_config

    config = _inference_config(load_config("cpu-64")["model_params"], tmp_path / "inference.yaml",
                               dataset_params={"frame_shape": [64, 64, 3]})
    out = tmp_path / "inference.gif"
    status, printed, err = run_cli(animate_args(files, config=config, out=out), capsys)
    assert status == 0, err
    assert printed.strip().splitlines()[-1] == str(out)


def test_convert_needs_only_the_networks_parameters(capsys, tmp_path, parity_json, parity):
    torch = pytest.importorskip("torch")
    from fomm_lessons.checkpoint import load_models

    config = _inference_config(parity_json["model_params"], tmp_path / "inference.yaml")
    state = {}
    for key, value in parity.items():
        if key.startswith("weights/"):
            _, part, name = key.split("/", 2)
            state.setdefault(part, {})[name] = torch.from_numpy(value)
    torch.save(state, tmp_path / "parity.pth.tar")
    status, printed, err = run_cli(["convert", "--config", config, "--checkpoint", tmp_path / "parity.pth.tar",
                                    "--out", tmp_path / "converted"], capsys)
    assert status == 0, err
    assert sorted(os.listdir(tmp_path / "converted")) == [".fomm-lessons-output.json", "generator.weights.h5",
                                                          "kp_detector.weights.h5"]
    models = load_models(str(tmp_path / "converted"), parity_json["model_params"])
    kernel = state["kp_detector"]["kp.weight"].numpy()  # (O, I, kh, kw) in PyTorch
    np.testing.assert_array_equal(models.kp_detector.kp.kernel.numpy(), kernel.transpose(2, 3, 1, 0))


def _unchanged(path, text):
    return path.is_file() and path.read_text() == text


def test_animate_replaces_no_file_it_did_not_write_and_never_an_input(files, tmp_path, capsys):
    from fomm_lessons.data.frames import read_video
    from fomm_lessons.data.stream import write_output

    mine = tmp_path / "mine.gif"
    mine.write_text("my own animation")
    status, _, err = run_cli(animate_args(files, out=mine), capsys)
    assert_one_line_error(status, err, "animate", f"refusing to replace the existing file {mine}", "--overwrite")
    assert _unchanged(mine, "my own animation")
    status, _, err = run_cli(animate_args(files, out=mine) + ["--overwrite"], capsys)
    assert status == 0, err
    assert read_video(mine).shape == (4, 64, 64, 3)
    driving = tmp_path / "drive.gif"
    write_output(driving, read_video(files["driving"]), 25)
    before = driving.read_bytes()
    for out in (driving, tmp_path / "." / "drive.gif"):
        status, _, err = run_cli(animate_args(files, driving=driving, out=out) + ["--overwrite"], capsys)
        assert_one_line_error(status, err, "animate", "is the input --driving", "never written over")
    assert driving.read_bytes() == before


def test_reconstruct_and_convert_write_no_folder_of_other_files(files, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "generator.weights.h5").write_text("my own weights")
    status, _, err = run_cli(["convert", "--config", "cpu-64", "--checkpoint", files["root"] / "a-file", "--out",
                              tmp_path / "mine"], capsys)
    assert_one_line_error(status, err, "convert", f"refusing to write into {tmp_path / 'mine'}",
                          "generator.weights.h5")
    status, _, err = run_cli(["reconstruct", "--config", "cpu-64", "--checkpoint", files["checkpoint"], "--data",
                              files["data"], "--out", tmp_path / "mine"], capsys)
    assert_one_line_error(status, err, "reconstruct", f"refusing to write into {tmp_path / 'mine'}")
    assert _unchanged(tmp_path / "mine" / "generator.weights.h5", "my own weights")
    status, _, err = run_cli(["reconstruct", "--config", "cpu-64", "--checkpoint", files["checkpoint"], "--data",
                              files["data"], "--out", files["data"]], capsys)
    assert_one_line_error(status, err, "reconstruct", f"is the input --data {files['data']}")


def test_data_commands_write_no_folder_of_other_files(files, tmp_path, capsys):
    (tmp_path / "mine" / "train").mkdir(parents=True)
    (tmp_path / "mine" / "train" / "notes.txt").write_text("keep me")
    status, _, err = run_cli(["data", "sample", "--out", tmp_path / "mine"], capsys)
    assert_one_line_error(status, err, "data", "notes.txt was not written by `fomm-lessons data sample`")
    status, _, err = run_cli(["data", "voxceleb", "--out", tmp_path / "mine", "--videos", files["root"]], capsys)
    assert_one_line_error(status, err, "data", f"refusing to write into {tmp_path / 'mine'}")
    assert _unchanged(tmp_path / "mine" / "train" / "notes.txt", "keep me")
    videos = tmp_path / "videos"
    videos.mkdir()
    status, _, err = run_cli(["data", "voxceleb", "--out", videos, "--videos", videos], capsys)
    assert_one_line_error(status, err, "data", f"--out {videos} is the input --videos {videos}")
    assert os.listdir(videos) == []

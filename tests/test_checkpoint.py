"""Published state_dict names onto the Keras networks, .pth.tar reading, and Keras weight files."""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import yaml

from fomm_lessons import checkpoint

PARITY_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fomm-parity"
TORCH_REASON = "PyTorch is the optional oracle: pip install -e '.[oracle]'"


def _require(name):
    path = PARITY_DIR / name
    if not path.exists():
        pytest.skip(f"parity fixtures are not at {PARITY_DIR}")
    return path


@pytest.fixture(scope="module")
def parity_state():
    """(model_params, state) of the narrow parity model."""
    arrays = np.load(_require("parity-128.npz"))
    params = json.loads(_require("parity-128.json").read_text())["model_params"]
    state = {part: {k.split("/", 2)[2]: arrays[k] for k in arrays.files if k.startswith(f"weights/{part}/")}
             for part in checkpoint.PARTS}
    return params, state


@pytest.fixture(scope="module")
def parity_models(parity_state):
    return checkpoint.models_from_torch_state(*parity_state[::-1])


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((1, 128, 128, 3), dtype=np.float32), rng.random((1, 128, 128, 3), dtype=np.float32)


def _run(models, source, driving):
    kp_source, kp_driving = models.kp_detector(source), models.kp_detector(driving)
    out = models.generator(source, kp_source=kp_source, kp_driving=kp_driving)
    feature_maps, prediction_map = models.discriminator(out["prediction"], kp=kp_driving)[1.0]
    return [kp_driving["value"], kp_driving["jacobian"], out["prediction"], *feature_maps, prediction_map]


def _assert_same_weights(a, b):
    for part in checkpoint.PARTS:
        wa, wb = getattr(a, part).weights, getattr(b, part).weights
        assert [w.path for w in wa] == [w.path for w in wb]
        for x, y in zip(wa, wb):
            np.testing.assert_array_equal(x.numpy(), y.numpy(), err_msg=x.path)


@pytest.mark.parametrize("name", ["vox-256-keys.json", "vox-adv-256-keys.json"])
def test_published_names_and_shapes_map_onto_full_size_models(name):
    keys = json.loads(_require(name).read_text())
    models = checkpoint.build_models(keys["config"])  # builds weights from shapes, runs no frame
    for part in checkpoint.PARTS:
        model = getattr(models, part)
        expected = {k: tuple(v) for k, v in keys[part].items()}
        assert checkpoint.torch_state_shapes(model) == expected
        covered = {id(entry[3]) for entry in checkpoint.torch_entries(model)}
        assert [w.path for w in model.weights if id(w) not in covered] == []  # nothing left over
        count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        assert count == keys[f"{part}_num_parameters"]


def test_wrong_state_lists_every_bad_name(parity_state):
    params, state = parity_state
    bad = {part: dict(entries) for part, entries in state.items()}
    del bad["generator"]["final.bias"]
    bad["generator"]["final.extra"] = np.zeros(3, np.float32)
    bad["generator"]["first.conv.weight"] = np.zeros((8, 3, 5, 5), np.float32)
    with pytest.raises(ValueError) as error:
        checkpoint.models_from_torch_state(bad, params)
    message = str(error.value)
    assert "generator" in message and "final.bias" in message and "final.extra" in message
    assert "first.conv.weight: got (8, 3, 5, 5), expected (8, 3, 7, 7)" in message


def test_num_batches_tracked_may_be_absent_and_blur_is_checked(parity_state):
    params, state = parity_state
    trimmed = {part: {k: v for k, v in entries.items() if not k.endswith("num_batches_tracked")}
               for part, entries in state.items()}
    checkpoint.models_from_torch_state(trimmed, params)
    blurred = {part: dict(entries) for part, entries in state.items()}
    blurred["kp_detector"]["down.weight"] = blurred["kp_detector"]["down.weight"] * 2
    with pytest.raises(ValueError, match="down.weight"):
        checkpoint.models_from_torch_state(blurred, params)
    with pytest.raises(ValueError, match="kp_detector"):
        checkpoint.models_from_torch_state({"generator": state["generator"]}, params)


def test_conv_layout_is_transposed(parity_state, parity_models):
    _, state = parity_state
    torch_weight = state["generator"]["final.weight"]  # (out, in, kh, kw)
    kernel = parity_models.generator.final.kernel.numpy()  # (kh, kw, in, out)
    np.testing.assert_array_equal(kernel[2, 5, 1, 0], torch_weight[0, 1, 2, 5])


def test_keras_weight_files_round_trip_exactly(parity_state, parity_models, tmp_path):
    params, _ = parity_state
    paths = checkpoint.save_models(parity_models, tmp_path)
    assert sorted(os.path.basename(p) for p in paths) == sorted(checkpoint.WEIGHT_FILES.values())
    loaded = checkpoint.load_models(tmp_path, params)
    _assert_same_weights(parity_models, loaded)
    source, driving = _inputs()
    for a, b in zip(_run(parity_models, source, driving), _run(loaded, source, driving)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def _save_torch_checkpoint(torch, state, path):
    payload = {part: {k: torch.from_numpy(np.array(v)) for k, v in entries.items()}
               for part, entries in state.items()}
    payload["epoch"] = 7
    torch.save(payload, path)


def test_load_torch_checkpoint_with_torch(parity_state, parity_models, tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    params, state = parity_state
    _save_torch_checkpoint(torch, state, tmp_path / "model.pth.tar")
    _assert_same_weights(parity_models, checkpoint.load_torch_checkpoint(tmp_path / "model.pth.tar", params))


def test_load_torch_checkpoint_without_torch(parity_state, parity_models, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    pytest.importorskip("fomm_lessons.torchfile", reason="the torch-free reader is not in this checkout")
    params, state = parity_state
    _save_torch_checkpoint(torch, state, tmp_path / "model.pth.tar")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    _assert_same_weights(parity_models, checkpoint.load_torch_checkpoint(tmp_path / "model.pth.tar", params))


def test_convert_command_writes_loadable_weights(parity_state, parity_models, tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    pytest.importorskip("fomm_lessons.config", reason="the config loader is not in this checkout")
    params, state = parity_state
    _save_torch_checkpoint(torch, state, tmp_path / "model.pth.tar")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"model_params": params}))
    args = argparse.Namespace(config=str(tmp_path / "config.yaml"), checkpoint=str(tmp_path / "model.pth.tar"),
                              out=str(tmp_path / "out"))
    assert checkpoint.convert_main(args) == 0
    _assert_same_weights(parity_models, checkpoint.load_models(tmp_path / "out", params))


def test_whole_model_keras_files_round_trip_exactly(parity_models, tmp_path):
    import keras

    for part in checkpoint.PARTS:
        model = getattr(parity_models, part)
        model.save(tmp_path / f"{part}.keras")
        loaded = keras.models.load_model(tmp_path / f"{part}.keras")
        assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
        assert [w.path for w in loaded.weights] == [w.path for w in model.weights]
        for a, b in zip(model.weights, loaded.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory):
    """{kind: path} of .pth.tar files that must each end in one line: cut, random, code, a module."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    root = tmp_path_factory.mktemp("bad")
    good = root / "good.pth.tar"
    torch.save({"generator": {"w": torch.zeros(500)}}, good)
    paths = {kind: root / f"{kind}.pth.tar" for kind in ("truncated", "random", "malicious", "module")}
    paths["truncated"].write_bytes(good.read_bytes()[: good.stat().st_size * 6 // 10])
    paths["random"].write_bytes(np.random.default_rng(0).bytes(3000))
    torch.save({"generator": {"w": torch.zeros(2)}, "x": _RunsAShellCommand(root / "it-ran")},
               paths["malicious"])
    torch.save(torch.nn.Linear(2, 3), paths["module"])
    return paths


def _assert_one_line(err, command, path, kind):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fomm-lessons {command}: error: "), err
    assert str(path) in lines[0] and "weights_only" not in lines[0] and "Traceback" not in err
    if kind in ("malicious", "module"):
        assert "objects other than tensors" in lines[0] and "refused for safety" in lines[0]
    else:
        assert "is not a PyTorch .pth.tar file" in lines[0] and "download or save it again" in lines[0]


@pytest.mark.parametrize("with_torch", [True, False], ids=["torch", "no-torch"])
@pytest.mark.parametrize("kind", ["truncated", "random", "malicious", "module"])
def test_convert_and_animate_refuse_bad_files_in_one_line(bad_checkpoints, tmp_path, capsys, monkeypatch,
                                                          kind, with_torch):
    from PIL import Image

    from fomm_lessons import cli
    from fomm_lessons.data.frames import write_video

    if not with_torch:
        monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    path = bad_checkpoints[kind]
    status = cli.main(["convert", "--config", "cpu-64", "--checkpoint", str(path), "--out", str(tmp_path / "w")])
    assert status == 2
    _assert_one_line(capsys.readouterr().err, "convert", path, kind)
    assert not (tmp_path / "w").exists()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "face.png")
    driving = write_video(tmp_path / "driving.mp4", np.zeros((2, 64, 64, 3), np.uint8))
    status = cli.main(["animate", "--config", "cpu-64", "--checkpoint", str(path), "--source",
                       str(tmp_path / "face.png"), "--driving", driving, "--out", str(tmp_path / "out.mp4")])
    assert status == 2
    _assert_one_line(capsys.readouterr().err, "animate", path, kind)
    assert not (path.parent / "it-ran").exists()

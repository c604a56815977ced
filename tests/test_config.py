"""Configs: the built-in ones equal the original's files, and bad values fail by name."""

import copy
import json
import pathlib
import warnings

import pytest
import yaml

from fomm_lessons.config import (BUILTIN_CONFIGS, ConfigError, builtin_config_path, load_config,
                                 validate_config)

SHARED = pathlib.Path(__file__).resolve().parents[1] / ".." / "shared"
ORIGINAL_CONFIGS = SHARED / "fomm-configs"


@pytest.mark.parametrize("name", ["vox-256", "vox-adv-256"])
def test_builtin_equals_the_original_file(name):
    original = ORIGINAL_CONFIGS / f"{name}.yaml"
    if not original.is_file():
        pytest.skip(f"the original configs are not at {ORIGINAL_CONFIGS}")
    expected = yaml.safe_load(original.read_text())
    assert load_config(name) == expected
    assert load_config(original) == expected


def test_the_two_vox_configs_differ_where_the_original_does():
    plain, adversarial = load_config("vox-256"), load_config("vox-adv-256")
    assert plain["train_params"]["loss_weights"]["generator_gan"] == 0
    assert adversarial["train_params"]["loss_weights"]["generator_gan"] == 1
    assert plain["model_params"]["discriminator_params"].get("sn") is True
    assert adversarial["model_params"]["discriminator_params"].get("use_kp") is True
    assert (plain["train_params"]["batch_size"], adversarial["train_params"]["batch_size"]) == (40, 36)


def test_cpu_config_is_small():
    config = load_config("cpu-64")
    assert config["dataset_params"]["frame_shape"] == [64, 64, 3]
    assert config["model_params"]["common_params"]["num_kp"] == 10
    assert config["train_params"]["scales"] == [1, 0.5, 0.25]
    assert config["train_params"]["batch_size"] <= 8
    widths = [config["model_params"][name]["max_features"]
              for name in ("kp_detector_params", "generator_params", "discriminator_params")]
    assert max(widths) <= 64


def test_every_builtin_ships_with_the_package():
    for name in BUILTIN_CONFIGS:
        assert builtin_config_path(name).is_file()


def test_parity_model_params_are_valid():
    fixture = SHARED / "fomm-parity" / "parity-128.json"
    if not fixture.is_file():
        pytest.skip(f"parity fixtures are not at {fixture.parent}")
    model_params = json.loads(fixture.read_text())["model_params"]
    config = {"model_params": model_params,
              "dataset_params": {"root_dir": "x", "frame_shape": [128, 128, 3]}}
    assert validate_config(config)["model_params"] == model_params


def _vox():
    return copy.deepcopy(load_config("vox-256"))


def _set(config, dotted, value):
    *parents, last = dotted.split(".")
    for key in parents:
        config = config[key]
    if value is _DELETE:
        del config[last]
    else:
        config[last] = value


_DELETE = object()


@pytest.mark.parametrize("dotted, value, message", [
    ("model_params", _DELETE, "missing 'model_params'"),
    ("model_params.common_params.num_kp", 0, r"num_kp must be a positive integer, got 0"),
    ("model_params.common_params.num_kp", 2.5, r"num_kp must be a positive integer, got 2.5"),
    ("model_params.common_params.num_kp", True, r"num_kp must be a positive integer, got True"),
    ("model_params.common_params.num_kp", _DELETE, r"missing model_params.common_params.num_kp"),
    ("model_params.kp_detector_params.temperature", -0.1, r"temperature must be a number > 0"),
    ("model_params.kp_detector_params.num_block", 5, r"unknown keys \['num_block'\]"),
    ("model_params.kp_detector_params.num_blocks", 7, r"num_blocks 7 .* divisible by 2\*\*7"),
    ("model_params.generator_params.dense_motion_params", _DELETE, r"missing .*dense_motion_params"),
    ("model_params.generator_params.dense_motion_params.scale_factor", 2,
     r"scale_factor must be a number > 0 and <= 1, got 2"),
    ("model_params.discriminator_params.num_blocks", 7, r"shrinks frames"),
    ("model_params.discriminator_params.sn", "yes", r"sn must be true or false, got 'yes'"),
    ("dataset_params.frame_shape", [256, 256], r"frame_shape must be \(H, W, 3\).*got \[256, 256\]"),
    ("dataset_params.frame_shape", [256, 256, 4], r"got \[256, 256, 4\]"),
    ("dataset_params.frame_shape", [250, 250, 3], r"divisible"),
    ("dataset_params.root", "data", r"unknown keys \['root'\] in dataset_params"),
    ("train_params.lr_generator", "fast", r"lr_generator must be a number, got 'fast'"),
    ("train_params.scales", [1, 0.5, 0.25, 0.03125], r"down to 8 px, below the 16 px"),
    ("train_params.scales", [1, 2], r"scales\[1\] must be a number > 0 and <= 1, got 2"),
    ("train_params.epoch_milestones", [90, 60], r"epoch_milestones must be an increasing list"),
    ("train_params.loss_weights.perceptual", [1] * 6, r"at most 5 weights"),
    ("train_params.transform_params", _DELETE, r"missing train_params.transform_params"),
])
def test_bad_values_name_the_key_and_the_value(dotted, value, message):
    config = _vox()
    _set(config, dotted, value)
    with pytest.raises(ConfigError, match=message):
        validate_config(config, source="test.yaml")


def test_feature_matching_needs_a_weight_per_block():
    config = copy.deepcopy(load_config("vox-adv-256"))
    config["train_params"]["loss_weights"]["feature_matching"] = [10, 10]
    with pytest.raises(ConfigError, match=r"one weight per discriminator block \(4\)"):
        validate_config(config)


def test_numbers_written_without_a_dot_are_read(tmp_path):
    text = builtin_config_path("vox-256").read_text()
    text = text.replace("lr_generator: 2.0e-4", "lr_generator: 2e-4")
    assert "lr_generator: 2e-4" in text
    assert isinstance(yaml.safe_load(text)["train_params"]["lr_generator"], str)  # YAML 1.1's trap
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    assert load_config(path)["train_params"]["lr_generator"] == 2e-4


def test_unknown_section_warns_and_model_only_is_enough():
    config = {"model_params": _vox()["model_params"], "prediction_params": {}}
    with pytest.warns(UserWarning, match=r"unknown sections \['prediction_params'\]"):
        validate_config(config)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_config({"model_params": _vox()["model_params"]})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vox-512.*'cpu-64'"):
        load_config("vox-512")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_params: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_config(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections, got list"):
        load_config(listed)


@pytest.mark.parametrize("rate, message", [
    (1.0e39, r"lr_generator must be a learning rate that is finite and positive in float32 .*got 1e\+39"),
    (1.0e-50, r"finite and positive in float32 .*got 1e-50"),  # 0 in float32
    (float("inf"), r"lr_generator must be a finite number, got inf"),
    (float("nan"), r"lr_generator must be a finite number, got nan"),
    (0.0, r"lr_generator must be a number > 0, got 0.0"),
    (-2.0e-4, r"lr_generator must be a number > 0, got -0.0002"),
])
def test_learning_rates_must_be_finite_and_positive(rate, message):
    config = _vox()
    config["train_params"]["lr_generator"] = rate
    with pytest.raises(ConfigError, match=message):
        validate_config(config, source="test.yaml")


def _inference_only():
    model = {key: value for key, value in _vox()["model_params"].items() if key != "discriminator_params"}
    return {"model_params": model}


@pytest.mark.parametrize("command", ["animate", "convert", None])
def test_running_the_networks_needs_only_their_parameters(command):
    config = _inference_only()
    assert validate_config(config, command=command) == config
    with_frames = {**config, "dataset_params": {"frame_shape": [256, 256, 3]}}  # no root_dir
    assert validate_config(with_frames, command=command) == with_frames


@pytest.mark.parametrize("command, config, message", [
    ("train", _inference_only(), r"x.yaml: train needs train_params, which is missing \(found sections "
                                 r"\['model_params'\]\)"),
    ("train", {**_vox(), "model_params": _inference_only()["model_params"]},
     r"train needs model_params.discriminator_params, which is missing \(found model_params \['common_params', "),
    ("train", {key: value for key, value in _vox().items() if key != "dataset_params"}, r"train needs dataset_params"),
    ("reconstruct", _inference_only(), r"reconstruct needs dataset_params"),
])
def test_training_and_reconstruction_need_the_rest(command, config, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(config, source="x.yaml", command=command)
    validate_config(_vox(), command=command)  # the full config is enough


def test_the_command_is_one_of_the_known_ones():
    with pytest.raises(ValueError, match=r"expected command in \[None, 'animate', .*got 'trian'"):
        validate_config(_vox(), command="trian")


def test_small_variant_narrows_every_network_and_leaves_the_original_alone():
    from fomm_lessons.checkpoint import build_models
    from fomm_lessons.config import load_config, small_variant

    config = load_config("cpu-64")
    small = small_variant(config)
    assert config == load_config("cpu-64")  # a copy: the original is untouched
    model = small["model_params"]
    assert model["common_params"]["num_kp"] == 4
    assert model["generator_params"]["num_bottleneck_blocks"] == 1
    assert model["kp_detector_params"]["num_blocks"] == 3
    assert small["train_params"] == config["train_params"]

    import numpy as np

    def count(params):
        models = build_models(params, discriminator=True)
        return sum(int(np.prod(w.shape)) for net in (models.kp_detector, models.generator, models.discriminator)
                   for w in net.weights)

    assert count(model) < count(config["model_params"]) / 8  # 54139 against 519305 weights


def test_unknown_train_params_keys_are_an_error_as_in_model_params(tmp_path):
    import yaml

    from fomm_lessons.config import ConfigError, builtin_config_path

    for where, typo in (("train_params", "lr_generatr"), ("loss_weights", "perceptal"),
                        ("transform_params", "sigma_tsp")):
        config = yaml.safe_load(builtin_config_path("vox-256").read_text())
        section = config["train_params"]
        section = section if where == "train_params" else section[where]
        section[typo] = 1
        path = tmp_path / "typo.yaml"
        path.write_text(yaml.safe_dump(config))
        with pytest.raises(ConfigError, match=f"unknown keys \\['{typo}'\\] in train_params"):
            load_config(path, command="train")


def test_a_config_file_of_megabytes_is_refused_before_it_is_parsed(tmp_path, monkeypatch):
    import yaml

    from fomm_lessons import config
    from fomm_lessons.config import ConfigError, builtin_config_path

    path = tmp_path / "huge.yaml"
    path.write_text(builtin_config_path("vox-256").read_text() + "# " + "x" * (2 << 20) + "\n")

    def no_parsing(text):
        raise AssertionError("parsed")

    monkeypatch.setattr(yaml, "safe_load", no_parsing)
    with pytest.raises(ConfigError, match=f"{path}: {path.stat().st_size} bytes, larger than the 1048576"):
        config.load_config(path)

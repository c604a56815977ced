"""Configs in the original FOMM YAML format, checked before anything is built.

A config is a plain dict with the original's sections (``dataset_params``,
``model_params``, ``train_params``, ``reconstruction_params``,
``animate_params``, ``visualizer_params``). :func:`load_config` reads a YAML
file or one of the built-in configs shipped in ``fomm_lessons/configs/``
(``BUILTIN_CONFIGS``), and :func:`validate_config` checks the values the
networks and the trainer rely on, so that a typo fails here, with the key and
the value, and not deep inside a network.

What must be there depends on the command (:data:`COMMAND_NEEDS`): running
the networks (``animate``, ``convert``) needs only the keypoint detector's and
the generator's parameters; ``reconstruct`` also the dataset's; ``train``
everything, the discriminator and ``train_params`` included. Sections that are
present are always checked.
"""

import copy
import importlib.resources
import math
import os
import warnings

import yaml

__all__ = ["BUILTIN_CONFIGS", "COMMAND_NEEDS", "ConfigError", "available_configs", "builtin_config_path",
           "load_config", "validate_config"]

BUILTIN_CONFIGS = ("vox-256", "vox-adv-256", "cpu-64", "sample-64", "puppets-64", "sample-64-v2")
SECTIONS = ("dataset_params", "model_params", "train_params", "reconstruction_params",
            "animate_params", "visualizer_params")

# What each command needs beyond model_params' common, kp_detector and generator params.
COMMAND_NEEDS = {
    None: (),
    "animate": (),
    "convert": (),
    "reconstruct": ("dataset_params",),
    "train": ("train_params", "dataset_params", "model_params.discriminator_params"),
}
_FLOAT32_MAX = 3.4028234663852886e38  # the optimizers keep learning rates in float32
_FLOAT32_TINY = 1.401298464324817e-45  # the smallest positive float32 (a subnormal)

# Keys each part of the original accepts (its constructor's arguments); others are typos.
_KNOWN_KEYS = {
    "common_params": {"num_kp", "num_channels", "estimate_jacobian"},
    "kp_detector_params": {"temperature", "block_expansion", "max_features", "scale_factor",
                           "num_blocks", "single_jacobian_map", "pad"},
    "generator_params": {"block_expansion", "max_features", "num_down_blocks",
                         "num_bottleneck_blocks", "estimate_occlusion_map", "dense_motion_params"},
    "dense_motion_params": {"block_expansion", "max_features", "num_blocks", "scale_factor",
                            "kp_variance"},
    "discriminator_params": {"scales", "block_expansion", "max_features", "num_blocks", "sn",
                             "use_kp", "kp_variance"},
    "dataset_params": {"root_dir", "frame_shape", "id_sampling", "is_train", "random_seed",
                       "pairs_list", "augmentation_params"},
    "augmentation_params": {"flip_param", "jitter_param", "resize_param", "rotation_param",
                            "crop_param"},
    # the original's train.py reads these (and run.py's checkpoint_freq)
    "train_params": {"num_epochs", "num_repeats", "epoch_milestones", "lr_generator", "lr_discriminator",
                     "lr_kp_detector", "batch_size", "scales", "checkpoint_freq", "transform_params",
                     "loss_weights",
                     # this project's ablations (fomm_lessons.losses), off unless a config sets them
                     "separation_sigma"},
    "loss_weights": {"generator_gan", "discriminator_gan", "feature_matching", "perceptual",
                     "equivariance_value", "equivariance_jacobian", "pixel", "keypoint_separation"},
    "transform_params": {"sigma_affine", "sigma_tps", "points_tps"},
}
MAX_CONFIG_BYTES = 1 << 20  # the built-in configs hold 2 to 3 kB
_VGG_POOLS = 4  # relu5_1 of VGG19 sits after 4 max pools, so frames need >= 16 px at every scale


class ConfigError(ValueError):
    """A config value that is missing or wrong; the message names the key and the value."""


def available_configs():
    """The names :func:`load_config` accepts besides file paths."""
    return BUILTIN_CONFIGS


def builtin_config_path(name):
    """The path of a built-in config's YAML file inside the installed package."""
    if name not in BUILTIN_CONFIGS:
        raise ConfigError(f"unknown built-in config {name!r}; expected one of {list(BUILTIN_CONFIGS)}")
    return importlib.resources.files("fomm_lessons") / "configs" / f"{name}.yaml"


def small_variant(config, num_kp=4, block_expansion=4, max_features=16, num_blocks=3):
    """A copy of ``config`` with narrow, shallow networks: the same wiring, a first step in seconds.

    Every network gets ``block_expansion`` and ``max_features`` channels, the
    two hourglasses ``num_blocks`` levels and the generator one bottleneck
    block; used to check that training works (chapter 10) and for quick runs.
    """
    small = copy.deepcopy(config)
    model = small["model_params"]
    model["common_params"]["num_kp"] = int(num_kp)
    generator = model["generator_params"]
    parts = [model["kp_detector_params"], generator, generator["dense_motion_params"]]
    for part in parts + ([model["discriminator_params"]] if "discriminator_params" in model else []):
        part.update(block_expansion=int(block_expansion), max_features=int(max_features))
    for part in (model["kp_detector_params"], generator["dense_motion_params"]):
        part["num_blocks"] = int(num_blocks)
    generator["num_bottleneck_blocks"] = 1
    return validate_config(small)


def load_config(path_or_name, command=None):
    """Read and check a FOMM YAML config: a file path or a built-in name ('vox-256', ...).

    ``command`` ("animate", "convert", "reconstruct", "train" or None) says what
    must be in it (:data:`COMMAND_NEEDS`).
    """
    source = os.fspath(path_or_name)
    if os.path.isfile(source):
        size = os.path.getsize(source)
        if size > MAX_CONFIG_BYTES:  # YAML takes ~70x its size in memory (59 MB: 4.2 GB, 153 s)
            raise ConfigError(f"{source}: {size} bytes, larger than the {MAX_CONFIG_BYTES} a config may "
                              "hold; expected a FOMM YAML config of a few kB")
        with open(source, encoding="utf-8") as file:
            text = file.read(MAX_CONFIG_BYTES + 1)
    elif source in BUILTIN_CONFIGS:
        text = builtin_config_path(source).read_text(encoding="utf-8")
    else:
        raise FileNotFoundError(
            f"no config file {source!r}, and it is not a built-in config name "
            f"(expected a path or one of {list(BUILTIN_CONFIGS)})"
        )
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: not valid YAML: {error}") from error
    return validate_config(config, source=source, command=command)


def validate_config(config, source="config", command=None):
    """Check a config dict for ``command``; returns a copy with numbers written as strings ('2e-4') made floats."""
    if command not in COMMAND_NEEDS:
        raise ValueError(f"expected command in {list(COMMAND_NEEDS)}, got {command!r}")
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(config).__name__}")
    config = copy.deepcopy(config)
    unknown = sorted(set(config) - set(SECTIONS))
    if unknown:
        warnings.warn(f"{source}: ignoring unknown sections {unknown}; known sections are "
                      f"{list(SECTIONS)}", stacklevel=2)
    check = _Checker(source)
    if "model_params" not in config:
        raise ConfigError(f"{source}: missing 'model_params' (found sections {sorted(config)})")
    model = check.section(config, "model_params")
    for dotted in COMMAND_NEEDS[command]:
        parent, _, key = dotted.rpartition(".")
        found = model if parent else config
        if found.get(key) is None:
            raise ConfigError(f"{source}: {command} needs {dotted}, which is missing (found "
                              f"{'model_params ' if parent else 'sections '}{sorted(found)})")
    common = check.section(model, "common_params", "model_params.")
    num_channels = check.integer(common, "num_channels", "model_params.common_params.")
    check.integer(common, "num_kp", "model_params.common_params.")
    check.boolean(common, "estimate_jacobian", "model_params.common_params.", required=False)
    check.known_keys(common, "common_params", "model_params.common_params")

    frame_shape = None
    if config.get("dataset_params") is not None:
        frame_shape = _check_dataset(check, config["dataset_params"], num_channels)
    _check_model(check, model, frame_shape)
    if config.get("train_params") is not None:
        _check_train(check, config["train_params"], model, frame_shape)
    for name in ("reconstruction_params", "animate_params", "visualizer_params"):
        if config.get(name) is not None and not isinstance(config[name], dict):
            raise ConfigError(f"{source}: {name} must be a mapping, got {config[name]!r}")
    normalization = (config.get("animate_params") or {}).get("normalization_params") or {}
    for key in ("adapt_movement_scale", "use_relative_movement", "use_relative_jacobian"):
        check.boolean(normalization, key, "animate_params.normalization_params.", required=False)
    return config


class _Checker:
    """Small typed getters that raise ConfigError naming '<source>: <dotted key>' and the value."""

    def __init__(self, source):
        self.source = source

    def fail(self, where, key, expected, value):
        raise ConfigError(f"{self.source}: {where}{key} must be {expected}, got {value!r}")

    def section(self, parent, key, where=""):
        if key not in parent:
            raise ConfigError(f"{self.source}: missing {where}{key} (found {sorted(parent)})")
        if not isinstance(parent[key], dict):
            self.fail(where, key, "a mapping", parent[key])
        return parent[key]

    def known_keys(self, mapping, kind, where):
        unknown = sorted(set(mapping) - _KNOWN_KEYS[kind])
        if unknown:
            raise ConfigError(f"{self.source}: unknown keys {unknown} in {where}; expected some of "
                              f"{sorted(_KNOWN_KEYS[kind])}")

    def integer(self, mapping, key, where, minimum=1, required=True):
        if key not in mapping:
            if required:
                raise ConfigError(f"{self.source}: missing {where}{key} (found {sorted(mapping)})")
            return None
        value = mapping[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(where, key, "a positive integer" if minimum == 1 else f"an integer >= {minimum}",
                      value)
        return value

    def number(self, mapping, key, where, low=0.0, high=math.inf, low_open=False, required=True):
        if key not in mapping:
            if required:
                raise ConfigError(f"{self.source}: missing {where}{key} (found {sorted(mapping)})")
            return None
        mapping[key] = self._in_range(mapping[key], f"{where}{key}", low, high, low_open)
        return mapping[key]

    def numbers(self, mapping, key, where, low=0.0, high=math.inf, low_open=False, required=True):
        if key not in mapping:
            if required:
                raise ConfigError(f"{self.source}: missing {where}{key} (found {sorted(mapping)})")
            return None
        values = mapping[key]
        if not isinstance(values, (list, tuple)):
            self.fail(where, key, "a list of numbers", values)
        mapping[key] = [self._in_range(value, f"{where}{key}[{index}]", low, high, low_open)
                        for index, value in enumerate(values)]
        return mapping[key]

    def boolean(self, mapping, key, where, required=True):
        if key not in mapping:
            if required:
                raise ConfigError(f"{self.source}: missing {where}{key} (found {sorted(mapping)})")
            return None
        if not isinstance(mapping[key], bool):
            self.fail(where, key, "true or false", mapping[key])
        return mapping[key]

    def _in_range(self, value, label, low, high, low_open):
        # YAML 1.1 reads '2e-4' (no dot) as a string: accept numbers written that way.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                self.fail("", label, "a number", value)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail("", label, "a finite number", value)
        if not (low < value if low_open else low <= value) or value > high:
            bound = f"{'>' if low_open else '>='} {low:g}"
            bound += f" and <= {high:g}" if high < math.inf else ""
            self.fail("", label, f"a number {bound}", value)
        return value


def _check_dataset(check, dataset, num_channels):
    where = "dataset_params."
    if not isinstance(dataset, dict):
        check.fail("", "dataset_params", "a mapping", dataset)
    check.known_keys(dataset, "dataset_params", "dataset_params")
    # The commands take the data folder from --data; root_dir is the original's default.
    if "root_dir" in dataset and not isinstance(dataset["root_dir"], str):
        check.fail(where, "root_dir", "a folder path", dataset["root_dir"])
    shape = dataset.get("frame_shape", [256, 256, 3])
    if (not isinstance(shape, (list, tuple)) or len(shape) != 3
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape)
            or shape[2] != num_channels):
        check.fail(where, "frame_shape", f"(H, W, {num_channels}) with positive integers "
                   "(the channels from model_params.common_params.num_channels)", shape)
    check.boolean(dataset, "id_sampling", where, required=False)
    augmentation = dataset.get("augmentation_params") or {}
    check.known_keys(augmentation, "augmentation_params", "dataset_params.augmentation_params")
    flips = augmentation.get("flip_param") or {}
    for key in ("horizontal_flip", "time_flip"):
        check.boolean(flips, key, where + "augmentation_params.flip_param.", required=False)
    jitter = augmentation.get("jitter_param") or {}
    for key in ("brightness", "contrast", "saturation", "hue"):
        check.number(jitter, key, where + "augmentation_params.jitter_param.", required=False,
                     high=0.5 if key == "hue" else math.inf)
    return tuple(shape)


def _check_hourglass(check, params, where, frame_shape):
    """The hourglass halves its input num_blocks times and doubles it back: sizes must divide."""
    scale = check.number(params, "scale_factor", where, low_open=True, high=1.0, required=False)
    blocks = params["num_blocks"]
    if frame_shape is None:
        return
    for side in frame_shape[:2]:
        size = math.floor(side * (1.0 if scale is None else scale))
        if size % 2 ** blocks:
            raise ConfigError(
                f"{check.source}: {where}num_blocks {blocks} with scale_factor {scale} does not fit "
                f"frames of {side} px: the hourglass input of {size} px must be divisible by "
                f"2**{blocks} = {2 ** blocks}; change num_blocks or scale_factor"
            )


def _check_model(check, model, frame_shape):
    where = "model_params.kp_detector_params."
    kp = check.section(model, "kp_detector_params", "model_params.")
    check.known_keys(kp, "kp_detector_params", "model_params.kp_detector_params")
    check.number(kp, "temperature", where, low_open=True)
    for key in ("block_expansion", "max_features", "num_blocks"):
        check.integer(kp, key, where)
    check.boolean(kp, "single_jacobian_map", where, required=False)
    check.integer(kp, "pad", where, minimum=0, required=False)
    _check_hourglass(check, kp, where, frame_shape)

    where = "model_params.generator_params."
    generator = check.section(model, "generator_params", "model_params.")
    check.known_keys(generator, "generator_params", "model_params.generator_params")
    for key in ("block_expansion", "max_features", "num_down_blocks"):
        check.integer(generator, key, where)
    check.integer(generator, "num_bottleneck_blocks", where, minimum=0)
    check.boolean(generator, "estimate_occlusion_map", where, required=False)
    down = generator["num_down_blocks"]
    if frame_shape is not None and any(side % 2 ** down for side in frame_shape[:2]):
        raise ConfigError(f"{check.source}: {where}num_down_blocks {down} needs frame sides divisible "
                          f"by {2 ** down}, got frame_shape {list(frame_shape)}")
    dense = check.section(generator, "dense_motion_params", where)
    where += "dense_motion_params."
    check.known_keys(dense, "dense_motion_params", where[:-1])
    for key in ("block_expansion", "max_features", "num_blocks"):
        check.integer(dense, key, where)
    check.number(dense, "kp_variance", where, low_open=True, required=False)
    _check_hourglass(check, dense, where, frame_shape)

    if model.get("discriminator_params") is None:  # only training needs one (COMMAND_NEEDS)
        return
    where = "model_params.discriminator_params."
    discriminator = check.section(model, "discriminator_params", "model_params.")
    check.known_keys(discriminator, "discriminator_params", where[:-1])
    for key in ("block_expansion", "max_features", "num_blocks"):
        check.integer(discriminator, key, where)
    scales = check.numbers(discriminator, "scales", where, low_open=True, high=1.0, required=False)
    for key in ("sn", "use_kp"):
        check.boolean(discriminator, key, where, required=False)
    if frame_shape is not None:
        for scale in scales or [1]:
            size = math.floor(min(frame_shape[:2]) * scale)
            for block in range(discriminator["num_blocks"]):
                size -= 3  # a 4x4 convolution without padding
                size = size // 2 if block < discriminator["num_blocks"] - 1 else size
            if size < 1:
                raise ConfigError(
                    f"{check.source}: {where}num_blocks {discriminator['num_blocks']} shrinks frames "
                    f"of {list(frame_shape)} at scale {scale} to nothing; use fewer blocks"
                )


def _check_train(check, train, model, frame_shape):
    where = "train_params."
    if not isinstance(train, dict):
        check.fail("", "train_params", "a mapping", train)
    check.known_keys(train, "train_params", "train_params")
    for key in ("num_epochs", "num_repeats", "batch_size"):
        check.integer(train, key, where)
    check.integer(train, "checkpoint_freq", where, required=False)
    milestones = train.get("epoch_milestones", [])
    if (not isinstance(milestones, (list, tuple))
            or any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in milestones)
            or list(milestones) != sorted(milestones)):
        check.fail(where, "epoch_milestones", "an increasing list of epochs", milestones)
    for key in ("lr_generator", "lr_discriminator", "lr_kp_detector"):
        rate = check.number(train, key, where, low_open=True)
        if not _FLOAT32_TINY <= rate <= _FLOAT32_MAX:  # 1e39 is inf in float32, 1e-46 is 0
            check.fail(where, key, "a learning rate that is finite and positive in float32 "
                       f"(between {_FLOAT32_TINY:.3g} and {_FLOAT32_MAX:.3g})", rate)
    scales = check.numbers(train, "scales", where, low_open=True, high=1.0)
    if not scales:
        check.fail(where, "scales", "a non-empty list of pyramid scales in (0, 1]", scales)

    weights = check.section(train, "loss_weights", where)
    check.known_keys(weights, "loss_weights", "train_params.loss_weights")
    where += "loss_weights."
    for key in ("generator_gan", "discriminator_gan", "equivariance_value", "equivariance_jacobian",
                "keypoint_separation"):
        check.number(weights, key, where, required=False)
    pixel = check.numbers(weights, "pixel", where, required=False) or []
    if len(pixel) > len(scales):
        check.fail(where, "pixel", f"at most one weight per pyramid scale ({len(scales)})", pixel)
    if weights.get("keypoint_separation"):
        check.number(train, "separation_sigma", "train_params.", low_open=True)
    perceptual = check.numbers(weights, "perceptual", where, required=False) or []
    if len(perceptual) > 5:
        check.fail(where, "perceptual", "at most 5 weights (relu1_1 ... relu5_1 of VGG19)", perceptual)
    if any(perceptual) and frame_shape is not None:
        smallest = min(frame_shape[:2]) * min(scales)
        if smallest < 2 ** _VGG_POOLS:
            raise ConfigError(
                f"{check.source}: train_params.scales {scales} take frames of {list(frame_shape)} "
                f"down to {smallest:g} px, below the {2 ** _VGG_POOLS} px VGG19 needs for relu5_1"
            )
    matching = check.numbers(weights, "feature_matching", where, required=False) or []
    blocks = (model.get("discriminator_params") or {}).get("num_blocks", 0)
    if weights.get("generator_gan") and any(matching) and len(matching) < blocks:
        check.fail(where, "feature_matching", f"one weight per discriminator block ({blocks})",
                   matching)
    if weights.get("equivariance_value") or weights.get("equivariance_jacobian"):
        transform = check.section(train, "transform_params", "train_params.")
        check.known_keys(transform, "transform_params", "train_params.transform_params")
        for key in ("sigma_affine", "sigma_tps"):
            check.number(transform, key, "train_params.transform_params.")
        check.integer(transform, "points_tps", "train_params.transform_params.")

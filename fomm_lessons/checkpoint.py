"""Weights in and out: the published PyTorch checkpoints, and Keras' own weight files.

This is the one place where PyTorch layouts become TensorFlow layouts. The
Keras networks name their sub-layers as the original's modules are named
(``predictor.encoder.down_blocks.0.conv``), so a ``state_dict`` name is a path
of attributes, list indices and dict keys through the Keras model, ending in a
field of one layer:

| PyTorch field | Keras weight | layout change |
| --- | --- | --- |
| conv ``weight`` / ``weight_orig`` (O, I, kh, kw) | ``kernel`` (kh, kw, I, O) | transpose |
| spectral norm ``weight_v`` (I * kh * kw in (I, kh, kw) order) | ``sn_v`` ((kh, kw, I) order) | reorder |
| ``bias``, spectral norm ``weight_u`` | ``bias``, ``sn_u`` | none |
| norm ``weight``, ``bias`` | ``gamma``, ``beta`` | none |
| batch norm ``running_mean``, ``running_var`` | ``moving_mean``, ``moving_variance`` | none |
| batch norm ``num_batches_tracked`` | none (Keras keeps no count) | ignored, may be absent |
| anti-aliasing ``down.weight`` (C, 1, k, k) | none (a constant) | checked against the Gaussian |
"""

import os
from dataclasses import dataclass

import keras
import numpy as np

from fomm_lessons.discriminator import MultiScaleDiscriminator, SpectralNormConv2D
from fomm_lessons.generator import OcclusionAwareGenerator
from fomm_lessons.keypoint_detector import KeypointDetector
from fomm_lessons.pyramid import AntiAliasDownsample

PARTS = ("kp_detector", "generator", "discriminator")
WEIGHT_FILES = {part: f"{part}.weights.h5" for part in PARTS}
IGNORED = "ignored"
CONSTANT = "constant"


@dataclass
class FommModels:
    """The three networks of one FOMM configuration (``discriminator`` may be None)."""

    kp_detector: KeypointDetector
    generator: OcclusionAwareGenerator
    discriminator: MultiScaleDiscriminator = None


def _model_params(model_params):
    """Accept a whole config (with ``model_params``) or the ``model_params`` dict itself."""
    if "model_params" in model_params:
        model_params = model_params["model_params"]
    missing = [k for k in ("common_params", "kp_detector_params", "generator_params") if k not in model_params]
    if missing:
        raise ValueError(f"expected model_params with {missing}, got keys {sorted(model_params)}")
    return model_params


def build_models(model_params, discriminator=True):
    """Build the three networks of ``model_params`` (the original YAML format) with all weights created."""
    params = _model_params(model_params)
    common = params["common_params"]
    kp_detector = KeypointDetector(**params["kp_detector_params"], **common, name="kp_detector")
    generator = OcclusionAwareGenerator(**params["generator_params"], **common, name="generator")
    disc = None
    if discriminator and "discriminator_params" in params:
        disc = MultiScaleDiscriminator(**params["discriminator_params"], **common, name="discriminator")
    for model in (kp_detector, generator, disc):
        if model is not None:
            model.build()
    return FommModels(kp_detector, generator, disc)


# ---------------------------------------------------------------------------
# state_dict names <-> Keras weights
# ---------------------------------------------------------------------------

def _children(layer):
    """Public sub-layers of ``layer`` by attribute name; lists by index, dicts by key."""
    for attr, value in vars(layer).items():
        if attr.startswith("_"):
            continue
        if isinstance(value, keras.layers.Layer):
            yield attr, value
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], keras.layers.Layer):
            for i, item in enumerate(value):
                yield f"{attr}.{i}", item
        elif isinstance(value, dict) and value and isinstance(next(iter(value.values())), keras.layers.Layer):
            for key, item in value.items():
                yield f"{attr}.{key}", item


def _fields(layer):
    """``{torch field: Keras variable, IGNORED or CONSTANT}`` of one leaf layer, or None."""
    if isinstance(layer, SpectralNormConv2D):
        return {"weight_orig": layer.kernel, "bias": layer.bias, "weight_u": layer.sn_u, "weight_v": layer.sn_v}
    if isinstance(layer, keras.layers.Conv2D):
        return {"weight": layer.kernel, "bias": layer.bias}
    if isinstance(layer, keras.layers.BatchNormalization):
        return {"weight": layer.gamma, "bias": layer.beta, "running_mean": layer.moving_mean,
                "running_var": layer.moving_variance, "num_batches_tracked": IGNORED}
    if isinstance(layer, keras.layers.GroupNormalization):
        return {"weight": layer.gamma, "bias": layer.beta}
    if isinstance(layer, AntiAliasDownsample):
        return {"weight": CONSTANT} if layer.scale != 1.0 else {}
    return None


def torch_entries(model, prefix=""):
    """Yield ``(state_dict name, layer, field, target)`` for every entry the original model has."""
    fields = _fields(model)
    if fields is not None:
        for field, target in fields.items():
            yield prefix + field, model, field, target
        return
    for name, child in _children(model):
        yield from torch_entries(child, f"{prefix}{name}.")


def _torch_shape(layer, field, target):
    """The PyTorch shape of one entry, from the Keras layer."""
    if target is IGNORED:
        return ()
    if target is CONSTANT:
        k = layer.kernel_2d.shape[0]
        return (layer.channels, 1, k, k)
    shape = tuple(target.shape)
    if field in ("weight", "weight_orig") and len(shape) == 4:
        kh, kw, i, o = shape
        return (o, i, kh, kw)
    return shape


def _to_keras(layer, field, value):
    """PyTorch layout -> Keras layout (the only layout change in the package)."""
    if field in ("weight", "weight_orig") and value.ndim == 4:
        return np.transpose(value, (2, 3, 1, 0))  # (O, I, kh, kw) -> (kh, kw, I, O)
    if field == "weight_v":
        kh, kw, i, _ = layer.kernel.shape
        return np.transpose(value.reshape(i, kh, kw), (1, 2, 0)).reshape(-1)  # (I, kh, kw) -> (kh, kw, I)
    return value


def torch_state_shapes(model):
    """``{state_dict name: PyTorch shape}`` that ``model`` expects."""
    return {name: _torch_shape(layer, field, target) for name, layer, field, target in torch_entries(model)}


def load_torch_state(model, state, what="model"):
    """Copy a PyTorch ``state`` ({name: array}) into the built Keras ``model``.

    Raises ValueError listing every missing, unexpected or wrongly shaped name.
    """
    entries = {name: (layer, field, target) for name, layer, field, target in torch_entries(model)}
    state = {name: np.asarray(value) for name, value in state.items()}
    missing = [n for n, (_, _, t) in entries.items() if n not in state and t is not IGNORED]
    extra = [n for n in state if n not in entries]
    wrong = [f"{n}: got {tuple(state[n].shape)}, expected {_torch_shape(*entries[n])}"
             for n in entries if n in state and entries[n][2] is not IGNORED
             and tuple(state[n].shape) != _torch_shape(*entries[n])]
    problems = []
    if missing:
        problems.append(f"missing names {missing}")
    if extra:
        problems.append(f"unexpected names {extra}")
    if wrong:
        problems.append(f"wrong shapes [{'; '.join(wrong)}]")
    if problems:
        raise ValueError(f"{what} state_dict does not fit the model: " + "; ".join(problems))
    assigned = set()
    for name, (layer, field, target) in entries.items():
        if target is IGNORED:
            continue
        value = state[name].astype(np.float32)
        if target is CONSTANT:
            expected = np.broadcast_to(layer.kernel_2d, value.shape[:1] + (1,) + layer.kernel_2d.shape)
            if not np.allclose(value, expected, atol=1e-6):
                raise ValueError(f"{what} state_dict entry {name} is not the anti-aliasing Gaussian of "
                                 f"scale {layer.scale} (max difference {np.abs(value - expected).max():.3g})")
            continue
        target.assign(_to_keras(layer, field, value))
        assigned.add(id(target))
    left = [v.path for v in model.weights if id(v) not in assigned]
    if left:
        raise ValueError(f"{what}: Keras weights without a state_dict entry: {left}")


def models_from_torch_state(state, model_params):
    """Build the networks of ``model_params`` and load ``state`` = {part: {state_dict name: array}}.

    ``state`` needs ``kp_detector`` and ``generator``; without ``discriminator``
    the returned ``discriminator`` is None.
    """
    missing = [part for part in PARTS[:2] if part not in state]
    if missing:
        raise ValueError(f"expected a state with {list(PARTS)}, missing {missing}; got {sorted(state)}")
    models = build_models(model_params, discriminator="discriminator" in state)
    for part in PARTS:
        model = getattr(models, part)
        if model is not None:
            load_torch_state(model, state[part], part)
    return models


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {key: _to_numpy(value) for key, value in tree.items()}
    if hasattr(tree, "detach"):
        return tree.detach().cpu().numpy()
    return tree


def read_torch_checkpoint(path, max_bytes=None):
    """The dict stored in a ``.pth.tar`` file, tensors as NumPy arrays (with or without torch).

    Only tensors, dicts, lists and plain values are read, never pickled code: torch reads
    with ``weights_only=True`` when it is installed, else the torch-free reader of
    :mod:`fomm_lessons.torchfile` (which also diagnoses what torch refuses). A file that
    is not a readable ``torch.save`` file, or that holds other objects, raises one
    ValueError naming it; ``max_bytes`` raises the torch-free reader's size bound.
    """
    from fomm_lessons import torchfile

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        try:
            return _to_numpy(torch.load(path, map_location="cpu", weights_only=True))
        except Exception:  # torch's messages advise loading unsafely: the safe reader says why
            pass
    try:
        return torchfile.read_torch_file(path, torchfile.MAX_BYTES if max_bytes is None else max_bytes)
    except torchfile.TorchFileError as error:
        reason = str(error).removeprefix(f"{path}: ")
        if isinstance(error, torchfile.UnsafeCheckpointError):
            raise ValueError(f"the checkpoint {path} was {reason}; use a checkpoint that holds only "
                             "state_dicts (tensors), such as the published ones") from None
        raise ValueError(f"the checkpoint {path} is not a PyTorch .pth.tar file ({reason}): "
                         "download or save it again") from None


def load_torch_checkpoint(path, model_params):
    """The networks of ``model_params`` with the weights of a published ``.pth.tar`` checkpoint."""
    checkpoint = read_torch_checkpoint(path)
    state = {part: checkpoint[part] for part in PARTS if part in checkpoint}
    return models_from_torch_state(state, model_params)


# ---------------------------------------------------------------------------
# Keras weight files
# ---------------------------------------------------------------------------

def save_models(models, directory):
    """Write each network's weights to ``directory/<part>.weights.h5``; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for part in PARTS:
        model = getattr(models, part)
        if model is not None:
            paths.append(os.path.join(directory, WEIGHT_FILES[part]))
            model.save_weights(paths[-1])
    return paths


def load_models(directory, model_params):
    """Build the networks of ``model_params`` and read the weights :func:`save_models` wrote."""
    has_disc = os.path.exists(os.path.join(directory, WEIGHT_FILES["discriminator"]))
    models = build_models(model_params, discriminator=has_disc)
    for part in PARTS:
        model = getattr(models, part)
        if model is not None:
            path = os.path.join(directory, WEIGHT_FILES[part])
            if not os.path.exists(path):
                raise FileNotFoundError(f"no {part} weights at {path}")
            model.load_weights(path)
    return models


def load_checkpoint(path, model_params, config_name="the config"):
    """The networks of ``model_params`` with the weights of a ``.pth.tar`` file or a :func:`save_models` folder.

    A file that is not a checkpoint, or one that does not fit the config, raises ValueError naming both.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")

    def has_weights(folder):
        return any(os.path.exists(os.path.join(folder, name)) for name in WEIGHT_FILES.values())

    if os.path.isdir(path) and not has_weights(path) and has_weights(os.path.join(path, "models")):
        path = os.path.join(path, "models")  # a training run folder: its exported models
    state = None
    if os.path.isdir(path):
        if not has_weights(path):
            raise FileNotFoundError(f"no checkpoint in the folder {path}: expected "
                                    f"{'/'.join(WEIGHT_FILES.values())}")
    else:
        state = read_torch_checkpoint(path)  # a bad or unsafe file: one ValueError naming it
        if not isinstance(state, dict):
            raise ValueError(f"the checkpoint {path} holds a {type(state).__name__}, expected a dict of state_dicts")
    try:
        if state is None:
            return load_models(path, model_params)
        parts = {part: state[part] for part in PARTS if part in state}
        return models_from_torch_state(parts, model_params)
    except FileNotFoundError:
        raise
    except Exception as error:  # Keras raises several kinds for weights that do not fit
        message = " ".join(str(error).split())[:400]  # Keras' messages run over several lines
        raise ValueError(f"the checkpoint {path} does not match {config_name}: {message}") from None



def convert_main(args):
    """``fomm-lessons convert --config CONFIG --checkpoint in.pth.tar --out DIR``."""
    from fomm_lessons.config import load_config
    from fomm_lessons.data.media import check_output_folder, claim_output_folder

    inputs = {"--checkpoint": args.checkpoint, "--config": args.config}
    check_output_folder(args.out, "convert", inputs)  # new, empty, or an earlier convert's: never a user's files
    config = load_config(args.config)
    models = load_checkpoint(args.checkpoint, config["model_params"], f"the config {args.config}")
    claim_output_folder(args.out, "convert", inputs)
    for path in save_models(models, args.out):
        print(path)
    return 0

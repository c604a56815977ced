"""VGG19 features for the perceptual loss (Sec. 3.4 of the paper; Johnson et al. 2016).

:class:`Vgg19Features` returns relu1_1, relu2_1, relu3_1, relu4_1 and relu5_1 of
VGG19, the five feature maps whose L1 differences the FOMM perceptual loss
sums. It takes NHWC images in [0, 1] and normalises them itself.

Where the weights come from matters:

* **torchvision's ``vgg19``** (what the original FOMM used): trained by the
  PyTorch team on RGB inputs normalised with the ImageNet mean
  (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). Loaded from a state dict
  (``features.N.weight`` / ``features.N.bias``, PyTorch layout), a ``.pth`` file
  (read without torch by :func:`fomm_lessons.torchfile.read_torch_file`) or an
  ``.npz`` of the same keys. With these weights the features equal the
  original's (``preprocessing="torch"``). :func:`fomm_lessons.pretrained.torchvision_vgg19`
  downloads torchvision's file when it is not in the torch hub cache and keeps
  its 13 convolutions in Keras' layout (:func:`save_keras_layout`, an ``.npz``
  of ``LAYER/kernel`` and ``LAYER/bias``, 80 MB instead of 548 MB).
* **Keras' ``VGG19(weights="imagenet")``**: the Oxford VGG team's Caffe model,
  converted. It expects BGR inputs in 0..255 with the mean pixel
  (103.939, 116.779, 123.68) (B, G, R) subtracted and no division by a std
  (Keras' ``preprocess_input`` "caffe" mode), so here ``preprocessing="caffe"``
  maps ``x`` in [0, 1] to ``255 * x[..., ::-1] - mean_bgr`` exactly. This is a
  different training of the same architecture: its features are not those of
  torchvision's weights (not a rescaling of them), so perceptual loss values,
  and the loss weights that balance them, differ from the original's. How much
  was not measured here (this machine cannot download either set of weights).
* **random** weights, with a loud warning: only for tests and offline runs.
  They are drawn from ``seed`` alone (Keras' Conv2D defaults: Glorot-uniform
  kernels, zero biases), so that every process, a resumed run included, draws
  the same ones.
"""

import logging
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

__all__ = ["Vgg19Features", "TORCHVISION_VGG19_FILE", "find_torchvision_vgg19",
           "keras_weights_from_torch", "save_keras_layout"]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, for inputs in [0, 1] (torchvision)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # BGR, for inputs in 0..255 (Keras "caffe" mode)
TORCHVISION_VGG19_FILE = "vgg19-dcbb9e9d.pth"  # torchvision's file name in the torch hub cache
_SOURCE_KEY = "source"  # what a Keras-layout .npz was converted from, in words
WEIGHTS_ENV = "FOMM_LESSONS_VGG19"  # a weights file that weights="auto" tries first

# (Keras layer name, index in torchvision's vgg19.features, input channels, output channels).
# The outputs are taken after the ReLU of each block's first convolution (indices 1, 6, 11, 20, 29),
# with a 2x2 max pool before each block after the first.
CONVOLUTIONS = (
    ("block1_conv1", 0, 3, 64), ("block1_conv2", 2, 64, 64),
    ("block2_conv1", 5, 64, 128), ("block2_conv2", 7, 128, 128),
    ("block3_conv1", 10, 128, 256), ("block3_conv2", 12, 256, 256),
    ("block3_conv3", 14, 256, 256), ("block3_conv4", 16, 256, 256),
    ("block4_conv1", 19, 256, 512), ("block4_conv2", 21, 512, 512),
    ("block4_conv3", 23, 512, 512), ("block4_conv4", 25, 512, 512),
    ("block5_conv1", 28, 512, 512),
)
OUTPUTS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# VGG19 layers a full state dict also holds that these features do not use.
_UNUSED_TORCH_PREFIXES = tuple(f"features.{index}." for index in (30, 32, 34)) + ("classifier.",)


def find_torchvision_vgg19():
    """The path of torchvision's cached vgg19 weights ($TORCH_HOME/hub/checkpoints), or None."""
    torch_home = os.environ.get(
        "TORCH_HOME", os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch"))
    path = os.path.join(os.path.expanduser(torch_home), "hub", "checkpoints", TORCHVISION_VGG19_FILE)
    return path if os.path.isfile(path) else None


def keras_weights_from_torch(state_dict):
    """Map torchvision's ``features.N.weight/bias`` (out, in, 3, 3) to {layer: [kernel HWIO, bias]}."""
    state = {key[len("module."):] if key.startswith("module.") else key: np.asarray(value)
             for key, value in state_dict.items()}
    expected = {}
    for name, index, channels_in, channels_out in CONVOLUTIONS:
        expected[f"features.{index}.weight"] = (channels_out, channels_in, 3, 3)
        expected[f"features.{index}.bias"] = (channels_out,)
    missing = sorted(set(expected) - set(state))
    extra = sorted(key for key in set(state) - set(expected)
                   if not key.startswith(_UNUSED_TORCH_PREFIXES))
    wrong = sorted(f"{key}: {tuple(state[key].shape)} (expected {shape})"
                   for key, shape in expected.items()
                   if key in state and tuple(state[key].shape) != shape)
    if missing or extra or wrong:
        raise ValueError(f"not a torchvision vgg19 state dict: missing {missing}, unexpected {extra}, "
                         f"wrong shapes {wrong}")
    weights = {}
    for name, index, _, _ in CONVOLUTIONS:
        kernel = state[f"features.{index}.weight"].astype(np.float32).transpose(2, 3, 1, 0)
        bias = state[f"features.{index}.bias"].astype(np.float32)
        weights[name] = [np.ascontiguousarray(kernel), bias]
    return weights


def save_keras_layout(weights, path, source):
    """Write {layer: [kernel HWIO, bias]} to ``path`` (an ``.npz``), with ``source`` saying where it came from.

    Written through a temporary file, so that a reader never finds half of it.
    """
    arrays = {f"{name}/{field}": value for name, (kernel, bias) in weights.items()
              for field, value in (("kernel", kernel), ("bias", bias))}
    partial = f"{path}.tmp.npz"
    np.savez(partial, **arrays, **{_SOURCE_KEY: np.array(source)})
    os.replace(partial, path)
    return path


class Vgg19Features(keras.Model):
    """relu1_1 ... relu5_1 of VGG19 for images (B, H, W, 3) in [0, 1]: a list of 5 feature maps.

    ``weights``: "auto" (torchvision's cached file or ``$FOMM_LESSONS_VGG19``, else
    Keras' ImageNet weights, else random with a warning), "imagenet" (Keras'
    download), "torchvision" (the cached torchvision file), "random", None (random,
    silently: for ``from_config`` before ``load_weights``), a state dict, or a path
    to a ``.pth``/``.pth.tar``/``.pt`` file, an ``.npz`` of torchvision keys or a
    Keras VGG19 ``.h5``/``.weights.h5`` file. ``preprocessing`` ("torch" or "caffe")
    defaults to what the weights were trained with. Random weights are a function
    of ``seed`` only.
    """

    def __init__(self, weights="auto", preprocessing=None, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.seed = int(seed)
        self.convolutions = [
            keras.layers.Conv2D(channels_out, 3, padding="same", activation="relu", name=name)
            for name, _, _, channels_out in CONVOLUTIONS
        ]
        self.pool = keras.layers.MaxPooling2D(2, strides=2, padding="valid", name="pool")
        for layer, (_, _, channels_in, _) in zip(self.convolutions, CONVOLUTIONS):
            layer.build((None, None, None, channels_in))
        self.built = True
        self.weights_source, default_preprocessing = self._load(weights)
        self.preprocessing = preprocessing or default_preprocessing
        if self.preprocessing not in ("torch", "caffe"):
            raise ValueError(f"preprocessing must be 'torch' or 'caffe', got {self.preprocessing!r}")
        self.trainable = False  # the original's VGG19 is frozen (requires_grad=False)

    def call(self, images):
        """(B, H, W, 3) in [0, 1] -> [relu1_1 (B, H, W, 64), ..., relu5_1 (B, H/16, W/16, 512)]."""
        images = tf.convert_to_tensor(images)
        if self.preprocessing == "torch":
            mean, std = tf.constant(IMAGENET_MEAN, images.dtype), tf.constant(IMAGENET_STD, images.dtype)
            x = (images - mean) / std
        else:
            x = images[..., ::-1] * 255.0 - tf.constant(CAFFE_MEAN_BGR, images.dtype)
        outputs = []
        for layer in self.convolutions:
            if layer.name.endswith("conv1"):
                if outputs:
                    x = self.pool(x)  # (B, H/2, W/2, C)
                x = layer(x)
                outputs.append(x)
            else:
                x = layer(x)
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(weights=None, preprocessing=self.preprocessing)
        return config

    def set_layer_weights(self, weights):
        """Assign {layer name: [kernel (3, 3, in, out), bias (out,)]} for all 13 convolutions."""
        for layer in self.convolutions:
            layer.set_weights(weights[layer.name])

    def set_random_weights(self, seed):
        """Glorot-uniform kernels and zero biases (Keras' Conv2D defaults), drawn from ``seed`` alone."""
        rng = np.random.default_rng(seed)
        for layer, (_, _, channels_in, channels_out) in zip(self.convolutions, CONVOLUTIONS):
            limit = np.sqrt(6.0 / (9 * channels_in + 9 * channels_out))  # fan in + fan out of a 3x3 conv
            kernel = rng.uniform(-limit, limit, (3, 3, channels_in, channels_out)).astype(np.float32)
            layer.set_weights([kernel, np.zeros(channels_out, np.float32)])

    def _load(self, weights):
        """Load the weights asked for; returns (a description of the source, its preprocessing)."""
        if weights is None:
            return "random (to be loaded)", "torch"
        if isinstance(weights, dict):
            self.set_layer_weights(keras_weights_from_torch(weights))
            return "torchvision state dict", "torch"
        if not isinstance(weights, (str, os.PathLike)):
            raise ValueError(f"weights must be 'auto', 'imagenet', 'torchvision', 'random', a state "
                             f"dict or a file path, got {type(weights).__name__}")
        weights = os.fspath(weights)
        if weights == "random":
            _warn_random("weights='random' was asked for")
            self.set_random_weights(self.seed)
            return "random", "torch"
        if weights == "imagenet":
            return self._load_keras_vgg19("imagenet")
        if weights == "torchvision":
            path = find_torchvision_vgg19()
            if path is None:
                raise FileNotFoundError(
                    f"torchvision's {TORCHVISION_VGG19_FILE} is not in the torch hub cache "
                    "($TORCH_HOME/hub/checkpoints); pass its path instead")
            return self._load_file(path)
        if weights == "auto":
            return self._load_auto()
        return self._load_file(weights)

    def _load_auto(self):
        for path in (os.environ.get(WEIGHTS_ENV), find_torchvision_vgg19()):
            if path:
                return self._load_file(path)
        try:
            return self._load_keras_vgg19("imagenet")
        except Exception as error:  # no network, no cache, a bad download: all mean "no weights"
            _warn_random(f"no VGG19 weights could be found or downloaded ({type(error).__name__}: "
                         f"{error})")
            self.set_random_weights(self.seed)
            return "random", "torch"

    def _load_file(self, path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no VGG19 weights file {path}")
        if path.endswith(".h5"):
            return self._load_keras_vgg19(path)
        if path.endswith(".npz"):
            with np.load(path) as archive:
                state = {key: archive[key] for key in archive.files}
            if f"{CONVOLUTIONS[0][0]}/kernel" in state:  # Keras' layout (save_keras_layout)
                self.set_layer_weights({name: [state[f"{name}/kernel"], state[f"{name}/bias"]]
                                        for name, _, _, _ in CONVOLUTIONS})
                return f"{state[_SOURCE_KEY]} (in Keras' layout: {path})", "torch"
        elif path.endswith((".pth", ".pth.tar", ".pt", ".tar")):
            from fomm_lessons.torchfile import read_torch_file

            state = read_torch_file(path)
        else:
            raise ValueError(f"unknown VGG19 weights file type {path!r}: expected .pth, .pth.tar, .pt, "
                             ".npz (torchvision state dict) or .h5 (Keras VGG19)")
        self.set_layer_weights(keras_weights_from_torch(state))
        return f"torchvision weights from {path}", "torch"

    def _load_keras_vgg19(self, weights):
        """Copy the 13 convolutions out of Keras' VGG19 application (Caffe-trained weights)."""
        source = keras.applications.VGG19(include_top=False, weights=weights,
                                          input_shape=(None, None, 3))
        self.set_layer_weights({layer.name: source.get_layer(layer.name).get_weights()
                                for layer in self.convolutions})
        label = "Keras VGG19 ImageNet weights" if weights == "imagenet" else f"Keras VGG19 {weights}"
        return label, "caffe"


def _warn_random(reason):
    message = (f"Vgg19Features uses RANDOM weights: {reason}. The perceptual loss is then "
               "meaningless; this is only for offline tests. Pass weights='imagenet' (download), "
               f"a torchvision vgg19 .pth file, or set ${WEIGHTS_ENV} to one.")
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)

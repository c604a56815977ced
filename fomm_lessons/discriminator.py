"""The patch discriminator of the optional GAN loss (the original code's ``vox-adv`` models), one per scale."""

import keras
import tensorflow as tf

from fomm_lessons.blocks import conv2d, torch_initializers
from fomm_lessons.sampling import keypoints_to_gaussian

SPECTRAL_NORM_EPSILON = 1e-12


def _l2_normalize(vector):
    """``v / max(|v|, eps)`` as PyTorch's ``F.normalize``."""
    return vector / tf.maximum(tf.norm(vector), SPECTRAL_NORM_EPSILON)


@keras.saving.register_keras_serializable(package="fomm_lessons")
class SpectralNormConv2D(keras.layers.Layer):
    """A valid convolution with weight ``W / sigma(W)``, as ``torch.nn.utils.spectral_norm`` (one power step).

    ``sigma = u . (W_mat v)`` with ``W_mat`` the kernel as an (out, kh * kw * in)
    matrix and stored vectors ``sn_u``, ``sn_v``. In training each call first
    does one power iteration (``v = W_mat^T u / |.|``, ``u = W_mat v / |.|``),
    stores the new vectors and lets no gradient through them; in inference the
    stored vectors are used as they are (a checkpoint's ``weight_u``, ``weight_v``).
    """

    def __init__(self, in_features, out_features, kernel_size, **kwargs):
        super().__init__(**kwargs)
        self.in_features, self.out_features, self.kernel_size = int(in_features), int(out_features), int(kernel_size)

    def build(self, input_shape=None):
        k, fan_in = self.kernel_size, self.kernel_size**2 * self.in_features
        kernel_init, bias_init = torch_initializers(fan_in)
        self.kernel = self.add_weight(shape=(k, k, self.in_features, self.out_features), name="kernel",
                                      initializer=kernel_init)
        self.bias = self.add_weight(shape=(self.out_features,), name="bias", initializer=bias_init)
        unit = keras.initializers.RandomNormal(stddev=1.0)
        self.sn_u = self.add_weight(shape=(self.out_features,), name="sn_u", initializer=unit, trainable=False,
                                    aggregation="only_first_replica")
        self.sn_v = self.add_weight(shape=(fan_in,), name="sn_v", initializer=unit, trainable=False,
                                    aggregation="only_first_replica")
        # Start near the top singular vectors (15 power steps, as torch.nn.utils.parametrizations
        # does), so that a fresh layer's sigma is sensible in inference too.
        matrix = tf.transpose(tf.reshape(self.kernel, [-1, self.out_features]))  # (out, kh * kw * in)
        u = _l2_normalize(tf.convert_to_tensor(self.sn_u))
        for _ in range(15):
            v = _l2_normalize(tf.linalg.matvec(matrix, u, transpose_a=True))
            u = _l2_normalize(tf.linalg.matvec(matrix, v))
        self.sn_u.assign(u)
        self.sn_v.assign(v)

    def call(self, x, training=False):
        matrix = tf.transpose(tf.reshape(self.kernel, [-1, self.out_features]))  # (out, kh * kw * in)
        u, v = self.sn_u, self.sn_v
        if training:
            frozen = tf.stop_gradient(matrix)
            v = _l2_normalize(tf.linalg.matvec(frozen, u, transpose_a=True))
            u = _l2_normalize(tf.linalg.matvec(frozen, v))
            self.sn_u.assign(u)
            self.sn_v.assign(v)
        u, v = tf.stop_gradient(tf.convert_to_tensor(u)), tf.stop_gradient(tf.convert_to_tensor(v))
        sigma = tf.tensordot(u, tf.linalg.matvec(matrix, v), axes=1)
        out = tf.nn.conv2d(x, self.kernel / sigma, strides=1, padding="VALID")
        return tf.nn.bias_add(out, self.bias)

    def get_config(self):
        return {**super().get_config(), "in_features": self.in_features, "out_features": self.out_features,
                "kernel_size": self.kernel_size}


def _conv(in_features, out_features, kernel_size, sn):
    if sn:
        return SpectralNormConv2D(in_features, out_features, kernel_size, name="conv")
    return conv2d(in_features, out_features, kernel_size, padding="valid")


@keras.saving.register_keras_serializable(package="fomm_lessons")
class DiscriminatorBlock(keras.layers.Layer):
    """Valid 4x4 conv -> instance norm (optional) -> LeakyReLU(0.2) -> 2x2 average pooling (optional)."""

    def __init__(self, in_features, out_features, norm=False, kernel_size=4, pool=False, sn=False, **kwargs):
        super().__init__(**kwargs)
        self.in_features, self.out_features, self.kernel_size = int(in_features), int(out_features), int(kernel_size)
        self.use_norm, self.pool, self.sn = bool(norm), bool(pool), bool(sn)
        self.conv = _conv(self.in_features, self.out_features, self.kernel_size, self.sn)
        # Instance norm: affine, eps 1e-5, no running statistics (identical in training and inference).
        self.norm = keras.layers.GroupNormalization(groups=-1, epsilon=1e-5, name="norm") if self.use_norm else None

    def build(self, input_shape=None):
        self.conv.build((None, None, None, self.in_features))
        if self.norm is not None:
            self.norm.build((None, None, None, self.out_features))

    def call(self, x, training=False):
        out = self.conv(x, training=training) if self.sn else self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = tf.nn.leaky_relu(out, 0.2)
        if self.pool:
            out = tf.nn.avg_pool2d(out, 2, 2, "VALID")
        return out

    def get_config(self):
        return {**super().get_config(), "in_features": self.in_features, "out_features": self.out_features,
                "norm": self.use_norm, "kernel_size": self.kernel_size, "pool": self.pool, "sn": self.sn}


@keras.saving.register_keras_serializable(package="fomm_lessons")
class Discriminator(keras.Model):
    """Patch discriminator: ``discriminator(images, kp=..., training=False) -> (feature_maps, prediction_map)``.

    ``images`` (B, H, W, C); with ``use_kp`` the Gaussian heatmaps of ``kp``
    (``{"value": (B, K, 2)}``, variance ``kp_variance``) are appended as K more
    channels. ``feature_maps`` lists each block's output (for feature matching),
    ``prediction_map`` is (B, h, w, 1).
    """

    def __init__(self, num_channels=3, block_expansion=64, num_blocks=4, max_features=512, sn=False,
                 use_kp=False, num_kp=10, kp_variance=0.01, **kwargs):
        names = ("name", "dtype", "trainable")
        super().__init__(**{k: v for k, v in kwargs.items() if k in names})
        self.num_channels, self.block_expansion = int(num_channels), int(block_expansion)
        self.num_blocks = int(num_blocks)
        self.max_features, self.sn, self.use_kp = int(max_features), bool(sn), bool(use_kp)
        self.num_kp, self.kp_variance = int(num_kp), float(kp_variance)

        def width(i):
            return min(self.max_features, self.block_expansion * 2**i)

        first = self.num_channels + self.num_kp * self.use_kp
        self.down_blocks = [
            DiscriminatorBlock(first if i == 0 else width(i), width(i + 1), norm=i != 0,
                               pool=i != self.num_blocks - 1, sn=self.sn, name=f"down_block_{i}")
            for i in range(self.num_blocks)
        ]
        self.conv = _conv(width(self.num_blocks), 1, 1, self.sn)

    def build(self, input_shape=None):
        for block in self.down_blocks:
            block.build()
        self.conv.build((None, None, None, self.down_blocks[-1].out_features))

    def call(self, images, kp=None, training=False):
        out = images
        if self.use_kp:
            if kp is None:
                raise ValueError("expected keypoints kp={'value': (B, K, 2)} for a discriminator with use_kp")
            heatmap = keypoints_to_gaussian(kp["value"], (images.shape[1], images.shape[2]), self.kp_variance)
            out = tf.concat([out, tf.cast(heatmap, out.dtype)], axis=-1)  # (B, H, W, C + K)
        feature_maps = []
        for block in self.down_blocks:
            out = block(out, training=training)
            feature_maps.append(out)
        prediction_map = self.conv(out, training=training) if self.sn else self.conv(out)
        return feature_maps, prediction_map

    def get_config(self):
        return {**super().get_config(), "num_channels": self.num_channels, "block_expansion": self.block_expansion,
                "num_blocks": self.num_blocks, "max_features": self.max_features, "sn": self.sn,
                "use_kp": self.use_kp, "num_kp": self.num_kp, "kp_variance": self.kp_variance}


@keras.saving.register_keras_serializable(package="fomm_lessons")
class MultiScaleDiscriminator(keras.Model):
    """One :class:`Discriminator` per scale of the image pyramid, as the original's.

    Call with ``{scale: images}`` (what :class:`fomm_lessons.pyramid.ImagePyramid`
    returns; a bare tensor when the only scale is 1) and ``kp``; returns
    ``{scale: (feature_maps, prediction_map)}`` with float scales. The
    sub-networks sit in ``discs`` under the original's keys (``"1"``, ``"0-5"``).
    """

    def __init__(self, scales=(), **kwargs):
        names = ("name", "dtype", "trainable")
        super().__init__(**{k: v for k, v in kwargs.items() if k in names})
        self.scales = list(scales)
        self.disc_params = {k: v for k, v in kwargs.items() if k not in names}
        keys = [str(s).replace(".", "-") for s in self.scales]  # the original's ModuleDict keys
        self.discs = {key: Discriminator(**self.disc_params, name=f"disc_{key}") for key in keys}

    def build(self, input_shape=None):
        for disc in self.discs.values():
            disc.build()

    def call(self, images, kp=None, training=False):
        if not isinstance(images, dict):
            if [float(s) for s in self.scales] != [1.0]:
                raise ValueError(f"expected {{scale: images}} for scales {self.scales}, got one tensor")
            images = {1.0: images}
        images = {float(s): v for s, v in images.items()}
        out = {}
        for scale, disc in zip(self.scales, self.discs.values()):
            if float(scale) not in images:
                raise ValueError(f"expected images at scale {scale}, got scales {sorted(images)}")
            out[float(scale)] = disc(images[float(scale)], kp=kp, training=training)
        return out

    def get_config(self):
        return {**super().get_config(), "scales": self.scales, **self.disc_params}

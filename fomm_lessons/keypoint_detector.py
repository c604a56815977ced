"""The keypoint detector (Sec. 3.1): keypoints T_{X<-R}(p_k) and jacobians d/dp T_{X<-R}(p) at p_k of one frame X."""

import keras
import tensorflow as tf

from fomm_lessons.blocks import Hourglass, conv2d
from fomm_lessons.pyramid import AntiAliasDownsample
from fomm_lessons.sampling import make_coordinate_grid


@keras.saving.register_keras_serializable(package="fomm_lessons")
class KeypointDetector(keras.Model):
    """U-Net heatmaps -> soft-argmax keypoints and local jacobians, the terms of Eq. 1-5 (Sec. 3.1).

    The image is first downsampled by ``scale_factor`` (anti-aliased); the
    hourglass output goes through a 7x7 convolution with padding ``pad`` (0 in
    the published configs, so the heatmap is 6 pixels smaller than the
    downsampled image) and a softmax with ``temperature`` over all its pixels.
    Keypoints are the heatmap-weighted mean of that heatmap's own coordinate
    grid; jacobians are the heatmap-weighted mean of a 4-channel map per
    keypoint, read as ``[[a, b], [c, d]]``, whose head starts at the identity.
    Call with ``images`` (B, H, W, C) of static size; returns ``{"value": (B, K, 2),
    "jacobian": (B, K, 2, 2)}`` (no jacobian without ``estimate_jacobian``).
    """

    def __init__(self, block_expansion, num_kp, num_channels, max_features, num_blocks, temperature,
                 estimate_jacobian=False, scale_factor=1, single_jacobian_map=False, pad=0, **kwargs):
        super().__init__(**kwargs)
        self.block_expansion, self.num_kp, self.num_channels = int(block_expansion), int(num_kp), int(num_channels)
        self.max_features, self.num_blocks = int(max_features), int(num_blocks)
        self.temperature, self.scale_factor = float(temperature), float(scale_factor)
        self.estimate_jacobian, self.single_jacobian_map = bool(estimate_jacobian), bool(single_jacobian_map)
        if int(pad) < 0:
            raise ValueError(f"expected a non-negative padding of the keypoint convolution, got pad={pad}")
        self.pad = int(pad)

        self.predictor = Hourglass(block_expansion, num_channels, num_blocks, max_features, name="predictor")
        width = self.predictor.out_filters
        self.kp = conv2d(width, self.num_kp, 7, padding="valid", name="kp")
        self.jacobian = None
        if self.estimate_jacobian:
            self.num_jacobian_maps = 1 if self.single_jacobian_map else self.num_kp
            identity = [1.0, 0.0, 0.0, 1.0] * self.num_jacobian_maps
            self.jacobian = conv2d(width, 4 * self.num_jacobian_maps, 7, padding="valid", name="jacobian",
                                   kernel_initializer="zeros",
                                   bias_initializer=keras.initializers.Constant(identity))
        self.down = None
        if self.scale_factor != 1:
            self.down = AntiAliasDownsample(num_channels, self.scale_factor, name="down")

    def build(self, input_shape=None):
        self.predictor.build()
        if self.down is not None:
            self.down.build((None, None, None, self.num_channels))
        shape = (None, None, None, self.predictor.out_filters)
        self.kp.build(shape)
        if self.jacobian is not None:
            self.jacobian.build(shape)

    def call(self, images, training=False):
        if self.down is not None:
            images = self.down(images)  # (B, H * scale, W * scale, C)
        features = self.predictor(images, training=training)
        if self.pad:
            p = self.pad
            features = tf.pad(features, [[0, 0], [p, p], [p, p], [0, 0]])
        prediction = self.kp(features)  # (B, h, w, K)
        height, width = prediction.shape[1], prediction.shape[2]
        if height is None or width is None:
            raise ValueError(f"expected images of static spatial size, got heatmaps of shape {prediction.shape}")
        flat = tf.reshape(prediction, [-1, height * width, self.num_kp]) / self.temperature
        heatmap = tf.reshape(tf.nn.softmax(flat, axis=1), [-1, height, width, self.num_kp])  # (B, h, w, K)
        grid = make_coordinate_grid(height, width, heatmap.dtype)  # (h, w, 2)
        out = {"value": tf.einsum("bhwk,hwc->bkc", heatmap, grid)}  # (B, K, 2)
        if self.jacobian is not None:
            maps = self.jacobian(features)  # (B, h, w, 4 * maps)
            maps = tf.reshape(maps, [-1, height, width, self.num_jacobian_maps, 4])
            jacobian = tf.reduce_sum(heatmap[..., None] * maps, axis=[1, 2])  # (B, K, 4)
            out["jacobian"] = tf.reshape(jacobian, [-1, self.num_kp, 2, 2])  # (B, K, 2, 2)
        return out

    def get_config(self):
        return {**super().get_config(), "block_expansion": self.block_expansion, "num_kp": self.num_kp,
                "num_channels": self.num_channels, "max_features": self.max_features,
                "num_blocks": self.num_blocks, "temperature": self.temperature,
                "estimate_jacobian": self.estimate_jacobian, "scale_factor": self.scale_factor,
                "single_jacobian_map": self.single_jacobian_map, "pad": self.pad}

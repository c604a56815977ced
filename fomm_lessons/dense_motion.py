"""The dense motion network (Sec. 3.1): sparse motions (Eq. 4-5), heatmaps (Eq. 6), their masked sum (Eq. 7)."""

import keras
import tensorflow as tf

from fomm_lessons.blocks import Hourglass, conv2d
from fomm_lessons.pyramid import AntiAliasDownsample
from fomm_lessons.sampling import grid_sample, keypoints_to_gaussian, make_coordinate_grid
from fomm_lessons.tps import batched_matmul

MIN_ABS_DETERMINANT = 1e-4


def invert_jacobians(jacobians, min_abs_determinant=MIN_ABS_DETERMINANT):
    """Inverse of 2x2 matrices (..., 2, 2) in closed form, ``adj(J) / det(J)``, safe when singular.

    The determinant is clamped away from zero keeping its sign (zero counts
    as positive): ``sign(det) * max(|det|, min_abs_determinant)``. A singular
    or near-singular jacobian therefore gives a large but finite inverse and
    finite gradients instead of the NaN/Inf of ``tf.linalg.inv``; matrices with
    ``|det| >= min_abs_determinant`` get their exact inverse.
    """
    a, b = jacobians[..., 0, 0], jacobians[..., 0, 1]
    c, d = jacobians[..., 1, 0], jacobians[..., 1, 1]
    det = a * d - b * c
    sign = tf.where(det < 0, -tf.ones_like(det), tf.ones_like(det))
    det = sign * tf.maximum(tf.abs(det), min_abs_determinant)
    adjugate = tf.stack([tf.stack([d, -b], axis=-1), tf.stack([-c, a], axis=-1)], axis=-2)  # (..., 2, 2)
    return adjugate / det[..., None, None]


@keras.saving.register_keras_serializable(package="fomm_lessons")
class DenseMotionNetwork(keras.layers.Layer):
    """From keypoints and a source frame to the dense motion T_{S<-D}, its masks and the occlusion map.

    Works on the source downsampled by ``scale_factor`` (h, w). Call with
    ``source_image`` (B, H, W, C) and keypoint dicts ``kp_driving``,
    ``kp_source`` (``value`` (B, K, 2), optional ``jacobian`` (B, K, 2, 2));
    returns ``sparse_deformed`` (B, K+1, h, w, C), ``mask`` (B, h, w, K+1),
    ``deformation`` (B, h, w, 2) and, with ``estimate_occlusion_map``,
    ``occlusion_map`` (B, h, w, 1). Motion 0 is the background (identity).
    """

    def __init__(self, block_expansion, num_blocks, max_features, num_kp, num_channels,
                 estimate_occlusion_map=False, scale_factor=1, kp_variance=0.01, **kwargs):
        super().__init__(**kwargs)
        self.block_expansion, self.num_blocks = int(block_expansion), int(num_blocks)
        self.max_features = int(max_features)
        self.num_kp, self.num_channels = int(num_kp), int(num_channels)
        self.estimate_occlusion_map = bool(estimate_occlusion_map)
        self.scale_factor, self.kp_variance = float(scale_factor), float(kp_variance)
        in_features = (self.num_kp + 1) * (self.num_channels + 1)
        self.hourglass = Hourglass(block_expansion, in_features, num_blocks, max_features, name="hourglass")
        width = self.hourglass.out_filters
        self.mask = conv2d(width, self.num_kp + 1, 7, name="mask")
        self.occlusion = conv2d(width, 1, 7, name="occlusion") if self.estimate_occlusion_map else None
        self.down = None
        if self.scale_factor != 1:
            self.down = AntiAliasDownsample(num_channels, self.scale_factor, name="down")

    def build(self, input_shape=None):
        self.hourglass.build()
        if self.down is not None:
            self.down.build((None, None, None, self.num_channels))
        shape = (None, None, None, self.hourglass.out_filters)
        self.mask.build(shape)
        if self.occlusion is not None:
            self.occlusion.build(shape)

    def heatmap_representation(self, kp_driving, kp_source, height, width):
        """Eq. 6: H_k(z) = G(z; p_k^D) - G(z; p_k^S), a zero map first for the background: (B, h, w, K+1)."""
        gaussian_driving = keypoints_to_gaussian(kp_driving["value"], (height, width), self.kp_variance)
        gaussian_source = keypoints_to_gaussian(kp_source["value"], (height, width), self.kp_variance)
        heatmap = gaussian_driving - gaussian_source  # (B, h, w, K)
        return tf.concat([tf.zeros_like(heatmap[..., :1]), heatmap], axis=-1)

    def sparse_motions(self, kp_driving, kp_source, height, width):
        """Eq. 4: T^k(z) = p_k^S + J_k (z - p_k^D), J_k = J_k^S (J_k^D)^-1; identity first: (B, K+1, h, w, 2)."""
        identity = make_coordinate_grid(height, width, kp_source["value"].dtype)[None, None]  # (1, 1, h, w, 2)
        offsets = identity - kp_driving["value"][:, :, None, None, :]  # (B, K, h, w, 2)
        if "jacobian" in kp_driving and "jacobian" in kp_source:
            jacobian = batched_matmul(kp_source["jacobian"], invert_jacobians(kp_driving["jacobian"]))  # (B, K, 2, 2)
            offsets = tf.einsum("bkij,bkhwj->bkhwi", jacobian, offsets)
        driving_to_source = offsets + kp_source["value"][:, :, None, None, :]  # (B, K, h, w, 2)
        background = tf.tile(identity, [tf.shape(driving_to_source)[0], 1, 1, 1, 1])
        return tf.concat([background, driving_to_source], axis=1)  # (B, K+1, h, w, 2)

    def deformed_sources(self, source_image, motions):
        """The source warped by each of the K+1 motions: (B, K+1, h, w, C)."""
        height, width, channels = source_image.shape[1], source_image.shape[2], source_image.shape[3]
        repeated = tf.repeat(source_image, self.num_kp + 1, axis=0)  # (B*(K+1), h, w, C)
        grids = tf.reshape(motions, [-1, height, width, 2])  # (B*(K+1), h, w, 2)
        deformed = grid_sample(repeated, grids)
        return tf.reshape(deformed, [-1, self.num_kp + 1, height, width, channels])

    def call(self, source_image, kp_driving, kp_source, training=False):
        if self.down is not None:
            source_image = self.down(source_image)  # (B, h, w, C)
        height, width = source_image.shape[1], source_image.shape[2]
        if height is None or width is None:
            raise ValueError(f"expected a source image of static spatial size, got shape {source_image.shape}")
        heatmap = self.heatmap_representation(kp_driving, kp_source, height, width)  # (B, h, w, K+1)
        motions = self.sparse_motions(kp_driving, kp_source, height, width)  # (B, K+1, h, w, 2)
        deformed = self.deformed_sources(source_image, motions)  # (B, K+1, h, w, C)
        # Per motion k the channels [H_k, R, G, B], motions side by side.
        stacked = tf.concat([tf.transpose(heatmap, [0, 3, 1, 2])[..., None], deformed], axis=-1)  # (B, K+1, h, w, C+1)
        stacked = tf.transpose(stacked, [0, 2, 3, 1, 4])  # (B, h, w, K+1, C+1)
        features = tf.reshape(stacked, [-1, height, width, (self.num_kp + 1) * (self.num_channels + 1)])
        prediction = self.hourglass(features, training=training)
        mask = tf.nn.softmax(self.mask(prediction), axis=-1)  # (B, h, w, K+1)
        out = {"sparse_deformed": deformed, "mask": mask,
               "deformation": tf.einsum("bhwk,bkhwc->bhwc", mask, motions)}  # Eq. 7, (B, h, w, 2)
        if self.occlusion is not None:
            out["occlusion_map"] = tf.sigmoid(self.occlusion(prediction))  # (B, h, w, 1)
        return out

    def get_config(self):
        return {**super().get_config(), "block_expansion": self.block_expansion, "num_blocks": self.num_blocks,
                "max_features": self.max_features, "num_kp": self.num_kp, "num_channels": self.num_channels,
                "estimate_occlusion_map": self.estimate_occlusion_map, "scale_factor": self.scale_factor,
                "kp_variance": self.kp_variance}

"""Anti-aliased downsampling and the image pyramid.

The keypoint detector and the dense motion network look at a smaller copy of
the frame (``scale_factor`` in the configs), and the perceptual loss of
Sec. 3.4 compares the two images at several resolutions. Both shrink an image
as the original's ``AntiAliasInterpolation2d`` does: a Gaussian blur, then
every ``1/scale``-th pixel.
"""

import numpy as np
import tensorflow as tf
import keras


def gaussian_kernel_1d(scale):
    """The original's blur for downsampling by ``scale``: returns (sigma, 1-D kernel)."""
    sigma = (1.0 / scale - 1.0) / 2.0
    size = 2 * round(sigma * 4) + 1
    mean = (size - 1) / 2.0
    taps = np.exp(-((np.arange(size, dtype=np.float64) - mean) ** 2) / (2.0 * sigma**2))
    return sigma, taps / taps.sum()


class AntiAliasDownsample(keras.layers.Layer):
    """Gaussian blur with sigma ``(1/scale - 1) / 2`` then keep every ``1/scale``-th pixel.

    This is the original's ``AntiAliasInterpolation2d``: zero padding, a
    ``2 * round(4 sigma) + 1`` kernel, identity when ``scale == 1``.
    """

    def __init__(self, channels, scale, **kwargs):
        super().__init__(**kwargs)
        if not 0 < scale <= 1:
            raise ValueError(f"expected 0 < scale <= 1, got {scale}")
        if abs(1.0 / scale - round(1.0 / scale)) > 1e-6:
            raise ValueError(f"expected scale = 1/n for an integer n, got {scale}")
        self.channels = int(channels)
        self.scale = float(scale)
        self.stride = int(round(1.0 / scale))
        if self.scale != 1.0:
            _, taps = gaussian_kernel_1d(self.scale)
            self.kernel_size = len(taps)
            kernel = np.outer(taps, taps).astype(np.float32)  # (k, k), sums to 1
            self.kernel_2d = kernel
            self._kernel = np.tile(kernel[:, :, None, None], (1, 1, self.channels, 1))  # (k, k, C, 1)
            self._pad_before = self.kernel_size // 2
            self._pad_after = self._pad_before - 1 if self.kernel_size % 2 == 0 else self._pad_before

    def call(self, images):
        if self.scale == 1.0:
            return images
        kernel = tf.constant(self._kernel, dtype=images.dtype)
        p, q = self._pad_before, self._pad_after
        padded = tf.pad(images, [[0, 0], [p, q], [p, q], [0, 0]])
        s = self.stride
        return tf.nn.depthwise_conv2d(padded, kernel, strides=[1, s, s, 1], padding="VALID")

    def compute_output_shape(self, input_shape):
        def reduce(n):
            return None if n is None else -(-n // self.stride)

        b, h, w, c = input_shape
        return (b, reduce(h), reduce(w), c)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "scale": self.scale}


class ImagePyramid(keras.layers.Layer):
    """Anti-aliased copies of an image at every scale: returns ``{scale: images}``."""

    def __init__(self, scales, channels=3, **kwargs):
        super().__init__(**kwargs)
        self.scales = [float(s) for s in scales]
        self.channels = int(channels)
        self.downs = [AntiAliasDownsample(self.channels, s, name=f"down_{i}") for i, s in enumerate(self.scales)]

    def call(self, images):
        return {scale: down(images) for scale, down in zip(self.scales, self.downs)}

    def get_config(self):
        return {**super().get_config(), "scales": self.scales, "channels": self.channels}



"""The occlusion-aware generator (Sec. 3.2): encode the source, warp its features, mask occlusions (Eq. 8), decode."""

import keras
import tensorflow as tf

from fomm_lessons.blocks import DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d, conv2d
from fomm_lessons.dense_motion import DenseMotionNetwork
from fomm_lessons.sampling import grid_sample


def resize_to(maps, height, width):
    """Bilinear resize of ``maps`` (B, h, w, C) to (height, width), PyTorch's align_corners=False; no-op if equal."""
    if maps.shape[1] == height and maps.shape[2] == width:
        return maps
    return tf.cast(tf.image.resize(maps, (height, width), method="bilinear"), maps.dtype)  # resize gives float32


def deform(inputs, deformation):
    """Warp ``inputs`` (B, H, W, C) by ``deformation`` (B, h, w, 2), resized to (H, W) first if needed."""
    deformation = resize_to(deformation, inputs.shape[1], inputs.shape[2])  # (B, H, W, 2)
    return grid_sample(inputs, deformation)


@keras.saving.register_keras_serializable(package="fomm_lessons")
class OcclusionAwareGenerator(keras.Model):
    """Source frame + keypoints -> the driving frame, as the original ``OcclusionAwareGenerator``.

    Encoder (a 7x7 same block, ``num_down_blocks`` down blocks), the dense
    motion network, the warp of the encoded features by T_{S<-D} times the
    occlusion map O (Eq. 8: xi' = O * f_w(xi, T_{S<-D})), ``num_bottleneck_blocks``
    residual blocks, up blocks and a 7x7 convolution with a sigmoid.
    Call ``generator(source, kp_source=..., kp_driving=..., training=False)`` with
    ``source`` (B, H, W, C); returns ``prediction`` (B, H, W, C), ``deformed``
    (the source warped, (B, H, W, C)) and the dense motion network's
    ``deformation``, ``mask``, ``occlusion_map`` and ``sparse_deformed``.
    """

    def __init__(self, num_channels, num_kp, block_expansion, max_features, num_down_blocks,
                 num_bottleneck_blocks, estimate_occlusion_map=False, dense_motion_params=None,
                 estimate_jacobian=False, **kwargs):
        super().__init__(**kwargs)
        self.num_channels, self.num_kp = int(num_channels), int(num_kp)
        self.block_expansion, self.max_features = int(block_expansion), int(max_features)
        self.num_down_blocks, self.num_bottleneck_blocks = int(num_down_blocks), int(num_bottleneck_blocks)
        self.estimate_occlusion_map, self.estimate_jacobian = bool(estimate_occlusion_map), bool(estimate_jacobian)
        self.dense_motion_params = dict(dense_motion_params) if dense_motion_params is not None else None

        self.dense_motion_network = None
        if self.dense_motion_params is not None:
            self.dense_motion_network = DenseMotionNetwork(
                num_kp=num_kp, num_channels=num_channels, estimate_occlusion_map=estimate_occlusion_map,
                **self.dense_motion_params, name="dense_motion_network")
        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=7, name="first")

        def width(i):
            return min(self.max_features, self.block_expansion * 2**i)

        n = self.num_down_blocks
        self.down_blocks = [DownBlock2d(width(i), width(i + 1), name=f"down_block_{i}") for i in range(n)]
        self.up_blocks = [UpBlock2d(width(n - i), width(n - i - 1), name=f"up_block_{i}") for i in range(n)]
        self.bottleneck = {f"r{i}": ResBlock2d(width(n), name=f"r{i}") for i in range(self.num_bottleneck_blocks)}
        self.final = conv2d(block_expansion, num_channels, 7, name="final")

    def build(self, input_shape=None):
        if self.dense_motion_network is not None:
            self.dense_motion_network.build()
        for block in [self.first, *self.down_blocks, *self.up_blocks, *self.bottleneck.values()]:
            block.build()
        self.final.build((None, None, None, self.block_expansion))

    def call(self, source, kp_source=None, kp_driving=None, training=False):
        out = self.first(source, training=training)  # (B, H, W, block_expansion)
        for block in self.down_blocks:
            out = block(out, training=training)  # (B, H / 2^n, W / 2^n, width(n))
        outputs = {}
        if self.dense_motion_network is not None:
            if kp_source is None or kp_driving is None:
                raise ValueError("expected kp_source and kp_driving keypoint dicts, got None")
            motion = self.dense_motion_network(source, kp_driving=kp_driving, kp_source=kp_source, training=training)
            outputs.update(motion)
            out = deform(out, motion["deformation"])
            if "occlusion_map" in motion:
                out = out * resize_to(motion["occlusion_map"], out.shape[1], out.shape[2])
            outputs["deformed"] = deform(source, motion["deformation"])  # (B, H, W, C)
        for block in self.bottleneck.values():
            out = block(out, training=training)
        for block in self.up_blocks:
            out = block(out, training=training)
        outputs["prediction"] = tf.sigmoid(self.final(out))  # (B, H, W, C)
        return outputs

    def get_config(self):
        return {**super().get_config(), "num_channels": self.num_channels, "num_kp": self.num_kp,
                "block_expansion": self.block_expansion, "max_features": self.max_features,
                "num_down_blocks": self.num_down_blocks, "num_bottleneck_blocks": self.num_bottleneck_blocks,
                "estimate_occlusion_map": self.estimate_occlusion_map,
                "dense_motion_params": self.dense_motion_params, "estimate_jacobian": self.estimate_jacobian}

"""The convolutional blocks every network is made of, as in the original's ``modules/util.py``.

Down, up, same and residual blocks, and the hourglass (a U-Net: an encoder of
down blocks, a decoder of up blocks with skip connections). Each block is
told its input width, like the PyTorch modules, so a network can create all of
its weights from shapes alone (``build``) without running a frame through it.

Batch norm (:class:`BatchNorm2d`) uses PyTorch's eps 1e-5 and momentum 0.1,
which is Keras momentum 0.9, and moves its running variance towards the
unbiased batch variance as PyTorch does.
Convolutions are initialised as PyTorch initialises them (uniform with bound
``1 / sqrt(fan_in)`` for kernel and bias).
"""

import math

import keras
import tensorflow as tf

BATCH_NORM_EPSILON = 1e-5
BATCH_NORM_MOMENTUM = 0.9


def torch_initializers(fan_in):
    """PyTorch's default (kernel, bias) initialisers for a layer with ``fan_in`` inputs per output."""
    bound = 1.0 / math.sqrt(fan_in)
    kernel = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")  # bound sqrt(1 / fan_in)
    return kernel, keras.initializers.RandomUniform(-bound, bound)


def conv2d(in_features, out_features, kernel_size, padding="same", name="conv", **kwargs):
    """A ``Conv2D`` initialised like PyTorch's ``nn.Conv2d`` (``padding`` "same" or "valid")."""
    kernel_init, bias_init = torch_initializers(in_features * kernel_size * kernel_size)
    kwargs.setdefault("kernel_initializer", kernel_init)
    kwargs.setdefault("bias_initializer", bias_init)
    return keras.layers.Conv2D(out_features, kernel_size, padding=padding, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="fomm_lessons")
class BatchNorm2d(keras.layers.BatchNormalization):
    """Keras batch norm over the channels of NHWC maps, updating its statistics as ``torch.nn.BatchNorm2d``.

    Training normalises with the batch mean and biased variance (as both
    libraries do) and moves the running variance towards the *unbiased* one,
    ``var * n / (n - 1)`` with ``n = B * H * W`` (over all replicas when
    ``synchronized``), where Keras would use the biased one.
    """

    def __init__(self, **kwargs):
        # Keras 3.14 added batch renormalisation, which PyTorch's BatchNorm2d does not have;
        # the options are taken out here so that no Keras version's private state is read.
        if kwargs.pop("renorm", False):
            raise ValueError("BatchNorm2d(renorm=True) is not supported: "
                             "expected renorm=False, as PyTorch's BatchNorm2d has no batch renormalisation")
        for key in ("renorm_clipping", "renorm_momentum"):
            kwargs.pop(key, None)
        super().__init__(**kwargs)

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or inputs.shape.rank != 4:
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, tf.float32)
        mean, variance, n = self._batch_moments(x)
        unbiased = variance * n / tf.maximum(n - 1.0, 1.0)
        keep = self.momentum
        self.moving_mean.assign(self.moving_mean * keep + mean * (1.0 - keep))
        self.moving_variance.assign(self.moving_variance * keep + unbiased * (1.0 - keep))
        out = tf.nn.batch_normalization(x, mean, variance, self.beta, self.gamma, self.epsilon)
        return tf.cast(out, self.compute_dtype)

    def _batch_moments(self, x):
        """Mean and biased variance per channel, two-pass, over all replicas when synchronised; and their count."""
        axes = [0, 1, 2]
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        context = tf.distribute.get_replica_context() if tf.distribute.has_strategy() else None
        if not self.synchronized or context is None or context.num_replicas_in_sync == 1:
            mean, variance = tf.nn.moments(x, axes)
            return mean, variance, count
        total = tf.distribute.ReduceOp.SUM
        count = context.all_reduce(total, count)
        mean = context.all_reduce(total, tf.reduce_sum(x, axes)) / count
        variance = context.all_reduce(total, tf.reduce_sum(tf.square(x - mean), axes)) / count
        return mean, variance, count


def batch_norm(name="norm"):
    """``BatchNorm2d(affine=True)`` with PyTorch's eps and momentum, synchronised across replicas as the original's."""
    return BatchNorm2d(momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, name=name, synchronized=True)


def _features_shape(channels):
    return (None, None, None, int(channels))


class _Block(keras.layers.Layer):
    """conv -> batch norm -> ReLU, with the input width known up front."""

    def __init__(self, in_features, out_features, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        self.in_features, self.out_features, self.kernel_size = int(in_features), int(out_features), int(kernel_size)
        self.conv = conv2d(self.in_features, self.out_features, self.kernel_size)
        self.norm = batch_norm()

    def build(self, input_shape=None):
        self.conv.build(_features_shape(self.in_features))
        self.norm.build(_features_shape(self.out_features))

    def _conv_norm_relu(self, x, training):
        return tf.nn.relu(self.norm(self.conv(x), training=training))

    def get_config(self):
        return {**super().get_config(), "in_features": self.in_features,
                "out_features": self.out_features, "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package="fomm_lessons")
class SameBlock2d(_Block):
    """conv -> batch norm -> ReLU at the same resolution."""

    def call(self, x, training=False):
        return self._conv_norm_relu(x, training)


@keras.saving.register_keras_serializable(package="fomm_lessons")
class DownBlock2d(_Block):
    """conv -> batch norm -> ReLU -> 2x2 average pooling (halves H and W, flooring)."""

    def call(self, x, training=False):
        out = self._conv_norm_relu(x, training)
        return tf.nn.avg_pool2d(out, 2, 2, "VALID")


@keras.saving.register_keras_serializable(package="fomm_lessons")
class UpBlock2d(_Block):
    """Nearest-neighbour x2 upsampling -> conv -> batch norm -> ReLU."""

    def call(self, x, training=False):
        out = tf.repeat(tf.repeat(x, 2, axis=1), 2, axis=2)  # (B, 2H, 2W, C)
        return self._conv_norm_relu(out, training)


@keras.saving.register_keras_serializable(package="fomm_lessons")
class ResBlock2d(keras.layers.Layer):
    """Pre-activation residual block: x + conv2(relu(norm2(conv1(relu(norm1(x))))))."""

    def __init__(self, in_features, kernel_size=3, **kwargs):
        super().__init__(**kwargs)
        self.in_features, self.kernel_size = int(in_features), int(kernel_size)
        self.conv1 = conv2d(self.in_features, self.in_features, self.kernel_size, name="conv1")
        self.conv2 = conv2d(self.in_features, self.in_features, self.kernel_size, name="conv2")
        self.norm1 = batch_norm("norm1")
        self.norm2 = batch_norm("norm2")

    def build(self, input_shape=None):
        shape = _features_shape(self.in_features)
        for layer in (self.conv1, self.conv2, self.norm1, self.norm2):
            layer.build(shape)

    def call(self, x, training=False):
        out = self.conv1(tf.nn.relu(self.norm1(x, training=training)))
        out = self.conv2(tf.nn.relu(self.norm2(out, training=training)))
        return out + x

    def get_config(self):
        return {**super().get_config(), "in_features": self.in_features, "kernel_size": self.kernel_size}


def _width(block_expansion, max_features, i):
    return min(max_features, block_expansion * 2**i)


@keras.saving.register_keras_serializable(package="fomm_lessons")
class Encoder(keras.layers.Layer):
    """Hourglass encoder: returns ``[x, down_0(x), down_1(down_0(x)), ...]``."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256, **kwargs):
        super().__init__(**kwargs)
        self.block_expansion, self.in_features = int(block_expansion), int(in_features)
        self.num_blocks, self.max_features = int(num_blocks), int(max_features)
        self.down_blocks = [
            DownBlock2d(self.in_features if i == 0 else _width(self.block_expansion, self.max_features, i),
                        _width(self.block_expansion, self.max_features, i + 1), name=f"down_block_{i}")
            for i in range(self.num_blocks)
        ]

    def build(self, input_shape=None):
        for block in self.down_blocks:
            block.build()

    def call(self, x, training=False):
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1], training=training))
        return outs

    def get_config(self):
        return {**super().get_config(), "block_expansion": self.block_expansion, "in_features": self.in_features,
                "num_blocks": self.num_blocks, "max_features": self.max_features}


@keras.saving.register_keras_serializable(package="fomm_lessons")
class Decoder(keras.layers.Layer):
    """Hourglass decoder: up blocks, each output concatenated with the encoder's skip."""

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256, **kwargs):
        super().__init__(**kwargs)
        self.block_expansion, self.in_features = int(block_expansion), int(in_features)
        self.num_blocks, self.max_features = int(num_blocks), int(max_features)
        self.up_blocks = []
        for i in reversed(range(self.num_blocks)):
            factor = 1 if i == self.num_blocks - 1 else 2
            in_filters = factor * _width(self.block_expansion, self.max_features, i + 1)
            out_filters = _width(self.block_expansion, self.max_features, i)
            self.up_blocks.append(UpBlock2d(in_filters, out_filters, name=f"up_block_{len(self.up_blocks)}"))
        self.out_filters = self.block_expansion + self.in_features

    def build(self, input_shape=None):
        for block in self.up_blocks:
            block.build()

    def call(self, skips, training=False):
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = block(out, training=training)
            out = tf.concat([out, skips.pop()], axis=-1)
        return out

    def get_config(self):
        return {**super().get_config(), "block_expansion": self.block_expansion, "in_features": self.in_features,
                "num_blocks": self.num_blocks, "max_features": self.max_features}


@keras.saving.register_keras_serializable(package="fomm_lessons")
class Hourglass(keras.layers.Layer):
    """U-Net: (B, H, W, in_features) -> (B, H, W, block_expansion + in_features).

    H and W must be divisible by ``2 ** num_blocks``.
    """

    def __init__(self, block_expansion, in_features, num_blocks=3, max_features=256, **kwargs):
        super().__init__(**kwargs)
        self.block_expansion, self.in_features = int(block_expansion), int(in_features)
        self.num_blocks, self.max_features = int(num_blocks), int(max_features)
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features, name="encoder")
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features, name="decoder")
        self.out_filters = self.decoder.out_filters

    def build(self, input_shape=None):
        self.encoder.build()
        self.decoder.build()

    def call(self, x, training=False):
        return self.decoder(self.encoder(x, training=training), training=training)

    def get_config(self):
        return {**super().get_config(), "block_expansion": self.block_expansion, "in_features": self.in_features,
                "num_blocks": self.num_blocks, "max_features": self.max_features}

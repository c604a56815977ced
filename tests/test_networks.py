"""The four networks against the original PyTorch FOMM's outputs (parity fixtures) and PyTorch itself."""

import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from fomm_lessons import checkpoint
from fomm_lessons.dense_motion import DenseMotionNetwork, invert_jacobians
from fomm_lessons.discriminator import Discriminator, MultiScaleDiscriminator, SpectralNormConv2D
from fomm_lessons.generator import OcclusionAwareGenerator, resize_to
from fomm_lessons.keypoint_detector import KeypointDetector

PARITY_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fomm-parity"
TORCH_REASON = "PyTorch is the optional oracle: pip install -e '.[oracle]'"


def nhwc(array):
    return np.transpose(array, (0, 2, 3, 1))


@pytest.fixture(scope="module")
def fixture():
    """(arrays, model_params, networks loaded with the fixture's weights)."""
    if not (PARITY_DIR / "parity-128.npz").exists():
        pytest.skip(f"parity fixtures are not at {PARITY_DIR}")
    arrays = dict(np.load(PARITY_DIR / "parity-128.npz"))
    params = json.loads((PARITY_DIR / "parity-128.json").read_text())["model_params"]
    state = {part: {k.split("/", 2)[2]: v for k, v in arrays.items() if k.startswith(f"weights/{part}/")}
             for part in checkpoint.PARTS}
    return arrays, params, checkpoint.models_from_torch_state(state, params)


@pytest.fixture(scope="module", params=["eval", "train"])
def outputs(request, fixture):
    """Keypoints and generator outputs in one mode, with the reference arrays of that mode."""
    arrays, _, models = fixture
    training = request.param == "train"
    source, driving = nhwc(arrays["inputs/source"]), nhwc(arrays["inputs/driving"])
    kp_source = models.kp_detector(source, training=training)
    kp_driving = models.kp_detector(driving, training=training)
    generated = models.generator(source, kp_source=kp_source, kp_driving=kp_driving, training=training)
    return request.param, arrays, kp_source, kp_driving, generated


def test_keypoints_match_original(outputs):
    mode, arrays, kp_source, kp_driving, _ = outputs
    for name, kp in (("kp_source", kp_source), ("kp_driving", kp_driving)):
        for field in ("value", "jacobian"):
            np.testing.assert_allclose(kp[field].numpy(), arrays[f"{mode}/{name}/{field}"], atol=1e-4, rtol=0)


def test_dense_motion_matches_original(outputs):
    mode, arrays, _, _, generated = outputs
    np.testing.assert_allclose(generated["deformation"].numpy(), arrays[f"{mode}/dense_motion/deformation"],
                               atol=1e-4, rtol=0)
    for field in ("mask", "occlusion_map"):
        np.testing.assert_allclose(generated[field].numpy(), nhwc(arrays[f"{mode}/dense_motion/{field}"]),
                                   atol=1e-4, rtol=0)
    reference = np.transpose(arrays[f"{mode}/dense_motion/sparse_deformed"], (0, 1, 3, 4, 2))  # (B, K+1, h, w, C)
    tolerance = 3e-4 if mode == "train" else 1e-4
    np.testing.assert_allclose(generated["sparse_deformed"].numpy(), reference, atol=tolerance, rtol=0)


def test_generator_matches_original(outputs):
    mode, arrays, _, _, generated = outputs
    np.testing.assert_allclose(generated["prediction"].numpy(), nhwc(arrays[f"{mode}/generator/prediction"]),
                               atol=1e-4, rtol=0)
    tolerance = 3e-4 if mode == "train" else 1e-4
    np.testing.assert_allclose(generated["deformed"].numpy(), nhwc(arrays[f"{mode}/generator/deformed"]),
                               atol=tolerance, rtol=0)


def test_generator_output_shapes(outputs):
    _, arrays, _, _, generated = outputs
    b, c, h, w = arrays["inputs/source"].shape
    k = arrays["eval/kp_source/value"].shape[1]
    expected = {"prediction": (b, h, w, c), "deformed": (b, h, w, c), "deformation": (b, h // 4, w // 4, 2),
                "mask": (b, h // 4, w // 4, k + 1), "occlusion_map": (b, h // 4, w // 4, 1),
                "sparse_deformed": (b, k + 1, h // 4, w // 4, c)}
    assert {name: tuple(v.shape) for name, v in generated.items()} == expected


@pytest.mark.parametrize("which", ["real", "generated"])
def test_discriminator_matches_original(fixture, which):
    arrays, _, models = fixture
    images = nhwc(arrays["inputs/driving"] if which == "real" else arrays["eval/generator/prediction"])
    kp = {"value": tf.constant(arrays["eval/kp_driving/value"])}
    feature_maps, prediction_map = models.discriminator(images, kp=kp, training=False)[1.0]
    assert len(feature_maps) == 4
    for i, feature_map in enumerate(feature_maps):
        np.testing.assert_allclose(feature_map.numpy(), nhwc(arrays[f"eval/discriminator/{which}/feature_map_{i}"]),
                                   atol=1e-4, rtol=0)
    np.testing.assert_allclose(prediction_map.numpy(), nhwc(arrays[f"eval/discriminator/{which}/prediction_map"]),
                               atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------
# Jacobian inverse
# ---------------------------------------------------------------------------

def test_invert_jacobians_matches_numpy_for_regular_matrices():
    rng = np.random.default_rng(0)
    matrices = rng.normal(size=(50, 2, 2)) + 2 * np.eye(2)
    matrices = matrices[np.abs(np.linalg.det(matrices)) > 0.05]
    got = invert_jacobians(tf.constant(matrices, tf.float32)).numpy()
    np.testing.assert_allclose(got, np.linalg.inv(matrices), rtol=1e-4, atol=1e-4)


def test_invert_jacobians_is_finite_for_singular_matrices_with_gradients():
    matrices = tf.constant([[[0.0, 0.0], [0.0, 0.0]],          # zero
                            [[1.0, 2.0], [2.0, 4.0]],          # rank 1
                            [[1.0, 1.0], [1.0, 1.0 + 1e-9]],   # det below float32 resolution
                            [[1e-3, 0.0], [0.0, -1e-3]]])      # small negative determinant
    with tf.GradientTape() as tape:
        tape.watch(matrices)
        inverse = invert_jacobians(matrices)
        loss = tf.reduce_sum(tf.square(inverse))
    gradient = tape.gradient(loss, matrices)
    assert np.isfinite(inverse.numpy()).all() and np.isfinite(gradient.numpy()).all()
    # The clamp keeps the sign of the determinant: det(inverse) = 1 / clamped det.
    det = np.linalg.det(inverse.numpy().astype(np.float64))
    assert det[3] < 0 and det[0] >= 0
    np.testing.assert_allclose(inverse.numpy()[3], [[10.0, 0.0], [0.0, -10.0]], rtol=1e-5)  # adj / -1e-4


def test_dense_motion_is_finite_for_singular_driving_jacobians():
    network = DenseMotionNetwork(block_expansion=4, num_blocks=2, max_features=8, num_kp=2, num_channels=3,
                                 estimate_occlusion_map=True, scale_factor=0.5)
    source = tf.random.stateless_uniform([1, 16, 16, 3], seed=[1, 2])
    kp_source = {"value": tf.constant([[[0.1, 0.2], [-0.3, 0.4]]]), "jacobian": tf.eye(2, batch_shape=[1, 2])}
    singular = tf.constant([[[[0.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [0.5, 1.0]]]])
    with tf.GradientTape() as tape:
        tape.watch(singular)
        kp_driving = {"value": tf.constant([[[0.0, 0.0], [0.5, -0.5]]]), "jacobian": singular}
        out = network(source, kp_driving=kp_driving, kp_source=kp_source, training=True)
        loss = sum(tf.reduce_sum(tensor) for tensor in out.values())
    gradients = tape.gradient(loss, [singular, *network.trainable_weights])
    for tensor in [*out.values(), *gradients]:
        assert np.isfinite(tensor.numpy()).all()


# ---------------------------------------------------------------------------
# Pieces checked on their own
# ---------------------------------------------------------------------------

def test_fresh_keypoint_detector_has_identity_jacobians_and_keypoints_inside():
    detector = KeypointDetector(block_expansion=4, num_kp=3, num_channels=3, max_features=16, num_blocks=2,
                                temperature=0.1, estimate_jacobian=True, scale_factor=0.5)
    out = detector(tf.random.stateless_uniform([2, 32, 32, 3], seed=[3, 4]))
    assert out["value"].shape == (2, 3, 2) and out["jacobian"].shape == (2, 3, 2, 2)
    np.testing.assert_allclose(out["jacobian"].numpy(), np.broadcast_to(np.eye(2), (2, 3, 2, 2)), atol=1e-5)
    assert np.abs(out["value"].numpy()).max() <= 1.0


def test_keypoints_are_the_heatmap_expectation_on_the_unpadded_grid():
    """A heatmap peaked at one pixel gives that pixel's coordinate on the (h-6, w-6) grid."""
    detector = KeypointDetector(block_expansion=4, num_kp=1, num_channels=3, max_features=8, num_blocks=1,
                                temperature=1e-3)
    detector.build()
    images = np.zeros((1, 16, 16, 3), np.float32)
    # The hourglass ends with the image itself (its skip connection, last 3 channels): let the
    # 7x7 keypoint convolution read only the centre tap of the red channel.
    kernel = np.zeros(detector.kp.kernel.shape, np.float32)
    kernel[3, 3, -3, 0] = 1.0  # centre tap of the skip's red channel
    detector.kp.kernel.assign(kernel)
    images[0, 3 + 2, 3 + 7, 0] = 1.0  # heatmap pixel (row 2, col 7) of a 10x10 map
    value = detector(images)["value"].numpy()[0, 0]
    np.testing.assert_allclose(value, [2 * 7 / 9 - 1, 2 * 2 / 9 - 1], atol=1e-5)


def test_resize_to_matches_torch_bilinear_align_corners_false():
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    maps = np.random.default_rng(1).normal(size=(2, 8, 8, 2)).astype(np.float32)
    got = resize_to(tf.constant(maps), 20, 20).numpy()
    expected = torch.nn.functional.interpolate(torch.from_numpy(nhwc_to_nchw(maps)), size=(20, 20), mode="bilinear",
                                               align_corners=False).numpy()
    np.testing.assert_allclose(got, nhwc(expected), atol=1e-6)
    same = tf.constant(maps)
    assert resize_to(same, 8, 8) is same


def nhwc_to_nchw(array):
    return np.ascontiguousarray(np.transpose(array, (0, 3, 1, 2)))


def test_generator_warps_features_of_another_size():
    """Dense motion at 1/2 and features at 1/4 of the frame: the deformation is resized, shapes hold."""
    generator = OcclusionAwareGenerator(
        num_channels=3, num_kp=2, block_expansion=4, max_features=16, num_down_blocks=2, num_bottleneck_blocks=1,
        estimate_occlusion_map=True,
        dense_motion_params={"block_expansion": 4, "max_features": 8, "num_blocks": 2, "scale_factor": 0.5})
    kp = {"value": tf.zeros([1, 2, 2]), "jacobian": tf.eye(2, batch_shape=[1, 2])}
    out = generator(tf.random.stateless_uniform([1, 32, 32, 3], seed=[5, 6]), kp_source=kp, kp_driving=kp)
    assert out["prediction"].shape == (1, 32, 32, 3) and out["deformed"].shape == (1, 32, 32, 3)
    # Same keypoints in source and driving: every sparse motion is the identity, and so is their masked sum.
    identity = np.stack(np.meshgrid(np.linspace(-1, 1, 16), np.linspace(-1, 1, 16)), axis=-1)
    np.testing.assert_allclose(out["deformation"].numpy()[0], identity, atol=1e-6)


def test_spectral_norm_inference_uses_stored_vectors():
    layer = SpectralNormConv2D(3, 4, 2)
    layer.build()
    x = tf.random.stateless_uniform([1, 5, 5, 3], seed=[7, 8])
    kernel, u, v = layer.kernel.numpy(), layer.sn_u.numpy(), layer.sn_v.numpy()
    matrix = kernel.reshape(-1, 4).T  # (out, kh * kw * in)
    sigma = u @ matrix @ v
    top = np.linalg.svd(matrix, compute_uv=False)[0]
    assert 0.9 * top < sigma <= top * (1 + 1e-5)  # built with power steps: near the largest singular value
    u, v = np.full(4, 0.5, np.float32), np.full(12, 12**-0.5, np.float32)  # any stored vectors are used as they are
    layer.sn_u.assign(u)
    layer.sn_v.assign(v)
    expected = tf.nn.conv2d(x, kernel / (u @ matrix @ v), 1, "VALID") + layer.bias
    np.testing.assert_allclose(layer(x, training=False).numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.sn_u.numpy(), u)  # no power iteration in inference


def test_spectral_norm_training_matches_torch_power_iteration():
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    torch.manual_seed(0)
    reference = torch.nn.utils.spectral_norm(torch.nn.Conv2d(3, 4, 2))
    state = {k: v.detach().numpy().copy() for k, v in reference.state_dict().items()}
    layer = SpectralNormConv2D(3, 4, 2)
    layer.build()
    checkpoint.load_torch_state(layer, state)
    x = np.random.default_rng(2).random((2, 3, 6, 6), dtype=np.float32)
    reference.train()
    for _ in range(3):
        expected = reference(torch.from_numpy(x)).detach().numpy()
        got = layer(nhwc(x), training=True).numpy()
        np.testing.assert_allclose(got, nhwc(expected), atol=1e-5)
    np.testing.assert_allclose(layer.sn_u.numpy(), reference.weight_u.numpy(), atol=1e-5)


def test_multiscale_discriminator_keys_and_inputs():
    disc = MultiScaleDiscriminator(scales=[1, 0.5], block_expansion=4, max_features=8, num_blocks=2,
                                   use_kp=True, num_kp=2, num_channels=3)
    disc.build()
    names = checkpoint.torch_state_shapes(disc)
    assert "discs.1.down_blocks.0.conv.weight" in names and "discs.0-5.conv.bias" in names
    assert names["discs.1.down_blocks.0.conv.weight"] == (8, 5, 4, 4)
    images = {1.0: tf.zeros([1, 32, 32, 3]), 0.5: tf.zeros([1, 16, 16, 3])}
    out = disc(images, kp={"value": tf.zeros([1, 2, 2])})
    assert sorted(out) == [0.5, 1.0] and out[0.5][1].shape == (1, 3, 3, 1)
    with pytest.raises(ValueError, match="scale"):
        disc(tf.zeros([1, 32, 32, 3]), kp={"value": tf.zeros([1, 2, 2])})
    with pytest.raises(ValueError, match="use_kp"):
        Discriminator(block_expansion=4, max_features=8, num_blocks=2, use_kp=True)(tf.zeros([1, 16, 16, 3]))


# ---------------------------------------------------------------------------
# Configurations the fixture does not cover, against a PyTorch transcription
# of the original's wiring (checked itself against the fixture above).
# ---------------------------------------------------------------------------

def torch_fomm(torch):
    """The original networks in a few lines of PyTorch, with the original's state_dict names."""
    nn, F = torch.nn, torch.nn.functional

    def grid(h, w):
        x = 2 * (torch.arange(w, dtype=torch.float32) / (w - 1)) - 1
        y = 2 * (torch.arange(h, dtype=torch.float32) / (h - 1)) - 1
        return torch.stack([x[None].repeat(h, 1), y[:, None].repeat(1, w)], 2)  # (h, w, 2)

    def gaussian(value, h, w):
        return torch.exp(-0.5 * ((grid(h, w)[None, None] - value[:, :, None, None]) ** 2).sum(-1) / 0.01)

    class Block(nn.Module):
        def __init__(self, i, o, k=3, kind="same"):
            super().__init__()
            self.conv, self.norm, self.kind = nn.Conv2d(i, o, k, padding=k // 2), nn.BatchNorm2d(o), kind

        def forward(self, x):
            x = F.interpolate(x, scale_factor=2) if self.kind == "up" else x
            x = F.relu(self.norm(self.conv(x)))
            return F.avg_pool2d(x, 2) if self.kind == "down" else x

    class Res(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
            self.norm1, self.norm2 = nn.BatchNorm2d(c), nn.BatchNorm2d(c)

        def forward(self, x):
            return self.conv2(F.relu(self.norm2(self.conv1(F.relu(self.norm1(x)))))) + x

    class Hourglass(nn.Module):
        def __init__(self, be, i, n, m):
            super().__init__()
            width = lambda j: min(m, be * 2**j)  # noqa: E731
            self.encoder, self.decoder = nn.Module(), nn.Module()
            self.encoder.down_blocks = nn.ModuleList(
                [Block(i if j == 0 else width(j), width(j + 1), kind="down") for j in range(n)])
            self.decoder.up_blocks = nn.ModuleList(
                [Block((1 if j == n - 1 else 2) * width(j + 1), width(j), kind="up") for j in reversed(range(n))])
            self.out_filters = be + i

        def forward(self, x):
            outs = [x]
            for block in self.encoder.down_blocks:
                outs.append(block(outs[-1]))
            out = outs.pop()
            for block in self.decoder.up_blocks:
                out = torch.cat([block(out), outs.pop()], 1)
            return out

    class Down(nn.Module):
        def __init__(self, c, scale, kernel_2d):
            super().__init__()
            self.register_buffer("weight", torch.from_numpy(np.tile(kernel_2d, (c, 1, 1, 1))))
            self.c, self.pad, self.stride = c, kernel_2d.shape[-1] // 2, int(round(1 / scale))

        def forward(self, x):
            x = F.conv2d(F.pad(x, (self.pad,) * 4), self.weight, groups=self.c)
            return x[:, :, ::self.stride, ::self.stride]

    class KPDetector(nn.Module):
        def __init__(self, tf_model):
            super().__init__()
            d = tf_model
            self.predictor = Hourglass(d.block_expansion, d.num_channels, d.num_blocks, d.max_features)
            self.kp = nn.Conv2d(self.predictor.out_filters, d.num_kp, 7, padding=d.pad)
            self.jacobian = None
            if d.estimate_jacobian:
                self.maps = 1 if d.single_jacobian_map else d.num_kp
                self.jacobian = nn.Conv2d(self.predictor.out_filters, 4 * self.maps, 7, padding=d.pad)
            self.down = Down(d.num_channels, d.scale_factor, d.down.kernel_2d) if d.down is not None else None
            self.t = d.temperature

        def forward(self, x):
            features = self.predictor(self.down(x) if self.down is not None else x)
            p = self.kp(features)
            b, k, h, w = p.shape
            heatmap = F.softmax(p.view(b, k, -1) / self.t, 2).view(b, k, h, w)
            out = {"value": (heatmap[..., None] * grid(h, w)[None, None]).sum((2, 3))}
            if self.jacobian is not None:
                maps = self.jacobian(features).view(b, self.maps, 4, h, w)
                out["jacobian"] = (heatmap[:, :, None] * maps).view(b, k, 4, -1).sum(-1).view(b, k, 2, 2)
            return out

    class DenseMotion(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.hourglass = Hourglass(d.block_expansion, (d.num_kp + 1) * (d.num_channels + 1), d.num_blocks,
                                       d.max_features)
            self.mask = nn.Conv2d(self.hourglass.out_filters, d.num_kp + 1, 7, padding=3)
            self.occlusion = nn.Conv2d(self.hourglass.out_filters, 1, 7, padding=3) if d.occlusion else None
            self.down = Down(d.num_channels, d.scale_factor, d.down.kernel_2d) if d.down is not None else None
            self.k = d.num_kp

        def forward(self, source, kp_driving, kp_source):
            source = self.down(source) if self.down is not None else source
            (b, c, h, w), k = source.shape, self.k
            heatmap = gaussian(kp_driving["value"], h, w) - gaussian(kp_source["value"], h, w)
            heatmap = torch.cat([torch.zeros(b, 1, h, w), heatmap], 1)[:, :, None]
            identity = grid(h, w).view(1, 1, h, w, 2)
            offsets = identity - kp_driving["value"].view(b, k, 1, 1, 2)
            if "jacobian" in kp_driving:
                jacobian = torch.matmul(kp_source["jacobian"], torch.inverse(kp_driving["jacobian"]))
                offsets = torch.matmul(jacobian[:, :, None, None], offsets[..., None])[..., 0]
            motions = torch.cat([identity.repeat(b, 1, 1, 1, 1), offsets + kp_source["value"].view(b, k, 1, 1, 2)], 1)
            repeated = source[:, None].repeat(1, k + 1, 1, 1, 1).view(b * (k + 1), c, h, w)
            deformed = F.grid_sample(repeated, motions.view(b * (k + 1), h, w, 2), align_corners=True)
            prediction = self.hourglass(torch.cat([heatmap, deformed.view(b, k + 1, c, h, w)], 2).view(b, -1, h, w))
            mask = F.softmax(self.mask(prediction), 1)
            out = {"mask": mask, "deformation": (motions * mask[..., None]).sum(1)}
            if self.occlusion is not None:
                out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction))
            return out

    class Generator(nn.Module):
        def __init__(self, g):
            super().__init__()
            self.dense_motion_network = DenseMotion(g.dense_motion_network)
            self.first = Block(g.num_channels, g.block_expansion, 7)
            width, n = (lambda i: min(g.max_features, g.block_expansion * 2**i)), g.num_down_blocks
            self.down_blocks = nn.ModuleList([Block(width(i), width(i + 1), kind="down") for i in range(n)])
            self.up_blocks = nn.ModuleList([Block(width(n - i), width(n - i - 1), kind="up") for i in range(n)])
            self.bottleneck = nn.Sequential()
            for i in range(g.num_bottleneck_blocks):
                self.bottleneck.add_module(f"r{i}", Res(width(n)))
            self.final = nn.Conv2d(g.block_expansion, g.num_channels, 7, padding=3)

        @staticmethod
        def resize(maps, size):
            return maps if maps.shape[2:] == size else F.interpolate(maps, size=size, mode="bilinear")

        def deform(self, x, deformation):
            deformation = self.resize(deformation.permute(0, 3, 1, 2), x.shape[2:]).permute(0, 2, 3, 1)
            return F.grid_sample(x, deformation, align_corners=True)

        def forward(self, source, kp_source, kp_driving):
            out = self.first(source)
            for block in self.down_blocks:
                out = block(out)
            motion = self.dense_motion_network(source, kp_driving, kp_source)
            out = self.deform(out, motion["deformation"])
            if "occlusion_map" in motion:
                out = out * self.resize(motion["occlusion_map"], out.shape[2:])
            out = self.bottleneck(out)
            for block in self.up_blocks:
                out = block(out)
            return {**motion, "deformed": self.deform(source, motion["deformation"]),
                    "prediction": torch.sigmoid(self.final(out))}

    class Discriminator(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.down_blocks = nn.ModuleList()
            for block in d.down_blocks:
                module = nn.Module()
                module.conv = nn.Conv2d(block.in_features, block.out_features, 4)
                module.conv = nn.utils.spectral_norm(module.conv) if d.sn else module.conv
                module.norm = nn.InstanceNorm2d(block.out_features, affine=True) if block.use_norm else None
                module.pool = block.pool
                self.down_blocks.append(module)
            self.conv = nn.Conv2d(d.down_blocks[-1].out_features, 1, 1)
            self.conv = nn.utils.spectral_norm(self.conv) if d.sn else self.conv
            self.use_kp = d.use_kp

        def forward(self, x, kp=None):
            out = torch.cat([x, gaussian(kp["value"], *x.shape[2:])], 1) if self.use_kp else x
            feature_maps = []
            for block in self.down_blocks:
                out = block.conv(out)
                out = F.leaky_relu(block.norm(out) if block.norm is not None else out, 0.2)
                out = F.avg_pool2d(out, 2) if block.pool else out
                feature_maps.append(out)
            return feature_maps, self.conv(out)

    return KPDetector, Generator, Discriminator


def _torch_copy(torch, reference, model, seed):
    """Randomise ``reference`` (batch-norm statistics included) and copy it into ``model``."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, tensor in reference.state_dict().items():
            if name.endswith(("running_mean", "bias")):
                tensor.uniform_(-0.3, 0.3)
            elif name.endswith(("running_var", "norm.weight", "norm1.weight", "norm2.weight")):
                tensor.uniform_(0.5, 1.5)
    checkpoint.load_torch_state(model, {k: v.numpy() for k, v in reference.state_dict().items()})


def _compare(got, expected, atol=1e-4):
    np.testing.assert_allclose(got.numpy(), expected.detach().numpy(), atol=atol, rtol=0)


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("variant", ["padded, full scale, no jacobian", "one jacobian map, half scale"])
def test_keypoint_detector_variants_match_torch(variant, training):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    options = (dict(pad=3, scale_factor=1, estimate_jacobian=False) if variant.startswith("padded")
               else dict(single_jacobian_map=True, estimate_jacobian=True, scale_factor=0.5))
    detector = KeypointDetector(block_expansion=4, num_kp=3, num_channels=3, max_features=16, num_blocks=2,
                                temperature=0.1, **options)
    detector.build()
    reference = torch_fomm(torch)[0](detector)
    _torch_copy(torch, reference, detector, seed=1)
    images = np.random.default_rng(3).random((2, 3, 32, 32), dtype=np.float32)
    reference.train(training)
    expected = reference(torch.from_numpy(images))
    got = detector(nhwc(images), training=training)
    assert sorted(got) == sorted(expected)
    for field in got:
        _compare(got[field], expected[field])


@pytest.mark.parametrize("occlusion", [True, False])
def test_generator_with_motion_at_another_resolution_matches_torch(occlusion):
    """Dense motion at 1/2 and features at 1/4 of the frame: the bilinear resizes of the original."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    generator = OcclusionAwareGenerator(
        num_channels=3, num_kp=2, block_expansion=4, max_features=16, num_down_blocks=2, num_bottleneck_blocks=1,
        estimate_occlusion_map=occlusion,
        dense_motion_params={"block_expansion": 4, "max_features": 8, "num_blocks": 2, "scale_factor": 0.5})
    generator.build()
    reference = torch_fomm(torch)[1](generator)
    _torch_copy(torch, reference, generator, seed=2)
    rng = np.random.default_rng(4)
    source = rng.random((2, 3, 32, 32), dtype=np.float32)
    kp = [{"value": rng.uniform(-0.8, 0.8, (2, 2, 2)).astype(np.float32),
           "jacobian": (np.eye(2) + rng.normal(0, 0.3, (2, 2, 2, 2))).astype(np.float32)} for _ in range(2)]
    reference.eval()
    expected = reference(torch.from_numpy(source), *[{k: torch.from_numpy(v) for k, v in p.items()} for p in kp])
    got = generator(nhwc(source), kp_source=kp[0], kp_driving=kp[1])
    _compare(got["prediction"], expected["prediction"].permute(0, 2, 3, 1))
    _compare(got["deformed"], expected["deformed"].permute(0, 2, 3, 1))
    _compare(got["deformation"], expected["deformation"])
    assert ("occlusion_map" in got) == occlusion


@pytest.mark.parametrize("sn, use_kp", [(False, False), (True, True)])
def test_discriminator_variants_match_torch_in_training(sn, use_kp):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    disc = Discriminator(num_channels=3, block_expansion=4, num_blocks=3, max_features=16, sn=sn, use_kp=use_kp,
                         num_kp=2)
    disc.build()
    reference = torch_fomm(torch)[2](disc)
    _torch_copy(torch, reference, disc, seed=3)
    rng = np.random.default_rng(5)
    images = rng.random((2, 3, 40, 40), dtype=np.float32)
    kp = {"value": rng.uniform(-1, 1, (2, 2, 2)).astype(np.float32)}
    reference.train()
    for _ in range(2):  # spectral norm: one power iteration per call, kept between calls
        expected_maps, expected_prediction = reference(torch.from_numpy(images),
                                                       {"value": torch.from_numpy(kp["value"])})
        feature_maps, prediction = disc(nhwc(images), kp=kp, training=True)
        for got, expected in zip(feature_maps, expected_maps):
            _compare(got, expected.permute(0, 2, 3, 1))
        _compare(prediction, expected_prediction.permute(0, 2, 3, 1))


def test_torch_transcription_reproduces_the_fixture(fixture):
    """The PyTorch transcription used above has the original's names and numbers."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    arrays, _, models = fixture
    kp_class, generator_class, discriminator_class = torch_fomm(torch)
    references = {"kp_detector": kp_class(models.kp_detector), "generator": generator_class(models.generator),
                  "discriminator": discriminator_class(models.discriminator.discs["1"])}
    for part, reference in references.items():
        prefix = "discs.1." if part == "discriminator" else ""
        state = {k.split("/", 2)[2][len(prefix):]: torch.from_numpy(np.array(arrays[k]))
                 for k in arrays if k.startswith(f"weights/{part}/")}
        reference.load_state_dict(state, strict=True)
        reference.eval()
    source, driving = (torch.from_numpy(arrays[f"inputs/{name}"]) for name in ("source", "driving"))
    with torch.no_grad():
        kp_source, kp_driving = references["kp_detector"](source), references["kp_detector"](driving)
        out = references["generator"](source, kp_source, kp_driving)
        _, prediction_map = references["discriminator"](driving, kp_driving)
    np.testing.assert_allclose(kp_driving["jacobian"].numpy(), arrays["eval/kp_driving/jacobian"], atol=1e-5)
    np.testing.assert_allclose(out["prediction"].numpy(), arrays["eval/generator/prediction"], atol=1e-5)
    np.testing.assert_allclose(out["deformation"].numpy(), arrays["eval/dense_motion/deformation"], atol=1e-5)
    np.testing.assert_allclose(prediction_map.numpy(), arrays["eval/discriminator/real/prediction_map"], atol=1e-5)

"""Checks of the geometry core against NumPy, PyTorch, tfa and the parity fixtures."""

import math

import numpy as np
import pytest
import tensorflow as tf

from fomm_lessons.sampling import (
    grid_sample,
    keypoints_to_gaussian,
    make_coordinate_grid,
    resample,
)

PADDINGS = ["zeros", "border", "reflection"]


# ---------------------------------------------------------------------------
# An independent float64 NumPy reference of PyTorch's grid_sample, written
# point by point from the definition in PyTorch's documentation.
# ---------------------------------------------------------------------------

def _np_source_index(coord, size, padding, align):
    coord = (coord + 1) / 2 * (size - 1) if align else ((coord + 1) * size - 1) / 2
    if padding == "border":
        coord = min(max(coord, 0.0), size - 1.0)
    elif padding == "reflection":
        # Mirror about the outermost pixel centres (align) or the image edges (not align).
        low, high = (0.0, size - 1.0) if align else (-0.5, size - 0.5)
        if high <= low:
            coord = 0.0
        else:
            period = 2 * (high - low)
            offset = math.fmod(abs(coord - low), period)
            coord = low + (offset if offset <= high - low else period - offset)
        coord = min(max(coord, 0.0), size - 1.0)
    return coord


def numpy_grid_sample(images, grid, padding="zeros", align=True):
    images = np.asarray(images, np.float64)
    grid = np.asarray(grid, np.float64)
    batch, height, width, channels = images.shape
    out = np.zeros(grid.shape[:3] + (channels,))
    for b in range(batch):
        for i in range(grid.shape[1]):
            for j in range(grid.shape[2]):
                x = _np_source_index(grid[b, i, j, 0], width, padding, align)
                y = _np_source_index(grid[b, i, j, 1], height, padding, align)
                x0, y0 = math.floor(x), math.floor(y)
                for xi, wx in ((x0, x0 + 1 - x), (x0 + 1, x - x0)):
                    for yi, wy in ((y0, y0 + 1 - y), (y0 + 1, y - y0)):
                        if 0 <= xi < width and 0 <= yi < height:
                            out[b, i, j] += wx * wy * images[b, yi, xi]
    return out


def _test_points(rng, batch, h, w):
    """Grid points inside, exactly on pixel centres and borders, and far outside."""
    grid = rng.uniform(-1.0, 1.0, size=(batch, h, w, 2))
    grid[:, 0, :, :] = rng.uniform(-3.5, 3.5, size=(batch, w, 2))  # far outside
    grid[:, 1, 0] = [-1.0, -1.0]
    grid[:, 1, 1] = [1.0, 1.0]
    grid[:, 1, 2] = [1.0, -1.0]
    grid[:, 1, 3] = [-1.02, 0.3]  # just outside the corner centres
    grid[:, 1, 4] = [0.5, 1.04]
    return grid.astype(np.float32)


@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("padding", PADDINGS)
def test_grid_sample_matches_numpy(padding, align):
    rng = np.random.default_rng(0)
    images = rng.random((2, 5, 7, 3)).astype(np.float32)
    grid = _test_points(rng, 2, 6, 5)
    got = grid_sample(images, grid, padding_mode=padding, align_corners=align).numpy()
    want = numpy_grid_sample(images, grid, padding, align)
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("padding", PADDINGS)
def test_grid_sample_matches_torch(padding, align):
    torch = pytest.importorskip("torch", reason="PyTorch is the optional oracle: pip install -e '.[oracle]'")
    rng = np.random.default_rng(1)
    images = rng.random((3, 9, 11, 4)).astype(np.float32)
    grid = _test_points(rng, 3, 8, 10)
    got = grid_sample(images, grid, padding_mode=padding, align_corners=align).numpy()
    want = torch.nn.functional.grid_sample(
        torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(grid),
        mode="bilinear", padding_mode=padding, align_corners=align,
    ).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, want, atol=2e-6)


@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("padding", PADDINGS)
def test_grid_sample_gradients_match_torch(padding, align):
    torch = pytest.importorskip("torch", reason="PyTorch is the optional oracle: pip install -e '.[oracle]'")
    rng = np.random.default_rng(2)
    images = rng.random((2, 6, 7, 3)).astype(np.float32)
    grid = rng.uniform(-1.3, 1.3, size=(2, 4, 5, 2)).astype(np.float32)
    weights = rng.random((2, 4, 5, 3)).astype(np.float32)
    images_tf, grid_tf = tf.constant(images), tf.constant(grid)
    with tf.GradientTape() as tape:
        tape.watch([images_tf, grid_tf])
        loss = tf.reduce_sum(grid_sample(images_tf, grid_tf, padding, align) * weights)
    d_images, d_grid = tape.gradient(loss, [images_tf, grid_tf])

    images_t = torch.from_numpy(images).permute(0, 3, 1, 2).requires_grad_(True)
    grid_t = torch.from_numpy(grid).requires_grad_(True)
    out = torch.nn.functional.grid_sample(images_t, grid_t, padding_mode=padding, align_corners=align)
    (out * torch.from_numpy(weights).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_allclose(d_images.numpy(), images_t.grad.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    np.testing.assert_allclose(d_grid.numpy(), grid_t.grad.numpy(), atol=1e-4)


@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize("padding", PADDINGS)
def test_grid_sample_gradients_match_finite_differences(padding, align):
    rng = np.random.default_rng(3)
    images = tf.constant(rng.random((1, 4, 5, 2)), tf.float64)
    # Points away from pixel-centre lines and reflection folds, where the map is smooth.
    grid = tf.constant(rng.uniform(-1.2, 1.2, size=(1, 3, 3, 2)), tf.float64)
    theoretical, numerical = tf.test.compute_gradient(
        lambda im, g: grid_sample(im, g, padding, align), [images, grid], delta=1e-6
    )
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, atol=1e-5)


def test_identity_grid_returns_the_image_exactly():
    rng = np.random.default_rng(4)
    for height, width in [(37, 53), (64, 64), (256, 256), (1, 5)]:
        images = rng.random((2, height, width, 3)).astype(np.float32)
        grid = tf.tile(make_coordinate_grid(height, width)[None], [2, 1, 1, 1])
        for padding in PADDINGS:
            out = grid_sample(images, grid, padding_mode=padding).numpy()
            np.testing.assert_array_equal(out, images)


def test_make_coordinate_grid_convention():
    grid = make_coordinate_grid(3, 5).numpy()
    assert grid.shape == (3, 5, 2)
    np.testing.assert_allclose(grid[0, :, 0], [-1, -0.5, 0, 0.5, 1])  # x along the width
    np.testing.assert_allclose(grid[:, 0, 1], [-1, 0, 1])  # y along the height
    assert make_coordinate_grid(4, 4, tf.float16).dtype == tf.float16


def test_grid_sample_works_in_tf_function_and_xla():
    rng = np.random.default_rng(5)
    images = tf.constant(rng.random((2, 8, 9, 3)), tf.float32)
    grid = tf.constant(rng.uniform(-1.1, 1.1, size=(2, 4, 6, 2)), tf.float32)
    eager = grid_sample(images, grid).numpy()
    traced = tf.function(grid_sample)(images, grid).numpy()
    xla = tf.function(grid_sample, jit_compile=True)(images, grid).numpy()
    np.testing.assert_allclose(traced, eager, atol=1e-6)
    np.testing.assert_allclose(xla, eager, atol=1e-6)

    def loss_and_gradients(images, grid):
        with tf.GradientTape() as tape:
            tape.watch([images, grid])
            loss = tf.reduce_sum(grid_sample(images, grid) ** 2)
        return tape.gradient(loss, [images, grid])

    for eager_grad, xla_grad in zip(loss_and_gradients(images, grid),
                                    tf.function(loss_and_gradients, jit_compile=True)(images, grid)):
        np.testing.assert_allclose(xla_grad.numpy(), eager_grad.numpy(), atol=1e-5)

    # Unknown batch and spatial sizes at trace time.
    spec = [tf.TensorSpec([None, None, None, 3]), tf.TensorSpec([None, None, None, 2])]
    dynamic = tf.function(grid_sample, input_signature=spec)(images, grid).numpy()
    np.testing.assert_allclose(dynamic, eager, atol=1e-6)


@pytest.mark.parametrize("dtype, atol", [(tf.float16, 2e-3), (tf.bfloat16, 2e-2)])
def test_grid_sample_low_precision(dtype, atol):
    rng = np.random.default_rng(6)
    images = rng.random((2, 16, 16, 3)).astype(np.float32)
    grid = rng.uniform(-1, 1, size=(2, 8, 8, 2)).astype(np.float32)
    want = numpy_grid_sample(images, grid)
    images_low = tf.cast(images, dtype)
    with tf.GradientTape() as tape:
        tape.watch(images_low)
        out = grid_sample(images_low, tf.cast(grid, dtype))
    assert out.dtype == dtype
    assert tape.gradient(out, images_low).dtype == dtype
    # The error budget is the dtype's rounding of the pixel values and the coordinates.
    coordinate_error = np.abs(tf.cast(tf.cast(grid, dtype), tf.float32).numpy() - grid).max() * 7.5
    np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), want, atol=atol + coordinate_error)


def test_bad_shapes_raise_value_errors_naming_them():
    images = tf.zeros([2, 8, 8, 3])
    with pytest.raises(ValueError, match=r"rank 4.*\(8, 8, 3\)"):
        grid_sample(tf.zeros([8, 8, 3]), tf.zeros([2, 4, 4, 2]))
    with pytest.raises(ValueError, match=r"last axis 2.*\(2, 4, 4, 3\)"):
        grid_sample(images, tf.zeros([2, 4, 4, 3]))
    with pytest.raises(ValueError, match=r"same batch size.*\(2, 8, 8, 3\).*\(3, 4, 4, 2\)"):
        grid_sample(images, tf.zeros([3, 4, 4, 2]))
    with pytest.raises(ValueError, match="padding_mode"):
        grid_sample(images, tf.zeros([2, 4, 4, 2]), padding_mode="wrap")
    with pytest.raises(ValueError, match=r"same batch size.*\(3, 5, 2\)"):
        resample(images, tf.zeros([3, 5, 2]))
    with pytest.raises(ValueError, match=r"kp \(B, K, 2\).*\(10, 2\)"):
        keypoints_to_gaussian(tf.zeros([10, 2]), (8, 8), 0.01)


# ---------------------------------------------------------------------------
# resample: tfa.image.resampler semantics
# ---------------------------------------------------------------------------

def numpy_resample(images, warp):
    """tfa's resampler: bilinear at pixel coordinates, zero outside the image."""
    batch, height, width, _ = images.shape
    flat = warp.reshape(batch, -1, 1, 2).copy()
    flat[..., 0] = flat[..., 0] / (width - 1) * 2 - 1
    flat[..., 1] = flat[..., 1] / (height - 1) * 2 - 1
    out = numpy_grid_sample(images, flat, "zeros", True)
    return out.reshape(warp.shape[:-1] + (images.shape[-1],))


def test_resample_matches_pixel_coordinate_reference():
    rng = np.random.default_rng(7)
    images = rng.random((2, 6, 8, 3)).astype(np.float32)
    warp = rng.uniform(-2, 9, size=(2, 3, 4, 5, 2)).astype(np.float32)  # any (B, ..., 2)
    got = resample(images, warp).numpy()
    assert got.shape == (2, 3, 4, 5, 3)
    np.testing.assert_allclose(got, numpy_resample(images, warp), atol=2e-6)
    # The corner pixel centres are integer coordinates.
    np.testing.assert_allclose(resample(images, [[[0.0, 0.0], [7.0, 5.0]]] * 2).numpy()[0],
                               images[0, [0, 5], [0, 7]], atol=1e-7)


def test_resample_matches_tensorflow_addons():
    tfa = pytest.importorskip(
        "tensorflow_addons",
        reason="tensorflow-addons does not import on TF >= 2.16; run `make test-legacy` "
        "for the Python 3.11 + tensorflow 2.15.1 + tensorflow-addons 0.23.0 cross-check",
    )
    rng = np.random.default_rng(8)
    images = rng.random((2, 6, 8, 3)).astype(np.float32)
    warp = rng.uniform(-2, 9, size=(2, 7, 5, 2)).astype(np.float32)
    warp[:, 0, :2] = [[0.0, 0.0], [7.0, 5.0]]
    np.testing.assert_allclose(resample(images, warp).numpy(),
                               tfa.image.resampler(images, warp).numpy(), atol=2e-6)
    images_tf, warp_tf = tf.constant(images), tf.constant(warp)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([images_tf, warp_tf])
        ours = tf.reduce_sum(resample(images_tf, warp_tf) ** 2)
        theirs = tf.reduce_sum(tfa.image.resampler(images_tf, warp_tf) ** 2)
    for a, b in zip(tape.gradient(ours, [images_tf, warp_tf]), tape.gradient(theirs, [images_tf, warp_tf])):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-4)


# ---------------------------------------------------------------------------
# Keypoint heatmaps, anti-aliased downsampling, pyramid
# ---------------------------------------------------------------------------

def test_keypoints_to_gaussian_matches_formula():
    kp = np.array([[[0.0, 0.0], [0.5, -0.25]]], np.float32)  # (1, 2, 2)
    heat = keypoints_to_gaussian(kp, (5, 9), 0.01).numpy()
    assert heat.shape == (1, 5, 9, 2)
    ys, xs = np.linspace(-1, 1, 5), np.linspace(-1, 1, 9)
    for k, (px, py) in enumerate(kp[0]):
        want = np.exp(-0.5 * ((xs[None, :] - px) ** 2 + (ys[:, None] - py) ** 2) / 0.01)
        np.testing.assert_allclose(heat[0, :, :, k], want, atol=1e-6)
    assert heat[0, 2, 4, 0] == pytest.approx(1.0)


def test_non_finite_coordinates_give_nan_not_an_error():
    images = tf.ones([1, 4, 4, 1])
    grid = tf.constant([[[[np.nan, 0.0], [0.0, np.inf], [0.0, 0.0]]]], tf.float32)  # (1, 1, 3, 2)
    out = grid_sample(images, grid).numpy()[0, 0, :, 0]
    assert np.isnan(out[0]) and np.isnan(out[1]) and out[2] == 1.0


MOVED = ("ThinPlateSplineTransform", "AntiAliasDownsample", "ImagePyramid", "gaussian_kernel_1d")


def test_the_pyramid_and_the_spline_have_one_home_each():
    """``sampling`` no longer re-exports them, and nothing imports them from it."""
    import json
    import re
    from pathlib import Path

    from fomm_lessons import sampling

    for name in MOVED:
        assert not hasattr(sampling, name), f"fomm_lessons.sampling still has {name}"
    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"from fomm_lessons\.sampling import (?:\(([^)]*)\)|(.*))")
    texts = {p: p.read_text() for folder in ("fomm_lessons", "tests") for p in (root / folder).rglob("*.py")}
    for p in (root / "book").glob("*.ipynb"):
        cells = json.loads(p.read_text())["cells"]
        texts[p] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    found = [f"{p.relative_to(root)}: {name}" for p, text in texts.items()
             for names in pattern.findall(text) for name in MOVED if re.search(rf"\b{name}\b", "".join(names))]
    assert not found, f"imported from fomm_lessons.sampling instead of pyramid/tps: {found}"

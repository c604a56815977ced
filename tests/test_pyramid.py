"""Anti-aliased downsampling and the image pyramid against NumPy and the original's PyTorch definition."""

import numpy as np
import pytest

from fomm_lessons.pyramid import AntiAliasDownsample, ImagePyramid


@pytest.mark.parametrize("scale, kernel_size", [(0.5, 5), (0.25, 13), (0.125, 29)])
def test_antialias_downsample_matches_numpy(scale, kernel_size):
    rng = np.random.default_rng(9)
    images = rng.random((2, 32, 24, 3)).astype(np.float32)
    out = AntiAliasDownsample(3, scale)(images).numpy()
    stride = round(1 / scale)
    sigma = (1 / scale - 1) / 2
    assert AntiAliasDownsample(3, scale).kernel_size == kernel_size == 2 * round(4 * sigma) + 1
    taps = np.exp(-((np.arange(kernel_size) - (kernel_size - 1) / 2) ** 2) / (2 * sigma**2))
    kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()
    pad = kernel_size // 2
    padded = np.pad(images.astype(np.float64), [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    want = np.zeros((2, 32 // stride, 24 // stride, 3))
    for i in range(want.shape[1]):
        for j in range(want.shape[2]):
            window = padded[:, i * stride:i * stride + kernel_size, j * stride:j * stride + kernel_size]
            want[:, i, j] = np.einsum("bhwc,hw->bc", window, kernel)
    assert out.shape == want.shape
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_antialias_matches_torch_original_definition():
    torch = pytest.importorskip("torch", reason="PyTorch is the optional oracle: pip install -e '.[oracle]'")
    rng = np.random.default_rng(10)
    images = rng.random((2, 40, 40, 3)).astype(np.float32)
    layer = AntiAliasDownsample(3, 0.25)
    weight = torch.from_numpy(layer.kernel_2d)[None, None].repeat(3, 1, 1, 1)
    x = torch.nn.functional.pad(torch.from_numpy(images).permute(0, 3, 1, 2), (6, 6, 6, 6))
    want = torch.nn.functional.conv2d(x, weight, groups=3)[:, :, ::4, ::4].permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(layer(images).numpy(), want, atol=1e-6)


def test_antialias_identity_at_scale_one_and_bad_scale():
    images = np.random.default_rng(11).random((1, 8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(AntiAliasDownsample(3, 1.0)(images).numpy(), images)
    with pytest.raises(ValueError, match="0.3"):
        AntiAliasDownsample(3, 0.3)
    with pytest.raises(ValueError, match="1.5"):
        AntiAliasDownsample(3, 1.5)


def test_image_pyramid_returns_every_scale():
    images = np.random.default_rng(12).random((2, 64, 64, 3)).astype(np.float32)
    pyramid = ImagePyramid([1, 0.5, 0.25, 0.125])(images)
    assert {s: tuple(v.shape) for s, v in pyramid.items()} == {
        1.0: (2, 64, 64, 3), 0.5: (2, 32, 32, 3), 0.25: (2, 16, 16, 3), 0.125: (2, 8, 8, 3)}
    np.testing.assert_array_equal(pyramid[1.0].numpy(), images)
    # A blur that sums to one keeps the mean away from the zero-padded border.
    np.testing.assert_allclose(pyramid[0.5].numpy()[:, 4:-4, 4:-4].mean(), images[:, 8:-8, 8:-8].mean(), atol=0.01)

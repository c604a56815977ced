"""VGG19 features: torchvision's layer stack rebuilt in PyTorch by hand, and Keras' VGG19."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fomm_lessons import perceptual  # noqa: E402
from fomm_lessons.perceptual import CONVOLUTIONS, Vgg19Features  # noqa: E402


def _torchvision_like_state(seed=0):
    """A random vgg19.features state dict (He-scaled so relu5_1 is not all zeros), PyTorch layout."""
    rng = np.random.default_rng(seed)
    state = {}
    for _, index, channels_in, channels_out in CONVOLUTIONS:
        scale = np.sqrt(2.0 / (9 * channels_in))
        state[f"features.{index}.weight"] = (
            rng.standard_normal((channels_out, channels_in, 3, 3)) * scale).astype(np.float32)
        state[f"features.{index}.bias"] = (rng.standard_normal(channels_out) * 0.1).astype(np.float32)
    return state


def _images(seed=1, size=64):
    return np.random.default_rng(seed).random((2, size, size, 3)).astype(np.float32)


def _torch_features(torch, state, images):
    """torchvision's vgg19.features[0:30] written with torch.nn.functional, NCHW."""
    functional = torch.nn.functional
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (x - mean) / std
    pools_before = {5, 10, 19, 28}  # features.4, .9, .18, .27 are the max pools
    outputs = []
    with torch.no_grad():
        for _, index, _, _ in CONVOLUTIONS:
            if index in pools_before:
                x = functional.max_pool2d(x, kernel_size=2, stride=2)
            weight = torch.from_numpy(state[f"features.{index}.weight"])
            bias = torch.from_numpy(state[f"features.{index}.bias"])
            x = torch.relu(functional.conv2d(x, weight, bias, padding=1))
            if index in {0, 5, 10, 19, 28}:  # relu1_1 (features.1) ... relu5_1 (features.29)
                outputs.append(x.permute(0, 2, 3, 1).numpy())
    return outputs


@pytest.fixture(scope="module")
def torch_reference():
    torch = pytest.importorskip("torch")
    state = _torchvision_like_state()
    images = _images()
    return state, images, _torch_features(torch, state, images)


def _assert_features_equal(ours, reference):
    assert len(ours) == 5
    for level, (a, b) in enumerate(zip(ours, reference)):
        assert a.shape == b.shape, (level, a.shape, b.shape)
        assert np.abs(b).max() > 1.0, f"relu{level + 1}_1 of the reference is nearly zero"
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=1e-4,
                                   err_msg=f"relu{level + 1}_1")


def test_state_dict_matches_torch(torch_reference):
    state, images, reference = torch_reference
    model = Vgg19Features(weights=state)
    assert model.preprocessing == "torch"
    outputs = model(images)
    assert [tuple(o.shape) for o in outputs] == [
        (2, 64, 64, 64), (2, 32, 32, 128), (2, 16, 16, 256), (2, 8, 8, 512), (2, 4, 4, 512)]
    _assert_features_equal(outputs, reference)
    assert not model.trainable_weights


def test_pth_and_npz_files_match_torch(torch_reference, tmp_path):
    torch = pytest.importorskip("torch")
    state, images, reference = torch_reference
    full = {key: torch.from_numpy(value) for key, value in state.items()}
    full["features.30.weight"] = torch.zeros(512, 512, 3, 3)  # block5_conv2, unused
    full["classifier.0.weight"] = torch.zeros(4, 8)  # the classifier, unused
    torch.save(full, tmp_path / "vgg19.pth")
    np.savez(tmp_path / "vgg19.npz", **state)
    for path in (tmp_path / "vgg19.pth", tmp_path / "vgg19.npz"):
        _assert_features_equal(Vgg19Features(weights=str(path))(images), reference)


# Keras' own weight saving trips a NumPy 2 copy-keyword deprecation inside Keras.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras_vgg19_file_uses_caffe_preprocessing(tmp_path):
    keras_vgg = keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / "vgg19.weights.h5"
    keras_vgg.save_weights(path)
    model = Vgg19Features(weights=str(path))
    assert model.preprocessing == "caffe"
    images = _images(seed=2, size=32)
    names = ["block1_conv1", "block2_conv1", "block3_conv1", "block4_conv1", "block5_conv1"]
    probe = keras.Model(keras_vgg.input, [keras_vgg.get_layer(name).output for name in names])
    caffe_inputs = keras.applications.vgg19.preprocess_input(images * 255.0)  # BGR, mean-subtracted
    expected = [np.asarray(o) for o in probe(caffe_inputs)]
    for level, (a, b) in enumerate(zip(model(images), expected)):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-4, err_msg=f"relu{level + 1}_1")


def test_random_weights_warn_loudly(caplog):
    with pytest.warns(RuntimeWarning, match="RANDOM weights"):
        model = Vgg19Features(weights="random")
    assert "RANDOM weights" in caplog.text
    assert model.weights_source == "random"


def test_auto_without_any_weights_falls_back_to_random(monkeypatch, tmp_path):
    def offline(**kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(keras.applications, "VGG19", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(perceptual.WEIGHTS_ENV, raising=False)
    with pytest.warns(RuntimeWarning, match="no network in this test"):
        model = Vgg19Features(weights="auto")
    assert model.weights_source == "random"


def test_auto_prefers_the_cached_torchvision_file(monkeypatch, tmp_path, torch_reference):
    torch = pytest.importorskip("torch")
    state, images, reference = torch_reference
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(perceptual.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(keras.applications, "VGG19", None)  # would fail if auto reached Keras
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({key: torch.from_numpy(value) for key, value in state.items()},
               cache / perceptual.TORCHVISION_VGG19_FILE)
    model = Vgg19Features(weights="auto")
    assert perceptual.TORCHVISION_VGG19_FILE in model.weights_source
    _assert_features_equal(model(images), reference)


def test_bad_state_dict_lists_the_names():
    state = _torchvision_like_state()
    del state["features.28.bias"]
    state["features.2.weight"] = state["features.2.weight"][:, :32]
    state["features.99.weight"] = np.zeros(1)
    with pytest.raises(ValueError) as error:
        Vgg19Features(weights=state)
    message = str(error.value)
    assert "missing ['features.28.bias']" in message
    assert "unexpected ['features.99.weight']" in message
    assert "features.2.weight: (64, 32, 3, 3) (expected (64, 64, 3, 3))" in message


@pytest.mark.filterwarnings("ignore:Vgg19Features uses RANDOM weights")
def test_random_weights_are_a_function_of_the_seed_alone(monkeypatch, tmp_path):
    def weights_after(global_seed, **kwargs):
        keras.utils.set_random_seed(global_seed)  # what ran before in the process must not matter
        return [w.numpy() for w in Vgg19Features(**kwargs).weights]

    first = weights_after(1, weights="random", seed=3)
    for a, b in zip(first, weights_after(2, weights="random", seed=3)):
        np.testing.assert_array_equal(a, b)
    kernels = list(zip(first[::2], weights_after(1, weights="random", seed=4)[::2]))
    assert len(kernels) == 13 and all(not np.array_equal(a, b) for a, b in kernels)
    limit = np.sqrt(6.0 / (9 * 3 + 9 * 64))  # Glorot-uniform, as Keras' Conv2D draws them
    assert 0.9 * limit < np.abs(first[0]).max() <= limit and np.all(first[1] == 0)

    def offline(**kwargs):
        raise OSError("no network in this test")

    monkeypatch.setattr(keras.applications, "VGG19", offline)  # --vgg auto on a machine without weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv(perceptual.WEIGHTS_ENV, raising=False)
    for a, b in zip(first, weights_after(5, weights="auto", seed=3)):
        np.testing.assert_array_equal(a, b)

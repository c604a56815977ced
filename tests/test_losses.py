"""Losses: parity with the original's loss values, and each term against NumPy."""

import numpy as np
import pytest
import tensorflow as tf

from fomm_lessons import losses
from fomm_lessons.pyramid import ImagePyramid
from fomm_lessons.tps import ThinPlateSplineTransform

PARITY_WEIGHTS = {  # vox-adv-256's loss weights with the perceptual term off, as the fixture
    "generator_gan": 1, "discriminator_gan": 1, "feature_matching": [10, 10, 10, 10],
    "perceptual": [0, 0, 0, 0, 0], "equivariance_value": 10, "equivariance_jacobian": 10,
}


@pytest.fixture(scope="module")
def parity_models(parity, parity_json):
    from fomm_lessons.checkpoint import models_from_torch_state

    state = {net: {key.split("/", 2)[2]: value for key, value in parity.items()
                   if key.startswith(f"weights/{net}/")}
             for net in ("kp_detector", "generator", "discriminator")}
    return models_from_torch_state(state, parity_json["model_params"])


def test_loss_values_match_the_original(parity, parity_json, parity_models):
    source = parity["inputs/source"].transpose(0, 2, 3, 1)
    driving = parity["inputs/driving"].transpose(0, 2, 3, 1)
    transform = ThinPlateSplineTransform.from_params(parity["tps/theta"], parity["tps/control_params"])
    train_params = {"loss_weights": PARITY_WEIGHTS, "scales": [1, 0.5, 0.25, 0.125]}
    pyramid = ImagePyramid(train_params["scales"])
    values, generated = losses.generator_losses(parity_models, source, driving, train_params, pyramid,
                                                transform=transform, training=False)
    values.update(losses.discriminator_losses(parity_models.discriminator, driving, generated, train_params,
                                              pyramid, training=False))
    want = parity_json["loss_values"]
    assert set(values) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(float(values[name]), value, rtol=1e-3, err_msg=name)
    # The transform is the fixture's, so the warped driving frames are the fixture's too.
    np.testing.assert_allclose(generated["transformed_frame"].numpy(),
                               parity["tps/transformed_driving"].transpose(0, 2, 3, 1), atol=1e-5)


def _maps(rng, shapes, batch=2):
    features = [tf.constant(rng.normal(size=(batch,) + s), tf.float32) for s in shapes]
    return features, tf.constant(rng.normal(size=(batch, 5, 5, 1)), tf.float32)


def test_gan_and_feature_matching_terms_match_numpy():
    rng = np.random.default_rng(0)
    shapes = [(8, 8, 4), (4, 4, 8)]
    real = {1.0: _maps(rng, shapes), 0.5: _maps(rng, shapes)}
    fake = {1.0: _maps(rng, shapes), 0.5: _maps(rng, shapes)}
    gen = losses.generator_gan_loss(fake, 2.0)
    want = sum(2.0 * np.mean((1 - fake[s][1].numpy()) ** 2) for s in fake)
    np.testing.assert_allclose(float(gen), want, rtol=1e-6)
    disc = losses.discriminator_gan_loss(real, fake, 1.5)
    want = sum(1.5 * np.mean((1 - real[s][1].numpy()) ** 2 + fake[s][1].numpy() ** 2) for s in fake)
    np.testing.assert_allclose(float(disc), want, rtol=1e-6)
    matching = losses.feature_matching_loss(real, fake, [10, 0])  # a 0 weight skips that block
    want = sum(10 * np.mean(np.abs(real[s][0][0].numpy() - fake[s][0][0].numpy())) for s in fake)
    np.testing.assert_allclose(float(matching), want, rtol=1e-6)


def test_perceptual_loss_stops_the_gradient_of_the_real_features():
    def vgg(images):  # a stand-in feature extractor with two "layers"
        return [images * 2.0, tf.nn.avg_pool2d(images, 2, 2, "VALID")]

    rng = np.random.default_rng(1)
    fake = tf.Variable(rng.random((1, 8, 8, 3)), dtype=tf.float32)
    real = tf.Variable(rng.random((1, 8, 8, 3)), dtype=tf.float32)
    pyramid = ImagePyramid([1, 0.5])
    with tf.GradientTape(persistent=True) as tape:
        value = losses.perceptual_loss(vgg, pyramid(fake), pyramid(real), [1.0, 3.0])
    assert tape.gradient(value, real) is None
    assert tape.gradient(value, fake) is not None
    p_fake, p_real = pyramid(fake), pyramid(real)
    want = 0.0
    for s in (1.0, 0.5):
        a, b = p_fake[s].numpy(), p_real[s].numpy()
        want += 1.0 * np.mean(np.abs(2 * a - 2 * b))
        pool = lambda x: x.reshape(1, x.shape[1] // 2, 2, x.shape[2] // 2, 2, 3).mean(axis=(2, 4))
        want += 3.0 * np.mean(np.abs(pool(a) - pool(b)))
    np.testing.assert_allclose(float(value), want, rtol=1e-5)


def test_equivariance_losses_vanish_for_equivariant_keypoints():
    """Keypoints that move exactly with the warp give zero value and jacobian losses."""
    transform = ThinPlateSplineTransform(2, sigma_affine=0.05, sigma_tps=0.005, points_tps=5, seed=0)
    rng = np.random.default_rng(2)
    transformed = {"value": tf.constant(rng.uniform(-0.5, 0.5, (2, 4, 2)), tf.float32),
                   "jacobian": tf.constant(np.eye(2) + rng.normal(0, 0.1, (2, 4, 2, 2)), tf.float32)}
    driving = {"value": transform.warp_coordinates(transformed["value"]),
               "jacobian": tf.matmul(transform.jacobian(transformed["value"]), transformed["jacobian"])}
    assert float(losses.equivariance_value_loss(driving, transformed, transform, 10)) < 1e-6
    assert float(losses.equivariance_jacobian_loss(driving, transformed, transform, 10)) < 1e-5
    shifted = {"value": driving["value"] + 0.1, "jacobian": driving["jacobian"]}
    np.testing.assert_allclose(float(losses.equivariance_value_loss(shifted, transformed, transform, 10)), 1.0,
                               rtol=1e-5)


def test_equivariance_jacobian_loss_is_finite_for_singular_jacobians():
    transform = ThinPlateSplineTransform(1, sigma_affine=0.05, sigma_tps=0.005, points_tps=5, seed=0)
    singular = tf.Variable([[[[1.0, 2.0], [0.5, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # det 0
    kp = {"value": tf.zeros([1, 2, 2]), "jacobian": tf.eye(2, batch_shape=[1, 2])}
    with tf.GradientTape() as tape:
        value = losses.equivariance_jacobian_loss({"value": kp["value"], "jacobian": singular}, kp, transform, 10)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(tape.gradient(value, singular).numpy()))


def test_pixel_pyramid_loss_is_the_weighted_l1_of_each_scale():
    from fomm_lessons.losses import pixel_pyramid_loss

    rng = np.random.default_rng(0)
    real = {1.0: rng.random((2, 8, 8, 3)), 0.5: rng.random((2, 4, 4, 3))}
    fake = {1.0: rng.random((2, 8, 8, 3)), 0.5: rng.random((2, 4, 4, 3))}
    expected = 10 * np.abs(fake[1.0] - real[1.0]).mean() + 3 * np.abs(fake[0.5] - real[0.5]).mean()
    got = pixel_pyramid_loss({k: tf.constant(v, tf.float32) for k, v in fake.items()},
                             {k: tf.constant(v, tf.float32) for k, v in real.items()}, [10, 3])
    np.testing.assert_allclose(float(got), expected, rtol=1e-5)


def test_keypoint_separation_loss_against_numpy_and_its_pull():
    from fomm_lessons.losses import keypoint_separation_loss

    rng = np.random.default_rng(1)
    kp = rng.uniform(-1, 1, (3, 5, 2))
    sigma = 0.2
    d2 = ((kp[:, :, None] - kp[:, None]) ** 2).sum(-1)
    expected = 2.0 * np.mean([(np.exp(-d2[b] / (2 * sigma**2)).sum() - 5) for b in range(3)])
    value = tf.constant(kp, tf.float32)
    np.testing.assert_allclose(float(keypoint_separation_loss(value, sigma, 2.0)), expected, rtol=1e-5)
    # two keypoints close together are pushed apart: the gradient points from each to the other's far side
    pair = tf.Variable([[[0.0, 0.0], [0.1, 0.0]]])
    with tf.GradientTape() as tape:
        loss = keypoint_separation_loss(pair, sigma, 1.0)
    grad = tape.gradient(loss, pair).numpy()
    assert grad[0, 0, 0] > 0 and grad[0, 1, 0] < 0  # descending moves the first left, the second right

"""The thin-plate-spline transform against the original's outputs and automatic differentiation."""

import numpy as np
import pytest
import tensorflow as tf

from fomm_lessons.tps import ThinPlateSplineTransform


# ---------------------------------------------------------------------------
# Thin-plate-spline transform against the original's outputs
# ---------------------------------------------------------------------------

@pytest.fixture()
def parity_tps(parity):
    return ThinPlateSplineTransform.from_params(parity["tps/theta"], parity["tps/control_params"])


def test_tps_control_points_match_original(parity, parity_tps):
    np.testing.assert_allclose(parity_tps.control_points.numpy(), parity["tps/control_points"].reshape(-1, 2))


def test_tps_warp_coordinates_match_original(parity, parity_tps):
    got = parity_tps.warp_coordinates(parity["tps/coordinates"]).numpy()
    np.testing.assert_allclose(got, parity["tps/warped_coordinates"], atol=1e-5)


def test_tps_jacobian_matches_original(parity, parity_tps):
    got = parity_tps.jacobian(parity["tps/coordinates"]).numpy()
    np.testing.assert_allclose(got, parity["tps/jacobian"], atol=1e-5)


def test_tps_transform_frame_matches_original(parity, parity_tps):
    driving = parity["inputs/driving"].transpose(0, 2, 3, 1)
    got = parity_tps.transform_frame(driving).numpy()
    np.testing.assert_allclose(got, parity["tps/transformed_driving"].transpose(0, 2, 3, 1), atol=1e-5)


def test_tps_jacobian_matches_autodiff_and_second_derivatives_exist():
    transform = ThinPlateSplineTransform(3, sigma_affine=0.05, sigma_tps=0.05, points_tps=5, seed=1)
    points = tf.constant(np.random.default_rng(13).uniform(-1, 1, (3, 7, 2)), tf.float32)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(points)
        with tf.GradientTape() as tape:
            tape.watch(points)
            warped = tf.reshape(transform.warp_coordinates(points), [3, -1])  # (3, 14)
        autodiff = tape.batch_jacobian(warped, points)  # (3, 14, 7, 2)
        analytic = transform.jacobian(points)
        total = tf.reduce_sum(analytic ** 2)
    autodiff = tf.reshape(autodiff, [3, 7, 2, 7, 2])
    autodiff = tf.stack([autodiff[:, n, :, n, :] for n in range(7)], axis=1)  # (3, 7, 2, 2)
    np.testing.assert_allclose(analytic.numpy(), autodiff.numpy(), atol=1e-5)
    second = outer.gradient(total, points)
    assert second is not None and np.all(np.isfinite(second.numpy()))


def test_tps_random_parameters_are_seeded_and_scaled():
    a = ThinPlateSplineTransform(4, 0.05, 0.005, 5, seed=3)
    b = ThinPlateSplineTransform(4, 0.05, 0.005, 5, seed=3)
    c = ThinPlateSplineTransform(4, 0.05, 0.005, 5, seed=4)
    np.testing.assert_array_equal(a.theta.numpy(), b.theta.numpy())
    assert not np.array_equal(a.theta.numpy(), c.theta.numpy())
    assert a.control_params.shape == (4, 25)
    big = ThinPlateSplineTransform(2000, 0.05, 0.005, 5, seed=0)
    noise = big.theta.numpy() - np.eye(2, 3)
    assert noise.std() == pytest.approx(0.05, rel=0.05)
    assert big.control_params.numpy().std() == pytest.approx(0.005, rel=0.05)
    affine_only = ThinPlateSplineTransform(2, 0.05, seed=0)
    assert not affine_only.has_tps
    points = tf.zeros([1, 3, 2])
    np.testing.assert_allclose(affine_only.warp_coordinates(points).numpy(),
                               np.broadcast_to(affine_only.theta.numpy()[:, None, :, 2], (2, 3, 2)), atol=1e-7)


def test_tps_identity_parameters_leave_frames_unchanged():
    identity = ThinPlateSplineTransform.from_params(np.tile(np.eye(2, 3), (2, 1, 1)), np.zeros((2, 1, 25)))
    images = np.random.default_rng(14).random((2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(identity.transform_frame(images).numpy(), images)

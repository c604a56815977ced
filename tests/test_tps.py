"""The thin-plate-spline transform against the original's outputs and automatic differentiation."""

import subprocess
import sys

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


# ---------------------------------------------------------------------------
# Products of small matrices at large batches (issue 21, item 13)
# ---------------------------------------------------------------------------

# Each product of the library at a batch of 20000, against NumPy in float64.
# Run in a child process: on an Intel CPU with AVX-512, oneDNN's broadcast
# batched matmul aborted the process there (free(): invalid pointer), which
# this reports as a failed test with the child's exit status.
LARGE_BATCH_SCRIPT = r"""
import numpy as np
import tensorflow as tf

from fomm_lessons.animate import normalize_kp
from fomm_lessons.dense_motion import DenseMotionNetwork
from fomm_lessons.losses import equivariance_jacobian_loss
from fomm_lessons.sampling import make_coordinate_grid
from fomm_lessons.tps import ThinPlateSplineTransform, batched_matmul

rng = np.random.default_rng(21)
inv = np.linalg.inv


def report(name, got, expected):
    print(name, float(np.abs(np.asarray(got, np.float64) - expected).max()))


def warp_numpy(transform, z):
    theta = transform.theta.numpy().astype(np.float64)  # (B, 2, 3)
    z = np.broadcast_to(z.astype(np.float64), (theta.shape[0],) + z.shape[1:])
    affine = np.einsum("bij,bnj->bni", theta[:, :, :2], z) + theta[:, None, :, 2]
    offsets = z[:, :, None, :] - transform.control_points.numpy()[None, None]
    radius = np.abs(offsets).sum(-1)  # (B, N, P*P)
    kernel = radius**2 * np.log(radius + 1e-6)
    spline = np.einsum("bnp,bp->bn", kernel, transform.control_params.numpy())
    return affine + spline[..., None]


def jacobians(*shape):
    return (np.eye(2) + 0.1 * rng.normal(size=shape + (2, 2))).astype(np.float32)  # well conditioned


many = ThinPlateSplineTransform(20000, sigma_affine=0.05, sigma_tps=0.005, points_tps=5, seed=9)
for n in (1, 3):
    z = rng.uniform(-1, 1, (1, n, 2)).astype(np.float32)
    report(f"warp_20000_transforms_{n}_points", many.warp_coordinates(z), warp_numpy(many, z))
few = ThinPlateSplineTransform(2, sigma_affine=0.05, sigma_tps=0.005, points_tps=5, seed=3)
z = rng.uniform(-1, 1, (1, 20000, 2)).astype(np.float32)
report("warp_2_transforms_20000_points", few.warp_coordinates(z), warp_numpy(few, z))

a, b, b1 = jacobians(20000, 10), jacobians(20000, 10), jacobians(1, 10)
report("matmul_20000", batched_matmul(a, b), a.astype(np.float64) @ b)
report("matmul_20000_broadcast", batched_matmul(a, b1), a.astype(np.float64) @ b1)

source, initial = jacobians(1, 10), jacobians(1, 10)
value = rng.uniform(-1, 1, (20000, 10, 2)).astype(np.float32)
kp = normalize_kp({"value": value[:1], "jacobian": source}, {"value": value, "jacobian": a},
                  {"value": value[:1], "jacobian": initial})
report("normalize_kp_20000", kp["jacobian"], a.astype(np.float64) @ inv(initial) @ source)

kp_t = {"value": value[:, :2], "jacobian": a[:, :2]}
kp_d = {"value": value[:, :2], "jacobian": b[:, :2]}
loss = equivariance_jacobian_loss(kp_d, kp_t, many, 1.0)
d_t = many.jacobian(kp_t["value"]).numpy().astype(np.float64)  # checked against autodiff elsewhere
expected = np.abs(np.eye(2) - inv(b[:, :2].astype(np.float64)) @ d_t @ a[:, :2]).mean()
report("equivariance_jacobian_loss_20000", float(loss), expected)

network = DenseMotionNetwork(block_expansion=4, num_blocks=1, max_features=8, num_kp=10, num_channels=3)
kp_s = {"value": value[:2000], "jacobian": a[:2000]}
kp_d = {"value": value[2000:4000], "jacobian": b[:2000]}
motions = network.sparse_motions(kp_d, kp_s, 4, 4).numpy()  # (2000, 11, 4, 4, 2)
grid = make_coordinate_grid(4, 4).numpy().astype(np.float64)
jacobian = a[:2000].astype(np.float64) @ inv(b[:2000])
offsets = grid[None, None] - kp_d["value"][:, :, None, None]
expected = kp_s["value"][:, :, None, None] + np.einsum("bkij,bkhwj->bkhwi", jacobian, offsets)
report("sparse_motions_2000x10", motions[:, 1:], expected)
"""


def test_small_matrix_products_at_a_batch_of_20000_match_numpy():
    result = subprocess.run([sys.executable, "-c", LARGE_BATCH_SCRIPT], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr[-2000:]}"
    differences = dict(line.split() for line in result.stdout.splitlines())
    assert len(differences) == 8, result.stdout
    for name, difference in differences.items():
        assert float(difference) < 1e-5, (name, difference)


MATMUL_OPS = {"MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"}


def _op_types(function, *args):
    return {op.type for op in tf.function(function).get_concrete_function(*args).graph.get_operations()}


def test_small_matrix_products_use_no_matmul_kernel():
    """warp_coordinates and the Jacobian products of the library trace to no MatMul op (item 13)."""
    from fomm_lessons.animate import normalize_kp
    from fomm_lessons.dense_motion import DenseMotionNetwork
    from fomm_lessons.losses import equivariance_jacobian_loss

    transform = ThinPlateSplineTransform(3, sigma_affine=0.05, sigma_tps=0.005, points_tps=5, seed=1)
    kp = {"value": tf.zeros([3, 2, 2]), "jacobian": tf.eye(2, batch_shape=[3, 2])}
    first = {"value": tf.zeros([1, 2, 2]), "jacobian": tf.eye(2, batch_shape=[1, 2])}
    network = DenseMotionNetwork(block_expansion=4, num_blocks=1, max_features=8, num_kp=2, num_channels=3)
    traced = {
        "warp_coordinates": _op_types(transform.warp_coordinates, tf.zeros([1, 5, 2])),
        "equivariance_jacobian_loss": _op_types(lambda a, b: equivariance_jacobian_loss(a, b, transform, 1.0),
                                                kp, kp),
        "normalize_kp": _op_types(normalize_kp, first, kp, first),
        "sparse_motions": _op_types(lambda a, b: network.sparse_motions(a, b, 4, 4), kp, kp),
    }
    assert {name: types & MATMUL_OPS for name, types in traced.items()} == {name: set() for name in traced}

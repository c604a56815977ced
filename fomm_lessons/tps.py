"""The random affine + thin-plate-spline transform of the equivariance constraints (Sec. 3.3).

A known warp ``T`` of a frame: the keypoints found in the warped frame must be
``T`` of those found in the frame (Eq. 10-12), and the Jacobians must compose
with ``dT/dz``. :class:`ThinPlateSplineTransform` draws such a warp, applies it
to points and frames, and gives its Jacobian in closed form.
"""

import tensorflow as tf

from fomm_lessons.sampling import check_rank, grid_sample, make_coordinate_grid


def _normal(shape, stddev, seed):
    """Normal noise from a ``tf.random.Generator``, a stateless seed, or the global RNG."""
    if isinstance(seed, tf.random.Generator):
        return seed.normal(shape, stddev=stddev)
    if seed is None:
        return tf.random.normal(shape, stddev=stddev)
    if isinstance(seed, int):
        seed = [seed, 0]
    return tf.random.stateless_normal(shape, seed=seed, stddev=stddev)


# The products of small matrices below are written as elementwise products
# summed over an axis, not as tf.matmul / tf.linalg.matvec (the original's
# torch.matmul in Transform.warp_coordinates and create_sparse_motions):
# oneDNN's AVX-512 batched matmul, with one operand broadcast over a large
# batch (20000 transforms applied to one point), aborts the process on the
# Intel CPUs that have it. The sums give the same numbers and, on CPU, take
# as long or less at N = 20000 and inside compiled training steps (an eager
# call on a few 2x2 matrices costs about 1 ms more: more ops).


def batched_matvec(matrices, vectors):
    """``matrices @ vectors`` for (..., M, K) and (..., K), batch dims broadcast -> (..., M)."""
    matrices, vectors = tf.convert_to_tensor(matrices), tf.convert_to_tensor(vectors)
    return tf.reduce_sum(matrices * vectors[..., None, :], axis=-1)


def batched_matmul(a, b):
    """``a @ b`` for (..., M, K) and (..., K, L), batch dims broadcast -> (..., M, L)."""
    a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
    return tf.reduce_sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


class ThinPlateSplineTransform:
    """A random affine + thin-plate-spline warp ``T(z) = A z + b + s(z)``.

    Exactly the original's ``Transform`` (``TPS`` in later code), quirks
    included: the spline radius is the L1 distance ``|dx| + |dy|``, the kernel
    is ``r^2 log(r + 1e-6)``, and the same scalar spline displacement ``s(z)``
    is added to both ``x`` and ``y``.

    ``theta`` (B, 2, 3), ``control_points`` (P*P, 2), ``control_params`` (B, P*P).
    """

    def __init__(self, batch_size, sigma_affine, sigma_tps=None, points_tps=None, seed=None):
        if isinstance(seed, int):
            seeds = tf.random.experimental.stateless_split([seed, 0], 2)
            seed_affine, seed_tps = seeds[0], seeds[1]
        else:
            seed_affine = seed_tps = seed
        noise = _normal([batch_size, 2, 3], sigma_affine, seed_affine)
        theta = noise + tf.eye(2, 3)[None]
        control_params = None
        if sigma_tps is not None and points_tps is not None:
            control_params = _normal([batch_size, points_tps**2], sigma_tps, seed_tps)
        self._set(theta, points_tps, control_params)

    @classmethod
    def from_params(cls, theta, control_params=None, points_tps=None):
        """A transform with given ``theta`` (B, 2, 3) and optional ``control_params``.

        ``control_params`` may be (B, P*P) or the original's (B, 1, P*P);
        ``points_tps`` defaults to ``sqrt(P*P)``.
        """
        transform = cls.__new__(cls)
        theta = tf.convert_to_tensor(theta, tf.float32)
        check_rank("theta (B, 2, 3)", theta, 3, last=3)
        if control_params is not None:
            control_params = tf.convert_to_tensor(control_params, tf.float32)
            control_params = tf.reshape(control_params, [tf.shape(control_params)[0], -1])
            n = control_params.shape[-1]
            points_tps = points_tps or int(round(n**0.5))
            if points_tps**2 != n:
                raise ValueError(f"expected P*P control parameters, got shape {tuple(control_params.shape)}")
        transform._set(theta, points_tps, control_params)
        return transform

    def _set(self, theta, points_tps, control_params):
        self.theta = tf.convert_to_tensor(theta, tf.float32)
        self.batch_size = self.theta.shape[0]
        self.control_params = control_params
        self.control_points = None
        if control_params is not None:
            grid = make_coordinate_grid(points_tps, points_tps)  # (P, P, 2)
            self.control_points = tf.reshape(grid, [-1, 2])  # (P*P, 2)

    @property
    def has_tps(self):
        return self.control_params is not None

    def _spline_terms(self, coordinates):
        """Offsets to the control points and the L1 radii: (B, N, P*P, 2), (B, N, P*P)."""
        offsets = coordinates[:, :, None, :] - self.control_points[None, None, :, :]
        return offsets, tf.reduce_sum(tf.abs(offsets), axis=-1)

    def warp_coordinates(self, coordinates):
        """``T(z)`` for points ``coordinates`` (B or 1, N, 2) -> (B, N, 2)."""
        coordinates = tf.convert_to_tensor(coordinates, tf.float32)
        check_rank("coordinates (B, N, 2)", coordinates, 3, last=2)
        linear, shift = self.theta[:, None, :, :2], self.theta[:, None, :, 2]  # (B, 1, 2, 2), (B, 1, 2)
        warped = batched_matvec(linear, coordinates) + shift  # (B, N, 2)
        if self.has_tps:
            _, radius = self._spline_terms(coordinates)
            kernel = tf.square(radius) * tf.math.log(radius + 1e-6)
            spline = tf.reduce_sum(kernel * self.control_params[:, None, :], axis=-1)  # (B, N)
            warped = warped + spline[..., None]
        return warped

    def jacobian(self, coordinates):
        """``dT/dz`` at ``coordinates`` (B or 1, N, 2) -> (B, N, 2, 2); row i is d T_i / d(x, y).

        Written out analytically (so it works under XLA and can be
        differentiated again); ``tests/test_tps.py`` checks it against
        automatic differentiation.
        """
        coordinates = tf.convert_to_tensor(coordinates, tf.float32)
        check_rank("coordinates (B, N, 2)", coordinates, 3, last=2)
        n = tf.shape(coordinates)[1]
        linear = tf.tile(self.theta[:, None, :, :2], tf.stack([1, n, 1, 1]))  # (B, N, 2, 2)
        if not self.has_tps:
            return linear
        offsets, radius = self._spline_terms(coordinates)
        # d/dr [r^2 log(r + eps)] = 2 r log(r + eps) + r^2 / (r + eps); dr/dz = sign(offset).
        d_kernel = 2.0 * radius * tf.math.log(radius + 1e-6) + tf.square(radius) / (radius + 1e-6)
        weights = (d_kernel * self.control_params[:, None, :])[..., None]  # (B, N, P*P, 1)
        gradient = tf.reduce_sum(weights * tf.sign(offsets), axis=2)  # (B, N, 2)
        return linear + gradient[:, :, None, :]  # same spline gradient in both rows

    def transform_frame(self, images):
        """Warp ``images`` (B, H, W, C) by ``T`` with reflection padding, as the original."""
        images = tf.convert_to_tensor(images)
        check_rank("images (B, H, W, C)", images, 4)
        height, width = images.shape[1], images.shape[2]
        grid = tf.reshape(make_coordinate_grid(height, width), [1, height * width, 2])
        grid = self.warp_coordinates(grid)  # (B, H*W, 2)
        grid = tf.reshape(grid, [-1, height, width, 2])
        return grid_sample(images, grid, padding_mode="reflection", align_corners=True)

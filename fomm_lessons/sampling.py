"""Geometry shared by every network: coordinate grids, bilinear sampling and
Gaussian keypoint heatmaps.

Conventions (each lives in exactly one function of this file):

* coordinates are ``(x, y)`` in ``[-1, 1]``; ``-1`` and ``+1`` are the centres
  of the corner pixels (:func:`make_coordinate_grid`);
* sampling is bilinear with PyTorch ``grid_sample`` semantics
  (:func:`grid_sample`), ``align_corners=True`` by default as in the original.

The anti-aliased pyramid lives in :mod:`fomm_lessons.pyramid` and the random
thin-plate-spline transform in :mod:`fomm_lessons.tps` (which imports this
module); import them from there.
"""

import tensorflow as tf

PADDING_MODES = ("zeros", "border", "reflection")


def make_coordinate_grid(height, width, dtype=tf.float32):
    """Grid of ``(x, y)`` pixel-centre coordinates in [-1, 1], shape ``(height, width, 2)``."""
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"expected a grid size of at least 1x1, got {height}x{width}")

    def axis(n):
        # 2 * i / (n - 1) - 1, computed in the original's order of operations.
        i = tf.range(n, dtype=tf.float32)
        return 2.0 * (i / max(n - 1, 1)) - 1.0

    xx, yy = tf.meshgrid(axis(int(width)), axis(int(height)))  # (height, width) each
    return tf.cast(tf.stack([xx, yy], axis=-1), dtype)


# ---------------------------------------------------------------------------
# Bilinear sampling
# ---------------------------------------------------------------------------

def check_rank(name, tensor, rank, last=None):
    """Raise ``ValueError`` naming ``name`` unless ``tensor`` has rank ``rank`` (and last axis ``last``).

    Unknown (symbolic) ranks and sizes pass.
    """
    shape = tensor.shape
    if shape.rank is not None and shape.rank != rank:
        raise ValueError(f"expected {name} of rank {rank}, got shape {tuple(shape)}")
    if last is not None and shape.rank is not None and shape[-1] is not None and shape[-1] != last:
        raise ValueError(f"expected {name} with last axis {last}, got shape {tuple(shape)}")


def _check_same_batch(images, points, points_name):
    b1, b2 = images.shape[0], points.shape[0]
    if b1 is not None and b2 is not None and b1 != b2:
        raise ValueError(
            f"images and {points_name} must have the same batch size, got images "
            f"{tuple(images.shape)} and {points_name} {tuple(points.shape)}"
        )


def _compute_dtype(dtype):
    """Coordinates and weights are computed in float32 (float64 stays float64)."""
    return tf.float64 if dtype == tf.float64 else tf.float32


def _unnormalize(coord, size, align_corners):
    """[-1, 1] -> pixel index; with ``align_corners`` -1/+1 are corner-pixel centres."""
    if align_corners:
        return (coord + 1.0) / 2.0 * (size - 1.0)
    return ((coord + 1.0) * size - 1.0) / 2.0


def _reflect(coord, twice_low, twice_high):
    """Reflect ``coord`` into [low, high] the way PyTorch's grid_sampler does."""
    low = twice_low / 2.0
    span = (twice_high - twice_low) / 2.0
    if span <= 0:
        return tf.zeros_like(coord)
    coord = tf.abs(coord - low)
    flips = tf.floor(coord / span)
    extra = coord - flips * span
    even = tf.equal(tf.math.floormod(flips, 2.0), 0.0)
    return tf.where(even, extra + low, span - extra + low)


def _pad_coordinate(coord, size, padding_mode, align_corners):
    """Apply the padding rule of ``padding_mode`` to one pixel coordinate axis."""
    if padding_mode == "border":
        return tf.clip_by_value(coord, 0.0, size - 1.0)
    if padding_mode == "reflection":
        if align_corners:
            coord = _reflect(coord, 0.0, 2.0 * (size - 1.0))
        else:
            coord = _reflect(coord, -1.0, 2.0 * size - 1.0)
        return tf.clip_by_value(coord, 0.0, size - 1.0)
    return coord


def _snap_to_pixel_centres(coord, size):
    """Treat coordinates within float32 noise of a pixel centre as that centre.

    ``2 * i / (n - 1) - 1`` mapped back to pixels lands up to half an ulp of
    ``n - 1`` away from ``i``; without this the identity grid would mix in a
    1e-7 share of the neighbouring pixel. The snap moves a coordinate by less
    than the float32 resolution of the coordinate itself, and the gradient
    passes straight through it.
    """
    tolerance = max(size - 1.0, 1.0) * 2.0 ** -22
    nearest = tf.round(coord)
    close = tf.abs(coord - nearest) <= tolerance
    return coord + tf.stop_gradient(tf.where(close, nearest - coord, tf.zeros_like(coord)))


def _axis_weights(coord, size):
    """The two neighbours along one axis: clamped indices, weights, validity.

    A neighbour outside ``[0, size - 1]`` gets weight 0 (zero padding) and a
    clamped index, so that the gather stays in bounds.
    """
    # NaN or Inf coordinates read nothing (index -2) and give NaN weights, so a diverging
    # model shows up as a NaN output rather than an out-of-range gather.
    low = tf.floor(tf.where(tf.math.is_finite(coord), coord, -2.0 * tf.ones_like(coord)))
    w_high = coord - low
    w_low = 1.0 - w_high
    valid_low = tf.cast((low >= 0.0) & (low <= size - 1.0), coord.dtype)
    valid_high = tf.cast((low >= -1.0) & (low <= size - 2.0), coord.dtype)
    i_low = tf.cast(tf.clip_by_value(low, 0.0, size - 1.0), tf.int32)
    i_high = tf.cast(tf.clip_by_value(low + 1.0, 0.0, size - 1.0), tf.int32)
    return (i_low, i_high), (w_low * valid_low, w_high * valid_high), (valid_low, valid_high)


@tf.function(jit_compile=True)
def _splat(upstream, weights, index, rows):
    """The image gradient of bilinear sampling: each output's gradient ``upstream`` (B, n, C)
    spread over its four source pixels ``index`` (4, B, n) with ``weights`` (4, B, n), summed
    into ``len(rows)`` rows of the flattened images.

    Compiled by XLA even when the caller is not: TensorFlow's own CPU kernel
    for this scatter (``unsorted_segment_sum``) walks the rows one at a time
    and was 8x slower on the dense-motion workload (1.4 M rows of 3 channels).
    """
    channels = tf.shape(upstream)[-1]
    values = tf.reshape(upstream[None] * weights[..., None], tf.stack([-1, channels]))  # (4*B*n, C)
    return tf.math.unsorted_segment_sum(values, tf.reshape(index, [-1]), tf.shape(rows)[0])


def _bilinear(images, x, y):
    """Bilinear sampling at pixel coordinates ``x``, ``y`` of shape (B, n); zero outside.

    Returns (B, n, C) in the compute dtype of ``x``. The gradient is written
    out by hand: one segment sum for the image and the bilinear slopes for the
    coordinates, instead of differentiating every elementwise step.
    """
    dtype = x.dtype
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    channels = images.shape[-1] if images.shape[-1] is not None else shape[3]

    @tf.custom_gradient
    def sample(images, x, y):
        (x0, x1), (wx0, wx1), (vx0, vx1) = _axis_weights(x, tf.cast(width, dtype))
        (y0, y1), (wy0, wy1), (vy0, vy1) = _axis_weights(y, tf.cast(height, dtype))
        flat = tf.reshape(images, [-1, channels])  # (B*H*W, C)
        first_row = (tf.range(batch) * (height * width))[:, None]  # (B, 1)
        row0 = first_row + y0 * width
        row1 = first_row + y1 * width
        index = tf.stack([row0 + x0, row0 + x1, row1 + x0, row1 + x1])  # (4, B, n)
        corners = tf.cast(tf.gather(flat, index), dtype)  # (4, B, n, C)
        c00, c01, c10, c11 = tf.unstack(corners)  # c<row><col>
        out = (c00 * (wx0 * wy0)[..., None] + c01 * (wx1 * wy0)[..., None]
               + c10 * (wx0 * wy1)[..., None] + c11 * (wx1 * wy1)[..., None])  # (B, n, C)

        def grad(upstream):
            upstream = tf.cast(upstream, dtype)
            weights = tf.stack([wx0 * wy0, wx1 * wy0, wx0 * wy1, wx1 * wy1])  # (4, B, n)
            rows = tf.zeros(tf.stack([batch * height * width, 0]), dtype)  # only its length is used
            d_flat = _splat(upstream, weights, index, rows)  # (B*H*W, C)
            d_images = tf.cast(tf.reshape(d_flat, shape), images.dtype)
            # d out / dx: the weights are linear in x with slopes -vx0 and +vx1.
            slope_x = (vx1 * wy0)[..., None] * c01 - (vx0 * wy0)[..., None] * c00 \
                + (vx1 * wy1)[..., None] * c11 - (vx0 * wy1)[..., None] * c10
            slope_y = (vy1 * wx0)[..., None] * c10 - (vy0 * wx0)[..., None] * c00 \
                + (vy1 * wx1)[..., None] * c11 - (vy0 * wx1)[..., None] * c01
            d_x = tf.reduce_sum(upstream * slope_x, axis=-1)
            d_y = tf.reduce_sum(upstream * slope_y, axis=-1)
            return d_images, d_x, d_y

        return out, grad

    out = sample(images, x, y)
    # A NaN or Inf coordinate reads NaN (a diverging model must not look healthy); written out
    # because compilers may fold the NaN * 0 weights of such points to 0.
    finite = tf.math.is_finite(x) & tf.math.is_finite(y)
    return out + tf.where(finite, tf.zeros_like(x), tf.fill(tf.shape(x), tf.constant(float("nan"), dtype)))[..., None]


def grid_sample(images, grid, padding_mode="zeros", align_corners=True):
    """Bilinear sampling of ``images`` at ``grid``, as PyTorch's ``F.grid_sample``.

    ``images`` (B, H, W, C); ``grid`` (B, h, w, 2) of ``(x, y)`` in [-1, 1];
    returns (B, h, w, C) in the dtype of ``images``. ``padding_mode`` is
    ``"zeros"``, ``"border"`` or ``"reflection"``.
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"expected padding_mode in {PADDING_MODES}, got {padding_mode!r}")
    if align_corners not in (True, False):
        raise ValueError(f"expected align_corners True or False, got {align_corners!r}")
    images = tf.convert_to_tensor(images)
    grid = tf.convert_to_tensor(grid)
    check_rank("images (B, H, W, C)", images, 4)
    check_rank("grid (B, h, w, 2)", grid, 4, last=2)
    _check_same_batch(images, grid, "grid")

    return _grid_sample_compiled(images, grid, padding_mode, align_corners)


@tf.function(jit_compile=True)
def _grid_sample_compiled(images, grid, padding_mode, align_corners):
    """The body of :func:`grid_sample`, compiled by XLA: about 3x faster on CPU than
    the same ops run one by one, since XLA fuses the elementwise work."""
    dtype = _compute_dtype(images.dtype)
    grid = tf.cast(grid, dtype)
    in_shape = tf.shape(images)
    out_shape = tf.shape(grid)
    height = images.shape[1] if images.shape[1] is not None else in_shape[1]
    width = images.shape[2] if images.shape[2] is not None else in_shape[2]
    h = float(height) if isinstance(height, int) else tf.cast(height, dtype)
    w = float(width) if isinstance(width, int) else tf.cast(width, dtype)

    x = _unnormalize(grid[..., 0], w, align_corners)
    y = _unnormalize(grid[..., 1], h, align_corners)
    x = _pad_coordinate(x, w, padding_mode, align_corners)
    y = _pad_coordinate(y, h, padding_mode, align_corners)
    if isinstance(width, int) and isinstance(height, int):
        x = _snap_to_pixel_centres(x, w)
        y = _snap_to_pixel_centres(y, h)

    batch = out_shape[0]
    x = tf.reshape(x, [batch, -1])
    y = tf.reshape(y, [batch, -1])
    out = _bilinear(images, x, y)  # (B, h*w, C)
    channels = images.shape[-1] if images.shape[-1] is not None else in_shape[3]
    out = tf.reshape(out, tf.stack([batch, out_shape[1], out_shape[2], channels]))
    return tf.cast(out, images.dtype)


def resample(images, warp):
    """``tfa.image.resampler``: sample ``images`` (B, H, W, C) at pixel
    coordinates ``warp`` (B, ..., 2) as ``(x, y)``; zero outside the image.

    Returns (B, ..., C). Pixel ``(0, 0)`` is the centre of the top-left pixel,
    which makes this ``grid_sample`` with ``align_corners=True``, zero padding
    and coordinates already unnormalised.
    """
    images = tf.convert_to_tensor(images)
    warp = tf.convert_to_tensor(warp)
    check_rank("images (B, H, W, C)", images, 4)
    if warp.shape.rank is not None and (warp.shape.rank < 2 or warp.shape[-1] not in (2, None)):
        raise ValueError(f"expected warp of shape (B, ..., 2), got shape {tuple(warp.shape)}")
    _check_same_batch(images, warp, "warp")

    dtype = _compute_dtype(images.dtype)
    warp = tf.cast(warp, dtype)
    warp_shape = tf.shape(warp)
    batch = warp_shape[0]
    x = tf.reshape(warp[..., 0], [batch, -1])
    y = tf.reshape(warp[..., 1], [batch, -1])
    out = _bilinear(images, x, y)  # (B, n, C)
    channels = images.shape[-1] if images.shape[-1] is not None else tf.shape(images)[3]
    out_shape = tf.concat([warp_shape[:-1], [channels]], axis=0)
    return tf.cast(tf.reshape(out, out_shape), images.dtype)


# ---------------------------------------------------------------------------
# Keypoint heatmaps (Eq. 6)
# ---------------------------------------------------------------------------

def keypoints_to_gaussian(kp, spatial_size, kp_variance):
    """Gaussian heatmaps ``exp(-|z - p_k|^2 / (2 var))`` of keypoints ``kp`` (B, K, 2).

    ``spatial_size`` is ``(h, w)``; returns (B, h, w, K).
    """
    kp = tf.convert_to_tensor(kp)
    check_rank("kp (B, K, 2)", kp, 3, last=2)
    height, width = spatial_size
    grid = make_coordinate_grid(height, width, kp.dtype)  # (h, w, 2)
    diff = grid[None, :, :, None, :] - kp[:, None, None, :, :]  # (B, h, w, K, 2)
    return tf.exp(-0.5 * tf.reduce_sum(tf.square(diff), axis=-1) / kp_variance)


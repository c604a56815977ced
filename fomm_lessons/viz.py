"""Pictures of what the model does: keypoints, flow fields, masks, rows of images, videos, training curves.

Frames are float RGB (H, W, 3) in [0, 1]; coordinates are (x, y) in [-1, 1]
with -1/+1 at the corner pixel centres (:func:`fomm_lessons.sampling.make_coordinate_grid`),
so pixel column ``(x + 1) / 2 * (W - 1)``. Flow colours follow the colour wheel
of Baker et al., "A Database and Evaluation Methodology for Optical Flow"
(IJCV 2011): hue is the direction, saturation the length.
"""

import csv

import numpy as np

# Colour-wheel segments (Baker et al. 2011): from each primary or secondary
# colour to the next, with this many steps, chosen so hues look evenly spaced.
WHEEL_STOPS = ((255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255), (0, 0, 255), (255, 0, 255), (255, 0, 0))
WHEEL_STEPS = (15, 6, 4, 11, 13, 6)  # red-yellow, yellow-green, green-cyan, cyan-blue, blue-magenta, magenta-red


def to_pixels(points, height, width):
    """(x, y) in [-1, 1] (..., 2) -> pixel (column, row) (..., 2)."""
    points = np.asarray(points, np.float64)
    return (points + 1.0) / 2.0 * np.array([width - 1, height - 1])


def color_wheel():
    """The 55 colours of the flow colour wheel, (55, 3) in [0, 255]; one channel ramps in each segment."""
    rows = []
    for start, stop, steps in zip(WHEEL_STOPS[:-1], WHEEL_STOPS[1:], WHEEL_STEPS):
        ramp = np.floor(255.0 * np.arange(steps) / steps)[:, None]  # (steps, 1)
        start, stop = np.array(start, np.float64), np.array(stop, np.float64)
        rows.append(start + (stop - start) / 255.0 * ramp)
    return np.concatenate(rows)


def flow_to_color(flow, max_radius=None):
    """Flow (H, W, 2) of (u, v), v pointing down -> colours (H, W, 3) in [0, 1].

    The direction picks a hue on :func:`color_wheel` (right red, down yellow,
    left cyan, up blue); the length divided by ``max_radius`` (default: the
    longest vector) blends from white (no motion) to the full colour; longer
    vectors are darkened to 75 %.
    """
    flow = np.asarray(flow, np.float64)
    if flow.ndim != 3 or flow.shape[-1] != 2:
        raise ValueError(f"expected a flow of shape (H, W, 2), got {flow.shape}")
    u, v = flow[..., 0], flow[..., 1]
    radius = np.hypot(u, v)
    if max_radius is None:
        max_radius = radius.max()
    radius = radius / max(float(max_radius), np.finfo(np.float64).eps)
    wheel = color_wheel() / 255.0
    count = len(wheel)
    position = (np.arctan2(-v, -u) / np.pi + 1.0) / 2.0 * (count - 1)  # in [0, count - 1]
    k0 = np.floor(position).astype(int)
    k1 = (k0 + 1) % count
    f = (position - k0)[..., None]
    color = (1.0 - f) * wheel[k0] + f * wheel[k1]  # (H, W, 3)
    inside = (radius <= 1.0)[..., None]
    color = np.where(inside, 1.0 - radius[..., None] * (1.0 - color), 0.75 * color)
    return color.astype(np.float32)


def deformation_to_flow(deformation):
    """A sampling grid (H, W, 2) in [-1, 1] (T_{S<-D}) -> displacement in pixels (H, W, 2): where each pixel looks."""
    from fomm_lessons.sampling import make_coordinate_grid

    deformation = np.asarray(deformation, np.float64)
    height, width = deformation.shape[:2]
    identity = np.asarray(make_coordinate_grid(height, width), np.float64)
    return (deformation - identity) * np.array([(width - 1) / 2.0, (height - 1) / 2.0])


def plot_flow_arrows(flow, ax=None, step=8, image=None, color="yellow"):
    """Arrows of a flow (H, W, 2) in pixels every ``step`` pixels, over ``image`` when given; returns the axes."""
    import matplotlib.pyplot as plt

    flow = np.asarray(flow)
    if ax is None:
        _, ax = plt.subplots()
    height, width = flow.shape[:2]
    if image is not None:
        ax.imshow(np.clip(image, 0, 1))
    else:
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
    rows, cols = np.mgrid[step // 2:height:step, step // 2:width:step]
    ax.quiver(cols, rows, flow[rows, cols, 0], flow[rows, cols, 1], color=color,
              angles="xy", scale_units="xy", scale=1)  # one pixel of flow = one pixel on screen
    ax.set_axis_off()
    return ax


def keypoint_colors(num_kp, colormap="gist_rainbow"):
    """One RGB colour in [0, 1] per keypoint, (K, 3), from a matplotlib colormap (the original's choice)."""
    import matplotlib

    cmap = matplotlib.colormaps[colormap]
    return np.array([cmap(k / num_kp)[:3] for k in range(num_kp)])


def draw_keypoints(image, kp, radius=2, colormap="gist_rainbow"):
    """A copy of ``image`` (H, W, 3) with keypoints ``kp`` (K, 2) in [-1, 1] drawn as discs."""
    from skimage.draw import disk

    image = np.array(image, np.float32, copy=True)
    height, width = image.shape[:2]
    points = to_pixels(kp, height, width)  # (K, 2) columns, rows
    for (col, row), color in zip(points, keypoint_colors(len(points), colormap)):
        rr, cc = disk((row, col), radius, shape=(height, width))
        image[rr, cc] = color
    return image


def plot_keypoints(ax, image, kp, jacobian=None, scale=0.25, colormap="gist_rainbow", size=30):
    """Show ``image`` (H, W, 3) on ``ax`` with keypoints ``kp`` (K, 2) in [-1, 1] as coloured dots.

    With ``jacobian`` (K, 2, 2) each keypoint also gets its local frame (Eq. 1):
    a thick segment from ``p_k`` to ``p_k + scale * J_k e_x`` and a thin one to
    ``p_k + scale * J_k e_y``, where the unit axes of the reference frame land.
    Returns the axes.
    """
    kp = np.asarray(kp, np.float64)
    if kp.ndim != 2 or kp.shape[-1] != 2:
        raise ValueError(f"expected keypoints of shape (K, 2), got {kp.shape}")
    if jacobian is not None and np.shape(jacobian) != (len(kp), 2, 2):
        raise ValueError(f"expected jacobians of shape ({len(kp)}, 2, 2), got {np.shape(jacobian)}")
    height, width = np.shape(image)[:2]
    colors = keypoint_colors(len(kp), colormap)
    ax.imshow(np.clip(image, 0, 1))
    if jacobian is not None:
        axes = np.swapaxes(np.asarray(jacobian, np.float64), 1, 2)  # (K, 2 axes, 2): row i is J_k e_i
        for point, (first, second), color in zip(kp, axes, colors):
            for direction, lw in ((first, 2.0), (second, 1.0)):
                ends = to_pixels(np.stack([point, point + scale * direction]), height, width)
                ax.plot(ends[:, 0], ends[:, 1], color=color, lw=lw)
    pixels = to_pixels(kp, height, width)
    ax.scatter(pixels[:, 0], pixels[:, 1], s=size, c=colors, edgecolors="black", linewidths=0.5, zorder=3)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    return ax


def _resize(image, height, width):
    from skimage.transform import resize

    if image.shape[:2] == (height, width):
        return image
    return resize(image, (height, width), order=0, anti_aliasing=False)  # nearest: keep the cells visible


def _rgb(image):
    image = np.asarray(image, np.float32)
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def image_row(images, height=None):
    """Images ((h, w), (h, w, 1) or (h, w, 3)) side by side at one ``height`` (nearest resize): (height, sum w, 3)."""
    images = [_rgb(image) for image in images]
    height = height or max(image.shape[0] for image in images)
    row = [_resize(image, height, int(round(image.shape[1] * height / image.shape[0]))) for image in images]
    return np.concatenate(row, axis=1)


def plot_row(images, titles=None, size=1.8, figsize=None, interpolation=None, fontsize=9):
    """Images in one row of a new figure, each with its title and no axes; returns the Figure.

    ``images`` are (h, w) panels, shown grey from 0 (black) to 1 (white), or
    (h, w, 3) colour panels in [0, 1]; both are clipped to [0, 1]. Each panel
    is ``size`` inches wide and the row ``size + 0.4`` tall (room for the
    titles) unless ``figsize`` is given; ``interpolation`` goes to ``imshow``
    (``"nearest"``: every pixel a sharp square). In a notebook, call
    ``plt.show()`` after it.
    """
    import matplotlib.pyplot as plt

    images = list(images)
    titles = [None] * len(images) if titles is None else list(titles)
    if not images or len(titles) != len(images):
        raise ValueError(f"expected at least one image and one title per image, got {len(images)} images "
                         f"and {len(titles)} titles")
    fig, axes = plt.subplots(1, len(images), figsize=figsize or (size * len(images), size + 0.4),
                             squeeze=False)
    for ax, image, title in zip(axes[0], images, titles):
        ax.imshow(np.clip(image, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation=interpolation)
        if title is not None:
            ax.set_title(title, fontsize=fontsize)
        ax.axis("off")
    fig.tight_layout()
    return fig


def show_in(output, fig):
    """Show ``fig`` in an ipywidgets ``Output`` instead of what it showed there, then close ``fig``.

    How a widget's callback draws: the picture lands in the widget, not in the
    output of the cell that ran the callback, and closing the figure keeps
    matplotlib's inline backend from showing it a second time below the cell.
    """
    import matplotlib.pyplot as plt

    output.outputs = ()
    output.append_display_data(fig)
    plt.close(fig)


def mask_grid(mask, height=None):
    """The K + 1 channels of a dense motion mask (h, w, K+1) as grey panels in one row, background first."""
    mask = np.asarray(mask)
    return image_row([mask[..., k] for k in range(mask.shape[-1])], height)


def colored_mask(mask, colormap="gist_rainbow"):
    """A mask (h, w, K+1) as one image: each keypoint's region in its keypoint colour, the background black."""
    mask = np.asarray(mask, np.float64)
    colors = np.concatenate([np.zeros((1, 3)), keypoint_colors(mask.shape[-1] - 1, colormap)])  # (K+1, 3)
    return np.einsum("hwk,kc->hwc", mask, colors).astype(np.float32)


def motion_parts(sparse_deformed, mask, height=None, colormap="gist_rainbow"):
    """The original's picture of the dense motion as one image (2 height, (K+2) width, 3).

    Top row: the K+1 deformed sources ``sparse_deformed`` (K+1, h, w, 3),
    background first. Bottom row: under each one its mask channel of ``mask``
    (h, w, K+1) in its keypoint's colour (background black). The last column
    is white on top and the coloured masks summed below (:func:`colored_mask`),
    the soft segmentation into parts. Panels are enlarged to ``height`` (nearest).
    """
    sparse_deformed, mask = np.asarray(sparse_deformed, np.float32), np.asarray(mask, np.float32)
    if (sparse_deformed.ndim != 4 or mask.ndim != 3 or sparse_deformed.shape[0] != mask.shape[-1]
            or sparse_deformed.shape[1:3] != mask.shape[:2]):
        raise ValueError(f"expected deformed sources (K+1, h, w, 3) and a mask (h, w, K+1) with the same "
                         f"K+1, h and w, got {sparse_deformed.shape} and {mask.shape}")
    colors = np.concatenate([np.zeros((1, 3)), keypoint_colors(mask.shape[-1] - 1, colormap)])  # (K+1, 3)
    tinted = [mask[..., k, None] * colors[k].astype(np.float32) for k in range(mask.shape[-1])]
    height = height or sparse_deformed.shape[1]
    top = image_row([*np.clip(sparse_deformed, 0, 1), np.ones(mask.shape[:2] + (3,), np.float32)], height)
    bottom = image_row([*tinted, colored_mask(mask, colormap)], height)
    return np.concatenate([top, bottom], axis=0)


def occlusion_grid(occlusion_maps, height=None):
    """Occlusion maps (B, h, w, 1) as grey panels in one row: white where the source is visible."""
    return image_row(list(np.asarray(occlusion_maps)), height)


def side_by_side(source, driving, result):
    """Video frames (T, H, 3 W, 3): the source image, the driving frame and the result, left to right."""
    driving, result = np.asarray(driving), np.asarray(result)
    if driving.shape != result.shape or np.shape(source) != driving.shape[1:]:
        raise ValueError(f"expected a source (H, W, 3) and driving and result videos (T, H, W, 3) alike, got "
                         f"{np.shape(source)}, {driving.shape} and {result.shape}")
    sources = np.broadcast_to(source, driving.shape)
    return np.concatenate([sources, driving, result], axis=2)


def video_html(frames, fps=10, scale=3, loop=True, crf=18):
    """A self-contained HTML5 ``<video>`` of ``frames`` (T, H, W, 3) in [0, 1], for notebooks and the book.

    The video is H.264 in a ``data:`` URI, so it needs no player, no file
    beside the page and no network. It is encoded for browsers: 4:2:0 High
    profile at constant quality ``crf`` (0 would be lossless, which browsers
    do not play), with the index at the front. Each pixel becomes a ``scale``
    x ``scale`` block (nearest, so small faces stay sharp), and a last row or
    column is repeated where 4:2:0 needs even sizes. The video starts muted and
    loops; its controls pause it and step through it.
    """
    import base64
    import tempfile
    from pathlib import Path

    import imageio_ffmpeg

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected video frames of shape (T, H, W, 3) with T > 0, got {frames.shape}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"expected a whole number scale >= 1, got {scale!r}")
    scale = int(scale)
    frames = np.clip(frames, 0, 1).repeat(scale, axis=1).repeat(scale, axis=2)  # (T, scale H, scale W, 3)
    height, width = frames.shape[1:3]
    frames = np.pad(frames, [(0, 0), (0, height % 2), (0, width % 2), (0, 0)], mode="edge")
    frames = np.round(frames * 255).astype(np.uint8)
    height, width = frames.shape[1:3]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "video.mp4"
        writer = imageio_ffmpeg.write_frames(
            str(path), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None,
            macro_block_size=1, output_params=["-crf", str(int(crf)), "-preset", "slow", "-profile:v", "high",
                                               "-movflags", "+faststart"])
        writer.send(None)  # start ffmpeg
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    attributes = "controls autoplay muted playsinline" + (" loop" if loop else "")
    return (f'<video class="fomm-video" {attributes} width="{width}" height="{height}" '
            f'src="data:video/mp4;base64,{data}"></video>')


def video(frames, fps=10, scale=3, loop=True):
    """Show ``frames`` (T, H, W, 3) as a video that plays in the notebook and the rendered book.

    The one call the chapters use for animations: the HTML of :func:`video_html`
    as an ``IPython.display.HTML`` object, so a cell that ends with it shows it.
    """
    from IPython.display import HTML

    return HTML(video_html(frames, fps=fps, scale=scale, loop=loop))


def save_video(path, frames, fps=10):
    """Write ``frames`` (T, H, W, 3) as an .mp4/.mov (imageio-ffmpeg) or .gif file; returns the path."""
    from fomm_lessons.data.frames import write_video

    return write_video(path, frames, as_folder=False, fps=fps)


def read_log(path):
    """A training ``log.csv`` (columns epoch, step, then one per loss) as ``{column: float array}``."""
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if not rows:
        raise ValueError(f"{path} has no rows; expected a header 'epoch,step,<loss>,...' and one row per log")
    columns = list(rows[0])
    if columns[:2] != ["epoch", "step"]:
        raise ValueError(f"expected {path} to start with the columns epoch, step; got {columns[:2]}")
    return {name: np.array([float(row[name]) if row[name] not in ("", None) else np.nan for row in rows])
            for name in columns}


def plot_training_curves(path, ax=None, losses=None, log_scale=True):
    """One line per loss of ``log.csv`` against the step; returns the axes."""
    import matplotlib.pyplot as plt

    log = read_log(path)
    losses = losses or [name for name in log if name not in ("epoch", "step")]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    for name in losses:
        ax.plot(log["step"], log[name], label=name)
    if log_scale and all(np.nanmin(log[name]) > 0 for name in losses):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize="small")
    return ax


def last_logged_images(logdir):
    """The newest image summary of a TensorBoard folder: ``(step, tag, images (N, H, W, 3) in [0, 1])``.

    A training run writes one a epoch (source | driving with keypoints | deformed
    | prediction | occlusion, :func:`fomm_lessons.run_folder.log_epoch`); this reads
    it back without TensorBoard. None when the folder holds no image yet.
    """
    import glob
    import os

    import tensorflow as tf

    newest = None
    for path in sorted(glob.glob(os.path.join(os.fspath(logdir), "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "images":
                    continue
                if newest is None or event.step >= newest[0]:
                    newest = (int(event.step), value.tag, value.tensor)
    if newest is None:
        return None
    step, tag, tensor = newest
    encoded = tf.make_ndarray(tensor)[2:]  # width, height, then one PNG per image
    images = np.stack([tf.io.decode_png(png, channels=3).numpy() for png in encoded])
    return step, tag, images.astype(np.float32) / 255.0

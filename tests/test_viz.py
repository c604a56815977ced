"""Pictures: the flow colour wheel against Baker et al.'s known colours, keypoints, masks, videos, curves."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

from fomm_lessons import viz

# Index on the 55-colour wheel -> the pure colour that starts each segment (Baker et al. 2011).
PRIMARIES = {0: (1, 0, 0), 15: (1, 1, 0), 21: (0, 1, 0), 25: (0, 1, 1), 36: (0, 0, 1), 49: (1, 0, 1)}


def direction_of_wheel_index(k, count=55):
    """The unit flow (u, v) whose colour is wheel entry ``k``: angle(-u, -v) = pi (2 k / (count - 1) - 1)."""
    angle = np.pi * (2.0 * k / (count - 1) - 1.0)
    return -np.cos(angle), -np.sin(angle)


def test_color_wheel_has_the_55_colours_and_their_primaries():
    wheel = viz.color_wheel()
    assert wheel.shape == (55, 3)
    for k, color in PRIMARIES.items():
        np.testing.assert_array_equal(wheel[k], 255 * np.array(color))
    # inside a segment exactly one channel moves, by floor(255 i / steps)
    np.testing.assert_array_equal(wheel[1:15, 1], np.floor(255 * np.arange(1, 15) / 15))
    np.testing.assert_array_equal(wheel[37, 0], np.floor(255 * 1 / 13))


def test_flow_colors_at_known_angles():
    directions = np.array([direction_of_wheel_index(k) for k in PRIMARIES])  # (6, 2)
    colors = viz.flow_to_color(directions[None], max_radius=1.0)[0]
    np.testing.assert_allclose(colors, np.array(list(PRIMARIES.values())), atol=1e-6)
    # in image coordinates (v down): right is red, left is cyan-blue, down yellow-orange, up blue-violet
    named = viz.flow_to_color(np.array([[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]]), max_radius=1.0)[0]
    np.testing.assert_allclose(named[0], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(named[1], [0, (255 - np.floor(255 * 2 / 11)) / 255, 1], atol=1e-6)
    np.testing.assert_allclose(named[2], [1, (221 + 238) / 2 / 255, 0], atol=1e-6)  # between entries 13 and 14
    np.testing.assert_allclose(named[3], [(78 + 98) / 2 / 255, 0, 1], atol=1e-6)  # between entries 40 and 41


def test_flow_color_saturation_follows_the_length():
    u, v = direction_of_wheel_index(36)  # pure blue
    flow = np.array([[[0.0, 0.0], [0.5 * u, 0.5 * v], [u, v], [2 * u, 2 * v]]])
    colors = viz.flow_to_color(flow, max_radius=1.0)[0]
    np.testing.assert_allclose(colors[0], [1, 1, 1], atol=1e-6)  # no motion: white
    np.testing.assert_allclose(colors[1], [0.5, 0.5, 1], atol=1e-6)  # half way from white
    np.testing.assert_allclose(colors[3], [0, 0, 0.75], atol=1e-6)  # beyond the radius: darkened
    # default radius: the longest vector is fully saturated
    np.testing.assert_allclose(viz.flow_to_color(flow)[0, 3], [0, 0, 1], atol=1e-6)
    with pytest.raises(ValueError, match=r"\(H, W, 2\)"):
        viz.flow_to_color(np.zeros((4, 4, 3)))


def test_deformation_to_flow_is_in_pixels():
    from fomm_lessons.sampling import make_coordinate_grid

    height, width = 5, 9
    identity = np.asarray(make_coordinate_grid(height, width))
    np.testing.assert_allclose(viz.deformation_to_flow(identity), 0, atol=1e-6)
    shifted = identity + np.array([2.0 / (width - 1), -3 * 2.0 / (height - 1)])  # 1 px right, 3 px up
    np.testing.assert_allclose(viz.deformation_to_flow(shifted), np.broadcast_to([1.0, -3.0], (5, 9, 2)),
                               atol=1e-5)


def test_draw_keypoints_puts_corner_keypoints_on_corner_pixels():
    image = np.zeros((16, 20, 3), np.float32)
    drawn = viz.draw_keypoints(image, np.array([[-1.0, -1.0], [1.0, 1.0]]), radius=1)
    colors = viz.keypoint_colors(2)
    np.testing.assert_allclose(drawn[0, 0], colors[0])
    np.testing.assert_allclose(drawn[15, 19], colors[1])
    assert drawn[8, 10].sum() == 0 and image.sum() == 0  # the input is not changed


def test_masks_and_occlusion_maps_as_grids():
    mask = np.zeros((4, 6, 3), np.float32)
    mask[:, :2, 0] = 1  # background
    mask[:, 2:4, 1] = 1
    mask[:, 4:, 2] = 1
    grid = viz.mask_grid(mask)
    assert grid.shape == (4, 18, 3)
    np.testing.assert_array_equal(grid[:, 6:12, 0], mask[..., 1])
    colored = viz.colored_mask(mask)
    np.testing.assert_array_equal(colored[:, :2], 0)
    np.testing.assert_allclose(colored[0, 2], viz.keypoint_colors(2)[0])
    np.testing.assert_allclose(colored[0, 5], viz.keypoint_colors(2)[1])
    occlusion = np.random.default_rng(0).random((2, 4, 4, 1)).astype(np.float32)
    panels = viz.occlusion_grid(occlusion, height=8)  # nearest resize to 8 rows
    assert panels.shape == (8, 16, 3)
    np.testing.assert_array_equal(panels[::2, ::2, 1][:, 2:4], occlusion[0, :, 2:4, 0])


def test_side_by_side_and_video_files(tmp_path):
    rng = np.random.default_rng(0)
    source = rng.random((8, 8, 3)).astype(np.float32)
    driving, result = rng.random((2, 5, 8, 8, 3)).astype(np.float32)
    frames = viz.side_by_side(source, driving, result)
    assert frames.shape == (5, 8, 24, 3)
    np.testing.assert_array_equal(frames[3, :, :8], source)
    np.testing.assert_array_equal(frames[3, :, 8:16], driving[3])
    np.testing.assert_array_equal(frames[3, :, 16:], result[3])
    with pytest.raises(ValueError, match="alike"):
        viz.side_by_side(source, driving, result[:4])
    from fomm_lessons.data.frames import read_video

    gif = viz.save_video(str(tmp_path / "clip.gif"), frames, fps=5)
    assert read_video(gif).shape == (5, 8, 24, 3)


def test_video_html_is_a_self_contained_h264_video_of_the_frames(tmp_path):
    """Decoded again, the data: URI holds every frame, each pixel a scale x scale block, close to the input."""
    import base64
    import re

    import imageio_ffmpeg

    rows, cols = np.mgrid[0:9, 0:13]
    frames = np.stack([np.stack([(rows + t) % 9 / 8, (cols * 2 + t) % 13 / 12, np.full(rows.shape, t / 5)], -1)
                       for t in range(6)]).astype(np.float32)  # (6, 9, 13, 3): odd sizes
    html = viz.video_html(frames, fps=5, scale=2)
    assert "http" not in html and "<script" not in html  # nothing to fetch, no player
    match = re.fullmatch(r'<video class="fomm-video" controls autoplay muted playsinline loop '
                         r'width="(\d+)" height="(\d+)" src="data:video/mp4;base64,([A-Za-z0-9+/=]+)"></video>', html)
    assert match, html[:200]
    assert (int(match[1]), int(match[2])) == (26, 18)  # 2x the frames, already even
    path = tmp_path / "back.mp4"
    path.write_bytes(base64.b64decode(match[3]))
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    assert meta["size"] == (26, 18) and meta["fps"] == 5
    decoded = np.stack([np.frombuffer(f, np.uint8).reshape(18, 26, 3) for f in reader]) / 255.0
    assert decoded.shape == (6, 18, 26, 3)
    expected = frames.repeat(2, axis=1).repeat(2, axis=2)
    assert np.abs(decoded - expected).mean() < 0.03  # lossy, but these frames, not others
    assert np.abs(decoded - expected[::-1]).mean() > 0.1
    padded = viz.video_html(frames[:2], scale=1)  # 9 x 13: a row and a column are repeated
    assert 'width="14" height="10"' in padded and "loop" in padded
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        viz.video_html(frames[0])
    with pytest.raises(ValueError, match="whole number scale"):
        viz.video_html(frames, scale=1.5)


def test_training_curves_follow_log_csv(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("epoch,step,perceptual,equivariance_value\n0,10,95.5,0.8\n0,20,80.25,0.5\n1,30,70.0,0.25\n")
    ax = viz.plot_training_curves(path)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"perceptual", "equivariance_value"}
    np.testing.assert_array_equal(lines["perceptual"].get_xdata(), [10, 20, 30])
    np.testing.assert_array_equal(lines["equivariance_value"].get_ydata(), [0.8, 0.5, 0.25])
    assert ax.get_yscale() == "log"
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n1,2\n")
    with pytest.raises(ValueError, match="epoch, step"):
        viz.read_log(bad)


def test_flow_arrows_are_the_flow_in_pixels():
    flow = np.zeros((16, 16, 2))
    flow[..., 0], flow[..., 1] = 3.0, -2.0
    ax = viz.plot_flow_arrows(flow, step=8)
    quiver = ax.collections[0]
    np.testing.assert_array_equal(quiver.U, 3.0)
    np.testing.assert_array_equal(quiver.V, -2.0)
    np.testing.assert_array_equal(quiver.X, [4, 12, 4, 12])


def test_motion_parts_puts_each_deformed_source_over_its_coloured_mask():
    rng = np.random.default_rng(1)
    deformed = rng.random((3, 4, 5, 3)).astype(np.float32)  # K + 1 = 3 motions, 4 x 5 each
    mask = rng.random((4, 5, 3)).astype(np.float32)
    mask /= mask.sum(axis=-1, keepdims=True)  # a soft segmentation, as the softmax gives
    picture = viz.motion_parts(deformed, mask)
    assert picture.shape == (8, 20, 3)  # two rows of K + 2 panels
    colors = viz.keypoint_colors(2)
    for k in range(3):
        np.testing.assert_array_equal(picture[:4, 5 * k:5 * k + 5], deformed[k])
        expected = mask[..., k, None] * (colors[k - 1] if k else np.zeros(3))  # background black
        np.testing.assert_allclose(picture[4:, 5 * k:5 * k + 5], expected, atol=1e-6)
    np.testing.assert_array_equal(picture[:4, 15:], 1.0)
    # the last panel is the sum of the coloured masks, computed here without colored_mask
    summed = sum(mask[..., k, None] * colors[k - 1] for k in (1, 2))
    np.testing.assert_allclose(picture[4:, 15:], summed, atol=1e-6)
    assert viz.motion_parts(deformed, mask, height=8).shape == (16, 40, 3)
    with pytest.raises(ValueError, match=r"same K\+1"):
        viz.motion_parts(deformed[:2], mask)


def test_plot_keypoints_draws_each_jacobian_axis_from_its_keypoint():
    import matplotlib.pyplot as plt

    image = np.zeros((9, 17, 3))  # one unit of x is 8 pixels, one unit of y is 4
    kp = np.array([[0.0, 0.0], [-1.0, 1.0]])
    jacobian = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, -2.0], [0.5, 0.0]]])  # identity; a turn with scaling
    _, ax = plt.subplots()
    viz.plot_keypoints(ax, image, kp, jacobian, scale=0.5)
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [[8.0, 4.0], [0.0, 8.0]])
    segments = [line.get_xydata() for line in ax.lines]  # per keypoint: J e_x, then J e_y
    np.testing.assert_allclose(segments[0], [[8, 4], [12, 4]])  # p + 0.5 (1, 0): 4 px right
    np.testing.assert_allclose(segments[1], [[8, 4], [8, 6]])  # p + 0.5 (0, 1): 2 px down
    np.testing.assert_allclose(segments[2], [[0, 8], [0, 9]])  # p + 0.5 (0, 0.5): 1 px down
    np.testing.assert_allclose(segments[3], [[0, 8], [-8, 8]])  # p + 0.5 (-2, 0): 8 px left
    np.testing.assert_allclose(ax.collections[0].get_facecolors()[:, :3], viz.keypoint_colors(2))
    with pytest.raises(ValueError, match=r"\(2, 2, 2\)"):
        viz.plot_keypoints(ax, image, kp, jacobian[:1])
    with pytest.raises(ValueError, match=r"\(K, 2\)"):
        viz.plot_keypoints(ax, image, kp[0])
    plt.close("all")


def test_last_logged_images_reads_back_the_newest_grid(tmp_path):
    import tensorflow as tf

    from fomm_lessons.viz import last_logged_images

    assert last_logged_images(tmp_path) is None
    rng = np.random.default_rng(0)
    old, new = (np.round(rng.random((2, 4, 6, 3)) * 255) / 255 for _ in range(2))
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        tf.summary.scalar("loss/perceptual", 1.0, step=3)
        tf.summary.image("grid", old.astype(np.float32), step=3)
        tf.summary.image("grid", new.astype(np.float32), step=7)
    writer.flush()
    step, tag, images = last_logged_images(tmp_path)
    assert (step, tag, images.shape) == (7, "grid", (2, 4, 6, 3))
    np.testing.assert_allclose(images, new, atol=1e-6)  # PNG is lossless on 8-bit values


def test_plot_row_shows_each_image_clipped_with_its_title():
    import matplotlib.pyplot as plt

    grey = np.linspace(-0.5, 1.5, 12).reshape(3, 4)  # (3, 4), outside [0, 1] at both ends
    colour = np.random.default_rng(0).uniform(0, 1, (3, 4, 3))
    fig = viz.plot_row([grey, colour], ["grey", "colour"], size=2.0, interpolation="nearest")
    try:
        assert tuple(fig.get_size_inches()) == (4.0, 2.4)
        axes = fig.axes
        assert [ax.get_title() for ax in axes] == ["grey", "colour"]
        assert not any(ax.axison for ax in axes)
        shown = [ax.images[0] for ax in axes]
        np.testing.assert_array_equal(shown[0].get_array(), np.clip(grey, 0, 1))
        np.testing.assert_array_equal(shown[1].get_array(), colour)
        assert shown[0].get_cmap().name == "gray" and shown[0].get_clim() == (0, 1)
        assert shown[0].get_interpolation() == "nearest"
    finally:
        plt.close(fig)
    fig = viz.plot_row([grey], figsize=(5, 3))  # one panel, no titles
    assert tuple(fig.get_size_inches()) == (5.0, 3.0) and fig.axes[0].get_title() == ""
    plt.close(fig)
    with pytest.raises(ValueError, match="2 images and 1 titles"):
        viz.plot_row([grey, grey], ["only one"])


def test_show_in_replaces_what_a_widget_output_shows_and_closes_the_figure():
    import ipywidgets
    import matplotlib.pyplot as plt

    view = ipywidgets.Output()
    for width in (2, 3):
        fig, _ = plt.subplots(figsize=(width, 1))
        viz.show_in(view, fig)
        assert not plt.fignum_exists(fig.number)
    assert len(view.outputs) == 1  # the second figure in place of the first
    assert view.outputs[0]["output_type"] == "display_data"
    assert view.outputs[0]["data"]["text/plain"] == "<Figure size 300x100 with 1 Axes>"

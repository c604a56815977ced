"""Evaluation: reconstruction L1 recomputed by hand, and the end-point error against the sample set's known flow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from fomm_lessons import evaluate


@pytest.fixture(scope="module")
def models(cpu64_models):
    return cpu64_models


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from fomm_lessons.data.sample import make_sample_dataset

    return make_sample_dataset(str(tmp_path_factory.mktemp("sample")), size=64, seed=0, num_frames=6,
                               videos_per_identity=1)


def test_l1_per_frame():
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 3, 4, 5, 3))
    expected = [np.mean(np.abs(a[t] - b[t])) for t in range(3)]
    np.testing.assert_allclose(evaluate.l1_per_frame(a, b), expected)
    with pytest.raises(ValueError, match="one shape"):
        evaluate.l1_per_frame(a, b[:2])


def test_reconstruction_l1_is_the_papers_protocol(models, dataset, tmp_path):
    from fomm_lessons.data.frames import read_video

    result = evaluate.reconstruction_l1(dataset, models, (64, 64, 3), batch_size=4, out=str(tmp_path))
    name = "grace_hopper#sample#00000.mp4"
    assert list(result["videos"]) == [name]
    video = read_video(os.path.join(dataset, "test", name))
    kp_source = models.kp_detector(video[:1], training=False)
    errors = []
    for frame in video:  # the source is the first frame; every frame drives it with its own keypoints
        kp_driving = models.kp_detector(frame[None], training=False)
        out = models.generator(video[:1], kp_source=kp_source, kp_driving=kp_driving)["prediction"]
        errors.append(np.mean(np.abs(np.asarray(out)[0] - frame)))
    assert result["videos"][name] == pytest.approx(np.mean(errors), abs=1e-5)
    assert result["l1"] == pytest.approx(np.mean(errors), abs=1e-5)
    written = read_video(os.path.join(tmp_path, "reconstruction", name))
    assert written.shape == video.shape


def test_average_keypoint_distance_with_given_landmarks():
    frames = np.stack([np.full((2, 2, 3), t, np.float32) for t in range(4)])

    def landmarks(image):  # frame t -> two points at (t, 0) and (0, t); no landmarks on frame 2
        t = image.mean()
        return None if t == 2 else np.array([[t, 0.0], [0.0, t]])

    distance, missed = evaluate.average_keypoint_distance(frames, frames[::-1], landmarks)
    # pairs (0, 3) and (3, 0) are 3 apart in each point; pairs with frame 2 are skipped
    assert distance == pytest.approx(3.0) and missed == pytest.approx(0.5)


def test_aed_is_reported_as_not_computed():
    status, landmarks = evaluate.keypoint_metrics_status()
    assert status["aed"] == {"computed": False, "reason": evaluate.NOT_COMPUTED_AED}
    try:
        import face_alignment
    except ImportError:
        face_alignment = None
    if face_alignment is None:
        assert landmarks is None and status["akd"]["computed"] is False
        assert "face-alignment" in status["akd"]["reason"]


def test_end_point_error_against_the_known_flow(dataset):
    from fomm_lessons.data.sample import ground_truth_flow
    from fomm_lessons.sampling import make_coordinate_grid

    truth = ground_truth_flow(dataset, "grace_hopper#sample#00000.mp4", 0, 5)  # (64, 64, 2)
    visible = evaluate.visible_mask(truth)
    assert 0.3 < visible.mean() < 1.0  # some pixels come from outside the source frame
    epe, seen = evaluate.end_point_error(truth, truth)
    assert epe == 0.0 and seen == pytest.approx(visible.mean())
    identity = np.asarray(make_coordinate_grid(64, 64))
    epe, _ = evaluate.end_point_error(identity, truth)
    pixels = np.linalg.norm((identity - truth) * 31.5, axis=-1)  # one unit of x or y is (64 - 1) / 2 pixels
    assert epe > 0.1 and epe == pytest.approx(pixels[visible].mean(), rel=1e-6)


def test_end_point_error_is_in_pixels():
    from fomm_lessons.sampling import make_coordinate_grid

    identity = np.asarray(make_coordinate_grid(8, 12))
    shifted = identity + np.array([3 * 2.0 / 11, 4 * 2.0 / 7])  # 3 px right, 4 px down
    epe, seen = evaluate.end_point_error(shifted, identity)
    assert epe == pytest.approx(5.0, rel=1e-5) and seen == 1.0
    outside = np.full((8, 12, 2), 1.5)
    assert np.isnan(evaluate.end_point_error(identity, outside)[0])


def test_resized_deformation_is_the_generators_resize():
    from fomm_lessons.generator import resize_to

    small = np.random.default_rng(0).uniform(-1, 1, (16, 16, 2)).astype(np.float32)
    np.testing.assert_allclose(evaluate.resize_deformation(small, 64, 64),
                               np.asarray(resize_to(small[None], 64, 64))[0])


def test_motion_epe_of_the_model(models, dataset):
    from fomm_lessons.data.frames import read_video
    from fomm_lessons.data.sample import ground_truth_flow
    from fomm_lessons.sampling import make_coordinate_grid

    result = evaluate.motion_epe(dataset, models, frame_step=5)  # frames 0 and 5
    assert list(result["videos"]) == ["grace_hopper#sample#00000.mp4"]
    truth = [ground_truth_flow(dataset, "test/grace_hopper#sample#00000.mp4", 0, t) for t in (0, 5)]
    identity = np.asarray(make_coordinate_grid(64, 64))
    expected_identity = np.mean([evaluate.end_point_error(identity, flow)[0] for flow in truth])
    assert result["identity_epe"] == pytest.approx(expected_identity)
    assert np.isfinite(result["epe"]) and result["epe"] == result["videos"]["grace_hopper#sample#00000.mp4"]
    video = read_video(os.path.join(dataset, "test", "grace_hopper#sample#00000.mp4"))
    kp_source = models.kp_detector(video[:1], training=False)
    errors = []
    for t, flow in zip((0, 5), truth):
        kp_driving = models.kp_detector(video[t:t + 1], training=False)
        deformation = models.generator(video[:1], kp_source=kp_source, kp_driving=kp_driving)["deformation"]
        errors.append(evaluate.end_point_error(np.asarray(deformation)[0], flow)[0])
    assert result["epe"] == pytest.approx(np.mean(errors), rel=1e-5)


def test_area_scale_is_the_determinant_of_the_warp():
    """Affine grids: det A exactly; a quadratic warp: the analytic mean of (1 + 0.4 x)(1 + 0.6 y) inside a disc."""
    from fomm_lessons.sampling import make_coordinate_grid

    grid = np.asarray(make_coordinate_grid(33, 33), np.float64)  # (33, 33, 2) of (x, y)
    a = np.array([[0.7, -0.2], [0.3, 0.9]])
    affine = grid @ a.T + np.array([0.1, -0.05])
    assert evaluate.area_scale(affine) == pytest.approx(np.linalg.det(a), rel=1e-12)
    assert evaluate.area_scale(affine, radius=0.5) == pytest.approx(np.linalg.det(a), rel=1e-12)
    assert evaluate.area_scale(grid * 2.0) == pytest.approx(4.0)  # shows twice the width: faces half the size
    x, y = grid[..., 0], grid[..., 1]
    quadratic = np.stack([x + 0.2 * x**2, y + 0.3 * y**2], axis=-1)
    inside = np.hypot(x, y) < 0.6
    expected = ((1 + 0.4 * x) * (1 + 0.6 * y))[inside].mean()  # central differences are exact here
    assert evaluate.area_scale(quadratic, radius=0.6) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match=r"\(h, w, 2\)"):
        evaluate.area_scale(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="radius"):
        evaluate.area_scale(grid, radius=0.0)

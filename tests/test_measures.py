"""The puppets measures against references built by hand: a pairwise AUC, masks and labels of known
purity, keypoints of known spread, the zeroth-order motion run by hand, and a fake puppets world."""

import json
import os
import sys
import types

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from fomm_lessons import evaluate, measures


def brute_force_auc(scores, positives):
    """Every (positive, negative) pair: 1 when the positive scores higher, 1/2 on a tie."""
    scores, positives = np.ravel(scores), np.ravel(positives)
    pos, neg = scores[positives][:, None], scores[~positives][None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


@pytest.mark.parametrize("seed", range(4))
def test_roc_auc_is_the_pairwise_count(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, (7, 9)).astype(float)  # many ties
    positives = rng.random((7, 9)) < 0.4
    expected = brute_force_auc(scores.ravel(), positives.ravel())
    assert measures.roc_auc(scores, positives) == pytest.approx(expected, abs=1e-12)
    assert measures.roc_auc(-scores, positives) == pytest.approx(1 - expected, abs=1e-12)


def test_roc_auc_limits_and_bad_input():
    positives = np.array([True, True, False, False])
    assert measures.roc_auc([0.9, 0.8, 0.1, 0.2], positives) == 1.0
    assert measures.roc_auc([0.1, 0.2, 0.9, 0.8], positives) == 0.0
    assert measures.roc_auc([0.5] * 4, positives) == 0.5
    assert np.isnan(measures.roc_auc([1.0, 2.0], [True, True]))
    with pytest.raises(ValueError, match=r"one shape, got \(3,\) and \(4,\)"):
        measures.roc_auc([1.0, 2.0, 3.0], positives)


def test_occlusion_separation_means():
    occlusion = np.array([[[0.9, 0.8], [0.2, 0.6]]])
    shown = np.array([[[True, True], [False, True]]])
    result = measures.occlusion_separation(occlusion, shown)
    assert result["auc"] == 1.0 and result["auc_chance"] == 0.5
    assert result["mean_shown"] == pytest.approx((0.9 + 0.8 + 0.6) / 3)
    assert result["mean_not_shown"] == pytest.approx(0.2) and result["not_shown_fraction"] == 0.25


def test_end_point_error_on_the_pixels_asked_for():
    from fomm_lessons.sampling import make_coordinate_grid

    identity = np.asarray(make_coordinate_grid(8, 12))
    truth = identity.copy()
    truth[:, 6:, 0] += 2 * 3.0 / 11  # the right half moved 3 px
    where = np.zeros((8, 12), bool)
    where[:, 4:8] = True  # 4 columns, two of them moved
    assert evaluate.end_point_error(identity, truth, where) == (pytest.approx(1.5), 1 / 3)
    with pytest.raises(ValueError, match=r"mask of the flow's shape \(8, 12\), got \(8, 8\)"):
        evaluate.end_point_error(identity, truth, where[:, :8])


def _one_hot(strongest, count):
    return np.eye(count)[strongest] * 0.6 + 0.4 / count  # soft, but the strongest mask is the given one


def test_masks_as_parts_of_known_purity():
    # 16 pixels: 8 background (mask 0 on 6, mask 1 on 2), 4 of part 1 (all mask 1),
    # 4 of part 2 (mask 2 on 3, mask 0 on 1); mask 3 never wins.
    parts = np.array([0] * 8 + [1] * 4 + [2] * 4).reshape(2, 2, 4)
    strongest = np.array([0] * 6 + [1] * 2 + [1] * 4 + [2] * 3 + [0]).reshape(2, 2, 4)
    counts = measures.mask_part_counts(_one_hot(strongest, 4), parts, 3)
    np.testing.assert_array_equal(counts, [[6, 2, 0, 0], [0, 4, 0, 0], [1, 0, 3, 0]])
    result = measures.masks_as_parts(counts, ["background", "head", "arm"])
    assert result["purity"] == {"background": 0.75, "head": 1.0, "arm": 0.75}
    assert result["winner"] == {"background": 0, "head": 1, "arm": 2}
    assert result["purity_mean"] == pytest.approx(2.5 / 3)
    assert result["purity_independent"] == pytest.approx(7 / 16)  # mask 0 wins 7 of the 16 pixels
    assert result["figure_shares"] == [1 / 8, 4 / 8, 3 / 8, 0.0]
    assert result["masks_in_use"] == 3
    assert measures.masks_as_parts(counts, ["background", "head", "arm"], in_use=0.2)["masks_in_use"] == 2
    with pytest.raises(ValueError, match=r"part labels in \[0, 2\), got \[0, 2\]"):
        measures.mask_part_counts(_one_hot(strongest, 4), parts, 2)


def test_one_mask_everywhere_is_pure_but_one_mask_in_use():
    parts = np.array([[[0, 1], [2, 3]]])
    counts = measures.mask_part_counts(_one_hot(np.zeros((1, 2, 2), int), 5), parts, 4)
    result = measures.masks_as_parts(counts, ["background", "a", "b", "c"])
    assert result["purity_mean"] == 1.0 and result["purity_independent"] == 1.0 and result["masks_in_use"] == 1


def test_keypoint_spread_in_pixels():
    # The corners of a square at +-0.5: 16 px from the centre in x and y on a 65-pixel frame.
    square = np.array([[[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]])
    assert measures.keypoint_spread(square, 65, 65) == pytest.approx(16 * np.sqrt(2))
    moved = np.concatenate([square, square * 0.5 + 0.2])  # frame 2: half the size, elsewhere
    assert measures.keypoint_spread(moved, 65, 65) == pytest.approx(12 * np.sqrt(2))
    assert measures.keypoint_spread(np.zeros((3, 10, 2)), 64, 64) == 0.0


def test_parts_spread_is_that_of_the_part_centres():
    parts = np.zeros((1, 9, 9), int)
    parts[0, 0:2, 0:2] = 1  # centre (0.5, 0.5)
    parts[0, 0:2, 7:9] = 2  # centre (7.5, 0.5): the two centres are 3.5 px from their mean
    assert measures.parts_spread(parts) == pytest.approx(3.5)


def test_keypoints_on_parts():
    parts = np.zeros((4, 5, 5), int)
    parts[:, :, 3:] = 2  # columns 3-4: part 2
    parts[:2, 0, 0] = 1  # the top-left pixel is part 1 in frames 0 and 1
    # keypoint 0 at the top-left pixel centre (-1, -1); keypoint 1 at column 3 (x = 0.5), row 2
    keypoints = np.tile(np.array([[-1.0, -1.0], [0.5, 0.0]]), (4, 1, 1))
    labels = measures.parts_under(keypoints, parts)
    np.testing.assert_array_equal(labels, [[1, 2], [1, 2], [0, 2], [0, 2]])
    result = measures.keypoints_on_parts(labels, ["background", "head", "arm"])
    assert result["on_part"][1] == {"part": "arm", "share": 1.0}
    assert result["on_part"][0]["share"] == 0.5 and result["on_part_min"] == 0.5
    assert result["on_part_mean"] == 0.75


@pytest.fixture(scope="module")
def first_order_models():
    """cpu-64 networks whose Jacobians are not the identity (a fresh detector's are)."""
    import keras

    from fomm_lessons.checkpoint import build_models
    from fomm_lessons.config import load_config

    keras.utils.set_random_seed(1)
    models = build_models(load_config("cpu-64")["model_params"], discriminator=False)
    kernel = models.kp_detector.jacobian.kernel
    kernel.assign(np.random.default_rng(1).normal(0, 0.05, kernel.shape).astype(np.float32))
    return models


def test_zeroth_order_is_the_dense_motion_with_identity_jacobians(first_order_models):
    import tensorflow as tf

    models = first_order_models
    video = np.random.default_rng(2).random((3, 64, 64, 3), dtype=np.float32)
    zeroth = evaluate.reconstruct(video, models, batch_size=2, outputs=("deformation",),
                                  first_order=False)["deformation"]
    first = evaluate.reconstruct(video, models, batch_size=2, outputs=("deformation",))["deformation"]
    kp_source = models.kp_detector(video[:1], training=False)
    kp_driving = models.kp_detector(video, training=False)
    assert np.abs(kp_driving["jacobian"].numpy() - np.eye(2)).max() > 0.05  # the switch must matter
    eye = tf.eye(2, batch_shape=[3, kp_driving["value"].shape[1]])
    by_hand = models.generator.dense_motion_network(
        tf.repeat(video[:1], 3, axis=0), kp_driving={"value": kp_driving["value"], "jacobian": eye},
        kp_source={"value": tf.repeat(kp_source["value"], 3, axis=0), "jacobian": eye})["deformation"]
    np.testing.assert_allclose(zeroth, by_hand.numpy(), atol=1e-5)
    assert np.abs(first - zeroth).max() > 1e-3


# ---------------------------------------------------------------------------
# puppets_quality on a fake puppets world (the interface of fomm_lessons.data.puppets)
# ---------------------------------------------------------------------------

PART_NAMES = ["background", "torso", "head"]


def _fake_parts(t, size=64):
    parts = np.zeros((size, size), np.int32)
    parts[30:60, 16 + t:48 + t] = 1  # torso
    parts[14:30, 20 + t:40 + t] = 2  # head
    return parts


def _fake_truth(t, size=64):
    """Frame t: everything moved t px right, so the source shows the content at x - t; the t leftmost
    columns come from outside the source, and a patch of the head is hidden in the source."""
    from fomm_lessons.sampling import make_coordinate_grid

    grid = np.asarray(make_coordinate_grid(size, size))
    flow = (grid - np.array([2.0 * t / (size - 1), 0.0])).astype(np.float32)
    shown = np.ones((size, size), bool)
    shown[:, :t] = False
    shown[20:30, 20 + t:30 + t] = t == 0
    return {"flow": flow, "shown": shown, "parts_source": _fake_parts(0, size), "parts_driving": _fake_parts(t, size)}


@pytest.fixture()
def fake_puppets(tmp_path, monkeypatch):
    from fomm_lessons.data.frames import write_video

    rng = np.random.default_rng(3)
    root = tmp_path / "puppets"
    base = rng.random((64, 80, 3)).astype(np.float32)
    video = np.stack([base[:, 8 - t:72 - t] for t in range(3)])  # content moves t px right
    write_video(str(root / "test" / "id00001-0"), video, as_folder=True)
    write_video(str(root / "train" / "id00000-0"), video, as_folder=True)
    module = types.SimpleNamespace(
        is_puppets_dataset=lambda r: os.path.samefile(r, root),
        load_meta=lambda r: {"format": "fake", "size": 64, "part_names": PART_NAMES,
                             "videos": {"test/id00001-0": 3, "train/id00000-0": 3}},
        ground_truth=lambda r, v, s, d: _fake_truth(d) if s == 0 else pytest.fail("source must be frame 0"))
    monkeypatch.setitem(sys.modules, "fomm_lessons.data.puppets", module)
    return str(root)


def test_puppets_quality_measures_the_papers_protocol(fake_puppets, first_order_models, cpu64_models):
    from fomm_lessons.data.frames import load_frames
    from fomm_lessons.generator import resize_to

    models = first_order_models
    report = measures.puppets_quality(fake_puppets, models, untrained=cpu64_models, batch_size=2)
    json.dumps(report)
    assert report["split"] == "test" and report["videos"] == 1 and report["frames"] == 3
    video, _ = load_frames(os.path.join(fake_puppets, "test", "id00001-0"))
    truths = [_fake_truth(t) for t in range(3)]
    model = report["model"]
    kp_source = models.kp_detector(video[:1], training=False)
    kp_driving = models.kp_detector(video, training=False)
    sources = np.repeat(video[:1], 3, axis=0)
    kp_sources = {key: np.repeat(value, 3, axis=0) for key, value in kp_source.items()}
    predicted = models.generator(sources, kp_source=kp_sources, kp_driving=kp_driving)["prediction"].numpy()
    assert model["reconstruction"]["l1"] == pytest.approx(np.abs(predicted - video).mean(), abs=1e-5)
    assert model["reconstruction"]["l1_no_motion"] == pytest.approx(np.abs(sources - video).mean(), abs=1e-5)

    out = evaluate.reconstruct(video, models, 2, outputs=("deformation", "occlusion_map", "mask"))
    epe = np.mean([evaluate.end_point_error(d, g["flow"], g["shown"])[0] for d, g in zip(out["deformation"], truths)])
    assert model["motion"]["epe_px"] == pytest.approx(epe, abs=1e-4)
    # zero flow: t px off on every shown pixel, frames 0, 1, 2
    assert model["motion"]["epe_zero_flow_px"] == pytest.approx(1.0, abs=1e-4)
    occlusion = np.asarray(resize_to(out["occlusion_map"], 64, 64))[..., 0]
    shown = np.stack([g["shown"] for g in truths])
    assert model["occlusion"]["auc"] == pytest.approx(brute_force_auc(occlusion, shown), abs=1e-4)
    spread = measures.keypoint_spread(kp_driving["value"].numpy(), 64, 64)
    assert model["keypoints"]["spread_px"] == pytest.approx(spread, abs=1e-4)
    assert model["keypoints"]["spread_share"] == pytest.approx(model["keypoints"]["spread_px"] / 64, abs=1e-5)
    assert set(model["masks"]["purity"]) == set(PART_NAMES)
    assert len(model["masks"]["figure_shares"]) == 11
    assert model["motion"]["epe_zeroth_order_px"] != model["motion"]["epe_px"]
    assert set(report["untrained"]) == set(model)
    assert set(report["goals"]) == set(measures.GOALS)
    assert all(isinstance(goal["passed"], bool) for goal in report["goals"].values())
    assert not report["goals"]["l1"]["passed"]  # random networks do not beat copying the source by half
    with pytest.raises(ValueError, match="expected valid videos in the puppets dataset"):
        measures.puppets_quality(fake_puppets, models, split="valid")


def test_bench_quality_prints_the_puppets_measures(fake_puppets, first_order_models, tmp_path, capsys):
    from fomm_lessons import bench
    from fomm_lessons.checkpoint import save_models

    save_models(first_order_models, tmp_path / "weights")
    argv = ["quality", "--checkpoint", str(tmp_path / "weights"), "--config", "cpu-64", "--data", fake_puppets]
    assert bench.main(argv) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["workload"] == "quality" and line["split"] == "test" and "untrained" not in line
    expected = measures.puppets_quality(fake_puppets, first_order_models)
    assert line["model"] == expected["model"] and line["goals"] == expected["goals"]


def test_goals_pass_and_fail_on_their_thresholds():
    result = {"reconstruction": {"ratio": 0.5}, "motion": {"ratio_zero_flow": 0.36, "first_order_gain": 0.1},
              "occlusion": None, "masks": {"purity_mean": 0.9, "masks_in_use": 2},
              "keypoints": {"spread_share": 0.15, "on_part_min": 0.95}}
    verdicts = {name: goal["passed"] for name, goal in measures.goals(result).items()}
    assert verdicts == {"l1": True, "epe": False, "first_order": True, "occlusion": False, "masks": False,
                        "spread": True, "on_part": True}


def test_collapse_measures_on_a_sample_set(tmp_path, cpu64_models):
    from fomm_lessons.data.frames import load_frames
    from fomm_lessons.data.sample import make_sample_dataset

    root = make_sample_dataset(str(tmp_path / "sample"), size=64, seed=0, num_frames=3, videos_per_identity=1)
    result = measures.collapse_measures(root, cpu64_models, batch_size=2)
    json.dumps(result)
    video, _ = load_frames(os.path.join(root, "test", "grace_hopper#sample#00000.mp4"), None, (64, 64, 3))
    kp = cpu64_models.kp_detector(video, training=False)
    assert result["frames"] == 3
    assert result["spread_px"] == pytest.approx(measures.keypoint_spread(kp["value"].numpy(), 64, 64), abs=1e-4)
    same = cpu64_models.generator(video, kp_source=kp, kp_driving=kp)
    assert result["self_l1"] == pytest.approx(np.abs(same["prediction"].numpy() - video).mean(), abs=1e-5)
    assert result["self_occlusion_mean"] == pytest.approx(same["occlusion_map"].numpy().mean(), abs=1e-5)
    assert sum(result["mask_shares"]) == pytest.approx(1.0, abs=1e-4) and len(result["mask_shares"]) == 11
    assert result["masks_in_use"] == sum(share >= 0.05 for share in result["mask_shares"])
    assert 0 < result["self_l1_blur_1px"] < 0.1

"""The offline sample dataset and its ground-truth flow (fomm_lessons/data/sample.py)."""

import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from fomm_lessons.data import frames, sample
from fomm_lessons.sampling import grid_sample, make_coordinate_grid
from fomm_lessons.tps import ThinPlateSplineTransform

SIZE = 64


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    start = time.perf_counter()
    sample.make_sample_dataset(root, size=SIZE, seed=0)
    return root, time.perf_counter() - start


def files_of(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_build_is_fast_and_has_the_original_layout(built):
    root, seconds = built
    assert seconds < 20.0, f"building the 64x64 sample dataset took {seconds:.1f} s (target < 10 s)"
    assert sorted(os.listdir(root)) == ["meta", "test", "train"]
    train, test = sorted(os.listdir(root / "train")), sorted(os.listdir(root / "test"))
    assert len(train) == 9 and len(test) == 3
    train_ids = {frames.identity_of(n) for n in train}
    test_ids = {frames.identity_of(n) for n in test}
    assert train_ids == {"astronaut", "cameraman", "chelsea"} and test_ids == {"grace_hopper"}
    for name in train[:2] + test[:1]:
        clip = frames.read_video(root / ("train" if name in train else "test") / name)
        assert clip.shape == (24, SIZE, SIZE, 3)
        assert clip.std() > 0.05  # a photograph, not a blank frame
        assert np.abs(clip[0] - clip[-1]).mean() > 0.02  # it moves
    meta = json.loads((root / "meta" / "sample.json").read_text())
    assert meta["identities"]["astronaut"]["detected"] and meta["identities"]["grace_hopper"]["detected"]
    assert len(meta["videos"]) == 12


def test_same_seed_is_byte_identical_and_other_seeds_differ(built, tmp_path):
    from fomm_lessons import cli

    root, _ = built
    sample.make_sample_dataset(tmp_path / "same", size=SIZE, seed=0)
    assert files_of(tmp_path / "same") == files_of(root)
    assert cli.main(["data", "sample", "--out", str(tmp_path / "other"), "--size", "64", "--seed", "1"]) == 0
    other = files_of(tmp_path / "other")
    assert other.keys() == files_of(root).keys()
    changed = [k for k, v in other.items() if v != files_of(root)[k]]
    assert "meta/sample.json" in changed and len(changed) > 100


def test_motion_is_smooth_in_time(built):
    root, _ = built
    meta = sample.load_meta(root)
    theta = np.array(meta["videos"]["train/astronaut#sample#00000.mp4"]["theta"])  # (T, 2, 3)
    steps = np.abs(np.diff(theta, axis=0)).max()
    turns = np.abs(np.diff(theta, n=2, axis=0)).max()
    assert 1e-3 < steps < 0.05  # at most 1.6 pixels of a 64-pixel frame per parameter and frame
    assert turns < 0.5 * steps  # velocity changes slowly (independent poses would give ~2x)
    assert np.abs(theta - theta[0]).max() > 2 * steps  # moves further than one step


def check_flow(root, video, source_index, driving_index, flow):
    """Mean |grid_sample(source, flow) - driving| over the visible part, and that part's share."""
    split = "train" if (root / "train" / video).exists() else "test"
    clip = frames.read_video(root / split / video)
    warped = grid_sample(clip[source_index][None], flow[None]).numpy()[0]
    visible = np.all(np.abs(flow) <= 1.0, axis=-1)
    return np.abs(warped - clip[driving_index])[visible].mean(), visible.mean()


@pytest.mark.parametrize("video, source_index, driving_index", [
    ("astronaut#sample#00000.mp4", 0, 23), ("grace_hopper#sample#00001.mp4", 17, 3),
    ("chelsea#sample#00002.mp4", 5, 12)])
def test_ground_truth_flow_warps_source_onto_driving(built, video, source_index, driving_index):
    root, _ = built
    flow = sample.ground_truth_flow(root, video, source_index, driving_index)
    assert flow.shape == (SIZE, SIZE, 2) and flow.dtype == np.float32

    # Exact in coordinates: T_S(flow(z)) = T_D(z) for every pixel z.
    meta = sample.load_meta(root)
    grid = tf.reshape(make_coordinate_grid(SIZE, SIZE), [1, -1, 2])
    t_s = ThinPlateSplineTransform.from_params(*sample.motion_params(root, video, source_index, meta))
    t_d = ThinPlateSplineTransform.from_params(*sample.motion_params(root, video, driving_index, meta))
    np.testing.assert_allclose(t_s.warp_coordinates(flow.reshape(1, -1, 2)).numpy(),
                               t_d.warp_coordinates(grid).numpy(), atol=1e-5)

    # On the stored frames: what remains is the bilinear re-sampling and the uint8 rounding.
    error, visible = check_flow(root, video, source_index, driving_index, flow)
    assert visible > 0.6 and error < 0.01, (error, visible)
    identity = make_coordinate_grid(SIZE, SIZE).numpy()
    backwards = sample.ground_truth_flow(root, video, driving_index, source_index)  # T_{D<-S}, the wrong way
    for wrong in (identity, backwards):
        assert check_flow(root, video, source_index, driving_index, wrong)[0] > 3 * 0.01


def test_flow_to_itself_is_the_identity(built):
    root, _ = built
    flow = sample.ground_truth_flow(root, "train/cameraman#sample#00001.mp4", 7, 7)
    np.testing.assert_allclose(flow, make_coordinate_grid(SIZE, SIZE).numpy(), atol=1e-5)


def test_newton_inverse_of_a_known_affine_map():
    theta = np.array([[[1.1, 0.2, 0.05], [-0.1, 0.9, -0.02]]], np.float32)
    transform = ThinPlateSplineTransform.from_params(theta)
    points = np.random.default_rng(0).uniform(-1, 1, size=(1, 50, 2))
    targets = points @ theta[0, :, :2].T + theta[0, :, 2]
    np.testing.assert_allclose(sample.invert_warp(transform, targets), points, atol=1e-5)


def test_errors_name_what_is_wrong(built, tmp_path):
    root, _ = built
    with pytest.raises(ValueError, match="expected one of the sample videos"):
        sample.ground_truth_flow(root, "nobody#0.mp4", 0, 1)
    with pytest.raises(ValueError, match=r"frame index in \[0, 24\)"):
        sample.ground_truth_flow(root, "astronaut#sample#00000.mp4", 0, 24)
    with pytest.raises(FileNotFoundError, match="fomm-lessons data sample"):
        sample.ground_truth_flow(tmp_path, "astronaut#sample#00000.mp4", 0, 1)


def test_eval_dataset_is_the_extended_identities_with_other_motions(tmp_path):
    small = dict(size=16, videos_per_identity=1, num_frames=2)
    held_out = sample.load_meta(sample.ensure_eval_dataset(tmp_path / "eval", **small))
    expected = sample.load_meta(sample.make_sample_dataset(tmp_path / "seed1", seed=1, identities="extended",
                                                           **small))
    trained = sample.load_meta(sample.make_sample_dataset(tmp_path / "seed0", seed=0, identities="extended",
                                                          **small))
    assert held_out == expected and held_out["seed"] == 1 and held_out["identity_set"] == "extended"
    assert held_out["identities"]["grace_hopper"]["split"] == "test"
    assert held_out["videos"].keys() == trained["videos"].keys()
    video = "train/astronaut#sample#00000.mp4"
    assert held_out["videos"][video]["theta"] != trained["videos"][video]["theta"]


def test_a_folder_of_other_files_is_refused_and_a_second_run_replaces_only_its_own(tmp_path):
    mine = tmp_path / "videos" / "train" / "holiday.mp4"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's video")
    with pytest.raises(ValueError, match="holiday.mp4 was not written by `fomm-lessons data sample`"):
        sample.make_sample_dataset(tmp_path / "videos", size=16, num_frames=2, videos_per_identity=1)
    assert mine.read_bytes() == b"the user's video"
    out = tmp_path / "made"
    sample.make_sample_dataset(out, size=16, num_frames=2, videos_per_identity=1, seed=0)
    first = files_of(out)
    sample.make_sample_dataset(out, size=16, num_frames=2, videos_per_identity=1, seed=1)
    second = files_of(out)
    assert first.keys() == second.keys() and first != second  # its own files, written again


def test_a_second_process_waits_for_the_first_to_finish_the_dataset(tmp_path):
    import fcntl
    import threading

    root = tmp_path / "shared"
    root.mkdir()
    handle = os.open(root, os.O_RDONLY)
    fcntl.flock(handle, fcntl.LOCK_EX)  # as a chapter that is making the dataset holds it
    done = threading.Event()
    worker = threading.Thread(target=lambda: (sample.ensure_sample_dataset(
        root, size=16, num_frames=2, videos_per_identity=1), done.set()))
    worker.start()
    time.sleep(1.0)
    assert not done.is_set() and not (root / sample.META_FILE).exists()  # it waits for the lock
    os.close(handle)
    worker.join(timeout=120)
    assert done.is_set() and sample.load_meta(root)["size"] == 16


def test_the_example_video_is_a_file_the_crop_command_cuts_around_the_face(tmp_path):
    """Chapter 13's stand-in for a phone video: a real .mp4 whose face the detector finds in every
    frame, so that ``crop`` writes one clip of all of them; the same seed, the same frames."""
    from fomm_lessons.data.crop import crop_video_file

    path = sample.write_example_video(tmp_path / "grace#take1.mp4", seed=1, num_frames=30, height=192, width=256)
    video = frames.read_video(path)
    assert video.shape == (30, 192, 256, 3) and Path(path).is_file()
    again = frames.read_video(sample.write_example_video(tmp_path / "again.mp4", seed=1, num_frames=30,
                                                         height=192, width=256))
    assert np.array_equal(video, again)
    other = frames.read_video(sample.write_example_video(tmp_path / "other.mp4", seed=2, num_frames=30,
                                                         height=192, width=256))
    assert np.abs(other[-1] - video[-1]).mean() > 0.01  # another seed, another motion
    (clip,) = crop_video_file(path, tmp_path / "clips", size=64, min_frames=25)
    assert (clip["start"], clip["stop"]) == (0, 30)
    assert frames.read_video(clip["out"]).shape == (30, 64, 64, 3)
    with pytest.raises(ValueError, match="expected a photograph in"):
        sample.write_example_video(tmp_path / "x.mp4", name="nobody")

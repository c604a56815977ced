"""The puppets world and its ground truth (fomm_lessons/data/puppets.py)."""

import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from fomm_lessons.data import frames, puppets

SIZE = 64
FRAMES = 16


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("puppets")
    puppets.make_puppets_dataset(root, size=SIZE, identities=3, test_identities=3, num_frames=FRAMES,
                                 seed=0, progress=False)
    return root


def files_of(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def interior(labels, shown):
    """Shown pixels whose 3x3 neighbourhood is shown and on one part (away from every edge)."""
    from scipy.ndimage import maximum_filter, minimum_filter

    same = minimum_filter(labels, 3) == maximum_filter(labels, 3)
    return shown & same & minimum_filter(shown.astype(np.uint8), 3).astype(bool)


def test_layout_splits_and_loader(world):
    assert sorted(os.listdir(world)) == ["meta", "test", "train"]
    train = {frames.identity_of(n) for n in os.listdir(world / "train")}
    test = {frames.identity_of(n) for n in os.listdir(world / "test")}
    assert len(train) == 3 and len(test) == 3 and not train & test
    meta = puppets.load_meta(world)
    assert meta["part_names"] == ["background", "torso", "head", "left arm", "right arm"]
    assert puppets.is_puppets_dataset(world) and not puppets.is_puppets_dataset(world / "train")
    from fomm_lessons.data.loader import FramesDataset

    dataset = FramesDataset(world, "test", frame_shape=(SIZE, SIZE, 3))
    assert len(dataset.videos) == 3
    video = frames.read_video(os.path.join(world, puppets.list_videos(world, "test")[0]))
    assert video.shape == (FRAMES, SIZE, SIZE, 3)


def test_a_seed_gives_the_same_bytes_and_another_seed_other_ones(world, tmp_path):
    again = tmp_path / "again"
    puppets.make_puppets_dataset(again, size=SIZE, identities=3, test_identities=3, num_frames=FRAMES,
                                 seed=0, progress=False)
    assert files_of(world) == files_of(again)
    other = tmp_path / "other"
    puppets.make_puppets_dataset(other, size=SIZE, identities=1, test_identities=1, num_frames=4, seed=1,
                                 progress=False)
    first = sorted((other / "train").iterdir())[0] / "0000000.png"
    assert first.read_bytes() != (sorted((world / "train").iterdir())[0] / "0000000.png").read_bytes()


def test_true_flow_warps_the_source_onto_the_driving_frame_where_shown(world):
    import tensorflow as tf

    from fomm_lessons.sampling import grid_sample

    for video in puppets.list_videos(world, "test"):
        clip = frames.read_video(os.path.join(world, video))
        for source, driving in ((0, 5), (0, FRAMES - 1), (7, 2)):
            truth = puppets.ground_truth(world, video, source, driving)
            assert truth["flow"].shape == (SIZE, SIZE, 2) and truth["shown"].dtype == bool
            warped = grid_sample(tf.constant(clip[source][None]), tf.constant(truth["flow"][None])).numpy()[0]
            error = np.abs(warped - clip[driving]).mean(axis=-1)  # (H, W)
            shown = truth["shown"]
            inner = interior(truth["parts_driving"], shown)
            # 8-bit frames: half a level is 0.002; edges blur by anti-aliasing, so the interior is exact
            assert error[inner].mean() < 0.002, (video, source, driving, error[inner].mean())
            assert error[shown].mean() < 0.01, (video, source, driving, error[shown].mean())
            if (~shown).sum() > 20:  # what the source does not show is not there to warp
                assert error[~shown].mean() > 10 * error[shown].mean()


def test_identical_frames_have_identity_flow_and_show_everything(world):
    from fomm_lessons.sampling import make_coordinate_grid

    video = puppets.list_videos(world, "train")[0]
    truth = puppets.ground_truth(world, video, 4, 4)
    np.testing.assert_allclose(truth["flow"], np.asarray(make_coordinate_grid(SIZE, SIZE)), atol=1e-5)
    assert truth["shown"].all()
    np.testing.assert_array_equal(truth["parts_source"], truth["parts_driving"])


def test_an_opening_mouth_uncovers_pixels_no_closed_mouth_frame_shows(world):
    meta = puppets.load_meta(world)
    found = 0
    for video, info in meta["videos"].items():
        mouth = np.asarray(info["mouth"])
        closed, opened = np.flatnonzero(mouth == 0), np.flatnonzero(mouth > 0.5)
        for s in closed[:2]:
            for d in opened[:2]:
                truth = puppets.ground_truth(world, video, s, d)
                inside = puppets.part_labels(world, video, d, fine=True) == puppets.FINE_LABELS.index("mouth inside")
                assert inside.sum() > 0
                assert not truth["shown"][inside].any(), (video, s, d)
                found += 1
    assert found > 0, "no video of the test world opens its mouth after a closed-mouth frame"


def test_four_parts_move_on_their_own_and_hide_each_other_in_every_video(world):
    meta = puppets.load_meta(world)
    for video in meta["videos"]:
        moved, hidden = {}, 0
        for driving in range(1, FRAMES):
            truth = puppets.ground_truth(world, video, 0, driving)
            labels = truth["parts_driving"]
            displacement = np.linalg.norm(truth["flow"] - puppets.pixel_grid(SIZE), axis=-1) * (SIZE - 1) / 2
            for part in range(1, 5):
                if (labels == part).any():
                    moved[part] = max(moved.get(part, 0), displacement[labels == part].mean())
            # hidden behind another part of the figure (the mouth's inside is counted apart)
            fine = puppets.part_labels(world, video, driving, fine=True)
            hidden += int((~truth["shown"] & (labels > 0) & (fine < 5)).sum())
        assert len(moved) == 4 and min(moved.values()) > 1.0, (video, moved)
        # the arms swing by amounts comparable to their length (~18 px at 64 px)
        assert max(moved[3], moved[4]) > 4.0, (video, moved)
        assert hidden > 0, video


def test_truth_of_bad_indices_and_names_is_one_clear_line(world):
    video = puppets.list_videos(world, "test")[0]
    with pytest.raises(IndexError, match=rf"expected a driving frame index in \[0, {FRAMES}\), got {FRAMES}"):
        puppets.ground_truth(world, video, 0, FRAMES)
    with pytest.raises(KeyError, match="expected a video of this puppets dataset"):
        puppets.ground_truth(world, "test/nobody", 0, 1)
    with pytest.raises(ValueError, match="expected a frame size of at least 16, got 8"):
        puppets.make_puppets_dataset(world / "small", size=8)


def test_command_writes_with_progress_and_never_touches_other_files(tmp_path):
    out = tmp_path / "world"
    command = [sys.executable, "-m", "fomm_lessons.cli", "data", "puppets", "--out", str(out), "--identities",
               "1", "--test-identities", "1", "--frames", "3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "puppets" in done.stderr and "video" in done.stderr  # tqdm's bar
    assert puppets.is_puppets_dataset(out)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)  # its own output: rewritten
    assert done.returncode == 0, done.stderr
    mine = out / "train" / "notes.txt"
    mine.write_text("mine")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "notes.txt was not written by `fomm-lessons data puppets`" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert mine.read_text() == "mine" and puppets.is_puppets_dataset(out)


def test_ensure_makes_the_world_once(tmp_path):
    root = puppets.ensure_puppets_dataset(tmp_path / "w", identities=1, test_identities=1, num_frames=2)
    assert puppets.is_puppets_dataset(root)
    meta = root / puppets.META_FILE
    stamp = meta.stat().st_mtime_ns
    assert puppets.ensure_puppets_dataset(root, identities=5) == root and meta.stat().st_mtime_ns == stamp

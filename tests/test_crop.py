"""Face crops: boxes and tracks against hand-worked numbers, the detector on the offline photographs,
and ``fomm-lessons crop`` on a synthetic clip whose face positions are known."""

import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from fomm_lessons import cli
from fomm_lessons.data import crop
from fomm_lessons.data.frames import read_video
from fomm_lessons.data.media import OUTPUT_MARK
from fomm_lessons.data.sample import SOURCES


def reference_box(name):
    """The hand-set face box (x, y, w, h) of a sample photograph (``SOURCES[name]["fallback"]``)."""
    row, col, side = SOURCES[name]["fallback"]
    return (col - side / 2, row - side / 2, side, side)


def assert_around_the_face(box, name):
    """A square ``box`` centred on the hand-set face box of ``name``, with a margin."""
    x, y, w, h = box
    rx, ry, rw, rh = reference_box(name)
    assert w == h and 1.0 < w / rw < 1.5, (box, name)
    assert abs((x + w / 2) - (rx + rw / 2)) < 0.1 * rw and abs((y + h / 2) - (ry + rh / 2)) < 0.15 * rh, (box, name)


def photo(name):
    return np.asarray(Image.fromarray(np.asarray(SOURCES[name]["load"]())).convert("RGB"))


# ---------------------------------------------------------------------------
# Boxes and tracks
# ---------------------------------------------------------------------------

def test_iou_and_the_stable_square_box():
    assert crop.iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert crop.iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    # union of the boxes: x 100..160, y 50..130 -> 60 x 80; side 80 * 1.2 = 96 around the centre (130, 90)
    assert crop.stable_box([(100, 50, 50, 80), (110, 60, 50, 60)], (480, 640), increase=0.1) == (82, 42, 96, 96)
    # near the corner the square moves inside the frame; larger than the frame it shrinks to fit
    assert crop.stable_box([(0, 0, 40, 40)], (480, 640), increase=0.5) == (0, 0, 80, 80)
    assert crop.stable_box([(0, 0, 300, 300)], (200, 640), increase=0.1) == (50, 0, 200, 200)  # centre x 150
    assert crop.parse_box("1,2,30,40", (100, 100)) == (1, 2, 30, 40)
    for bad in ("1,2,3", "a,b,c,d", "1,2,0,5", "-1,0,5,5"):
        with pytest.raises(ValueError, match="x,y,w,h"):
            crop.parse_box(bad)
    with pytest.raises(ValueError, match="outside"):
        crop.parse_box("90,0,20,20", (100, 100))


def test_tracks_bridge_short_gaps_split_where_the_face_is_lost_and_follow_two_faces():
    face = lambda t: (100 + t, 50, 60, 60)  # moves 1 px a frame  # noqa: E731
    other = (400, 300, 50, 50)
    detections = [[face(t)] for t in range(10)]
    detections[4] = []  # missed for 2 frames: the same track
    detections[5] = []
    detections += [[] for _ in range(3)]  # lost for 3 frames: the track ends at frame 10
    detections += [[face(t), other] for t in range(13, 20)]
    detections[15] = [(300, 300, 60, 60), other]  # a jump: no overlap with the track's first box
    tracks = crop.track_faces(detections, max_missed=2)
    spans = [(tr["start"], tr["stop"], len(tr["boxes"])) for tr in tracks]
    assert spans == [(0, 10, 8), (13, 20, 7), (13, 20, 6), (15, 16, 1)]  # longer tracks first at one start
    crops = crop.plan_crops(detections, (480, 640), min_frames=7)
    assert [(c["start"], c["stop"]) for c in crops] == [(0, 10), (13, 20), (13, 20)]
    assert crops[1]["box"] == list(crop.stable_box([other], (480, 640)))


def test_the_detector_finds_the_offline_faces_and_not_the_cat():
    for name in ("astronaut", "grace_hopper"):
        faces = crop.detect_faces(photo(name))
        assert faces and crop.iou(faces[0], reference_box(name)) > 0.6, (name, faces)
    # shrunk before detection: a 4x larger copy is found at the same place, in its own pixels
    big = Image.fromarray(photo("astronaut")).resize((2048, 2048))
    faces = crop.detect_faces(big)
    assert faces and crop.iou(tuple(v / 4 for v in faces[0]), reference_box("astronaut")) > 0.6
    assert crop.detect_faces(photo("chelsea")) == []


# ---------------------------------------------------------------------------
# The command on a clip with a known face path
# ---------------------------------------------------------------------------

FACE_SIDE = 84  # side of the pasted face picture in the synthetic clip


def face_picture():
    """Grace Hopper's face with a margin, FACE_SIDE pixels square."""
    x, y, w, h = reference_box("grace_hopper")
    margin = 0.35 * w
    square = Image.fromarray(photo("grace_hopper")).crop((x - margin, y - margin, x + w + margin, y + h + margin))
    return np.asarray(square.resize((FACE_SIDE, FACE_SIDE), Image.Resampling.LANCZOS))


def synthetic_clip(path, fps=10):
    """180x240 frames: the face moves right for 16 frames, is gone for 6, then sits elsewhere for 14."""
    face = face_picture()
    frames, where = [], []
    for t in range(36):
        frame = np.full((180, 240, 3), 90, np.uint8)
        if t < 16:
            x, y = 20 + 2 * t, 30
        elif t >= 22:
            x, y = 140, 80
        else:
            x = y = None
        if x is not None:
            frame[y:y + FACE_SIDE, x:x + FACE_SIDE] = face
        frames.append(frame)
        where.append(None if x is None else (x, y))
    import imageio.v2 as imageio

    imageio.mimwrite(path, frames, format="FFMPEG", fps=fps, macro_block_size=1, quality=9)
    return str(path), where


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return synthetic_clip(tmp_path_factory.mktemp("crop") / "talk.mp4")


@pytest.fixture(scope="module")
def scan(clip):
    """The faces of every frame of the clip, and its frame size."""
    return crop.scan_video(clip[0], progress=False)


def run(argv, capsys):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_crop_video_cuts_one_clip_per_face_piece(clip, tmp_path, capsys):
    path, where = clip
    out = tmp_path / "clips"
    status, printed, err = run(["crop", "--video", path, "--out", out, "--size", 64, "--min-frames", 10], capsys)
    assert status == 0, err
    pieces = [json.loads(line) for line in printed.splitlines()]
    assert [(p["start"], p["stop"]) for p in pieces] == [(0, 16), (22, 36)]
    for piece in pieces:  # the square holds every pasted face of its frames, with little more
        x, y, w, h = piece["box"]
        assert w == h
        for t in range(piece["start"], piece["stop"]):
            fx, fy = where[t]
            assert x <= fx + 0.15 * FACE_SIDE and fx + 0.85 * FACE_SIDE <= x + w, (t, piece)
            assert y <= fy + 0.15 * FACE_SIDE and fy + 0.85 * FACE_SIDE <= y + h, (t, piece)
        assert w < 1.6 * FACE_SIDE
        frames = read_video(piece["out"])
        assert frames.shape == (piece["stop"] - piece["start"], 64, 64, 3)
    assert sorted(os.listdir(out)) == sorted([OUTPUT_MARK] + [os.path.basename(p["out"]) for p in pieces])
    assert os.path.basename(pieces[0]["out"]) == "talk#000000-000016.mp4"

    # --print-commands writes nothing; running a printed command gives the same clip
    status, printed, err = run(["crop", "--video", path, "--out", tmp_path / "none", "--size", 64,
                                "--min-frames", 10, "--print-commands"], capsys)
    assert status == 0, err
    lines = printed.splitlines()
    assert [json.loads(line)["box"] for line in lines[::2]] == [p["box"] for p in pieces]
    assert not (tmp_path / "none").exists()
    subprocess.run(lines[1], shell=True, check=True, capture_output=True)  # it makes the folder itself
    by_ffmpeg = read_video(json.loads(lines[0])["out"])
    assert by_ffmpeg.shape == (16, 64, 64, 3)
    assert np.abs(by_ffmpeg - read_video(pieces[0]["out"])).mean() < 0.02  # 0.037 with the crop 1 px off


def test_no_face_is_one_line_and_a_box_by_hand_works(clip, tmp_path, capsys):
    path, _ = clip
    status, _, err = run(["crop", "--video", path, "--out", tmp_path / "a", "--min-frames", 30], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "talk.mp4" in err and "--min-frames 16" in err and "--box x,y,w,h" in err
    blank = str(tmp_path / "blank.mp4")
    import imageio.v2 as imageio

    imageio.mimwrite(blank, [np.full((64, 64, 3), 128, np.uint8)] * 5, format="FFMPEG", fps=5,
                     macro_block_size=1)
    status, _, err = run(["crop", "--video", blank, "--out", tmp_path / "b"], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and "no face found in" in err and "--box" in err
    status, printed, err = run(["crop", "--video", blank, "--out", tmp_path / "b", "--box", "8,8,32,32",
                                "--size", 16], capsys)
    assert status == 0, err
    assert json.loads(printed) == {"start": 0, "stop": 5, "box": [8, 8, 32, 32],
                                   "out": str(tmp_path / "b" / "blank#000000-000005.mp4")}
    status, _, err = run(["crop", "--video", blank, "--out", tmp_path / "b", "--box", "40,40,32,32"], capsys)
    assert status == 2 and "outside" in err


def test_crop_refuses_a_folder_it_did_not_write(clip, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    status, _, err = run(["crop", "--video", clip[0], "--out", tmp_path / "mine", "--min-frames", 10], capsys)
    assert status == 2 and "refusing to write into" in err and "notes.txt" in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_crop_image_crops_the_largest_face(tmp_path, capsys):
    from matplotlib import cbook

    source = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    out = tmp_path / "face.png"
    status, printed, err = run(["crop", "--image", source, "--out", out, "--size", 96], capsys)
    assert status == 0, err
    piece = json.loads(printed)
    assert piece["start"] == 0 and piece["stop"] == 1
    assert_around_the_face(piece["box"], "grace_hopper")
    x, y, w, h = piece["box"]
    with Image.open(out) as image:
        assert image.size == (96, 96)
        got = np.asarray(image, np.float64) / 255
    expected = Image.open(source).convert("RGB").crop((x, y, x + w, y + h)).resize((96, 96), Image.Resampling.BOX)
    assert np.abs(got - np.asarray(expected, np.float64) / 255).mean() < 0.02
    cat = tmp_path / "cat.png"
    Image.fromarray(photo("chelsea")).save(cat)
    status, _, err = run(["crop", "--image", cat, "--out", tmp_path / "cat-face.png"], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and "no face found in" in err and "cat.png" in err
    assert not (tmp_path / "cat-face.png").exists()


def test_animate_crop_crops_the_source_and_the_driving_video(clip, scan, cpu64_models, tmp_path, capsys):
    from matplotlib import cbook

    from fomm_lessons.animate import animate
    from fomm_lessons.checkpoint import save_models
    from fomm_lessons.data.stream import iter_frames, read_source_image

    save_models(cpu64_models, str(tmp_path / "checkpoint"))
    source = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    base = ["animate", "--config", "cpu-64", "--checkpoint", tmp_path / "checkpoint", "--driving", clip[0]]
    status, printed, err = run(base + ["--source", source, "--out", tmp_path / "out", "--crop"], capsys)
    assert status == 0, err
    notes = dict(line.split(" to the box ") for line in err.strip().splitlines() if " to the box " in line)
    source_box = crop.parse_box(notes["fomm-lessons animate: cropping the source"].split()[0])
    driving_box = crop.parse_box(notes["fomm-lessons animate: cropping the driving video"].split()[0])
    assert_around_the_face(source_box, "grace_hopper")
    assert list(driving_box) == crop.plan_crops(*scan, min_frames=10)[0]["box"]  # the longest track's
    driving = np.concatenate(list(iter_frames(clip[0], (64, 64, 3), driving_box)))  # (36, 64, 64, 3)
    expected = animate(read_source_image(source, (64, 64, 3), source_box), driving, cpu64_models)
    np.testing.assert_allclose(read_video(tmp_path / "out"), expected, atol=0.5 / 255 + 1e-6)
    cat = tmp_path / "cat.png"
    Image.fromarray(photo("chelsea")).save(cat)
    status, _, err = run(base + ["--source", cat, "--out", tmp_path / "cat.gif", "--crop"], capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "no face found in" in err and "cat.png" in err and "--source-box x,y,w,h" in err


def test_voxceleb_crop_cuts_each_clip_by_its_face_track(clip, scan, tmp_path, capsys):
    import shutil

    from fomm_lessons.data import voxceleb

    for identity in ("id00001", "id00002"):
        (tmp_path / "videos" / identity / "yt").mkdir(parents=True)
        shutil.copy(clip[0], tmp_path / "videos" / identity / "yt" / "00001.mp4")
    argv = ["data", "voxceleb", "--out", tmp_path / "vox", "--videos", tmp_path / "videos", "--identities", 2,
            "--clips-per-identity", 1, "--size", 32]
    status, _, err = run(argv + ["--crop"], capsys)
    assert status == 0, err
    (folder,) = (tmp_path / "vox" / "train").iterdir()
    got = read_video(folder)  # (36, 32, 32, 3)
    x, y, w, h = crop.stable_box(max(crop.track_faces(scan[0]), key=lambda tr: len(tr["boxes"]))["boxes"], scan[1])
    expected = [np.asarray(Image.fromarray(np.round(f * 255).astype(np.uint8)).crop((x, y, x + w, y + h))
                           .resize((32, 32), Image.Resampling.LANCZOS)) / 255.0 for f in read_video(clip[0])]
    np.testing.assert_allclose(got, np.stack(expected), atol=1 / 255 + 1e-6)
    assert json.loads((tmp_path / "vox" / "meta" / voxceleb.RUN_MANIFEST).read_text())["options"]["crop"] is True
    status, _, err = run(argv, capsys)  # the same folder without --crop: other options
    assert status == 2 and "already holds a subset" in err


def test_crop_image_replaces_no_file_it_did_not_write_and_never_its_input(tmp_path, capsys):
    from matplotlib import cbook

    photo = tmp_path / "face.jpg"
    photo.write_bytes(open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), "rb").read())
    before = photo.read_bytes()
    for flags in ([], ["--overwrite"]):
        status, _, err = run(["crop", "--image", photo, "--out", photo, "--size", 64, *flags], capsys)
        assert status == 2 and len(err.strip().splitlines()) == 1 and "is the input --image" in err, err
    assert photo.read_bytes() == before
    mine = tmp_path / "mine.png"
    mine.write_text("my own picture")
    status, _, err = run(["crop", "--image", photo, "--out", mine, "--size", 64], capsys)
    assert status == 2 and f"refusing to replace the existing file {mine}" in err and "--overwrite" in err
    assert mine.read_text() == "my own picture"
    status, _, err = run(["crop", "--image", photo, "--out", mine, "--size", 64, "--overwrite"], capsys)
    assert status == 0, err
    with Image.open(mine) as image:
        assert image.size == (64, 64)


def test_crop_video_never_writes_into_its_input_folder(tmp_path, capsys):
    from fomm_lessons.data.stream import write_output

    frames = tmp_path / "frames"
    write_output(frames, np.full((3, 32, 32, 3), 128, np.uint8), 25, command="crop")  # a crop-marked folder
    before = sorted(os.listdir(frames))
    status, _, err = run(["crop", "--video", frames, "--out", frames, "--box", "0,0,32,32", "--size", 16], capsys)
    assert status == 2 and f"--out {frames} is the input --video {frames}" in err, err
    assert sorted(os.listdir(frames)) == before


def test_crop_image_takes_a_box_and_says_what_an_output_must_be(tmp_path, capsys):
    from matplotlib import cbook

    source = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    status, printed, err = run(["crop", "--image", source, "--out", tmp_path / "box.png", "--size", 32, "--box",
                                "100,50,300,300"], capsys)
    assert status == 0, err
    assert json.loads(printed)["box"] == [100, 50, 300, 300]
    for out in (tmp_path / "new" / "folder", str(tmp_path / "new" / "folder2") + "/", tmp_path / "face.xyz"):
        status, _, err = run(["crop", "--image", source, "--out", out, "--size", 32], capsys)
        assert status == 2 and "expected --out to be an image file name (.png, .jpg, ...)" in err, err
    assert not (tmp_path / "new").exists()  # no empty folders left behind
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(blank)
    status, _, err = run(["crop", "--image", blank, "--out", tmp_path / "b.png"], capsys)
    assert status == 2 and "no face found in" in err and "--box" in err and "--min-frames" not in err, err


def test_output_videos_follow_the_umask(tmp_path):
    from fomm_lessons.data.stream import write_output

    mask = os.umask(0o022)
    try:
        path = write_output(tmp_path / "clip.mp4", np.zeros((2, 16, 16, 3), np.uint8), 25)
    finally:
        os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o644

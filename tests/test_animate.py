"""Animation: relative keypoints against the original's formula in NumPy, batching, best frame, video files."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import subprocess

import numpy as np
import pytest

from fomm_lessons import animate as anim
from fomm_lessons.checkpoint import load_checkpoint
from fomm_lessons.data import media, stream


@pytest.fixture(scope="module")
def models(cpu64_models):
    return cpu64_models


@pytest.fixture(scope="module")
def video():
    """12 frames of 64x64: a smooth image moving right, so that keypoints move."""
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    frames = []
    for t in range(12):
        shift = 0.02 * t
        frames.append(np.stack([np.sin(6 * (xx - shift)) * 0.5 + 0.5, yy, np.cos(4 * (xx + yy - shift)) * 0.25 + 0.5],
                               axis=-1))
    return np.asarray(frames, np.float32)  # (12, 64, 64, 3)


# ---------------------------------------------------------------------------
# normalize_kp against NumPy
# ---------------------------------------------------------------------------

def shoelace_hull_area(points):
    """Convex hull by Andrew's monotone chain, then the shoelace formula (independent of scipy)."""
    pts = sorted(map(tuple, np.asarray(points, np.float64)))

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = np.array(lower[:-1] + upper[:-1])
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def inverse_2x2(m):
    (a, b), (c, d) = m
    return np.array([[d, -b], [-c, a]]) / (a * d - b * c)


def reference_normalize_kp(kp_source, kp_driving, kp_initial, adapt, relative, relative_jacobian):
    """The original demo's normalize_kp, keypoint by keypoint, in float64."""
    value, jacobian = kp_driving["value"].astype(np.float64), kp_driving["jacobian"].astype(np.float64)
    if not relative:
        return value, jacobian
    scale = 1.0
    if adapt:
        scale = np.sqrt(shoelace_hull_area(kp_source["value"][0])) / np.sqrt(shoelace_hull_area(kp_initial["value"][0]))
    new_value = (value - kp_initial["value"]) * scale + kp_source["value"]
    new_jacobian = jacobian.copy()
    if relative_jacobian:
        for b in range(value.shape[0]):
            for k in range(value.shape[1]):
                diff = jacobian[b, k] @ inverse_2x2(kp_initial["jacobian"][0, k])
                new_jacobian[b, k] = diff @ kp_source["jacobian"][0, k]
    return new_value, new_jacobian


def random_kp(rng, batch, num_kp=10):
    return {"value": rng.uniform(-0.8, 0.8, (batch, num_kp, 2)).astype(np.float32),
            "jacobian": (np.eye(2) + 0.3 * rng.standard_normal((batch, num_kp, 2, 2))).astype(np.float32)}


@pytest.mark.parametrize("adapt, relative, relative_jacobian",
                         [(False, True, True), (True, True, True), (True, True, False), (False, False, True)])
def test_normalize_kp_matches_the_original_formula(adapt, relative, relative_jacobian):
    rng = np.random.default_rng(1)
    kp_source, kp_initial, kp_driving = random_kp(rng, 1), random_kp(rng, 1), random_kp(rng, 5)
    kp_initial["value"] *= 0.5  # a smaller face in the driving video: the scale is about 2
    got = anim.normalize_kp(kp_source, kp_driving, kp_initial, adapt_movement_scale=adapt,
                            use_relative_movement=relative, use_relative_jacobian=relative_jacobian)
    value, jacobian = reference_normalize_kp(kp_source, kp_driving, kp_initial, adapt, relative, relative_jacobian)
    np.testing.assert_allclose(np.asarray(got["value"]), value, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got["jacobian"]), jacobian, rtol=1e-4, atol=1e-5)


def test_hull_area_is_the_polygon_area():
    square_and_inside = np.array([[0, 0], [2, 0], [2, 3], [0, 3], [1, 1], [0.5, 2]])
    assert anim.hull_area(square_and_inside) == pytest.approx(6.0)
    points = np.random.default_rng(0).random((10, 2))
    assert anim.hull_area(points) == pytest.approx(shoelace_hull_area(points))
    with pytest.raises(ValueError, match="not on one line"):
        anim.hull_area(np.array([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]))


# ---------------------------------------------------------------------------
# Animation with the networks (cpu-64, random weights)
# ---------------------------------------------------------------------------

BOTH = ("prediction", "deformation")  # with random weights the deformation is what moves with the keypoints


def assert_outputs_close(got, expected, atol=2e-5):
    for name in BOTH:
        np.testing.assert_allclose(got[name], expected[name], atol=atol, err_msg=name)


def test_batches_do_not_change_the_result(models, video):
    whole = anim.animate(video[0], video, models, batch_size=12, outputs=BOTH)
    batched = anim.animate(video[0], video, models, batch_size=5, outputs=BOTH)  # 5 + 5 + 2, the last one padded
    assert whole["prediction"].shape == video.shape and whole["deformation"].shape == (12, 32, 32, 2)
    assert_outputs_close(batched, whole)
    assert anim.animate(video[0], video, models, batch_size=5).shape == video.shape  # just the frames
    kp = anim.detect_keypoints(models.kp_detector, video, batch_size=5)
    one = models.kp_detector(video[7:8], training=False)
    np.testing.assert_allclose(kp["value"][7], np.asarray(one["value"])[0], atol=1e-5)
    np.testing.assert_allclose(kp["jacobian"][7], np.asarray(one["jacobian"])[0], atol=1e-5)


def test_absolute_and_relative_keypoints_reach_the_generator(models, video):
    source = video[3]
    kp_source = models.kp_detector(source[None], training=False)
    kp_frame = models.kp_detector(video[6:7], training=False)
    absolute = anim.animate(source, video, models, relative=False, batch_size=4, outputs=BOTH)
    expected = models.generator(source[None], kp_source=kp_source, kp_driving=kp_frame)
    assert_outputs_close({k: v[6] for k, v in absolute.items()}, {k: np.asarray(expected[k])[0] for k in BOTH})
    # relative: the initial driving frame drives the source with the source's own keypoints
    relative = anim.animate(source, video, models, relative=True, initial_frame=6, batch_size=4, outputs=BOTH)
    same = models.generator(source[None], kp_source=kp_source, kp_driving=kp_source)
    assert_outputs_close({k: v[6] for k, v in relative.items()}, {k: np.asarray(same[k])[0] for k in BOTH})
    assert np.abs(relative["deformation"][0] - relative["deformation"][6]).max() > 1e-3  # the test can fail


def test_animating_from_the_best_frame_is_the_demo_forwards_and_backwards(models, video):
    best = 4
    kwargs = dict(adapt_movement_scale=True, batch_size=6, outputs=BOTH)
    ours = anim.animate(video[0], video, models, initial_frame=best, **kwargs)
    forward = anim.animate(video[0], video[best:], models, **kwargs)
    backward = anim.animate(video[0], video[:best + 1][::-1], models, **kwargs)
    demo = {k: np.concatenate([backward[k][::-1], forward[k][1:]]) for k in BOTH}
    assert_outputs_close(ours, demo)
    plain = anim.animate(video[0], video, models, **kwargs)  # initial frame 0 differs
    assert np.abs(plain["deformation"] - ours["deformation"]).max() > 1e-3


def test_find_best_frame_with_landmarks_and_with_the_model(models, video):
    rng = np.random.default_rng(0)
    shapes = rng.uniform(-1, 1, (12, 8, 2))
    source_shape = 3.0 * shapes[5] + np.array([10.0, -4.0])  # same shape, other place and size

    def landmarks(image):  # frames are told apart by their mean value
        if image is source_image:
            return source_shape
        return None if image is frames[2] else shapes[int(round(image.mean()))]

    frames = np.stack([np.full((4, 4, 3), t, np.float32) for t in range(12)])
    source_image = np.zeros((4, 4, 3), np.float32)
    assert anim.find_best_frame(source_image, frames, landmarks=landmarks) == 5
    assert anim.find_best_frame(video[8], video, models, landmarks="model") == 8
    if not _has_face_alignment():
        assert anim.find_best_frame(video[2], video, models) == 2  # "auto" falls back to the model
    with pytest.raises(ValueError, match="models"):
        anim.find_best_frame(video[8], video, None, landmarks="model")


def _has_face_alignment():
    try:
        import face_alignment
    except ImportError:
        face_alignment = None
    return face_alignment is not None


def test_animate_checks_shapes(models, video):
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        anim.animate(video[0, :32], video, models)
    with pytest.raises(ValueError, match="initial frame"):
        anim.animate(video[0], video, models, initial_frame=12)


# ---------------------------------------------------------------------------
# Video files: frame rate, audio, paths
# ---------------------------------------------------------------------------

def make_clip_with_audio(path, fps=10, seconds=1.2, size=32):
    """A test-pattern clip with a 440 Hz sine audio track, made by ffmpeg's lavfi sources."""
    command = [media.ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
               f"testsrc=size={size}x{size}:rate={fps}", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000",
               "-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)]
    subprocess.run(command, check=True, capture_output=True)
    return str(path)


def test_frame_rate_and_audio_are_kept(tmp_path):
    from fomm_lessons.data.frames import read_video

    clip = make_clip_with_audio(tmp_path / "driving.mp4", fps=10)
    assert media.has_audio(clip)
    assert media.video_fps(clip) == pytest.approx(10.0)
    frames = read_video(clip)
    assert len(frames) == 12
    out = stream.write_output(str(tmp_path / "out.mp4"), frames[:, ::-1], media.video_fps(clip), audio_from=clip)
    assert media.has_audio(out) and media.video_fps(out) == pytest.approx(10.0)
    assert len(read_video(out)) == 12
    silent = stream.write_output(str(tmp_path / "silent.mp4"), frames, 10.0)
    assert not media.has_audio(silent)
    gif = stream.write_output(str(tmp_path / "out.gif"), frames, 5.0)
    assert media.video_fps(gif) == pytest.approx(5.0)  # GIF stores hundredths of a second: 5 fps is exact
    folder = stream.write_output(str(tmp_path / "frames"), frames, 10.0)
    assert sorted(os.listdir(folder))[:3] == [media.OUTPUT_MARK, "0000000.png", "0000001.png"]
    assert media.video_fps(folder) == media.DEFAULT_FPS


def test_output_paths_are_checked_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write the output"):
        media.check_output_path(str(blocker / "out.mp4"))
    with pytest.raises(ValueError, match=r"\.mp4/\.mov/\.gif"):
        media.check_output_path(str(tmp_path / "out.avi"))
    with pytest.raises(ValueError, match="audio"):
        media.check_output_path(str(tmp_path / "out.gif"), audio=True)
    assert media.check_output_path(str(tmp_path / "new" / "out.mp4")) and (tmp_path / "new").is_dir()
    assert media.is_folder_path(str(tmp_path / "frames")) and not media.is_folder_path("x.gif")


def test_published_format_checkpoint_animates_as_the_original(tmp_path):
    """A .pth.tar of the narrow parity model: absolute animation reproduces the original's generator outputs."""
    import json

    torch = pytest.importorskip("torch")
    parity = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "fomm-parity")
    if not os.path.exists(os.path.join(parity, "parity-128.npz")):
        pytest.skip(f"parity fixtures not found at {os.path.abspath(parity)}")
    arrays = np.load(os.path.join(parity, "parity-128.npz"))
    with open(os.path.join(parity, "parity-128.json")) as file:
        model_params = json.load(file)["model_params"]
    state = {}
    for key in arrays.files:
        if key.startswith("weights/"):
            _, part, name = key.split("/", 2)
            state.setdefault(part, {})[name] = torch.from_numpy(arrays[key])
    path = str(tmp_path / "parity.pth.tar")
    torch.save(state, path)
    models = load_checkpoint(path, model_params)
    source = arrays["inputs/source"].transpose(0, 2, 3, 1)  # (2, 128, 128, 3)
    driving = arrays["inputs/driving"].transpose(0, 2, 3, 1)
    for b in range(2):
        out = anim.animate(source[b], driving[b:b + 1], models, relative=False,
                           outputs=("prediction", "deformation", "occlusion_map"))
        np.testing.assert_allclose(out["prediction"][0], arrays["eval/generator/prediction"][b].transpose(1, 2, 0),
                                   atol=1e-4)
        np.testing.assert_allclose(out["deformation"][0], arrays["eval/dense_motion/deformation"][b], atol=1e-4)
        np.testing.assert_allclose(out["occlusion_map"][0, ..., 0], arrays["eval/dense_motion/occlusion_map"][b, 0],
                                   atol=1e-4)


# ---------------------------------------------------------------------------
# The command as a user meets it: streamed files, progress, output folders, large sources
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(models, video, tmp_path_factory):
    """A checkpoint folder of the cpu-64 models, a source PNG and a 12-frame driving PNG folder."""
    from PIL import Image

    from fomm_lessons.checkpoint import save_models
    from fomm_lessons.data.frames import write_video

    root = tmp_path_factory.mktemp("animate-files")
    save_models(models, str(root / "checkpoint"))
    driving = write_video(str(root / "driving.mp4"), video, as_folder=True)
    Image.fromarray(np.round(video[0] * 255).astype(np.uint8)).save(root / "source.png")
    return {"root": root, "checkpoint": str(root / "checkpoint"), "source": str(root / "source.png"),
            "driving": driving}


def run_animate(files, capsys, *options, **changes):
    from fomm_lessons import cli

    args = {"config": "cpu-64", "checkpoint": files["checkpoint"], "source": files["source"],
            "driving": files["driving"], **changes}
    status = cli.main(["animate"] + [str(v) for key, value in args.items() for v in (f"--{key}", value)]
                      + [str(option) for option in options])
    out, err = capsys.readouterr()
    return status, out, err


def test_a_streamed_file_is_the_animation_in_memory_with_progress_and_best_frame(models, files, capsys):
    from fomm_lessons.data.frames import read_video

    driving = read_video(files["driving"])  # the PNG frames: what the file holds
    source = stream.read_source_image(files["source"], (64, 64, 3))
    parts = list(anim.animate_stream(source, files["driving"], models, (64, 64, 3), best_frame=4, batch_size=5,
                                     progress=True, outputs=BOTH))
    err = capsys.readouterr().err
    assert "driving keypoints" in err and "generating" in err and "12/12" in err
    assert [len(part["prediction"]) for part in parts] == [5, 5, 2]
    expected = anim.animate(source, driving, models, initial_frame=4, batch_size=5, outputs=BOTH)
    assert_outputs_close({k: np.concatenate([p[k] for p in parts]) for k in BOTH}, expected)
    path = anim.animate_file(source, files["driving"], str(files["root"] / "streamed"), models, (64, 64, 3), 10.0,
                             best_frame=4, batch_size=5, progress=False)
    np.testing.assert_allclose(read_video(path), expected["prediction"], atol=0.5 / 255 + 1e-6)
    with pytest.raises(ValueError, match=r"--best-frame between 0 and 11 .*12 frames"):
        anim.animate_file(source, files["driving"], str(files["root"] / "x.gif"), models, (64, 64, 3), 10.0,
                          best_frame=12, progress=False)
    assert not (files["root"] / "x.gif").exists()  # nothing half-written


def test_best_frame_option(files, capsys):
    status, printed, err = run_animate(files, capsys, "--best-frame", 7, out=files["root"] / "b7.gif")
    assert status == 0 and printed.strip() == str(files["root"] / "b7.gif"), err
    with pytest.raises(SystemExit):  # one or the other
        run_animate(files, capsys, "--best-frame", 3, "--find-best-frame", out=files["root"] / "x.gif")
    status, _, err = run_animate(files, capsys, "--best-frame", -1, out=files["root"] / "x.gif")
    assert status == 2 and "--best-frame of at least 0" in err


def test_an_output_folder_of_other_files_is_refused_not_emptied(files, capsys):
    """Issue 16.1: ``--out photos`` used to delete every picture in ``photos``."""
    from fomm_lessons import cli

    photos = files["root"] / "photos"
    photos.mkdir()
    (photos / "holiday.png").write_bytes(b"a photograph")
    status, _, err = run_animate(files, capsys, out=photos)
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    assert "refusing to write into" in err and "holiday.png" in err
    assert (photos / "holiday.png").read_bytes() == b"a photograph"
    status = cli.main(["reconstruct", "--config", "cpu-64", "--checkpoint", files["checkpoint"],
                       "--data", str(files["root"]), "--out", str(photos)])
    err = capsys.readouterr().err
    assert status == 2 and "refusing to write into" in err and (photos / "holiday.png").exists()
    # an earlier output of the same command is rewritten; files added to it since are kept
    frames = files["root"] / "frames"
    status, _, err = run_animate(files, capsys, out=frames)
    assert status == 0 and media.folder_owner(frames) == "animate", err
    (frames / "notes.txt").write_text("mine")
    stream.write_output(str(frames), np.zeros((3, 8, 8, 3)), 10.0, command="animate")  # as a second run does
    assert sorted(os.listdir(frames)) == sorted([media.OUTPUT_MARK, "notes.txt"] + [f"{t:07d}.png" for t in range(3)])
    with pytest.raises(ValueError, match="refusing"):  # another command's output
        stream.write_output(str(frames), np.zeros((3, 8, 8, 3)), 10.0, command="reconstruct")


def test_a_large_source_is_shrunk_before_it_becomes_float(files, tmp_path, capsys):
    """Issue 16.15: an 8000x8000 source took minutes, silently; Pillow now shrinks it first."""
    import tracemalloc

    from PIL import Image

    side = 2048
    x = (np.arange(side, dtype=np.float32) / side)[None, :, None]  # (1, W, 1)
    y = (np.arange(side, dtype=np.float32) / side)[:, None, None]  # (H, 1, 1)
    pattern = np.concatenate([np.broadcast_to(0.5 + 0.4 * np.sin(2 * np.pi * x), (side, side, 1)),
                              np.broadcast_to(0.5 + 0.4 * np.cos(2 * np.pi * y), (side, side, 1)),
                              0.3 + 0.4 * x * y], axis=-1)  # (H, W, 3), smooth
    path = tmp_path / "large.jpg"
    Image.fromarray(np.round(pattern * 255).astype(np.uint8)).save(path, quality=95)
    expected = pattern.reshape(64, side // 64, 64, side // 64, 3).mean(axis=(1, 3))  # block means
    del pattern
    notes = []
    tracemalloc.start()
    try:
        image = stream.read_source_image(path, (64, 64, 3), log=notes.append)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4e6, f"{peak / 1e6:.0f} MB of NumPy arrays for a 64x64 result"  # a float copy: 50 MB
    assert image.shape == (64, 64, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image, expected, atol=0.02)
    assert notes == [f"resizing the source {path} (2048x2048) to 64x64"]
    (tmp_path / "text.mp4").write_text("not a video")  # the command says so before it reads the driving video
    status, _, err = run_animate(files, capsys, source=path, driving=tmp_path / "text.mp4", out=tmp_path / "o.gif")
    lines = err.strip().splitlines()
    assert status == 2 and lines[0] == f"fomm-lessons animate: resizing the source {path} (2048x2048) to 64x64", err


def test_a_cut_driving_video_is_refused_while_streaming(files, tmp_path, capsys):
    """A faststart .mp4 cut at 60% (a broken download): the streamed reader checks its index first."""
    import imageio.v2 as imageio

    noise = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    whole = tmp_path / "whole.mp4"
    imageio.mimwrite(whole, list(noise), format="FFMPEG", fps=25, macro_block_size=1,
                     output_params=["-movflags", "+faststart"])
    data = whole.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])
    assert 0 < len(imageio.mimread(tmp_path / "cut.mp4", format="FFMPEG", memtest=False)) < 8  # ffmpeg: no error
    with pytest.raises(ValueError, match=r"cut.mp4: it is truncated: its index lists 8 frames"):
        next(stream.iter_frames(str(tmp_path / "cut.mp4")))
    status, _, err = run_animate(files, capsys, driving=tmp_path / "cut.mp4", out=tmp_path / "out.gif")
    assert status == 2 and "is not a video: it is truncated" in err.strip().splitlines()[-1]


STREAMING_PROBE = r"""
import json, os, resource, sys
from fomm_lessons import cli
base = ["animate", "--config", "cpu-64", "--checkpoint", sys.argv[1], "--source", sys.argv[2]]
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
assert cli.main(base + ["--driving", sys.argv[3], "--out", sys.argv[5]]) == 0  # warm-up: tracing, threads
before = peak_mb()
assert cli.main(base + ["--driving", sys.argv[4], "--out", sys.argv[5], "--overwrite"]) == 0
print(json.dumps({"before_mb": before, "after_mb": peak_mb()}))
"""


def test_memory_does_not_grow_with_the_driving_video(files, tmp_path):
    """400 driving frames take no more memory than 25: frames are streamed (measured: +18 MB for 1500
    frames, where the whole-video code grew by 511 MB).

    Held in memory, 400 frames of 64x64 are 20 MB as float32, stacked from
    a list of as much, and the animation as much again."""
    import sys

    def clip(name, frames):
        path = str(tmp_path / name)
        subprocess.run([media.ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                        "testsrc=size=64x64:rate=25", "-frames:v", str(frames), "-c:v", "libx264", "-pix_fmt",
                        "yuv420p", path], check=True)
        return path

    short, long = clip("short.mp4", 25), clip("long.mp4", 400)
    done = subprocess.run([sys.executable, "-c", STREAMING_PROBE, files["checkpoint"], files["source"], short, long,
                           str(tmp_path / "out.mp4")], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-2000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    growth = peaks["after_mb"] - peaks["before_mb"]
    assert growth < 30, peaks
    from fomm_lessons.data.frames import count_frames

    assert count_frames(str(tmp_path / "out.mp4")) == 400

"""Reading and writing videos in the original format (fomm_lessons/data/frames.py)."""

import warnings

import numpy as np
import pytest
from PIL import Image

from fomm_lessons.data import frames as F


def smooth_clip(t=4, h=24, w=32):
    """Frames with smooth gradients that move over time (compress well, lossy codecs stay close)."""
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    clip = [np.stack([xx * (0.5 + 0.1 * k), yy, 0.5 + 0.4 * np.sin(3 * xx + k)], -1) for k in range(t)]
    return np.clip(np.stack(clip), 0, 1).astype(np.float32)  # (T, H, W, 3)


def test_folder_round_trip_is_exact_for_uint8(tmp_path):
    rng = np.random.default_rng(0)
    clip = rng.integers(0, 256, size=(5, 12, 10, 3), dtype=np.uint8)
    path = F.write_video(tmp_path / "id1#yt#00001.mp4", clip)
    assert sorted(p.name for p in (tmp_path / "id1#yt#00001.mp4").iterdir())[0] == "0000000.png"
    back = F.read_video(path)
    assert back.dtype == np.float32 and back.shape == (5, 12, 10, 3)
    np.testing.assert_array_equal(back, clip.astype(np.float32) / 255.0)
    assert F.count_frames(path) == 5
    np.testing.assert_array_equal(F.read_video(path, indices=[4, 1]), back[[4, 1]])


def test_frames_are_ordered_by_number_not_by_text(tmp_path):
    video = tmp_path / "a.mp4"
    video.mkdir()
    for t in (0, 1, 2, 10, 11):  # text order would be 0, 1, 10, 11, 2
        Image.fromarray(np.full((4, 4, 3), t, np.uint8)).save(video / f"frame{t}.png")
    values = F.read_video(video)[:, 0, 0, 0] * 255
    np.testing.assert_allclose(values, [0, 1, 2, 10, 11])


def test_grayscale_rgba_and_16_bit_frames_become_rgb(tmp_path):
    video = tmp_path / "mixed.mp4"
    video.mkdir()
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4) * 16
    Image.fromarray(gray).save(video / "0.png")
    rgba = np.dstack([np.full((4, 4), c, np.uint8) for c in (10, 20, 30, 40)])
    Image.fromarray(rgba, "RGBA").save(video / "1.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(video / "2.png")  # 16-bit gray
    clip = F.read_video(video)
    assert clip.shape == (3, 4, 4, 3)
    np.testing.assert_allclose(clip[0], np.repeat(gray[..., None] / 255.0, 3, -1), atol=1e-7)
    np.testing.assert_allclose(clip[1, 0, 0], [10 / 255, 20 / 255, 30 / 255], atol=1e-7)
    np.testing.assert_allclose(clip[2], clip[0], atol=1e-6)


def _png_bytes(gray16):
    """A 16-bit grey PNG written by hand (signature, IHDR, one IDAT, IEND), independent of Pillow."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = gray16.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in gray16)  # filter type 0 per row
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)  # bit depth 16, colour type 0 (grey)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def test_16_bit_gray_png_is_scaled_by_its_bit_depth_whatever_mode_pillow_reports(tmp_path):
    """Pillow 10 reports mode "I" (int32) for this file, later Pillows "I;16": both give v / 65535."""
    gray16 = np.array([[0, 1, 257, 4096], [32768, 65534, 65535, 12345]], np.uint16)
    path = tmp_path / "0.png"
    path.write_bytes(_png_bytes(gray16))
    with Image.open(path) as image:
        assert image.mode in ("I", "I;16")
    got = F.read_image(path)
    np.testing.assert_allclose(got, np.repeat(gray16[..., None] / 65535.0, 3, -1), rtol=1e-6)


@pytest.mark.parametrize("name, atol", [("clip.mp4", 0.03), ("clip.mov", 0.03), ("clip.gif", 0.03)])
def test_real_video_files_round_trip(tmp_path, name, atol):
    clip = smooth_clip()
    path = F.write_video(tmp_path / name, clip, as_folder=False)
    assert (tmp_path / name).is_file()
    back = F.read_video(path)
    assert back.shape == clip.shape and F.count_frames(path) == len(clip)
    assert np.abs(back - clip).mean() < atol
    # a different clip is far away: the comparison can fail
    assert np.abs(back - clip[::-1]).mean() > 2 * atol


def test_wrong_size_is_resized_with_one_warning(tmp_path):
    path = F.write_video(tmp_path / "big.mp4", smooth_clip(t=3, h=48, w=64))
    with pytest.warns(UserWarning, match=r"big\.mp4.*48x64 resized to 24x32") as record:
        clip = F.read_video(path, frame_shape=(24, 32, 3))
    assert len(record) == 1 and clip.shape == (3, 24, 32, 3)
    np.testing.assert_allclose(clip, smooth_clip(t=3, h=24, w=32), atol=0.03)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F.read_video(path, frame_shape=(48, 64))  # right size: no warning


def test_unreadable_videos_name_the_file_and_the_reason(tmp_path):
    video = F.write_video(tmp_path / "broken.mp4", smooth_clip(t=3))
    with open(f"{video}/0000001.png", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(F.VideoError, match=r"0000001\.png: .*Error") as info:
        F.read_video(video)
    assert isinstance(info.value, ValueError) and info.value.reason
    F.read_video(video, indices=[0, 2])  # the good frames still read

    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all")
    with pytest.raises(F.VideoError, match=r"garbage\.mp4: \w+"):
        F.read_video(garbage)
    with pytest.raises(F.VideoError, match="no such file"):
        F.read_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").mkdir()
    with pytest.raises(F.VideoError, match=r"empty\.mp4: the folder has no"):
        F.read_video(tmp_path / "empty.mp4")
    with pytest.raises(F.VideoError, match="out of range"):
        F.read_video(video, indices=[3])


def test_identity_and_names():
    assert F.identity_of("/data/train/id00017#ytid#00001.mp4") == "id00017"
    assert F.identity_of("/data/train/id00017#ytid#00001.mp4/") == "id00017"
    assert F.is_video("x.MP4") and F.is_video("y.gif") and not F.is_video("z.png")
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\), got \(4, 4, 3\)"):
        F.write_video("unused.mp4", np.zeros((4, 4, 3)))


def test_probe_finds_corrupt_frames_without_decoding(tmp_path):
    good = F.write_video(tmp_path / "good.mp4", smooth_clip(t=3))
    assert F.probe(good) == (3, [(24, 32)])
    clip_file = F.write_video(tmp_path / "clip.gif", smooth_clip(t=3), as_folder=False)
    assert F.probe(clip_file) == (3, [(24, 32)])
    bad = F.write_video(tmp_path / "bad.mp4", smooth_clip(t=3))
    frame = tmp_path / "bad.mp4" / "0000002.png"
    data = bytearray(frame.read_bytes())
    data[60] ^= 0xFF  # one flipped byte inside the image data: the chunk checksum no longer matches
    frame.write_bytes(bytes(data))
    with pytest.raises(F.VideoError, match=r"0000002\.png: \w+"):
        F.probe(bad)
    with pytest.raises(F.VideoError, match="no such file"):
        F.probe(tmp_path / "missing.mp4")


def _ffmpeg(*args):
    import subprocess

    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *map(str, args)],
                   check=True, timeout=60)


@pytest.mark.parametrize("name", ["clip.mp4", "talk.mov"])
def test_truncated_video_file_is_refused_naming_the_file(tmp_path, name):
    """Index first (faststart), cut at 60%: ffmpeg alone returns the frames before the cut."""
    import imageio.v2 as imageio

    whole = tmp_path / f"whole-{name}"
    if name.endswith(".mp4"):  # 8 frames of noise, so that each frame takes about as many bytes
        noise = np.random.default_rng(0).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
        imageio.mimwrite(whole, list(noise), format="FFMPEG", fps=25, macro_block_size=1,
                         output_params=["-movflags", "+faststart"])
        frames = 8
    else:  # 50 frames with sound: video and audio chunks interleaved
        _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-f", "lavfi", "-i", "sine=sample_rate=16000",
                "-t", 2, "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-movflags", "+faststart", whole)
        frames = 50
    assert F.count_frames(whole) == frames
    cut = tmp_path / name
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    decoded = len(imageio.mimread(cut, format="FFMPEG", memtest=False))
    assert 0 < decoded < frames  # what ffmpeg gives without complaint
    pattern = rf"{name}: it is truncated: {decoded} frames decoded, its index lists {frames} and only \d+ "
    for read in (F.read_video, F.count_frames, F.probe):
        with pytest.raises(F.VideoError, match=pattern):
            read(cut)


def test_an_edit_list_that_shows_fewer_frames_is_not_truncation(tmp_path):
    """Cut without re-encoding from the key frame before 0.5 s: 50 frames stored, fewer shown, all present."""
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-t", 2, "-c:v", "libx264", "-g", 25,
            "-pix_fmt", "yuv420p", tmp_path / "long.mp4")
    _ffmpeg("-ss", 0.5, "-i", tmp_path / "long.mp4", "-c", "copy", tmp_path / "cut.mp4")
    assert F.mp4_video_index(tmp_path / "cut.mp4") == (50, 50)
    assert 30 < len(F.read_video(tmp_path / "cut.mp4")) < 50  # 37 with ffmpeg 9: counts alone would refuse it

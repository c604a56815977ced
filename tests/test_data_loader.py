"""The tf.data pipeline over original-format datasets (fomm_lessons/data/loader.py)."""

import colorsys
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance

from fomm_lessons.data import loader
from fomm_lessons.data.frames import VideoError, write_video

VOX_AUGMENTATION = {"flip_param": {"horizontal_flip": True, "time_flip": True},
                    "jitter_param": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1}}
SIZE = 8


def labelled_clip(video, frames, size=SIZE):
    """Frames whose red value encodes the video and blue the frame index; green a left-right ramp."""
    clip = np.zeros((frames, size, size, 3), np.uint8)
    clip[..., 0] = 10 * video
    clip[..., 1] = np.arange(size, dtype=np.uint8)[None, None, :] * (160 // size)
    clip[..., 2] = np.arange(frames, dtype=np.uint8)[:, None, None] * 5
    return clip


@pytest.fixture
def root(tmp_path):
    """Identity a: 4 videos, identity b: 1 video; test: 2 videos; 6 to 9 frames each."""
    names = ["a#x#0.mp4", "a#x#1.mp4", "a#y#0.mp4", "a#y#1.mp4", "b#x#0.mp4"]
    for v, name in enumerate(names):
        write_video(tmp_path / "train" / name, labelled_clip(v, 6 + v % 4))
    for v, name in enumerate(["c#x#0.mp4", "d#x#0.mp4"]):
        write_video(tmp_path / "test" / name, labelled_clip(v, 5 + v))
    return tmp_path


def decode_labels(item):
    """(video, frame) encoded by :func:`labelled_clip` in a frame."""
    return int(round(item[0, 0, 0] * 255 / 10)), int(round(item[0, 0, 2] * 255 / 5))


def collect(dataset):
    return [{k: v.numpy() for k, v in item.items()} for item in dataset]


def test_training_pairs_are_two_ordered_frames_of_one_video(root):
    data = loader.FramesDataset(root, "train", frame_shape=(SIZE, SIZE, 3))
    items = collect(data.pairs(seed=0, num_repeats=3))
    assert len(items) == 3 * 5 == 3 * len(data)
    for item in items:
        assert item["source"].shape == item["driving"].shape == (SIZE, SIZE, 3)
        assert item["source"].dtype == np.float32
        (v_s, t_s), (v_d, t_d) = decode_labels(item["source"]), decode_labels(item["driving"])
        assert v_s == v_d and t_s <= t_d < 6 + v_s % 4
        assert item["name"].decode() == data.names[v_s]
    assert {decode_labels(i["source"])[0] for i in items} == set(range(5))  # every video each repeat


def test_id_sampling_draws_identities_uniformly(root):
    by_video = loader.FramesDataset(root, "train", frame_shape=(SIZE, SIZE))
    by_identity = loader.FramesDataset(root, "train", frame_shape=(SIZE, SIZE), id_sampling=True)
    assert len(by_identity) == 2 and set(by_identity.identities) == {"a", "b"}
    shares, videos = [], set()
    for data in (by_video, by_identity):
        names = [item["name"] for item in collect(data.pairs(seed=0, num_repeats=40, augment_frames=False))]
        shares.append(names.count(b"b#x#0.mp4") / len(names))
        videos |= set(names)
    # each repeat holds every video once, or every identity once (then one of its videos)
    assert shares == [0.2, 0.5] and len(videos) == 5


def test_same_seed_same_stream_parallel_or_not(root):
    data = loader.FramesDataset(root, "train", frame_shape=(SIZE, SIZE), augmentation_params=VOX_AUGMENTATION)
    first = collect(data.pairs(seed=3, num_repeats=2, batch_size=4))
    again = collect(data.pairs(seed=3, num_repeats=2, batch_size=4, num_parallel_calls=1))
    other = collect(data.pairs(seed=4, num_repeats=2, batch_size=4))
    for a, b in zip(first, again):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a["source"], b["source"]) for a, b in zip(first, other))
    assert [len(b["name"]) for b in first] == [4, 4, 2]
    # a second pass over the same dataset is a new epoch
    dataset = data.pairs(seed=3, num_repeats=2)
    epoch0, epoch1 = collect(dataset), collect(dataset)
    assert any(not np.array_equal(a["source"], b["source"]) for a, b in zip(epoch0, epoch1))


def test_op_determinism_maps_in_order_without_the_rewrite_log(root, capfd):
    # Under op determinism tf.data rewrote our parallel maps to sequential ones and
    # TensorFlow 2.21 logged "NodeDef mentions attribute use_unbounded_threadpool ..."
    # (with a timestamp) to file descriptor 2; the chapters showed it in their outputs.
    from tensorflow.python.framework import config as tf_config

    data = loader.FramesDataset(root, "train", frame_shape=(SIZE, SIZE), augmentation_params=VOX_AUGMENTATION)
    was_on = tf_config.is_op_determinism_enabled()
    tf_config.disable_op_determinism()
    try:
        parallel = collect(data.pairs(seed=3, num_repeats=2, batch_size=4))
        tf.config.experimental.enable_op_determinism()
        capfd.readouterr()
        in_order = collect(data.pairs(seed=3, num_repeats=2, batch_size=4))
        videos = collect(data.videos_dataset())
        logged = capfd.readouterr().err
    finally:
        (tf.config.experimental.enable_op_determinism if was_on else tf_config.disable_op_determinism)()
    assert "use_unbounded_threadpool" not in logged and "NodeDef" not in logged, logged
    assert len(in_order) == len(parallel) == 3 and len(videos) == len(data)
    for a, b in zip(parallel, in_order):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def pil_reference(image, name, factor):
    pil = Image.fromarray(image)
    enhancer = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
                "saturation": ImageEnhance.Color}[name]
    return np.asarray(enhancer(pil).enhance(factor)).astype(np.float32) / 255.0


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_jitter_matches_pil(name, factor):
    image = np.random.default_rng(1).integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    ours = getattr(loader, f"adjust_{name}")(tf.constant(image[None] / 255.0, tf.float32), factor)[0].numpy()
    reference = pil_reference(image, name, factor)
    # PIL rounds to uint8 (and its contrast mean to an integer level): within 1.5 levels
    np.testing.assert_allclose(ours, reference, atol=1.5 / 255)
    assert np.abs(ours - image / 255.0).max() > 3 / 255  # the adjustment did something


def test_hue_matches_colorsys():
    image = np.random.default_rng(2).random((6, 6, 3)).astype(np.float32)
    ours = loader.adjust_hue(tf.constant(image[None]), -0.1)[0].numpy()
    reference = np.array([[colorsys.hsv_to_rgb((h - 0.1) % 1.0, s, v)
                           for h, s, v in (colorsys.rgb_to_hsv(*p) for p in row)] for row in image])
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_augment_flips_and_applies_jitter_in_order():
    clip = tf.constant(np.random.default_rng(3).random((2, 4, 5, 3)), tf.float32)
    neutral, order = tf.constant([1.0, 1.0, 1.0, 0.0]), tf.constant([0, 1, 2, 3])
    out = loader.augment(clip, tf.constant(True), tf.constant(True), neutral, order).numpy()
    np.testing.assert_allclose(out, clip.numpy()[::-1, :, ::-1], atol=1e-6)
    factors = tf.constant([1.1, 0.9, 1.0, 0.0])
    bc = loader.augment(clip, tf.constant(False), tf.constant(False), factors, order).numpy()
    cb = loader.augment(clip, tf.constant(False), tf.constant(False), factors, tf.constant([1, 0, 2, 3])).numpy()
    expect = loader.adjust_contrast(loader.adjust_brightness(clip, 1.1), 0.9).numpy()
    np.testing.assert_allclose(bc, expect, atol=1e-6)
    assert np.abs(bc - cb).max() > 1e-4  # the order matters (clipping), and is followed


def test_random_augmentation_ranges_and_bad_keys():
    draws = [loader.random_augmentation(tf.constant([k, 7], tf.int64), VOX_AUGMENTATION) for k in range(300)]
    factors = np.stack([d[2].numpy() for d in draws])
    assert np.all(np.abs(factors[:, :3] - 1) <= 0.1) and np.all(np.abs(factors[:, 3]) <= 0.1)
    assert factors.std(axis=0).min() > 0.04  # uniform on [-0.1, 0.1] has std 0.058
    assert 0.4 < np.mean([d[0] for d in draws]) < 0.6 and 0.4 < np.mean([d[1] for d in draws]) < 0.6
    assert all(sorted(d[3].numpy()) == [0, 1, 2, 3] for d in draws)
    assert len({tuple(d[3].numpy()) for d in draws}) == 24  # every order of the four adjustments
    hflip, tflip, factors, _ = loader.random_augmentation(tf.constant([0, 1], tf.int64), None)
    assert not hflip and not tflip and list(factors.numpy()) == [1, 1, 1, 0]
    with pytest.raises(ValueError, match="rotation_param"):
        loader.FramesDataset("unused", augmentation_params={"rotation_param": {}})


def test_wrong_size_and_gray_frames_are_converted_with_one_warning(tmp_path):
    write_video(tmp_path / "train" / "big#0.mp4", labelled_clip(1, 4, size=16))
    gray = tmp_path / "train" / "gray#0.mp4"
    gray.mkdir()
    for t in range(4):
        Image.fromarray(np.full((SIZE, SIZE), 40 * t, np.uint8)).save(gray / f"{t:07d}.png")
    rgba = tmp_path / "train" / "rgba#0.mp4"
    rgba.mkdir()
    for t in range(4):
        Image.fromarray(np.full((SIZE, SIZE, 4), [200, 100, 50, 7 * t], np.uint8), "RGBA").save(rgba / f"{t}.png")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        data = loader.FramesDataset(tmp_path, "train", frame_shape=(SIZE, SIZE))
        items = collect(data.pairs(seed=0, num_repeats=8, augment_frames=False))
    resized = [str(w.message) for w in record if "resized" in str(w.message)]
    assert len(resized) == 1 and "big#0.mp4: frames of size 16x16 resized to 8x8" in resized[0]
    for item in items:
        assert item["source"].shape == (SIZE, SIZE, 3)
        if item["name"] == b"gray#0.mp4":
            np.testing.assert_array_equal(item["source"][..., 0], item["source"][..., 2])
        if item["name"] == b"rgba#0.mp4":
            np.testing.assert_allclose(item["driving"][3, 3], [200 / 255, 100 / 255, 50 / 255], atol=1e-6)
        if item["name"] == b"big#0.mp4":  # a 16-pixel ramp of steps 10 averaged to 8 pixels: steps 20
            np.testing.assert_allclose(np.diff(item["source"][0, 1:-1, 1] * 255), 20, atol=1e-3)


def test_bad_videos_raise_or_are_skipped_and_counted(root):
    bad = root / "train" / "a#x#1.mp4" / "0000003.png"
    bad.write_bytes(bad.read_bytes()[:-20])  # truncated
    with pytest.raises(VideoError, match=r"a#x#1\.mp4/0000003\.png: \w+"):
        loader.FramesDataset(root, "train", frame_shape=(SIZE, SIZE))
    (root / "train" / "empty#0.mp4").mkdir()
    (root / "train" / "garbage#0.mp4").write_bytes(b"not a video")
    with pytest.warns(UserWarning, match="skipping") as record:
        tolerant = loader.FramesDataset(root, "train", frame_shape=(SIZE, SIZE), skip_bad=True)
    assert len([w for w in record if "skipping" in str(w.message)]) == 3, [str(w.message) for w in record]
    assert [os.path.basename(os.path.dirname(p)) if p.endswith(".png") else os.path.basename(p)
            for p, _ in tolerant.skipped] == ["a#x#1.mp4", "empty#0.mp4", "garbage#0.mp4"]
    assert all(reason for _, reason in tolerant.skipped)
    assert tolerant.names == ["a#x#0.mp4", "a#y#0.mp4", "a#y#1.mp4", "b#x#0.mp4"]
    assert {i["name"] for i in collect(tolerant.pairs(seed=0, num_repeats=5))} <= set(
        n.encode() for n in tolerant.names)


def test_empty_or_missing_split_names_the_folder(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "notes.txt").write_text("not a video")
    with pytest.raises(ValueError, match=f"no videos in {tmp_path / 'train'}"):
        loader.FramesDataset(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "test")):
        loader.FramesDataset(tmp_path, "test")


def test_evaluation_gives_whole_videos_in_order(root):
    params = {"root_dir": "ignored", "frame_shape": [SIZE, SIZE, 3], "id_sampling": True,
              "augmentation_params": VOX_AUGMENTATION, "pairs_list": None}
    videos = collect(loader.make_dataset(root, params, split="test"))
    assert [v["name"].decode() for v in videos] == ["c#x#0.mp4", "d#x#0.mp4"]
    for v, item in enumerate(videos):
        assert item["video"].shape == (5 + v, SIZE, SIZE, 3)
        assert [decode_labels(frame) for frame in item["video"]] == [(v, t) for t in range(5 + v)]
    pairs = loader.make_dataset(root, params, split="train", seed=0, num_repeats=2, batch_size=2)
    assert pairs.element_spec["source"].shape.as_list() == [None, SIZE, SIZE, 3]
    assert sum(b["source"].shape[0] for b in pairs) == 4  # id_sampling: 2 identities x 2 repeats


def test_real_video_files_are_read_too(tmp_path):
    clip = labelled_clip(2, 5, size=16)  # 16x16 so that the codec keeps the flat colours
    write_video(tmp_path / "train" / "file#0.gif", clip, as_folder=False)
    write_video(tmp_path / "train" / "folder#0.mp4", labelled_clip(3, 5, size=16))
    data = loader.FramesDataset(tmp_path, "train", frame_shape=(16, 16, 3))
    assert data.names == ["file#0.gif", "folder#0.mp4"] and data.num_frames == [5, 5]
    items = collect(data.pairs(seed=0, num_repeats=6, augment_frames=False))
    assert {i["name"] for i in items} == {b"file#0.gif", b"folder#0.mp4"}
    for item in items:
        (v_s, t_s), (v_d, t_d) = decode_labels(item["source"]), decode_labels(item["driving"])
        assert v_s == v_d == (2 if item["name"] == b"file#0.gif" else 3) and t_s <= t_d < 5
    videos = collect(data.videos_dataset())
    assert [decode_labels(f) for f in videos[0]["video"]] == [(2, t) for t in range(5)]

"""Training pairs and whole videos of an original-format dataset, as ``tf.data``.

The original's ``FramesDataset`` + ``DatasetRepeater`` + ``AllAugmentationTransform``:
a training item is two frames of one video (with ``id_sampling``, a random
video of a random identity), augmented alike (horizontal flip, time flip,
colour jitter); an evaluation item is a whole video, frames in order.

Frames are decoded by TensorFlow's own ops, so a training pass runs no Python
(no GIL, no hang at exit); only real ``.mp4``/``.mov``/``.gif`` files go
through :mod:`fomm_lessons.data.frames`. Every random choice is a stateless
function of a key drawn per item from ``seed``, so the stream is the same for
any number of parallel decoders, and each new pass over a dataset is new.
"""

import os
import warnings

import numpy as np
import tensorflow as tf

from fomm_lessons.data.frames import VideoError, frame_files, identity_of, is_video, load_frames, probe

JITTER_KEYS = ("brightness", "contrast", "saturation", "hue")


def _map(dataset, function, num_parallel_calls):
    """``dataset.map(function)`` in order: in parallel, or one item at a time under op determinism.

    With ``tf.config.experimental.enable_op_determinism()`` (as the chapters and
    the tests run), tf.data's ``make_deterministic`` graph rewrite turns a
    parallel map whose function holds stateful ops, as ours does, into a
    sequential map anyway, and TensorFlow 2.21 logs an error line with a
    timestamp while doing so ("NodeDef mentions attribute use_unbounded_threadpool
    which is not in the op definition"). Asking for the sequential map here
    gives the same items, without the rewrite and its line.
    """
    from tensorflow.python.framework import config as tf_config  # no public getter

    if num_parallel_calls is None or tf_config.is_op_determinism_enabled():
        return dataset.map(function)
    return dataset.map(function, num_parallel_calls=num_parallel_calls, deterministic=True)


# ---------------------------------------------------------------------------
# Augmentation (the original's augmentation.py, written in TensorFlow)
# ---------------------------------------------------------------------------

def _gray(images):
    """ITU-R 601 luma, as PIL's ``convert("L")`` and torchvision: (..., H, W, 1)."""
    return tf.tensordot(images, tf.constant([[0.299], [0.587], [0.114]], images.dtype), 1)


def adjust_brightness(images, factor):
    """Scale towards black: ``factor * x`` (PIL ``ImageEnhance.Brightness``)."""
    return tf.clip_by_value(images * factor, 0.0, 1.0)


def adjust_contrast(images, factor):
    """Blend with the mean gray level of each image (PIL ``ImageEnhance.Contrast``)."""
    mean = tf.reduce_mean(_gray(images), axis=[-3, -2, -1], keepdims=True)
    return tf.clip_by_value(mean + factor * (images - mean), 0.0, 1.0)


def adjust_saturation(images, factor):
    """Blend with the gray image (PIL ``ImageEnhance.Color``)."""
    gray = _gray(images)
    return tf.clip_by_value(gray + factor * (images - gray), 0.0, 1.0)


def adjust_hue(images, delta):
    """Rotate the hue by ``delta`` turns, ``delta`` in [-0.5, 0.5] (torchvision ``adjust_hue``)."""
    return tf.image.adjust_hue(images, delta)


_ADJUST = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(images, factors, order):
    """Apply the four adjustments with ``factors`` (4,) in the order ``order`` (4,), one set for all frames."""
    for step in range(4):
        op = order[step]
        images = tf.switch_case(op, [lambda f=f, i=i: f(images, factors[i]) for i, f in enumerate(_ADJUST)])
    return images


def parse_augmentation(augmentation_params):
    """The original's ``augmentation_params`` -> ((horizontal flip, time flip), low (4,), high (4,)).

    ``low``/``high`` bound the brightness, contrast, saturation and hue
    factors (an amount ``a`` gives ``[max(0, 1 - a), 1 + a]``, hue ``[-a, a]``).
    """
    params = augmentation_params or {}
    unknown = set(params) - {"flip_param", "jitter_param"}
    if unknown:
        raise ValueError(f"expected augmentation_params with flip_param and jitter_param, "
                         f"got unsupported {sorted(unknown)}")
    flip = params.get("flip_param") or {}
    jitter = params.get("jitter_param") or {}
    if set(jitter) - set(JITTER_KEYS):
        raise ValueError(f"expected jitter_param keys among {JITTER_KEYS}, got {sorted(jitter)}")
    amounts = [float(jitter.get(key) or 0.0) for key in JITTER_KEYS]
    low = [max(0.0, 1.0 - a) for a in amounts[:3]] + [-amounts[3]]
    high = [1.0 + a for a in amounts[:3]] + [amounts[3]]
    flips = (bool(flip.get("horizontal_flip", False)), bool(flip.get("time_flip", False)))
    return flips, np.array(low, np.float32), np.array(high, np.float32)


def random_augmentation(seed, augmentation_params):
    """One item's random parameters from a stateless ``seed`` (2,): (hflip, tflip, factors (4,), order (4,))."""
    (horizontal, time), low, high = parse_augmentation(augmentation_params)
    u = tf.random.stateless_uniform([10], seed)
    hflip = tf.logical_and(horizontal, u[0] < 0.5)
    tflip = tf.logical_and(time, u[1] < 0.5)
    factors = low + (high - low) * u[2:6]  # exactly neutral where an amount is 0
    order = tf.cast(tf.argsort(u[6:10]), tf.int32)  # a random order of the four adjustments
    return hflip, tflip, factors, order


def augment(frames, horizontal, time, factors, order):
    """The original's ``AllAugmentationTransform`` on a clip (T, H, W, 3) with given random parameters."""
    frames = tf.cond(time, lambda: tf.reverse(frames, [0]), lambda: frames)
    frames = tf.cond(horizontal, lambda: tf.reverse(frames, [2]), lambda: frames)
    return color_jitter(frames, factors, order)


# ---------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------

def _is_good(item, ok):
    return ok


def _item(item, ok):
    return item


class FramesDataset:
    """The videos of ``ROOT/train`` or ``ROOT/test`` in the original format.

    ``frame_shape``, ``id_sampling`` and ``augmentation_params`` are the
    original config's ``dataset_params``. Every video is checked when the
    dataset is made: a bad one raises :class:`~fomm_lessons.data.frames.VideoError` naming the file and
    the reason or, with ``skip_bad``, is skipped with a warning and listed in
    ``skipped``; frames of another size are resized, with one warning per video.
    """

    def __init__(self, root, split="train", frame_shape=(256, 256, 3), id_sampling=False,
                 augmentation_params=None, skip_bad=False, **unused):
        if split not in ("train", "test"):
            raise ValueError(f"expected split 'train' or 'test', got {split!r}")
        self.root = os.fspath(root)
        self.folder = os.path.join(self.root, split)
        self.is_train = split == "train"
        self.frame_shape = tuple(int(n) for n in frame_shape)
        if len(self.frame_shape) == 2:
            self.frame_shape += (3,)
        if len(self.frame_shape) != 3 or self.frame_shape[2] != 3:
            raise ValueError(f"expected frame_shape (H, W, 3), got {tuple(frame_shape)}")
        self.id_sampling = bool(id_sampling)
        self.augmentation_params = augmentation_params
        parse_augmentation(augmentation_params)  # check the keys now
        self.skip_bad = bool(skip_bad)
        self.skipped = []  # (path, reason) of every video skipped
        self._scan()

    @classmethod
    def from_config(cls, root, dataset_params, split="train", **kwargs):
        """From the config's ``dataset_params`` dict (its ``root_dir`` is replaced by ``root``)."""
        params = {k: v for k, v in dict(dataset_params or {}).items() if k != "root_dir"}
        return cls(root if root is not None else dataset_params["root_dir"], split, **params, **kwargs)

    def _scan(self):
        if not os.path.isdir(self.folder):
            raise FileNotFoundError(f"no {os.path.basename(self.folder)!r} split: {self.folder} is not a folder")
        height, width, _ = self.frame_shape
        self.videos, self.num_frames, files, starts, self._is_file = [], [], [], [], []
        for name in sorted(n for n in os.listdir(self.folder) if is_video(n)):
            path = os.path.join(self.folder, name)
            try:
                count, sizes = probe(path)
            except VideoError as error:
                self._bad(error)
                continue
            if sizes != [(height, width)]:
                shown = ", ".join(f"{h}x{w}" for h, w in sizes)
                warnings.warn(f"{path}: frames of size {shown} resized to {height}x{width}", stacklevel=3)
            self.videos.append(path)
            self.num_frames.append(count)
            starts.append(len(files))
            self._is_file.append(not os.path.isdir(path))
            files.extend(frame_files(path) if os.path.isdir(path) else [path])
        if not self.videos:
            raise ValueError(f"no videos in {self.folder}: expected folders of PNG frames or "
                             f"files named *.mp4/*.mov/*.gif" + (f" ({len(self.skipped)} skipped as bad)"
                                                                 if self.skipped else ""))
        self.names = [os.path.basename(v) for v in self.videos]
        self.identities = {}
        for i, path in enumerate(self.videos):
            self.identities.setdefault(identity_of(path), []).append(i)
        self._files, self._starts = files, starts

    def _bad(self, error):
        if not self.skip_bad:
            raise error
        self.skipped.append((error.path, error.reason))
        warnings.warn(f"skipping {error}", stacklevel=3)

    def __len__(self):
        """Items per repeat: identities with ``id_sampling`` in training, else videos."""
        return len(self.identities) if self.is_train and self.id_sampling else len(self.videos)

    def _tables(self):
        """The dataset as constant tensors (made per pipeline, inside its graph)."""
        return {"files": tf.constant(self._files), "starts": tf.constant(self._starts, tf.int32),
                "counts": tf.constant(self.num_frames, tf.int32), "is_file": tf.constant(self._is_file),
                "names": tf.constant(self.names)}

    def _decode_frame(self, path):
        """One frame file -> (H, W, 3) float32 in [0, 1], any PNG/JPEG mode, resized if needed."""
        height, width, _ = self.frame_shape
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, dtype=tf.float32, expand_animations=False)
        shape = tf.shape(image)
        same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
        image = tf.cond(same, lambda: image,
                        lambda: tf.image.resize(image, [height, width], antialias=True))
        image.set_shape([height, width, 3])
        return image

    def _read_file(self, video, indices):
        """Frames of a real video file through imageio (NumPy), with the skip_bad rule."""
        height, width, _ = self.frame_shape
        try:
            return load_frames(self.videos[int(video)], None if indices.size == 0 else indices,
                               self.frame_shape)[0], True
        except VideoError as error:
            self._bad(error)
            return np.zeros((0 if indices.size == 0 else len(indices), height, width, 3), np.float32), False

    def _frames(self, tables, video, indices, count):
        """Frames ``indices`` (``count`` of them, or all when ``indices`` is empty) of ``video``: (frames, ok)."""
        height, width, _ = self.frame_shape

        def from_file():
            frames, ok = tf.numpy_function(self._read_file, [video, indices], [tf.float32, tf.bool])
            return tf.reshape(frames, [-1, height, width, 3]), ok

        def from_folder():
            chosen = indices if count is not None else tf.range(tables["counts"][video])
            paths = tf.gather(tables["files"], tables["starts"][video] + chosen)
            frames = tf.map_fn(self._decode_frame, paths, fn_output_signature=tf.TensorSpec(
                [height, width, 3], tf.float32))
            return frames, tf.constant(True)

        frames, ok = tf.cond(tables["is_file"][video], from_file, from_folder)
        frames.set_shape([count, height, width, 3])  # (T, H, W, 3)
        return frames, ok

    def pairs(self, seed=0, num_repeats=1, batch_size=None, augment_frames=True,
              num_parallel_calls=tf.data.AUTOTUNE, drop_remainder=False, prefetch=tf.data.AUTOTUNE):
        """Training items ``{"source", "driving": (H, W, 3) float32, "name": str}``.

        One pass is ``num_repeats * len(self)`` items: each video (each
        identity with ``id_sampling``, then one of its videos) ``num_repeats``
        times, shuffled. Each new pass over the dataset draws new items; the
        sequence of passes is the same in every run with the same ``seed``.
        """
        groups = list(self.identities.values()) if self.id_sampling else [[i] for i in range(len(self.videos))]
        members = tf.constant([v for g in groups for v in g], tf.int32)
        group_starts = tf.constant(np.cumsum([0] + [len(g) for g in groups[:-1]]), tf.int32)
        group_sizes = tf.constant([len(g) for g in groups], tf.int32)
        total = len(groups) * int(num_repeats)
        order = tf.data.Dataset.range(len(groups)).repeat(int(num_repeats))
        order = order.shuffle(max(total, 1), seed=int(seed), reshuffle_each_iteration=True)
        keys = tf.data.Dataset.random(seed=int(seed), rerandomize_each_iteration=True)
        params = self.augmentation_params

        def load(group, key):
            tables = self._tables()
            group = tf.cast(group, tf.int32)
            u = tf.random.stateless_uniform([3], tf.stack([key, tf.constant(0, tf.int64)]))
            size = group_sizes[group]
            video = members[group_starts[group] + tf.minimum(tf.cast(u[0] * tf.cast(size, tf.float32), tf.int32),
                                                              size - 1)]
            count = tables["counts"][video]
            indices = tf.minimum(tf.cast(u[1:] * tf.cast(count, tf.float32), tf.int32), count - 1)
            indices = tf.sort(indices)  # two frames, with replacement, in time order, as the original
            frames, ok = self._frames(tables, video, indices, 2)  # (2, H, W, 3)
            if augment_frames:
                hflip, tflip, factors, jitter_order = random_augmentation(
                    tf.stack([key, tf.constant(1, tf.int64)]), params)
                frames = augment(frames, hflip, tflip, factors, jitter_order)
            return {"source": frames[0], "driving": frames[1], "name": tables["names"][video]}, ok

        dataset = tf.data.Dataset.zip(order, keys)
        dataset = _map(dataset, load, num_parallel_calls)
        dataset = dataset.filter(_is_good).map(_item)
        if self.skip_bad:
            dataset = dataset.ignore_errors(log_warning=True)
        if batch_size:
            dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
        return dataset.prefetch(prefetch) if prefetch else dataset

    def videos_dataset(self, num_parallel_calls=2):
        """Evaluation items ``{"video": (T, H, W, 3) float32, "name": str}``, every video in order."""

        def load(video):
            tables = self._tables()
            frames, ok = self._frames(tables, video, tf.zeros([0], tf.int32), None)
            return {"video": frames, "name": tables["names"][video]}, ok

        dataset = tf.data.Dataset.range(len(self.videos), output_type=tf.int32)
        dataset = _map(dataset, load, num_parallel_calls)
        dataset = dataset.filter(_is_good).map(_item)
        if self.skip_bad:
            dataset = dataset.ignore_errors(log_warning=True)
        return dataset.prefetch(1)


def make_dataset(root, dataset_params=None, split="train", seed=0, num_repeats=1, batch_size=None,
                 skip_bad=False, **kwargs):
    """Training pairs (``split="train"``) or whole test videos of ``root`` as a ``tf.data.Dataset``.

    ``dataset_params`` is the FOMM config's dict (``frame_shape``,
    ``id_sampling``, ``augmentation_params``); ``kwargs`` go to
    :meth:`FramesDataset.pairs`.
    """
    frames = FramesDataset.from_config(root, dataset_params or {}, split, skip_bad=skip_bad)
    if split == "train":
        return frames.pairs(seed=seed, num_repeats=num_repeats, batch_size=batch_size, **kwargs)
    return frames.videos_dataset()

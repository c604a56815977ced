"""Image animation (Sec. 3.4 of the paper): move a source image as a driving video moves.

The driving keypoints are detected for all frames in batches, made relative to
one initial driving frame (:func:`normalize_kp`, Sec. 3.4 "relative motion
transfer") and fed with the source keypoints to the generator, again in
batches. Only the keypoints of a driving video are kept for all its frames
(K x 6 numbers a frame): frames are read, and the animation written, a chunk
at a time (:mod:`fomm_lessons.data.stream`), so a 10-minute video takes the
memory of a few seconds of it. ``fomm-lessons animate`` calls :func:`main`;
frame rates, audio and output paths are :mod:`fomm_lessons.data.media`'s.
"""

import sys
import warnings
import weakref

import numpy as np

from fomm_lessons.checkpoint import load_checkpoint  # noqa: F401  (used by main; part of this module's API)

# Frames per network call. vox-256 at 256x256 on a 2-core CPU: about 1.7 frames/s with 1, 4 or 8;
# larger batches pay off on a GPU.
BATCH_SIZE = 4
_INFERENCE = weakref.WeakKeyDictionary()  # model -> its tf.function in inference mode


# ---------------------------------------------------------------------------
# Keypoint normalisation and the best driving frame
# ---------------------------------------------------------------------------

def hull_area(points):
    """Area of the convex hull of ``points`` (K, 2) (scipy's ``ConvexHull.volume`` in 2-D)."""
    from scipy.spatial import ConvexHull, QhullError

    points = np.asarray(points, np.float64)
    try:
        return float(ConvexHull(points).volume)
    except (QhullError, ValueError):
        raise ValueError(f"expected at least 3 points (K, 2) not on one line, got {points.shape[0]} points "
                         f"spanning {np.ptp(points, axis=0).round(4).tolist()}") from None


def normalize_kp(kp_source, kp_driving, kp_driving_initial, adapt_movement_scale=False,
                 use_relative_movement=True, use_relative_jacobian=True):
    """Relative motion transfer (Sec. 3.4): the keypoints to drive the source with.

    With relative movement, ``value = s * (p_D - p_D1) + p_S`` where ``p_D1`` are
    the initial driving frame's keypoints and ``s = sqrt(area(hull p_S) / area(hull p_D1))``
    when ``adapt_movement_scale`` (else 1); with relative jacobians too,
    ``jacobian = J_D J_D1^-1 J_S``. Without relative movement the driving
    keypoints are used as they are. Dicts of arrays: ``value`` (B, K, 2),
    ``jacobian`` (B, K, 2, 2); the source and the initial frame have B = 1.
    """
    import tensorflow as tf

    from fomm_lessons.tps import batched_matmul

    kp_new = dict(kp_driving)
    if not use_relative_movement:
        return kp_new
    scale = 1.0
    if adapt_movement_scale:
        source = np.asarray(kp_source["value"])[0]
        initial = np.asarray(kp_driving_initial["value"])[0]
        scale = np.sqrt(hull_area(source)) / np.sqrt(hull_area(initial))
    value = tf.convert_to_tensor(kp_driving["value"])
    kp_new["value"] = (value - kp_driving_initial["value"]) * tf.cast(scale, value.dtype) + kp_source["value"]
    if use_relative_jacobian and "jacobian" in kp_driving:
        jacobian_diff = batched_matmul(kp_driving["jacobian"], tf.linalg.inv(kp_driving_initial["jacobian"]))
        kp_new["jacobian"] = batched_matmul(jacobian_diff, kp_source["jacobian"])  # (B, K, 2, 2)
    return kp_new


def normalized_shape(points):
    """Landmarks (K, 2) centred on their mean and divided by sqrt(area of their convex hull)."""
    points = np.asarray(points, np.float64)
    points = points - points.mean(axis=0, keepdims=True)
    return points / np.sqrt(hull_area(points))


def face_alignment_landmarks():
    """A function image (H, W, 3) in [0, 1] -> 68 landmarks (68, 2), or None without ``face-alignment``."""
    try:
        import face_alignment
    except ImportError:
        return None
    types = face_alignment.LandmarksType
    kind = getattr(types, "TWO_D", None) or getattr(types, "_2D")
    aligner = face_alignment.FaceAlignment(kind, flip_input=True, device="cpu")

    def landmarks(image):
        found = aligner.get_landmarks(255 * np.asarray(image))
        return None if not found else np.asarray(found[0])[:, :2]

    return landmarks


def find_best_frame(source_image, driving_frames, models=None, landmarks="auto", batch_size=BATCH_SIZE,
                    kp_driving=None):
    """Index of the driving frame whose normalised landmarks are closest to the source's (the original demo).

    ``driving_frames``: (T, H, W, 3), or any iterable of frames (read once,
    and only when the landmarks are not the model's keypoints ``kp_driving``).

    ``landmarks``: ``"auto"`` (face-alignment when installed, else the model's
    keypoints), ``"model"`` (the keypoint detector of ``models``), or a function
    image -> (N, 2) points. Frames where no landmarks are found are skipped.
    """
    if isinstance(landmarks, str) and landmarks == "auto":
        try:
            landmarks = face_alignment_landmarks() or "model"
        except Exception as error:  # installed, but its network could not be loaded (offline)
            warnings.warn(f"face-alignment failed ({type(error).__name__}: {error}); using the model's keypoints",
                          stacklevel=2)
            landmarks = "model"
    if isinstance(landmarks, str) and landmarks == "model":
        if models is None:
            raise ValueError("expected models to find the best frame with the model's own keypoints, got None")
        source_points = detect_keypoints(models.kp_detector, source_image[None], 1)["value"][0]
        if kp_driving is None:
            kp_driving = detect_keypoints(models.kp_detector, driving_frames, batch_size)
        driving_points = list(np.asarray(kp_driving["value"]))
    else:
        source_points = landmarks(source_image)
        if source_points is None:
            raise ValueError("no landmarks found in the source image")
        driving_points = [landmarks(frame) for frame in driving_frames]
    reference = normalized_shape(source_points)
    best, best_norm = 0, np.inf
    for index, points in enumerate(driving_points):
        if points is None:  # no face found in this frame
            continue
        try:
            norm = float(np.sum((reference - normalized_shape(points)) ** 2))
        except ValueError:  # landmarks on one line
            continue
        if norm < best_norm:
            best, best_norm = index, norm
    return best


# ---------------------------------------------------------------------------
# Animation
# ---------------------------------------------------------------------------

def _batches(count, batch_size):
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"expected a batch size of at least 1, got {batch_size}")
    return [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def _padded(array, size):
    """``array`` (n, ...) padded to (size, ...) by repeating its last row: one traced shape for every batch."""
    if len(array) == size:
        return array
    return np.concatenate([array, np.repeat(array[-1:], size - len(array), axis=0)])


def inference(model):
    """``model(..., training=False)`` as a ``tf.function``, made once per model (about twice as fast on CPU)."""
    import tensorflow as tf

    if model not in _INFERENCE:
        ref = weakref.ref(model)  # the function must not keep the model alive
        _INFERENCE[model] = tf.function(lambda *args, **kwargs: ref()(*args, training=False, **kwargs))
    return _INFERENCE[model]


def detect_keypoints(kp_detector, frames, batch_size=BATCH_SIZE, progress=None):
    """Keypoints of ``frames`` (T, H, W, 3), or of an iterable of such chunks, ``batch_size`` frames at a
    time: NumPy ``value`` (T, K, 2), ``jacobian`` (T, K, 2, 2). ``progress``: a tqdm bar to advance."""
    import tensorflow as tf

    chunks = [frames] if isinstance(frames, np.ndarray) or np.ndim(frames) == 4 else frames
    parts, size = {}, None
    for chunk in chunks:
        chunk = np.asarray(chunk, np.float32)  # (n, H, W, 3)
        size = size or min(int(batch_size), len(chunk))  # one traced shape for every batch
        for start, stop in _batches(len(chunk), size):
            kp = inference(kp_detector)(tf.constant(_padded(chunk[start:stop], size)))
            for key, value in kp.items():
                parts.setdefault(key, []).append(np.asarray(value)[:stop - start])
            if progress is not None:
                progress.update(stop - start)
    if not parts:
        raise ValueError("expected at least one driving frame, got none")
    return {key: np.concatenate(value) for key, value in parts.items()}


def _take(kp, start, stop):
    return {key: value[start:stop] for key, value in kp.items()}


def identity_jacobians(kp):
    """``kp`` with every Jacobian replaced by the identity: the zeroth-order motion T(z) = p_S + z - p_D."""
    if "jacobian" not in kp:
        return dict(kp)
    shape = np.shape(kp["jacobian"])  # (B, K, 2, 2)
    return {**kp, "jacobian": np.broadcast_to(np.eye(2, dtype=np.float32), shape)}


def generate(source_image, kp_driving, models, relative=True, adapt_movement_scale=False, relative_jacobian=True,
             batch_size=BATCH_SIZE, initial_frame=0, outputs=("prediction",), first_order=True):
    """The generator's ``outputs`` for every driving keypoint set, batch by batch: yields ``{name: (b, ...)}``.

    ``kp_driving``: ``value`` (T, K, 2) and ``jacobian`` (T, K, 2, 2) of the
    driving frames, made relative to those of frame ``initial_frame``. With
    ``first_order=False`` the source's and the driving keypoints' Jacobians
    are replaced by the identity (Eq. 4 without its first-order term).
    """
    import tensorflow as tf

    source_image = np.asarray(source_image, np.float32)
    count = len(kp_driving["value"])
    if not 0 <= int(initial_frame) < count:
        raise ValueError(f"expected an initial frame index in [0, {count}), got {initial_frame}")
    source = tf.constant(source_image[None])  # (1, H, W, 3)
    kp_source = models.kp_detector(source, training=False)
    if not first_order:
        kp_source = {key: tf.convert_to_tensor(value) for key, value in identity_jacobians(kp_source).items()}
    kp_initial = _take(kp_driving, initial_frame, initial_frame + 1)
    size = min(int(batch_size), count)
    sources = tf.repeat(source, size, axis=0)  # (b, H, W, 3)
    for start, stop in _batches(count, size):
        kp_batch = {key: _padded(value[start:stop], size) for key, value in kp_driving.items()}
        kp_norm = normalize_kp(kp_source, kp_batch, kp_initial, adapt_movement_scale=adapt_movement_scale,
                               use_relative_movement=relative, use_relative_jacobian=relative_jacobian)
        if not first_order:
            kp_norm = identity_jacobians(kp_norm)
        kp_norm = {key: tf.convert_to_tensor(value, tf.float32) for key, value in kp_norm.items()}
        out = inference(models.generator)(sources, kp_source=kp_source, kp_driving=kp_norm)
        yield {name: np.asarray(out[name])[:stop - start] for name in outputs}


def animate(source_image, driving_frames, models, relative=True, adapt_movement_scale=False,
            relative_jacobian=True, batch_size=BATCH_SIZE, initial_frame=0, kp_driving=None,
            outputs=("prediction",), first_order=True):
    """The source image (H, W, 3) moved as ``driving_frames`` (T, H, W, 3) move: (T, H, W, 3) in [0, 1].

    Every driving frame is made relative to frame ``initial_frame`` (the
    original demo animates forwards and backwards from the best frame; both
    halves use that frame as the initial one, so this is the same thing done
    once). ``relative_jacobian`` applies only with ``relative``, as in the
    original. With other ``outputs`` of the generator (``deformation``,
    ``occlusion_map``, ...) a dict of NumPy arrays is returned instead.
    ``first_order=False`` runs the zeroth-order motion (identity Jacobians).
    Everything is in memory; :func:`animate_file` streams long videos.
    """
    source_image = np.asarray(source_image, np.float32)
    driving_frames = np.asarray(driving_frames, np.float32)
    if source_image.ndim != 3 or driving_frames.ndim != 4 or driving_frames.shape[1:] != source_image.shape:
        raise ValueError(f"expected a source image (H, W, 3) and driving frames (T, H, W, 3) of the same size, "
                         f"got {source_image.shape} and {driving_frames.shape}")
    count = len(driving_frames)
    if not 0 <= int(initial_frame) < count:
        raise ValueError(f"expected an initial frame index in [0, {count}), got {initial_frame}")
    if kp_driving is None:
        kp_driving = detect_keypoints(models.kp_detector, driving_frames, batch_size)
    parts = list(generate(source_image, kp_driving, models, relative, adapt_movement_scale, relative_jacobian,
                          batch_size, initial_frame, outputs, first_order))
    results = {name: np.concatenate([part[name] for part in parts]) for name in outputs}
    return results["prediction"] if tuple(outputs) == ("prediction",) else results


# ---------------------------------------------------------------------------
# Files: a driving video streamed through the model into an output video
# ---------------------------------------------------------------------------

def _progress(total, desc, enabled):
    """A tqdm bar of frames: shown when ``enabled`` is True, hidden when False, on a terminal only when None."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="frame", disable=None if enabled is None else not enabled)


def animate_stream(source_image, driving, models, frame_shape, box=None, best_frame=None, find_best=False,
                   relative=True, adapt_movement_scale=False, relative_jacobian=True, batch_size=BATCH_SIZE,
                   progress=None, outputs=("prediction",)):
    """:func:`animate` of the video file or folder ``driving``, read a chunk at a time: yields the
    generator's ``outputs`` batch by batch (``{name: (b, ...)}``).

    The frames are cropped to ``box`` (x, y, w, h) and resized to
    ``frame_shape`` as they are read: once for their keypoints and, with
    ``find_best`` and face-alignment landmarks, once more. ``best_frame`` (an
    index) or ``find_best`` chooses the initial frame (default 0).
    ``progress``: True, False, or None for progress bars on a terminal only.
    """
    from fomm_lessons.data.frames import VideoError
    from fomm_lessons.data.stream import frame_count, iter_frames

    def frames():
        try:
            yield from iter_frames(driving, frame_shape, box)
        except VideoError as error:
            raise ValueError(f"the driving input {driving} is not a video: {error.reason}") from None

    with _progress(frame_count(driving), "driving keypoints", progress) as bar:
        kp_driving = detect_keypoints(models.kp_detector, frames(), batch_size, progress=bar)
    count = len(kp_driving["value"])  # (T, K, 2): all that is kept of every frame
    initial = 0
    if best_frame is not None:
        if not 0 <= int(best_frame) < count:
            raise ValueError(f"expected --best-frame between 0 and {count - 1} (the driving video has {count} "
                             f"frames), got {best_frame}")
        initial = int(best_frame)
    elif find_best:
        initial = find_best_frame(source_image, (f for chunk in frames() for f in chunk), models,
                                  kp_driving=kp_driving, batch_size=batch_size)
    with _progress(count, "generating", progress) as bar:
        for part in generate(source_image, kp_driving, models, relative, adapt_movement_scale, relative_jacobian,
                             batch_size, initial, outputs):
            yield part
            bar.update(len(part[outputs[0]]))


def animate_file(source_image, driving, out, models, frame_shape, fps, box=None, audio_from=None, **options):
    """:func:`animate_stream` written to ``out`` (.mp4/.mov/.gif, or a PNG folder) as it is generated,
    at ``fps`` and with the audio of ``audio_from``; returns the output path."""
    from fomm_lessons.data.stream import VideoWriter

    with VideoWriter(out, fps, audio_from, command="animate") as writer:
        for part in animate_stream(source_image, driving, models, frame_shape, box, **options):
            writer.write(part["prediction"])
    return writer.path


def _box(text, option):
    from fomm_lessons.data.crop import parse_box

    return None if text is None else parse_box(text, where=option)


def main(args):
    """``fomm-lessons animate``: read, (crop,) animate, write; prints the output path."""
    from fomm_lessons.config import load_config
    from fomm_lessons.data import crop
    from fomm_lessons.data.frames import VideoError
    from fomm_lessons.data.media import check_output_path, has_audio, is_folder_path, video_fps
    from fomm_lessons.data.stream import iter_frames, read_source_image

    def note(line):
        print(f"fomm-lessons animate: {line}", file=sys.stderr)

    config = load_config(args.config)
    frame_shape = config.get("dataset_params", {}).get("frame_shape", [256, 256, 3])
    out = args.out
    inputs = {"--source": args.source, "--driving": args.driving, "--checkpoint": args.checkpoint,
              "--config": args.config}
    check_output_path(out, folder=is_folder_path(out), audio=args.audio, command="animate", inputs=inputs,
                      overwrite=getattr(args, "overwrite", False))
    if args.best_frame is not None and args.best_frame < 0:
        raise ValueError(f"expected --best-frame of at least 0 (a driving frame's index), got {args.best_frame}")
    source_box, driving_box = _box(args.source_box, "--source-box"), _box(args.driving_box, "--driving-box")
    if args.crop and source_box is None:
        source_box = crop.source_box(args.source, box_option="--source-box")
    if source_box is not None:
        note(f"cropping the source to the box {','.join(map(str, source_box))} (x,y,w,h)")
    source = read_source_image(args.source, frame_shape, source_box, log=note)
    try:  # a bad driving video fails here, before the models are loaded
        next(iter_frames(args.driving, frame_shape, driving_box, chunk=1))
    except VideoError as error:
        raise ValueError(f"the driving input {args.driving} is not a video: {error.reason}") from None
    if args.crop and driving_box is None:
        driving_box = crop.video_box(args.driving, box_option="--driving-box")
    if driving_box is not None:
        note(f"cropping the driving video to the box {','.join(map(str, driving_box))} (x,y,w,h)")
    audio_from = None
    if args.audio:
        if has_audio(args.driving):
            audio_from = args.driving
        else:
            note(f"warning: {args.driving} has no audio; writing video only")
    models = load_checkpoint(args.checkpoint, config["model_params"], f"the config {args.config}")
    normalization = config.get("animate_params", {}).get("normalization_params", {})
    path = animate_file(source, args.driving, out, models, frame_shape, video_fps(args.driving), box=driving_box,
                        audio_from=audio_from, best_frame=args.best_frame, find_best=args.find_best_frame,
                        relative=args.relative, adapt_movement_scale=args.adapt_scale,
                        relative_jacobian=normalization.get("use_relative_jacobian", True))
    print(path)
    return 0

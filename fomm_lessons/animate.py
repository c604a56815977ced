"""Image animation (Sec. 3.4 of the paper): move a source image as a driving video moves.

The driving keypoints are detected for all frames in batches, made relative to
one initial driving frame (:func:`normalize_kp`, Sec. 3.4 "relative motion
transfer") and fed with the source keypoints to the generator, again in
batches. ``fomm-lessons animate`` calls :func:`main`; videos come in and go out
as ``.mp4`` (the ``ffmpeg`` of imageio-ffmpeg), ``.gif`` or PNG folders, at the
driving video's frame rate and, when asked, with its audio.
"""

import os
import re
import subprocess
import sys
import tempfile
import warnings
import weakref

import numpy as np

from fomm_lessons.checkpoint import load_checkpoint  # noqa: F401  (used by main; part of this module's API)

DEFAULT_FPS = 25.0
OUTPUT_SUFFIXES = (".mp4", ".mov", ".gif")
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
        jacobian_diff = tf.matmul(kp_driving["jacobian"], tf.linalg.inv(kp_driving_initial["jacobian"]))
        kp_new["jacobian"] = tf.matmul(jacobian_diff, kp_source["jacobian"])  # (B, K, 2, 2)
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


def detect_keypoints(kp_detector, frames, batch_size=BATCH_SIZE):
    """Keypoints of ``frames`` (T, H, W, 3), ``batch_size`` at a time: NumPy ``value`` (T, K, 2), ``jacobian``."""
    import tensorflow as tf

    frames = np.asarray(frames, np.float32)
    parts = {}
    size = min(int(batch_size), len(frames))
    for start, stop in _batches(len(frames), size):
        kp = inference(kp_detector)(tf.constant(_padded(frames[start:stop], size)))
        for key, value in kp.items():
            parts.setdefault(key, []).append(np.asarray(value)[:stop - start])
    return {key: np.concatenate(value) for key, value in parts.items()}


def _take(kp, start, stop):
    return {key: value[start:stop] for key, value in kp.items()}


def animate(source_image, driving_frames, models, relative=True, adapt_movement_scale=False,
            relative_jacobian=True, batch_size=BATCH_SIZE, initial_frame=0, kp_driving=None,
            outputs=("prediction",)):
    """The source image (H, W, 3) moved as ``driving_frames`` (T, H, W, 3) move: (T, H, W, 3) in [0, 1].

    Every driving frame is made relative to frame ``initial_frame`` (the
    original demo animates forwards and backwards from the best frame; both
    halves use that frame as the initial one, so this is the same thing done
    once). ``relative_jacobian`` applies only with ``relative``, as in the
    original. With other ``outputs`` of the generator (``deformation``,
    ``occlusion_map``, ...) a dict of NumPy arrays is returned instead.
    """
    import tensorflow as tf

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
    source = tf.constant(source_image[None])  # (1, H, W, 3)
    kp_source = models.kp_detector(source, training=False)
    kp_initial = _take(kp_driving, initial_frame, initial_frame + 1)
    size = min(int(batch_size), count)
    sources = tf.repeat(source, size, axis=0)  # (b, H, W, 3)
    results = {name: [] for name in outputs}
    for start, stop in _batches(count, size):
        kp_batch = {key: _padded(value[start:stop], size) for key, value in kp_driving.items()}
        kp_norm = normalize_kp(kp_source, kp_batch, kp_initial, adapt_movement_scale=adapt_movement_scale,
                               use_relative_movement=relative, use_relative_jacobian=relative_jacobian)
        kp_norm = {key: tf.convert_to_tensor(value, tf.float32) for key, value in kp_norm.items()}
        out = inference(models.generator)(sources, kp_source=kp_source, kp_driving=kp_norm)
        for name in outputs:
            results[name].append(np.asarray(out[name])[:stop - start])
    results = {name: np.concatenate(parts) for name, parts in results.items()}
    return results["prediction"] if tuple(outputs) == ("prediction",) else results


# ---------------------------------------------------------------------------
# Files: frame rate, audio, checking paths, loading models
# ---------------------------------------------------------------------------

def video_fps(path, default=DEFAULT_FPS):
    """Frames per second of a video file (``default`` for PNG folders and files that do not say)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return float(default)
    if path.lower().endswith(".gif"):
        from PIL import Image

        with Image.open(path) as image:
            duration = image.info.get("duration")
        return 1000.0 / duration if duration else float(default)
    import imageio.v2 as imageio

    with imageio.get_reader(path, format="FFMPEG") as reader:
        fps = reader.get_meta_data().get("fps")
    return float(fps) if fps else float(default)


def ffmpeg_exe():
    """The ffmpeg binary that imageio-ffmpeg ships."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def has_audio(path):
    """Whether the media file ``path`` has an audio stream (asks ffmpeg)."""
    if os.path.isdir(path):
        return False
    probe = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", os.fspath(path)], capture_output=True, text=True)
    return re.search(r"Stream #\S+.*: Audio:", probe.stderr) is not None


def mux_audio(video_path, audio_source, out_path):
    """Write ``out_path``: the video stream of ``video_path`` (copied) with the audio of ``audio_source`` (AAC)."""
    command = [ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-i", os.fspath(video_path),
               "-i", os.fspath(audio_source), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
               "-c:a", "aac", "-shortest", os.fspath(out_path)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise OSError(f"ffmpeg could not add the audio of {audio_source} to {out_path}: {last}")
    return out_path


def is_folder_path(path):
    """Whether an output ``path`` names a folder of PNG frames: an existing folder or a name without a suffix."""
    path = os.fspath(path)
    return os.path.isdir(path) or path.endswith(("/", os.sep)) or not os.path.splitext(path)[1]


def check_output_path(path, folder=False, audio=False):
    """Fail early, with the path, if ``path`` cannot be written (parent folders are created)."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if not folder and suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"expected an output path ending in {'/'.join(OUTPUT_SUFFIXES)} "
                         f"(or a folder for PNG frames), got {path!r}")
    if audio and suffix not in (".mp4", ".mov"):
        raise ValueError(f"keeping the audio needs an .mp4 or .mov output, got {path!r}")
    target = path if folder else os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(target, exist_ok=True)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as error:
        raise OSError(f"cannot write the output {path}: the folder {target} cannot be created or written "
                      f"({error.strerror or error})") from None
    return path


def write_output(path, frames, fps, audio_from=None):
    """Write frames (T, H, W, 3) to an .mp4/.mov/.gif file or, for any other path, a PNG folder."""
    from fomm_lessons.data.frames import write_video

    path = os.fspath(path)
    if is_folder_path(path):
        return write_video(path, frames, as_folder=True)
    if audio_from is None:
        return write_video(path, frames, as_folder=False, fps=fps)
    suffix = os.path.splitext(path)[1]
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(path))) as scratch:
        silent = write_video(os.path.join(scratch, "silent" + suffix), frames, as_folder=False, fps=fps)
        return mux_audio(silent, audio_from, path)


def read_source_image(path, frame_shape=None):
    """The source image (H, W, 3) in [0, 1]: an image file, or the first frame of a video."""
    from fomm_lessons.data.frames import VideoError, is_video, load_frames, read_image

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no source image at {path}")
    try:
        image = load_frames(path, [0])[0][0] if is_video(path) else read_image(path)
    except VideoError as error:
        raise ValueError(f"the source {path} is not an image: {error.reason}") from None
    if frame_shape is not None and image.shape[:2] != tuple(frame_shape[:2]):
        from skimage.transform import resize

        image = resize(image, tuple(frame_shape[:2]), order=1, anti_aliasing=True, mode="edge")
    return np.asarray(image, np.float32)


def read_driving_video(path, frame_shape=None):
    """The driving frames (T, H, W, 3) in [0, 1], resized to ``frame_shape``; (frames, fps)."""
    from fomm_lessons.data.frames import VideoError, load_frames

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no driving video at {path}")
    try:
        frames, _ = load_frames(path, None, frame_shape)
    except VideoError as error:
        raise ValueError(f"the driving input {path} is not a video: {error.reason}") from None
    return frames, video_fps(path)


def main(args):
    """``fomm-lessons animate``: read, animate, write; prints the output path."""
    from fomm_lessons.config import load_config

    config = load_config(args.config)
    frame_shape = config.get("dataset_params", {}).get("frame_shape", [256, 256, 3])
    out = args.out
    folder = is_folder_path(out)
    check_output_path(out, folder=folder, audio=args.audio)
    source = read_source_image(args.source, frame_shape)
    driving, fps = read_driving_video(args.driving, frame_shape)
    audio_from = None
    if args.audio:
        if has_audio(args.driving):
            audio_from = args.driving
        else:
            print(f"fomm-lessons animate: warning: {args.driving} has no audio; writing video only", file=sys.stderr)
    models = load_checkpoint(args.checkpoint, config["model_params"], f"the config {args.config}")
    normalization = config.get("animate_params", {}).get("normalization_params", {})
    kp_driving = detect_keypoints(models.kp_detector, driving)
    initial = find_best_frame(source, driving, models, kp_driving=kp_driving) if args.find_best_frame else 0
    frames = animate(source, driving, models, relative=args.relative, adapt_movement_scale=args.adapt_scale,
                     relative_jacobian=normalization.get("use_relative_jacobian", True),
                     initial_frame=initial, kp_driving=kp_driving)
    print(write_output(out, frames, fps, audio_from))
    return 0

"""Long videos in and out a chunk at a time, so that memory does not grow with their length.

* :func:`iter_frames` reads a driving video (a real video file, a GIF or a
  folder of frames) as chunks of float32 frames (n, H, W, 3) in [0, 1],
  each frame cropped to a box and resized to the model's size as it is
  decoded; a 10-minute 256x256 video is never in memory at once.
* :class:`VideoWriter` writes frames as they come: an ``.mp4``/``.mov`` (H.264
  through imageio-ffmpeg, finished under a temporary name and renamed, with
  the audio of another file when asked), a ``.gif`` (Pillow needs all its
  frames at the end, as uint8) or a folder of PNG frames that the program
  marks as its own (:mod:`fomm_lessons.data.media`).
* :func:`read_source_image` shrinks a large photograph with Pillow (JPEG
  draft decoding, ``reduce``) before it becomes float, so an 8000x8000 source
  takes a fraction of a second instead of minutes.
"""

import os
import re
import tempfile

import numpy as np
from PIL import Image

from fomm_lessons.data.frames import (VIDEO_SUFFIXES, VideoError, check_not_truncated, frame_files,
                                      grey_bits, is_video, to_rgb)
from fomm_lessons.data.media import DEFAULT_FPS, OUTPUT_SUFFIXES, claim_output_folder, is_folder_path, mux_audio

CHUNK = 32  # frames decoded per chunk: 32 x 256 x 256 x 3 float32 = 25 MB
FRAME_NAME = re.compile(r"^\d{7}\.png$")  # the frames a PNG-folder output is made of


# ---------------------------------------------------------------------------
# Fitting one image (a frame or a photograph) to the model's size
# ---------------------------------------------------------------------------

def _resizable(image, bits=None):
    """``image`` in a mode Pillow resizes, and how to turn the result into float RGB in [0, 1].

    Wide integer grey images are resized as 32-bit integers and scaled by ``bits``, the
    bit depth their file stores (:func:`~fomm_lessons.data.frames.grey_bits`), as
    :func:`~fomm_lessons.data.frames.read_image` does.
    """
    if image.mode == "I" or image.mode.startswith("I;16"):
        top = float(2**bits - 1) if bits else float(np.iinfo(np.int32).max)
        return image.convert("I"), lambda array: to_rgb(array.astype(np.float32) / top)
    if image.mode == "P":
        image = image.convert("RGBA")
    elif image.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("L" if image.mode == "1" else "RGB")
    return image, to_rgb


def fit_image(image, shape=None, box=None, bits=None):
    """A Pillow image cropped to ``box`` (x, y, w, h) and resized to ``shape`` (H, W): float32 (H, W, 3).

    Shrinking by a large factor first averages blocks of pixels (``reduce``,
    ``reducing_gap=2``), then resamples with the bilinear filter, which
    Pillow widens by the scale factor (anti-aliased). ``bits``: the stored
    depth of a wide integer grey image.
    """
    image, to_float = _resizable(image, bits)
    if box is not None:
        x, y, w, h = (int(round(v)) for v in box)
        image = image.crop((x, y, x + w, y + h))
    if shape is not None and (image.height, image.width) != tuple(shape[:2]):
        image = image.resize((int(shape[1]), int(shape[0])), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return to_float(np.asarray(image))


def _fit_array(frame, shape=None, box=None):
    """One decoded frame (uint8 or any image array) -> float32 (H, W, 3) cropped and resized."""
    frame = np.asarray(frame)
    if frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[-1] in (3, 4):
        return fit_image(Image.fromarray(np.ascontiguousarray(frame[..., :3])), shape, box)
    rgb = to_rgb(frame, "a frame")
    if box is not None:
        x, y, w, h = (int(round(v)) for v in box)
        rgb = rgb[y:y + h, x:x + w]
    if shape is not None and rgb.shape[:2] != tuple(shape[:2]):
        from skimage.transform import resize

        rgb = resize(rgb, tuple(shape[:2]), order=1, anti_aliasing=True, mode="edge").astype(np.float32)
    return rgb


def read_source_image(path, frame_shape=None, box=None, log=None):
    """The source image (H, W, 3) in [0, 1]: an image file, or the first frame of a video.

    ``box`` (x, y, w, h, in the file's pixels) crops it first. When it is
    resized, ``log`` (if given) is called with one line saying so.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no source image at {path}")
    if is_video(path):
        try:
            return next(iter_frames(path, frame_shape, box, chunk=1))[0]
        except VideoError as error:
            raise ValueError(f"the source {path} is not an image: {error.reason}") from None
    try:
        with Image.open(path) as image:
            full = image.size  # (width, height)
            region = (box[2], box[3]) if box is not None else full
            if frame_shape is not None and image.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale
                factor = min(region[0] / frame_shape[1], region[1] / frame_shape[0])
                if factor >= 2:
                    image.draft(image.mode, (int(full[0] / factor * 2), int(full[1] / factor * 2)))
                    if box is not None:
                        scale = image.size[0] / full[0]
                        box = tuple(v * scale for v in box)
            if log is not None and frame_shape is not None and tuple(region[::-1]) != tuple(frame_shape[:2]):
                log(f"resizing the source {path} ({region[0]}x{region[1]}) to {frame_shape[1]}x{frame_shape[0]}")
            return fit_image(image, frame_shape, box, grey_bits(path, image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"the source {path} is not an image: {type(error).__name__}: {error}") from None


# ---------------------------------------------------------------------------
# Reading a video in chunks
# ---------------------------------------------------------------------------

def raw_frames(path):
    """The stored frames of a video, one at a time, as arrays (a folder's frames as float RGB)."""
    from fomm_lessons.data.frames import read_image

    if os.path.isdir(path):
        files = frame_files(path)
        if not files:
            raise VideoError(path, "the folder has no .png/.jpg/.jpeg frames")
        for name in files:
            yield read_image(name)
        return
    if not os.path.isfile(path):
        raise VideoError(path, "no such file or folder")
    if not path.lower().endswith(VIDEO_SUFFIXES):
        raise VideoError(path, f"expected a folder of frames or a {'/'.join(VIDEO_SUFFIXES)} file")
    import imageio.v2 as imageio

    check_not_truncated(path)  # a cut download: ffmpeg would stop at the cut, silently

    def unreadable(error):
        first_line = (str(error).strip().splitlines() or [""])[0]  # not ffmpeg's whole log
        return VideoError(path, f"{type(error).__name__}: {first_line}")

    try:
        reader = imageio.get_reader(path, format=None if path.lower().endswith(".gif") else "FFMPEG")
    except Exception as error:  # imageio raises many kinds; all mean "unreadable"
        raise unreadable(error) from None
    with reader:
        frames = iter(reader)
        while True:
            try:
                frame = next(frames)
            except (StopIteration, IndexError):
                return
            except Exception as error:
                raise unreadable(error) from None
            yield frame


def frame_count(path):
    """The number of frames of a video as its container says (for progress bars; may be an estimate)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return len(frame_files(path))
    try:
        if path.lower().endswith(".gif"):
            with Image.open(path) as image:
                return int(getattr(image, "n_frames", 1))
        import imageio.v2 as imageio

        with imageio.get_reader(path, format="FFMPEG") as reader:
            meta = reader.get_meta_data()
        count = meta.get("nframes")
        if not (count and np.isfinite(count)):  # ffmpeg reports the duration rather than the count
            count = (meta.get("duration") or 0) * (meta.get("fps") or 0)
        return int(round(count)) or None
    except Exception:  # an unreadable file is reported by iter_frames
        return None


def iter_frames(path, frame_shape=None, box=None, chunk=CHUNK):
    """The frames of a video as chunks of float32 (n, H, W, 3) in [0, 1], cropped to ``box``
    (x, y, w, h in the stored pixels) and resized to ``frame_shape`` (H, W[, 3]).

    Raises :class:`~fomm_lessons.data.frames.VideoError` for an unreadable video, one without frames, or
    one whose frames differ in size.
    """
    path = os.fspath(path)
    parts, stored, count = [], None, 0
    for frame in raw_frames(path):
        shape = np.shape(frame)[:2]
        if stored is None:
            stored = shape
        elif shape != stored:
            raise VideoError(path, f"its frames differ in size: {stored} and {shape} (frame {count})")
        parts.append(_fit_array(frame, frame_shape, box))
        count += 1
        if len(parts) == chunk:
            yield np.stack(parts)  # (chunk, H, W, 3)
            parts = []
    if parts:
        yield np.stack(parts)
    elif count == 0:
        raise VideoError(path, "it has no frames")


# ---------------------------------------------------------------------------
# Writing a video as its frames come
# ---------------------------------------------------------------------------

def as_uint8(frames):
    """Frames (n, H, W, 3) in [0, 1] (or uint8) as uint8."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if frames.dtype != np.uint8:
        frames = np.round(np.clip(frames.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    return frames


def _umask():
    """The process's file-mode creation mask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class VideoWriter:
    """Frames to ``path`` as they come: an .mp4/.mov/.gif file or, for any other path, a PNG folder.

    A file is written under a temporary name beside ``path`` and renamed at
    :meth:`close`, so a failed run leaves neither half a video nor a damaged
    earlier one. A folder must be new, empty or an earlier output of
    ``command``; its earlier frames (``0000000.png``...) are replaced, nothing else.
    """

    def __init__(self, path, fps=DEFAULT_FPS, audio_from=None, command="animate"):
        self.path, self.fps, self.audio_from = os.fspath(path), float(fps), audio_from
        self.count, self._writer, self._gif = 0, None, None
        self.folder = is_folder_path(self.path)
        if self.folder:
            claim_output_folder(self.path, command)
            for name in os.listdir(self.path):
                if FRAME_NAME.match(name):
                    os.remove(os.path.join(self.path, name))
            return
        suffix = os.path.splitext(self.path)[1].lower()
        if suffix not in OUTPUT_SUFFIXES:
            raise ValueError(f"expected a path ending in {'/'.join(OUTPUT_SUFFIXES)}, got {self.path!r}")
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        handle, self._partial = tempfile.mkstemp(suffix=suffix, prefix=".partial-", dir=parent)
        os.close(handle)
        os.chmod(self._partial, 0o666 & ~_umask())  # mkstemp's 0600 would hide the video from others

    def write(self, frames):
        """Append frames (n, H, W, 3) in [0, 1] or uint8."""
        frames = as_uint8(frames)
        if self.folder:
            for frame in frames:
                Image.fromarray(frame).save(os.path.join(self.path, f"{self.count:07d}.png"))
                self.count += 1
            return
        if self.path.lower().endswith(".gif"):
            self._gif = (self._gif or []) + list(frames)
        else:
            if self._writer is None:  # yuv420p plays everywhere but needs even sizes; yuv444p keeps odd ones
                import imageio.v2 as imageio

                even = frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0
                self._writer = imageio.get_writer(self._partial, format="FFMPEG", fps=self.fps, macro_block_size=1,
                                                  quality=10, pixelformat="yuv420p" if even else "yuv444p")
            for frame in frames:
                self._writer.append_data(frame)
        self.count += len(frames)

    def close(self):
        """Finish the file (or folder) and return its path."""
        if self.folder:
            return self.path
        if self.count == 0:
            raise ValueError(f"no frames to write to {self.path}")
        if self._gif is not None:
            import imageio.v2 as imageio

            imageio.mimwrite(self._partial, self._gif, format="GIF", duration=1000.0 / self.fps, loop=0)
            self._gif = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.audio_from is None:
            os.replace(self._partial, self.path)
        else:
            try:
                mux_audio(self._partial, self.audio_from, self.path)
            finally:
                os.remove(self._partial)
        return self.path

    def abort(self):
        """Drop what was written to a file output (a folder keeps the frames written so far)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self.folder and os.path.exists(self._partial):
            os.remove(self._partial)

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if kind is None:
            self.close()
        else:
            self.abort()
        return False


def write_output(path, frames, fps, audio_from=None, command="animate"):
    """Write frames (T, H, W, 3) to an .mp4/.mov/.gif file or, for any other path, a PNG folder."""
    with VideoWriter(path, fps, audio_from, command) as writer:
        writer.write(frames)
    return writer.path

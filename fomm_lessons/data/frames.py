"""Videos on disk in the original FOMM format, read into and written from NumPy.

A video is either a folder of numbered frames whose name ends in ``.mp4``
(``id10001#7w0IBEWc9Qw#00001.mp4/0000000.png``), the format the original's
datasets ship in, or a real ``.mp4`` / ``.mov`` / ``.gif`` file. Frames come
back as float32 RGB in [0, 1], shape ``(T, H, W, 3)``, whatever was stored
(grayscale, RGBA, 16-bit). Nothing here imports TensorFlow.
"""

import os
import re
import struct
import warnings

import numpy as np
from PIL import Image

VIDEO_SUFFIXES = (".mp4", ".mov", ".gif")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


class VideoError(ValueError):
    """A video that cannot be read; the message names the file and the reason."""

    def __init__(self, path, reason):
        super().__init__(f"cannot read video {os.fspath(path)!s}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


def identity_of(path):
    """The identity of a video: its file name up to the first ``#``."""
    return os.path.basename(os.path.normpath(os.fspath(path))).split("#")[0]


def is_video(path):
    """A folder or file whose name ends in one of ``VIDEO_SUFFIXES``."""
    return os.fspath(path).lower().endswith(VIDEO_SUFFIXES)


def _natural_key(name):
    """Sort ``frame2.png`` before ``frame10.png``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def frame_files(path):
    """The frame files of a folder video, in frame order (numbers compared as numbers)."""
    names = [n for n in os.listdir(path) if n.lower().endswith(FRAME_SUFFIXES) and not n.startswith(".")]
    return [os.path.join(path, n) for n in sorted(names, key=_natural_key)]


def to_rgb(array, where="image"):
    """Any image array -> float32 RGB (H, W, 3) in [0, 1]; grayscale is repeated, alpha dropped."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    else:
        array = array.astype(np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"expected {where} of shape (H, W), (H, W, 1|2|3|4), got {array.shape}")
    if array.shape[-1] in (1, 2):  # gray or gray + alpha
        array = np.repeat(array[:, :, :1], 3, axis=-1)
    return np.ascontiguousarray(array[:, :, :3])


def _png_bit_depth(path):
    """Bits per sample of a PNG file, read from its IHDR chunk (the file's first chunk)."""
    with open(path, "rb") as file:
        header = file.read(25)  # 8-byte signature, length, b"IHDR", width, height, bit depth
    if len(header) < 25 or header[12:16] != b"IHDR":
        raise ValueError("no IHDR chunk at the start of the PNG file")
    return header[24]


def grey_bits(path, image):
    """Bits per sample of a wide integer grey image as its file stores them; None otherwise.

    Pillow reports a 16-bit grey PNG as 32-bit mode ``I`` (Pillow 10) or as ``I;16`` (later),
    so a PNG's depth is read from the file. A 32-bit ``I`` image of another format keeps
    the int32 scale.
    """
    if image.mode != "I" and not image.mode.startswith("I;16"):
        return None
    if image.format == "PNG":
        return _png_bit_depth(path)
    return None if image.mode == "I" else 16


def read_image(path):
    """One frame file -> float32 RGB (H, W, 3) in [0, 1]; a bad file raises :class:`VideoError`.

    Integer images are scaled by the bit depth stored in the file, whatever mode Pillow reports.
    """
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "P":
                image = image.convert("RGBA")
            elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGB")
            array = np.asarray(image)
            bits = grey_bits(path, image)
    except (OSError, ValueError, SyntaxError) as error:
        raise VideoError(path, f"{type(error).__name__}: {error}") from None
    if bits is not None:
        array = array.astype(np.float32) / float(2**bits - 1)
    return to_rgb(array, f"frame {path}")


_MP4_CONTAINERS = (b"mdia", b"minf", b"stbl")  # boxes inside a track that hold the sample tables
_MP4_MAX_INDEX_BYTES = 64 << 20  # a moov box larger than this is not parsed
_MP4_MAX_SAMPLES = 10_000_000  # nor a track that claims more frames (over 3 days at 30 fps)


def _mp4_boxes(data, start, end):
    """``(type, payload start, payload end)`` of the ISO base media boxes in ``data[start:end]``."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1 and at + 16 <= end:  # a 64-bit size follows the type
            size, header = struct.unpack_from(">Q", data, at + 8)[0], 16
        elif size == 0:  # runs to the end
            size = end - at
        if size < header or at + size > end:
            return
        yield kind, at + header, at + size
        at += size


def mp4_video_index(path):
    """``(frames listed, frames whose bytes are in the file)`` of an .mp4/.mov's first video track.

    Read from the ``moov`` box (sample sizes ``stsz``, chunk offsets ``stco``/``co64``,
    samples per chunk ``stsc``) without decoding; None when there is no such index
    (another format, a fragmented file, a ``moov`` that is missing or cut).
    """
    with open(path, "rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        at, moov = 0, None
        while moov is None and at + 8 <= file_size:
            file.seek(at)
            head = file.read(16)
            size, kind = struct.unpack(">I4s", head[:8])
            header = 8
            if size == 1 and len(head) == 16:
                size, header = struct.unpack(">Q", head[8:])[0], 16
            elif size == 0:
                size = file_size - at
            if size < header:
                return None
            if kind == b"moov":
                if size > _MP4_MAX_INDEX_BYTES or at + size > file_size:
                    return None
                file.seek(at + header)
                moov = file.read(size - header)
            at += size
    if moov is None:
        return None
    for kind, start, end in _mp4_boxes(moov, 0, len(moov)):
        if kind != b"trak":
            continue
        tables, pending = {}, [(b"trak", start, end)]
        while pending:  # the leaf boxes of the track, by (parent, type)
            parent, a, b = pending.pop()
            for kind, a, b in _mp4_boxes(moov, a, b):
                if kind in _MP4_CONTAINERS:
                    pending.append((kind, a, b))
                else:
                    tables[parent, kind] = (a, b)
        hdlr = tables.get((b"mdia", b"hdlr"))  # (a .mov also has a data handler in minf)
        if hdlr is None or moov[hdlr[0] + 8:hdlr[0] + 12] != b"vide":
            continue
        stsz, stsc = tables.get((b"stbl", b"stsz")), tables.get((b"stbl", b"stsc"))
        wide = (b"stbl", b"co64") in tables
        chunks = tables.get((b"stbl", b"co64" if wide else b"stco"))
        if stsz is None or stsc is None or chunks is None:
            return None
        uniform, count = struct.unpack_from(">II", moov, stsz[0] + 4)
        if count > _MP4_MAX_SAMPLES:
            return None
        sizes = struct.unpack_from(f">{0 if uniform else count}I", moov, stsz[0] + 12)
        (n_chunks,) = struct.unpack_from(">I", moov, chunks[0] + 4)
        offsets = struct.unpack_from(f">{n_chunks}{'Q' if wide else 'I'}", moov, chunks[0] + 8)
        (n_runs,) = struct.unpack_from(">I", moov, stsc[0] + 4)
        runs = [struct.unpack_from(">III", moov, stsc[0] + 8 + 12 * i)[:2] for i in range(n_runs)]
        present, sample = 0, 0
        for i, (first, per_chunk) in enumerate(runs):  # first chunk is 1-based
            last = runs[i + 1][0] - 1 if i + 1 < n_runs else n_chunks
            for chunk in range(first - 1, min(last, n_chunks)):
                position = offsets[chunk]
                for _ in range(per_chunk):
                    if sample >= count:
                        break
                    position += uniform or sizes[sample]
                    present += position <= file_size
                    sample += 1
        return (count, present) if count else None
    return None


def check_not_truncated(path, decoded=None):
    """Refuses a cut mp4/mov copy: one whose index lists more frames than the file holds.

    ffmpeg decodes such a file up to the cut without a word, so a shortened video would pass
    for a whole one. ``decoded``, the number of frames read, is named in the message when given.
    GIFs and files whose index does not parse are let through (no evidence either way).
    """
    if path.lower().endswith(".gif"):
        return
    try:
        index = mp4_video_index(path)
    except (struct.error, OSError):
        return
    if index is not None and index[1] < index[0]:
        listed = (f"{decoded} frames decoded, its index lists {index[0]}" if decoded is not None
                  else f"its index lists {index[0]} frames")
        raise VideoError(path, f"it is truncated: {listed} and only {index[1]} of them are in the "
                               "file; download or copy it again")


def _read_file_frames(path):
    """All frames of a real video file as a list of arrays.

    An .mp4/.mov whose index lists frames that are not in the file (a cut download) is
    refused with the decoded and listed counts, as a corrupt frame file is: ffmpeg would
    silently return the frames before the cut.
    """
    import imageio.v2 as imageio

    try:
        if path.lower().endswith(".gif"):
            frames = imageio.mimread(path, memtest=False)
        else:
            frames = imageio.mimread(path, memtest=False, format="FFMPEG")
    except Exception as error:  # imageio raises many kinds; all mean "unreadable"
        first_line = (str(error).strip().splitlines() or [""])[0]  # not ffmpeg's whole log
        raise VideoError(path, f"{type(error).__name__}: {first_line}") from None
    if not frames:
        raise VideoError(path, "it has no frames")
    check_not_truncated(path, decoded=len(frames))
    return frames


def count_frames(path):
    """Number of frames of a video (a folder is counted without decoding)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return len(frame_files(path))
    if not os.path.exists(path):
        raise VideoError(path, "no such file or folder")
    if path.lower().endswith(".gif"):
        try:
            with Image.open(path) as image:
                return int(getattr(image, "n_frames", 1))
        except OSError as error:
            raise VideoError(path, f"{type(error).__name__}: {error}") from None
    return len(_read_file_frames(path))


def probe(path):
    """Check that a video can be read: (number of frames, sorted set of frame sizes (H, W)).

    Frame files are checked without decoding them (their headers and, for
    PNG, every chunk's checksum), so a truncated or corrupt frame is found
    here; a real video file is decoded. Raises :class:`VideoError`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        files = frame_files(path)
        if not files:
            raise VideoError(path, f"the folder has no {'/'.join(FRAME_SUFFIXES)} frames")
        sizes = set()
        for name in files:
            try:
                with Image.open(name) as image:
                    sizes.add((image.height, image.width))
                    image.verify()
            except (OSError, ValueError, SyntaxError) as error:
                raise VideoError(name, f"{type(error).__name__}: {error}") from None
        return len(files), sorted(sizes)
    if not os.path.exists(path):
        raise VideoError(path, "no such file or folder")
    frames = _read_file_frames(path)
    return len(frames), sorted({np.shape(f)[:2] for f in frames})


def _resize(frame, height, width):
    """Bilinear resize of a float RGB frame with anti-aliasing (scikit-image)."""
    from skimage.transform import resize

    return resize(frame, (height, width), order=1, anti_aliasing=True, mode="edge").astype(np.float32)


def load_frames(path, indices=None, frame_shape=None):
    """Frames ``indices`` (all when None) of a video -> ((T, H, W, 3) float32, original (H, W) or None).

    The second value is the stored frame size when frames were resized to
    ``frame_shape``, so that callers can warn once per video.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        files = frame_files(path)
        if not files:
            raise VideoError(path, f"the folder has no {'/'.join(FRAME_SUFFIXES)} frames")
        chosen = files if indices is None else [files[i] for i in _checked(indices, len(files), path)]
        frames = [read_image(f) for f in chosen]
    elif os.path.isfile(path):
        if not path.lower().endswith(VIDEO_SUFFIXES):
            raise VideoError(path, f"expected a folder of frames or a {'/'.join(VIDEO_SUFFIXES)} file")
        every = _read_file_frames(path)
        chosen = every if indices is None else [every[i] for i in _checked(indices, len(every), path)]
        frames = [to_rgb(f, f"a frame of {path}") for f in chosen]
    else:
        raise VideoError(path, "no such file or folder")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise VideoError(path, f"its frames differ in size: {sorted(shapes)}")
    stored = frames[0].shape[:2]
    resized = None
    if frame_shape is not None and tuple(stored) != tuple(frame_shape[:2]):
        height, width = int(frame_shape[0]), int(frame_shape[1])
        frames = [_resize(f, height, width) for f in frames]
        resized = tuple(stored)
    return np.stack(frames), resized  # (T, H, W, 3)


def _checked(indices, count, path):
    indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    for i in indices:
        if not 0 <= i < count:
            raise VideoError(path, f"frame index {i} is out of range for {count} frames")
    return indices


def read_video(path, frame_shape=None, indices=None):
    """A whole video (or frames ``indices``) as float32 (T, H, W, 3) in [0, 1].

    Frames whose size differs from ``frame_shape`` (H, W[, 3]) are resized,
    with one warning for the video.
    """
    frames, resized = load_frames(path, indices, frame_shape)
    if resized is not None:
        warnings.warn(f"{os.fspath(path)}: frames of size {resized[0]}x{resized[1]} resized to "
                      f"{frame_shape[0]}x{frame_shape[1]}", stacklevel=2)
    return frames


def _as_uint8(frames):
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3):
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        frames = np.round(np.clip(frames.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    return frames


def write_video(path, frames, as_folder=None, fps=25):
    """Write frames (T, H, W, 3) in [0, 1] (or uint8) as a video.

    ``as_folder`` (default: when ``path`` ends in ``.mp4``) writes the
    original's format, a folder of ``0000000.png``, ``0000001.png``...;
    otherwise a real ``.mp4`` / ``.mov`` (H.264 through imageio-ffmpeg) or
    ``.gif`` file is written (Pillow merges identical consecutive GIF frames).
    Returns ``path``.
    """
    path = os.fspath(path)
    frames = _as_uint8(frames)
    if as_folder is None:
        as_folder = path.lower().endswith(".mp4")
    if as_folder:
        os.makedirs(path, exist_ok=True)
        for old in frame_files(path):
            os.remove(old)
        for t, frame in enumerate(frames):
            Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame).save(
                os.path.join(path, f"{t:07d}.png"))
        return path
    import imageio.v2 as imageio

    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    if not path.lower().endswith(VIDEO_SUFFIXES):
        raise ValueError(f"expected a path ending in {'/'.join(VIDEO_SUFFIXES)}, got {path!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.lower().endswith(".gif"):
        imageio.mimwrite(path, list(frames), format="GIF", duration=1000.0 / fps, loop=0)
    else:  # .mp4, .mov; yuv420p plays everywhere but needs even sizes; yuv444p keeps odd ones.
        even = frames.shape[1] % 2 == 0 and frames.shape[2] % 2 == 0
        imageio.mimwrite(path, list(frames), format="FFMPEG", fps=fps, macro_block_size=1,
                         quality=10, pixelformat="yuv420p" if even else "yuv444p")
    return path

"""Faces cropped as the training data was cropped: the job of the original's ``crop-video.py``.

FOMM learns on square face tracks (VoxCeleb: the face and a margin, at
256x256); a source or driving video framed otherwise animates badly. For
every frame of a video a face detector that ships inside a wheel and works
offline finds the faces (:func:`~fomm_lessons.data.face_detect.detect_faces`);
the faces are followed through the clip by box overlap (:func:`track_faces`); each track becomes one piece of
the video with one fixed square box around all its faces plus a margin
(:func:`stable_box`, ``increase`` of the face's size on each side, 0.1 as in
the original); a track ends where its face is lost, and pieces shorter than
``min_frames`` are dropped (:func:`plan_crops`).

The detector, and the measurement that chose it, are in
:mod:`fomm_lessons.data.face_detect`.

``fomm-lessons crop`` calls :func:`main`.
"""

import json
import os
import shlex
import sys

import numpy as np
from PIL import Image

from fomm_lessons.data.face_detect import CASCADE, DETECT_SIDE, MIN_FACE, detect_faces, to_gray  # noqa: F401
from fomm_lessons.data.frames import VideoError, is_video
from fomm_lessons.data.stream import VideoWriter, fit_image, frame_count, raw_frames, read_source_image

IOU = 0.25  # a face continues a track when it overlaps the track's first box by this much
MAX_MISSED = 2  # frames a face may go undetected before its track ends
INCREASE = 0.1  # margin on each side, as a fraction of the face's size (the original's default)
MIN_FRAMES = 25  # shortest piece kept by default: one second at 25 fps


# ---------------------------------------------------------------------------
# Faces through a clip, one stable box per piece
# ---------------------------------------------------------------------------

def iou(a, b):
    """Intersection over union of two boxes (x, y, w, h)."""
    width = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    height = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    inter = max(0.0, width) * max(0.0, height)
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def track_faces(detections, threshold=IOU, max_missed=MAX_MISSED):
    """Follow faces through frames: ``detections`` is a list (per frame) of lists of boxes.

    A box continues the track whose first box it overlaps most (IoU at
    least ``threshold``; one box per track and frame, best overlaps first),
    so that one fixed square can hold the whole track; other boxes start new
    tracks. A track whose face is missing for more than ``max_missed``
    frames ends. Returns ``[{"start", "stop", "boxes"}]`` (``stop``
    exclusive, ``boxes`` the detected ones), in order of start.
    """
    open_tracks, done = [], []
    for t, boxes in enumerate(detections):
        pairs = sorted(((iou(track["boxes"][0], box), i, j) for i, track in enumerate(open_tracks)
                        for j, box in enumerate(boxes)), reverse=True)
        used_tracks, used_boxes = set(), set()
        for overlap, i, j in pairs:
            if overlap < threshold or i in used_tracks or j in used_boxes:
                continue
            open_tracks[i]["boxes"].append(boxes[j])
            open_tracks[i]["last"] = t
            used_tracks.add(i)
            used_boxes.add(j)
        still = []
        for track in open_tracks:
            (still if t - track["last"] <= max_missed else done).append(track)
        open_tracks = still + [{"start": t, "last": t, "boxes": [box]}
                               for j, box in enumerate(boxes) if j not in used_boxes]
    done += open_tracks
    tracks = [{"start": tr["start"], "stop": tr["last"] + 1, "boxes": tr["boxes"]} for tr in done]
    return sorted(tracks, key=lambda tr: (tr["start"], -len(tr["boxes"])))


def stable_box(boxes, frame_size, increase=INCREASE):
    """One square (x, y, side, side) of whole pixels around all ``boxes`` with a margin.

    The side is the larger side of the boxes' union times ``1 + 2 increase``
    (``increase`` of it on each side), centred on the union and moved inside
    the frame (``frame_size`` (H, W)); it shrinks only to fit the frame.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    left, top = boxes[:, 0].min(), boxes[:, 1].min()
    right, bottom = (boxes[:, 0] + boxes[:, 2]).max(), (boxes[:, 1] + boxes[:, 3]).max()
    height, width = int(frame_size[0]), int(frame_size[1])
    side = int(round(min(max(right - left, bottom - top) * (1 + 2 * float(increase)), height, width)))
    x = int(round((left + right - side) / 2))
    y = int(round((top + bottom - side) / 2))
    x, y = min(max(x, 0), width - side), min(max(y, 0), height - side)
    return x, y, side, side


def parse_box(text, frame_size=None, where="the image"):
    """``"x,y,w,h"`` -> (x, y, w, h) integers, checked to lie inside a frame of ``frame_size`` (H, W)."""
    try:
        box = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or box[0] < 0 or box[1] < 0 or box[2] < 1 or box[3] < 1:
        raise ValueError(f"expected a box x,y,w,h of four whole numbers (x, y >= 0, w, h >= 1), got {text!r}")
    if frame_size is not None and (box[0] + box[2] > frame_size[1] or box[1] + box[3] > frame_size[0]):
        raise ValueError(f"the box {text} reaches outside {where} ({frame_size[1]}x{frame_size[0]} pixels)")
    return box


def scan_video(path, progress=None):
    """Faces of every frame of a video: (list of box lists, frame size (H, W)); a progress bar when
    ``progress`` is True, or None and stderr is a terminal."""
    from tqdm import tqdm

    detections, size = [], None
    for frame in tqdm(raw_frames(path), total=frame_count(path), desc="finding faces", unit="frame",
                      disable=None if progress is None else not progress, leave=False):
        size = size or np.shape(frame)[:2]
        detections.append(detect_faces(frame))
    if size is None:
        raise VideoError(path, "it has no frames")
    return detections, size


def plan_crops(detections, frame_size, increase=INCREASE, min_frames=MIN_FRAMES):
    """The pieces to cut: ``[{"start", "stop", "box"}]`` for tracks of at least ``min_frames`` frames."""
    tracks = track_faces(detections)
    return [{"start": tr["start"], "stop": tr["stop"], "box": list(stable_box(tr["boxes"], frame_size, increase))}
            for tr in tracks if tr["stop"] - tr["start"] >= int(min_frames)]


class NoFaceError(ValueError):
    """No face (or no piece long enough) was found; the message names the file and what to do."""


def no_face(path, tracks, min_frames, box_option="--box"):
    """The one line that says no usable face was found in ``path`` and what to try."""
    longest = max((tr["stop"] - tr["start"] for tr in tracks), default=0)
    if longest:
        return NoFaceError(f"no face in {path} stays in view for --min-frames {min_frames} frames (the longest "
                           f"piece has {longest}): try --min-frames {longest}, or give the box by hand with "
                           f"{box_option} x,y,w,h")
    return NoFaceError(f"no face found in {path}: give the face's box by hand with {box_option} x,y,w,h "
                       f"(pixels of the input)")  # no face at all: a smaller --min-frames would not help


def video_box(path, increase=INCREASE, box_option="--box"):
    """One box for a whole video (the box of its longest face track), for ``animate --crop``."""
    detections, size = scan_video(path)
    tracks = track_faces(detections)
    if not tracks:
        raise no_face(path, tracks, 1, box_option)
    longest = max(tracks, key=lambda tr: (len(tr["boxes"]), -tr["start"]))
    return stable_box(longest["boxes"], size, increase)


def face_crop_frames(video_path, size, increase=INCREASE):
    """All frames of a video as uint8 (size, size, 3) arrays, cut by the box of its longest face track
    (the centre square when no face is found): the VoxCeleb fetcher's ``--crop``."""
    detections, frame_size = scan_video(video_path, progress=False)
    tracks = track_faces(detections)
    if tracks:
        box = stable_box(max(tracks, key=lambda tr: len(tr["boxes"]))["boxes"], frame_size, increase)
    else:
        side = min(frame_size)
        box = ((frame_size[1] - side) // 2, (frame_size[0] - side) // 2, side, side)
    x, y, w, h = box
    return [np.asarray(Image.fromarray(_as_uint8_rgb(frame)).crop((x, y, x + w, y + h))
                       .resize((size, size), Image.Resampling.LANCZOS)) for frame in raw_frames(video_path)]


def image_box(image, increase=INCREASE, path="the image", box_option="--box", full_size=None):
    """The square box around the largest face of a Pillow ``image``, in its pixels, or in those of
    ``full_size`` (W, H) when ``image`` is a smaller copy (JPEG draft decoding)."""
    faces = detect_faces(image)
    if not faces:
        raise no_face(path, [], 1, box_option)
    width, height = full_size or image.size
    scale = width / image.width
    return stable_box([tuple(v * scale for v in faces[0])], (height, width), increase)


def open_image(path, side=None):
    """A Pillow image of ``path`` (loaded; a JPEG decoded at 1/2 to 1/8 scale when its shorter side
    stays above ``side``) and the size (W, H) of the file's pixels."""
    image = Image.open(path)
    full = image.size
    if side is not None and image.format == "JPEG":
        factor = min(full) / (2 * side)
        if factor >= 2:
            image.draft("RGB", (int(full[0] / factor), int(full[1] / factor)))
    image.load()
    return image, full


def source_box(path, increase=INCREASE, box_option="--box"):
    """The face box of a source for ``animate --crop``: an image file, or a video's first frame."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no source image at {path}")
    try:
        if is_video(path):
            return image_box(Image.fromarray(_as_uint8_rgb(next(iter(raw_frames(path))))), increase, path,
                             box_option)
        image, full = open_image(path, DETECT_SIDE)
        with image:
            return image_box(image, increase, path, box_option, full)
    except (OSError, SyntaxError, VideoError, Image.DecompressionBombError) as error:
        reason = error.reason if isinstance(error, VideoError) else f"{type(error).__name__}: {error}"
        raise ValueError(f"the source {path} is not an image: {reason}") from None


# ---------------------------------------------------------------------------
# Writing the pieces
# ---------------------------------------------------------------------------

def clip_name(path, crop):
    """``NAME#START-STOP.mp4``: the input's name first, so a dataset reads it as the identity."""
    stem = os.path.splitext(os.path.basename(os.path.normpath(os.fspath(path))))[0]
    return f"{stem}#{crop['start']:06d}-{crop['stop']:06d}.mp4"


def ffmpeg_command(path, crop, out, size, fps):
    """The ffmpeg command that cuts ``crop`` out of the video ``path``, at ``size`` x ``size``, to ``out``."""
    from fomm_lessons.data.media import ffmpeg_exe

    x, y, w, h = crop["box"]
    video = (f"trim=start_frame={crop['start']}:end_frame={crop['stop']},setpts=PTS-STARTPTS,"
             f"crop={w}:{h}:{x}:{y}:exact=1,scale={size}:{size}:flags=area")
    audio = f"atrim=start={crop['start'] / fps:.6f}:end={crop['stop'] / fps:.6f},asetpts=PTS-STARTPTS"
    return [ffmpeg_exe(), "-y", "-loglevel", "error", "-i", os.fspath(path), "-vf", video, "-af", audio,
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", os.fspath(out)]


def write_crops(path, crops, out, size, fps):
    """Every piece of ``crops`` as ``out/NAME#START-STOP.mp4``, in one pass over the frames; their paths."""
    from tqdm import tqdm

    writers, written = {}, {}
    try:
        for t, frame in enumerate(tqdm(raw_frames(path), total=frame_count(path), desc="writing clips",
                                       unit="frame", disable=None, leave=False)):
            for index, crop in enumerate(crops):
                if crop["start"] <= t < crop["stop"]:
                    if index not in writers:
                        writers[index] = VideoWriter(os.path.join(out, clip_name(path, crop)), fps)
                    piece = fit_image(Image.fromarray(_as_uint8_rgb(frame)), (size, size), crop["box"])
                    writers[index].write(piece[None])  # (1, size, size, 3)
                elif index in writers and t >= crop["stop"]:
                    written[index] = writers.pop(index).close()
        for index in list(writers):
            written[index] = writers.pop(index).close()
        return [written[index] for index in sorted(written)]
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise


def _as_uint8_rgb(frame):
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = np.round(np.clip(np.asarray(frame, np.float64), 0, 1) * 255).astype(np.uint8)
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.shape[-1] < 3:
        frame = np.repeat(frame[..., :1], 3, axis=-1)
    return np.ascontiguousarray(frame[..., :3])


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------

def check_image_output(out, path, overwrite=False):
    """Refuse, in one line, an ``--out`` that is not a new image file name Pillow can write (or is ``path``)."""
    from fomm_lessons.data.media import check_output_file, refuse_input_as_output

    out = os.fspath(out)
    refuse_input_as_output(out, {"--image": path})
    suffix = os.path.splitext(out)[1].lower()
    if os.path.isdir(out) or out.endswith(("/", os.sep)) or suffix not in Image.registered_extensions():
        raise ValueError(f"expected --out to be an image file name (.png, .jpg, ...) for --image, got {out!r}")
    return check_output_file(out, overwrite)


def crop_image_file(path, out, size=256, increase=INCREASE, box=None, overwrite=False):
    """Crop the photograph ``path`` around its face (or ``box``, a tuple or "x,y,w,h") to ``out`` at
    ``size`` x ``size``; an existing ``out`` is replaced only with ``overwrite``, never when it is ``path``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no image at {path}")
    check_image_output(out, path, overwrite)
    try:
        if box is None:
            image, full = open_image(path, DETECT_SIDE)
            with image:
                box = image_box(image, increase, path, full_size=full)
        text = box if isinstance(box, str) else ",".join(str(v) for v in box)
        with Image.open(path) as image:
            box = parse_box(text, (image.height, image.width), path)
        pixels = read_source_image(path, (size, size), box)
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"{path} is not an image: {type(error).__name__}: {error}") from None
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(out)
    return {"start": 0, "stop": 1, "box": list(box), "out": os.fspath(out)}


def crop_video_file(path, out, size=256, increase=INCREASE, min_frames=MIN_FRAMES, box=None,
                    print_commands=False):
    """The pieces of the video ``path`` with a face; written to the folder ``out`` (or, with
    ``print_commands``, the ffmpeg commands that would write them). Returns one dict per piece."""
    from fomm_lessons.data.media import check_output_folder, claim_output_folder, video_fps

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no video at {path}")
    if not is_video(path) and not os.path.isdir(path):
        raise ValueError(f"expected a video (.mp4/.mov/.gif or a folder of frames), got {path}")
    if print_commands and os.path.isdir(path):
        raise ValueError(f"--print-commands needs a video file for ffmpeg to read, got the folder {path}")
    check_output_folder(out, "crop", {"--video": path})
    if box is not None:
        count, frame_size = 0, None
        for frame in raw_frames(path):
            frame_size, count = frame_size or np.shape(frame)[:2], count + 1
        crops = [{"start": 0, "stop": count, "box": list(parse_box(box, frame_size, path))}]
    else:
        detections, frame_size = scan_video(path)
        crops = plan_crops(detections, frame_size, increase, min_frames)
        if not crops:
            raise no_face(path, track_faces(detections), min_frames)
    fps = video_fps(path)
    for crop in crops:
        crop["out"] = os.path.join(os.fspath(out), clip_name(path, crop))
        if print_commands:
            crop["command"] = (f"mkdir -p {shlex.quote(os.fspath(out))} && "  # ffmpeg makes no folder
                               + shlex.join(ffmpeg_command(path, crop, crop["out"], size, fps)))
    if not print_commands:
        claim_output_folder(out, "crop", {"--video": path})
        write_crops(path, crops, out, size, fps)
    return crops


def main(args):
    """``fomm-lessons crop``: one JSON line per piece (and its ffmpeg command with ``--print-commands``)."""
    if (args.video is None) == (args.image is None):
        raise ValueError("expected exactly one of --video IN and --image IN")
    if args.size < 8:
        raise ValueError(f"expected --size of at least 8 pixels, got {args.size}")
    if not 0 <= args.increase <= 2:
        raise ValueError(f"expected --increase between 0 and 2 (a fraction of the face's size), got {args.increase}")
    if args.image is not None:
        crops = [crop_image_file(args.image, args.out, args.size, args.increase, args.box,
                                 getattr(args, "overwrite", False))]
    else:
        if args.min_frames < 1:
            raise ValueError(f"expected --min-frames of at least 1, got {args.min_frames}")
        crops = crop_video_file(args.video, args.out, args.size, args.increase, args.min_frames, args.box,
                                args.print_commands)
    for crop in crops:
        command = crop.pop("command", None)
        print(json.dumps(crop))
        if command:
            print(command)
    sys.stdout.flush()
    return 0

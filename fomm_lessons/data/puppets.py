"""The puppets world: procedural videos of a jointed figure, with the true motion, occlusion and parts.

Each video shows a figure of four rigid parts (torso, head, two arms) in front
of a static textured background. Every part moves on its own along a smooth
random path: the torso sways, the head tilts and shifts, the arms swing from
their shoulders by up to about 150 degrees and cross in front of the torso and
the head. The head carries eyes that blink and a mouth that opens onto an
inside no closed-mouth frame shows. So each video holds what FOMM's mechanisms
are for: parts that move apart (keypoints, Jacobians, masks, Eq. 4-7), and
content that one frame hides and another shows (the occlusion map, Eq. 8).

Everything follows from a seed. An identity (shapes, sizes, colours and
textures of every part and of the background) is drawn from its own seed, so
identities are unlimited and a test identity is unseen yet drawn from the
training distribution.

Each part ``l`` is drawn in its own local coordinates ``u`` and placed in frame
``t`` by an affine map ``z = A_{t,l} u + c_{t,l}`` (a rotation and a shift), and
its texture lives in ``u``, so it moves rigidly with the part. The backward flow
from a driving frame D to a source frame S is then exact: a driving pixel ``z``
on part ``l`` comes from ``T_{S<-D}(z) = A_{S,l} A_{D,l}^{-1} (z - c_{D,l}) + c_{S,l}``
(the background does not move), which is what FOMM's dense motion estimates.
The source *shows* that content where the source's label at that point is the
same label (:func:`ground_truth`).

``fomm-lessons data puppets --out DIR --size 64`` calls :func:`make_puppets_dataset`.
"""

import json
import os

import numpy as np

from fomm_lessons.data.frames import write_video

META_FILE = os.path.join("meta", "puppets.json")
TRUTH_FOLDER = os.path.join("meta", "puppets")
FORMAT = "fomm-lessons puppets dataset v1"

# Fine labels, back to front where they are whole parts; eyes and the mouth's inside ride on the head.
FINE_LABELS = ("background", "torso", "head", "left arm", "right arm", "eye", "mouth inside")
PART_NAMES = ("background", "torso", "head", "left arm", "right arm")
PART_OF_FINE = np.array([0, 1, 2, 3, 4, 2, 2], np.int32)  # fine label -> part label
CARRIER = (0, 1, 2, 3, 4, 2, 2)  # fine label -> the label whose placement moves it
DRAW_ORDER = ("torso", "head", "left arm", "right arm")  # back to front
SUPERSAMPLE = 4  # samples per pixel side when drawing a frame (anti-aliasing)

# Ranges of the motion, in frame units ([-1, 1] across) and radians.
MOTION = {
    "root_x": 0.10, "root_y": 0.05,  # the whole figure drifts
    "torso_angle": 0.20,  # the torso sways about its hips
    "head_angle": 0.45, "head_x": 0.05, "head_y": 0.04,  # the head tilts and shifts on its neck
    "arm_centre": (0.35, 0.75), "arm_swing": (0.9, 1.35),  # arm angle = centre + swing * wave
}


# ---------------------------------------------------------------------------
# Identities: shapes, colours and textures drawn from a seed
# ---------------------------------------------------------------------------

def _colour(rng, saturation, value):
    """An RGB colour of a random hue with the given saturation and value ranges."""
    import colorsys

    hue = rng.uniform(0.0, 1.0)
    return list(colorsys.hsv_to_rgb(hue, rng.uniform(*saturation), rng.uniform(*value)))


def _texture(rng, wavelength=(0.16, 0.32), amplitude=(0.12, 0.28)):
    """A smooth pattern: a kind and its numbers (wavelengths in frame units, >= 5 px at 64 px)."""
    kind = str(rng.choice(["stripes", "checks", "waves"]))
    waves = []
    for _ in range(1 if kind == "stripes" else 2 if kind == "checks" else 3):
        angle = rng.uniform(0, np.pi)
        frequency = 2 * np.pi / rng.uniform(*wavelength)
        waves.append([frequency * np.cos(angle), frequency * np.sin(angle), rng.uniform(0, 2 * np.pi)])
    return {"kind": kind, "waves": waves, "amplitude": rng.uniform(*amplitude),
            "tint": _colour(rng, (0.2, 0.8), (0.3, 1.0))}


def draw_identity(rng):
    """The look of one figure and its background, as plain numbers (JSON-able)."""
    head_radius = rng.uniform(0.24, 0.30)
    return {
        "background": {"colour": _colour(rng, (0.05, 0.35), (0.35, 0.75)),
                       "texture": _texture(rng, (0.25, 0.6), (0.15, 0.35))},
        "torso": {"half_width": rng.uniform(0.24, 0.32), "half_height": rng.uniform(0.34, 0.42),
                  "power": rng.uniform(2.5, 5.0), "colour": _colour(rng, (0.45, 0.95), (0.45, 0.95)),
                  "texture": _texture(rng)},
        "head": {"radius_x": head_radius * rng.uniform(0.85, 1.0), "radius_y": head_radius,
                 "colour": _colour(rng, (0.3, 0.7), (0.6, 1.0)), "texture": _texture(rng, (0.2, 0.35), (0.05, 0.12)),
                 "eye_x": rng.uniform(0.32, 0.42), "eye_y": rng.uniform(-0.25, -0.05), "eye_radius": rng.uniform(0.17, 0.22),
                 "pupil": _colour(rng, (0.5, 1.0), (0.05, 0.35)),
                 "mouth_y": rng.uniform(0.38, 0.5), "mouth_width": rng.uniform(0.38, 0.5),
                 "mouth_open": rng.uniform(0.25, 0.33), "lips": _colour(rng, (0.5, 0.9), (0.3, 0.6))},
        "arm": {"length": rng.uniform(0.5, 0.62), "half_thickness": rng.uniform(0.075, 0.1),
                "colour": _colour(rng, (0.45, 0.95), (0.45, 0.95)), "texture": _texture(rng)},
        "right_arm_colour": _colour(rng, (0.45, 0.95), (0.45, 0.95)),
    }


def _pattern(texture, u, v):
    """The texture's value in [0, 1] at local coordinates (u, v)."""
    phases = [fx * u + fy * v + phase for fx, fy, phase in texture["waves"]]
    if texture["kind"] == "checks":
        value = np.sin(phases[0]) * np.sin(phases[1])
    else:
        value = np.mean([np.sin(p) for p in phases], axis=0)
    return 0.5 + 0.5 * value


def _paint(colour, texture, u, v):
    """Colours (N, 3) of a textured surface: the base colour pulled towards the tint by the pattern."""
    mix = texture["amplitude"] * 2.0 * (_pattern(texture, u, v) - 0.5)  # (N,) in [-amp, amp]
    base, tint = np.asarray(colour), np.asarray(texture["tint"])
    return np.clip(base[None] + mix[:, None] * (tint - base)[None], 0.0, 1.0)


# ---------------------------------------------------------------------------
# Motions: smooth random paths of every joint
# ---------------------------------------------------------------------------

def _wave(rng, num_frames, cycles=(0.4, 1.6)):
    """A smooth path in [-1, 1] over ``num_frames``: a sum of two sines of random frequency and phase."""
    t = np.arange(num_frames) / max(num_frames - 1, 1)
    value = np.zeros(num_frames)
    for weight in (0.65, 0.35):
        value += weight * np.sin(2 * np.pi * rng.uniform(*cycles) * t + rng.uniform(0, 2 * np.pi))
    return value


def _blinks(rng, num_frames):
    """Eyelid closure in [0, 1] per frame: one or two blinks of three frames (0 open, 1 shut)."""
    closure = np.zeros(num_frames)
    for _ in range(int(rng.integers(1, 3))):
        start = int(rng.integers(1, max(num_frames - 3, 2)))
        closure[start:start + 3] = np.maximum(closure[start:start + 3], [0.6, 1.0, 0.6][:len(closure[start:start + 3])])
    return closure


def draw_motion(rng, num_frames):
    """Per-frame joint values (JSON-able lists): angles in radians, shifts in frame units."""
    motion = {
        "root_x": MOTION["root_x"] * _wave(rng, num_frames),
        "root_y": MOTION["root_y"] * _wave(rng, num_frames),
        "torso_angle": MOTION["torso_angle"] * _wave(rng, num_frames),
        "head_angle": MOTION["head_angle"] * _wave(rng, num_frames),
        "head_x": MOTION["head_x"] * _wave(rng, num_frames),
        "head_y": MOTION["head_y"] * _wave(rng, num_frames),
    }
    for side in ("left", "right"):  # positive angles lift the arm away from the body
        centre, swing = rng.uniform(*MOTION["arm_centre"]), rng.uniform(*MOTION["arm_swing"])
        motion[f"{side}_arm_angle"] = centre + swing * _wave(rng, num_frames, (0.5, 1.5))
    # The mouth: shut for part of the video, then opening and closing smoothly.
    opening = np.clip(_wave(rng, num_frames, (0.5, 1.5)) * 1.4 + rng.uniform(-0.3, 0.3), 0.0, 1.0)
    motion["mouth"] = opening
    motion["blink"] = _blinks(rng, num_frames)
    return {key: [round(float(x), 6) for x in value] for key, value in motion.items()}


def _rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def placements(identity, motion, t):
    """Where each fine label sits in frame ``t``: (len(FINE_LABELS), 2, 3) maps ``z = A u + c``.

    ``A`` is a rotation (the parts are rigid); the background's map is the identity.
    """
    torso, head, arm = identity["torso"], identity["head"], identity["arm"]
    maps = np.zeros((len(FINE_LABELS), 2, 3))
    maps[0, :, :2] = np.eye(2)
    # The torso hangs from nothing: it sways about its hips, below its centre.
    hips = np.array([motion["root_x"][t], 0.78 + motion["root_y"][t]])
    torso_rotation = _rotation(motion["torso_angle"][t])
    torso_centre = hips + torso_rotation @ np.array([0.0, -torso["half_height"] * 0.95])
    maps[1] = np.c_[torso_rotation, torso_centre]

    def on_torso(point):
        return torso_rotation @ np.asarray(point) + torso_centre

    neck = on_torso([0.0, -torso["half_height"]])
    head_rotation = _rotation(motion["torso_angle"][t] + motion["head_angle"][t])
    head_centre = neck + head_rotation @ np.array([0.0, -head["radius_y"] * 0.92]) + np.array(
        [motion["head_x"][t], motion["head_y"][t]])
    maps[2] = maps[5] = maps[6] = np.c_[head_rotation, head_centre]
    shoulder_y = -torso["half_height"] + 0.7 * arm["half_thickness"]
    for label, side in ((3, -1.0), (4, 1.0)):
        shoulder = on_torso([side * (torso["half_width"] - 0.6 * arm["half_thickness"]), shoulder_y])
        # local v runs down the arm; a positive angle turns it away from the body
        angle = motion["torso_angle"][t] - side * motion[f"{'left' if side < 0 else 'right'}_arm_angle"][t]
        maps[label] = np.c_[_rotation(angle), shoulder]
    return maps


def _to_local(maps, label, points):
    """Local (u, v) of frame points (N, 2) for a label's map."""
    rotation, centre = maps[label][:, :2], maps[label][:, 2]
    local = (points - centre[None]) @ rotation  # R^T (z - c), row-vector form
    return local[:, 0], local[:, 1]


def draw(identity, motion, t, points):
    """Colours (N, 3) and fine labels (N,) of frame ``t`` at frame points (N, 2) of (x, y) in [-1, 1]."""
    maps = placements(identity, motion, t)
    background = identity["background"]
    colours = _paint(background["colour"], background["texture"], points[:, 0], points[:, 1])
    labels = np.zeros(len(points), np.uint8)

    def put(inside, label, values):
        """Paint the points ``inside`` with ``values``: one colour, or a function of (u, v) there."""
        if callable(values):
            values = values(u[inside], v[inside])
        colours[inside] = values
        labels[inside] = label

    torso = identity["torso"]
    u, v = _to_local(maps, 1, points)
    inside = (np.abs(u / torso["half_width"]) ** torso["power"]
              + np.abs(v / torso["half_height"]) ** torso["power"]) < 1.0
    put(inside, 1, lambda a, b: _paint(torso["colour"], torso["texture"], a, b))

    head = identity["head"]
    u, v = _to_local(maps, 2, points)
    inside = (u / head["radius_x"]) ** 2 + (v / head["radius_y"]) ** 2 < 1.0
    put(inside, 2, lambda a, b: _paint(head["colour"], head["texture"], a, b))
    radius, scale = head["eye_radius"] * head["radius_y"], head["radius_y"]
    closure = motion["blink"][t]
    for side in (-1.0, 1.0):
        du, dv = u - side * head["eye_x"] * scale, v - head["eye_y"] * scale
        ball = inside & (du ** 2 + dv ** 2 < radius ** 2)
        lid_edge = -radius + 2.0 * radius * closure  # the lid covers the ball above this line
        open_ball = ball & (dv >= lid_edge)
        pupil = (du ** 2 + dv ** 2 < (0.5 * radius) ** 2)[open_ball][:, None]
        put(open_ball, 5, np.where(pupil, np.asarray(head["pupil"])[None], np.array([[0.95, 0.95, 0.92]])))
        lid = ball & ~open_ball
        put(lid, 2, np.asarray(head["colour"]) * 0.8)
    opening = motion["mouth"][t] * head["mouth_open"] * scale
    du, dv = u / (head["mouth_width"] * scale), v - head["mouth_y"] * scale
    lips = inside & (du ** 2 + (dv / (opening + 0.06 * scale)) ** 2 < 1.0)
    put(lips, 2, np.asarray(head["lips"]))
    if opening > 1e-3:
        mouth = inside & (du ** 2 + (dv / opening) ** 2 < 1.0)
        # the inside: dark, with a lighter tongue below the middle (content to be painted, or missed)
        tongue = np.clip(0.5 + 0.5 * np.tanh(6.0 * dv[mouth] / opening), 0, 1)[:, None]
        put(mouth, 6, (1 - tongue) * np.array([[0.25, 0.05, 0.08]]) + tongue * np.array([[0.85, 0.4, 0.45]]))

    arm = identity["arm"]
    for label, colour in ((3, arm["colour"]), (4, identity["right_arm_colour"])):
        u, v = _to_local(maps, label, points)
        along = np.clip(v, 0.0, arm["length"])
        inside = u ** 2 + (v - along) ** 2 < arm["half_thickness"] ** 2
        put(inside, label, lambda a, b, colour=colour: _paint(colour, arm["texture"], a, b))
    return colours, labels


def pixel_grid(size, supersample=1):
    """Frame points (size * s, size * s, 2): the centres of ``s x s`` sub-pixels of every pixel."""
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5  # in pixels, around the centre
    pixels = (np.arange(size)[:, None] + offsets[None]).reshape(-1)  # (size * s,)
    coords = pixels * 2.0 / (size - 1) - 1.0  # -1/+1 at the corner pixels' centres
    x, y = np.meshgrid(coords, coords)
    return np.stack([x, y], axis=-1)


def render(identity, motion, size):
    """The frames (T, size, size, 3) float32 in [0, 1] and fine labels (T, size, size) uint8 of a video."""
    num_frames = len(motion["mouth"])
    fine = pixel_grid(size, SUPERSAMPLE).reshape(-1, 2)
    centres = pixel_grid(size).reshape(-1, 2)
    frames = np.zeros((num_frames, size, size, 3), np.float32)
    labels = np.zeros((num_frames, size, size), np.uint8)
    for t in range(num_frames):
        colours, _ = draw(identity, motion, t, fine)
        colours = colours.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
        frames[t] = colours
        labels[t] = draw(identity, motion, t, centres)[1].reshape(size, size)
    return frames, labels


# ---------------------------------------------------------------------------
# The dataset on disk
# ---------------------------------------------------------------------------

def _video_name(split, identity, k):
    return f"{split}/id{identity:05d}#puppet#{k:03d}.mp4"  # a folder of PNG frames, as the original's


def make_puppets_dataset(out, size=64, identities=300, videos_per_identity=1, test_identities=16,
                         num_frames=24, seed=0, overwrite=True, progress=True):
    """Write a puppets dataset to ``out`` (``train/``, ``test/``, ``meta/``); returns ``out``.

    ``identities`` training identities and ``test_identities`` others, each with
    ``videos_per_identity`` videos of ``num_frames`` frames; the test identities
    are never in the training split. Everything follows from ``seed``.
    """
    from fomm_lessons.data.sample import check_ours, remove_earlier

    size, num_frames = int(size), int(num_frames)
    if size < 16:
        raise ValueError(f"expected a frame size of at least 16, got {size}")
    if num_frames < 2:
        raise ValueError(f"expected at least 2 frames per video, got {num_frames}")
    for name, value in (("identities", identities), ("test identities", test_identities),
                        ("videos per identity", videos_per_identity)):
        if int(value) < 1:
            raise ValueError(f"expected at least 1 of {name}, got {value}")
    out = os.fspath(out)
    check_ours(out, META_FILE, FORMAT, "fomm-lessons data puppets", extra=_truth_files)
    if overwrite:
        remove_earlier(out, META_FILE, FORMAT, extra=_truth_files)
    meta = {"format": FORMAT, "size": size, "seed": int(seed), "num_frames": num_frames,
            "part_names": list(PART_NAMES), "fine_labels": list(FINE_LABELS),
            "part_of_fine": PART_OF_FINE.tolist(), "supersample": SUPERSAMPLE,
            "convention": "a frame point z on fine label l is A[t, l] u + c[t, l] for the part's local u; "
                          "meta/puppets/<video>.npz holds maps (T, L, 2, 3) and fine labels (T, H, W)",
            "identities": {}, "videos": {}}
    jobs = [("train", i) for i in range(int(identities))]
    jobs += [("test", int(identities) + i) for i in range(int(test_identities))]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs) * int(videos_per_identity), desc="puppets", unit="video", disable=not progress)
    for split, number in jobs:
        identity = draw_identity(np.random.default_rng([int(seed), 0, number]))
        meta["identities"][f"id{number:05d}"] = {"split": split, **identity}
        for k in range(int(videos_per_identity)):
            motion = draw_motion(np.random.default_rng([int(seed), 1, number, k]), num_frames)
            frames, labels = render(identity, motion, size)
            video = _video_name(split, number, k)
            write_video(os.path.join(out, video), frames)
            maps = np.stack([placements(identity, motion, t) for t in range(num_frames)])
            truth = _truth_path(out, video)
            os.makedirs(os.path.dirname(truth), exist_ok=True)
            np.savez_compressed(truth, maps=maps.astype(np.float64), labels=labels)
            meta["videos"][video] = {"identity": f"id{number:05d}", "num_frames": num_frames, **motion}
            bar.update(1)
    bar.close()
    os.makedirs(os.path.join(out, "meta"), exist_ok=True)
    with open(os.path.join(out, META_FILE), "w") as f:
        json.dump(meta, f, sort_keys=True)
        f.write("\n")
    return out


def _truth_path(root, video):
    return os.path.join(root, TRUTH_FOLDER, video[:-len(".mp4")] + ".npz")


def _truth_files(root, meta):
    """The ground-truth files an earlier run wrote (for the don't-touch-what-isn't-ours rule)."""
    return {os.path.normpath(_truth_path(root, video)) for video in meta.get("videos", {})}


def is_puppets_dataset(root):
    """Whether ``root`` holds a puppets dataset's metadata."""
    try:
        return load_meta(root)["format"] == FORMAT
    except (OSError, ValueError, KeyError):
        return False


def load_meta(root):
    """The metadata of a puppets dataset (``ROOT/meta/puppets.json``)."""
    path = os.path.join(os.fspath(root), META_FILE)
    with open(path) as f:
        meta = json.load(f)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"expected {FORMAT!r} in {path}, got {meta.get('format') if isinstance(meta, dict) else meta!r}")
    return meta


def _video_key(meta, video):
    """``video`` as the metadata names it: "test/id00300#puppet#000.mp4" (the .mp4 may be left off)."""
    key = os.fspath(video).replace(os.sep, "/")
    for candidate in (key, key + ".mp4"):
        if candidate in meta["videos"]:
            return candidate
    raise KeyError(f"expected a video of this puppets dataset such as {next(iter(meta['videos']))!r}, got {video!r}")


def _truth(root, video):
    meta = load_meta(root)
    key = _video_key(meta, video)
    with np.load(_truth_path(os.fspath(root), key)) as truth:
        return meta, key, truth["maps"], truth["labels"]


def part_labels(root, video, index, fine=False):
    """The part label of every pixel of frame ``index``: (H, W) int32, 0 the background.

    With ``fine``, the labels of ``FINE_LABELS`` instead (eyes and the mouth's inside apart).
    """
    _, _, _, labels = _truth(root, video)
    labels = labels[int(index)].astype(np.int32)
    return labels if fine else PART_OF_FINE[labels]


def true_flow(maps_source, maps_driving, labels_driving):
    """``T_{S<-D}`` at every driving pixel: (H, W, 2) of (x, y) in [-1, 1], from the parts' maps."""
    size = labels_driving.shape[0]
    points = pixel_grid(size).reshape(-1, 2)
    flow = np.empty_like(points)
    carriers = np.asarray(CARRIER)[labels_driving.reshape(-1)]
    for label in np.unique(carriers):
        rows = carriers == label
        rotation_d, centre_d = maps_driving[label][:, :2], maps_driving[label][:, 2]
        rotation_s, centre_s = maps_source[label][:, :2], maps_source[label][:, 2]
        local = (points[rows] - centre_d[None]) @ rotation_d  # R_D^T (z - c_D)
        flow[rows] = local @ rotation_s.T + centre_s[None]  # R_S u + c_S
    return flow.reshape(size, size, 2).astype(np.float32)


def shown_in_source(flow, labels_source, labels_driving):
    """Driving pixels whose content the source shows: the flow lands in the frame on the same fine label."""
    size = labels_driving.shape[0]
    pixels = (flow + 1.0) * (size - 1) / 2.0  # (H, W, 2) in pixel units
    inside = np.all((pixels > -0.5) & (pixels < size - 0.5), axis=-1)
    column = np.clip(np.rint(pixels[..., 0]), 0, size - 1).astype(int)
    row = np.clip(np.rint(pixels[..., 1]), 0, size - 1).astype(int)
    return inside & (labels_source[row, column] == labels_driving)


def ground_truth(root, video, source_index, driving_index):
    """The truth of one (source, driving) pair of a video, every map at the driving frame's pixels.

    Returns ``{"flow": (H, W, 2) float32 T_{S<-D} of (x, y) in [-1, 1],
    "shown": (H, W) bool, "parts_source": (H, W) int32, "parts_driving": (H, W) int32}``:
    ``grid_sample(source, flow)`` gives the driving frame wherever ``shown``.
    """
    _, _, maps, labels = _truth(root, video)
    s, d = int(source_index), int(driving_index)
    for name, index in (("source", s), ("driving", d)):
        if not 0 <= index < len(labels):
            raise IndexError(f"expected a {name} frame index in [0, {len(labels)}), got {index}")
    flow = true_flow(maps[s], maps[d], labels[d])
    return {"flow": flow, "shown": shown_in_source(flow, labels[s], labels[d]),
            "parts_source": PART_OF_FINE[labels[s]], "parts_driving": PART_OF_FINE[labels[d]]}


def list_videos(root, split):
    """The videos of one split, as the metadata names them, sorted."""
    return sorted(v for v in load_meta(root)["videos"] if v.startswith(f"{split}/"))


def ensure_puppets_dataset(root, **options):
    """The puppets dataset at ``root`` as a Path, made first when missing (what chapters call).

    ``options`` go to :func:`make_puppets_dataset`; parallel callers wait for the first
    (:func:`fomm_lessons.data.sample.made_once`).
    """
    from fomm_lessons.data.sample import made_once

    return made_once(root, META_FILE, lambda folder: make_puppets_dataset(folder, **{"progress": False, **options}))

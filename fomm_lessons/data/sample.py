"""The offline sample dataset: real photographs moved by known smooth motions.

Each video is one photograph shipped inside an installed package, cropped
around the face, and moved by a thin-plate-spline transform whose parameters
change smoothly over time. Frame ``t`` is the base crop ``B`` sampled at
``T_t(z) / m`` (``m`` the margin of the base crop around the frame), so the
backward flow from any driving frame ``D`` to any source frame ``S`` is known
exactly: ``T_{S<-D} = T_S^{-1} o T_D`` (:func:`ground_truth_flow`), which is
what FOMM's dense motion (Eq. 4 of the paper) tries to estimate.

``fomm-lessons data sample --out DIR --size 64`` calls :func:`make_sample_dataset`.
"""

import fcntl
import json
import os

import numpy as np

from fomm_lessons.data.frames import to_rgb, write_video

META_FILE = os.path.join("meta", "sample.json")
FORMAT = "fomm-lessons sample dataset v1"

# name -> loader, whether a human face (run the LBP cascade), fallback face box
# (centre row, centre col, side, in photo pixels), licence, attribution.
SOURCES = {
    "astronaut": dict(
        load=lambda: _skimage("astronaut"), face=True, fallback=(117, 222, 93),
        licence="public domain", attribution="Eileen Collins, NASA (Great Images database); "
        "skimage.data.astronaut() of scikit-image"),
    "cameraman": dict(
        load=lambda: _skimage("camera"), face=True, fallback=(150, 210, 110),
        licence="CC0", attribution="Lav Varshney; skimage.data.camera() of scikit-image"),
    "chelsea": dict(
        load=lambda: _skimage("chelsea"), face=False, fallback=(170, 245, 165),
        licence="CC0", attribution="Chelsea the cat, Stefan van der Walt; skimage.data.chelsea() of scikit-image"),
    "grace_hopper": dict(
        load=lambda: _matplotlib_sample("grace_hopper.jpg"), face=True, fallback=(223, 267, 196),
        licence="public domain", attribution="Grace Hopper, U.S. Navy photograph; "
        "matplotlib's sample data grace_hopper.jpg"),
}
# More "identities" for training a model that must paint faces it never saw: wider and closer
# crops of the same photographs (a different framing is a different image to the generator),
# and other photographs of scikit-image. ``face_scale`` overrides base_crop's framing.
SOURCES.update({
    "astronaut_wide": dict(SOURCES["astronaut"], face_scale=3.2),
    "cameraman_wide": dict(SOURCES["cameraman"], face_scale=3.0),
    "chelsea_close": dict(SOURCES["chelsea"], face_scale=1.1),
    "coffee": dict(load=lambda: _skimage("coffee"), face=False, fallback=(180, 290, 150),
                   licence="CC0", attribution="Rachel Michetti; skimage.data.coffee() of scikit-image"),
    "rocket": dict(load=lambda: _skimage("rocket"), face=False, fallback=(210, 320, 150),
                   licence="public domain", attribution="SpaceX, Falcon 9; skimage.data.rocket() of "
                   "scikit-image"),
})
TRAIN_IDENTITIES = ("astronaut", "cameraman", "chelsea")
TEST_IDENTITIES = ("grace_hopper",)
# name -> (train identities, test identities); "faces" is the default set the chapters use.
IDENTITY_SETS = {
    "faces": (TRAIN_IDENTITIES, TEST_IDENTITIES),
    "extended": (TRAIN_IDENTITIES + ("astronaut_wide", "cameraman_wide", "chelsea_close", "coffee",
                                     "rocket"), TEST_IDENTITIES),
}


def _skimage(name):
    import skimage.data

    return getattr(skimage.data, name)()


def _matplotlib_sample(name):
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data(name, asfileobj=False)) as image:
        return np.asarray(image.convert("RGB"))


def detect_face(image):
    """The largest frontal face found by scikit-image's LBP cascade: (row, col, side) or None."""
    from skimage import color, data, feature

    gray = image if image.ndim == 2 else color.rgb2gray(image[..., :3])
    cascade = feature.Cascade(data.lbp_frontal_face_cascade_filename())
    small = max(24, min(gray.shape) // 10)
    found = cascade.detect_multi_scale(img=gray, scale_factor=1.2, step_ratio=1,
                                       min_size=(small, small), max_size=gray.shape)
    if not found:
        return None
    best = max(found, key=lambda d: d["width"] * d["height"])
    side = (best["width"] + best["height"]) / 2.0
    return best["r"] + best["height"] / 2.0, best["c"] + best["width"] / 2.0, side


def _square_box(shape, centre_row, centre_col, side):
    """A square (top, left, side) of integer pixels inside an image of ``shape``, near the asked one."""
    side = int(round(min(side, shape[0], shape[1])))
    top = int(round(centre_row - side / 2.0))
    left = int(round(centre_col - side / 2.0))
    top = min(max(top, 0), shape[0] - side)
    left = min(max(left, 0), shape[1] - side)
    return top, left, side


def base_crop(name, size, margin=1.25, face_scale=None, blur=0.7):
    """The base image of one identity, float32 (N, N, 3) with ``N - 1 = round(margin (size - 1))``.

    The frame covers the central ``1 / margin`` of it: ``face_scale`` times
    the face box found by the cascade (or the source's fallback box). A
    Gaussian blur of ``blur`` pixels keeps the detail below what bilinear
    re-sampling can carry, so that warping a frame by the true flow gives
    back the other frame closely. Returns (base, effective margin, info dict).
    """
    from skimage.filters import gaussian
    from skimage.transform import resize

    source = SOURCES[name]
    face_scale = face_scale or source.get("face_scale", 1.8)
    photo = to_rgb(source["load"](), name)  # (h, w, 3)
    detected = detect_face(photo) if source["face"] else None
    centre_row, centre_col, face = detected or source["fallback"]
    top, left, side = _square_box(photo.shape, centre_row, centre_col, face * face_scale * margin)
    steps = int(round(margin * (size - 1)))
    effective_margin = steps / (size - 1)  # base pixel spacing == frame pixel spacing
    base = resize(photo[top:top + side, left:left + side], (steps + 1, steps + 1), order=1,
                  anti_aliasing=True, mode="edge")
    base = gaussian(base, sigma=blur, channel_axis=-1, mode="nearest").astype(np.float32)
    info = {"detected": detected is not None, "box_top_left_side": [top, left, side],
            "licence": source["licence"], "attribution": source["attribution"]}
    return base, effective_margin, info


def _catmull_rom(keys, num_frames, every):
    """Values at frames 0..num_frames-1 of a Catmull-Rom spline through ``keys`` (K, ...) every ``every`` frames."""
    keys = np.concatenate([keys[:1], keys, keys[-1:]], axis=0)  # end points repeated
    out = []
    for t in range(num_frames):
        k, u = divmod(t, every)
        u = u / every
        p0, p1, p2, p3 = keys[k], keys[k + 1], keys[k + 2], keys[k + 3]
        out.append(0.5 * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * u**3))
    return np.stack(out)


def smallest_jacobian_determinant(theta, control_params, extent=1.6, points=33):
    """The smallest ``det dT/dz`` of each frame's warp over the square [-extent, extent]^2: (T,)."""
    import tensorflow as tf

    from fomm_lessons.sampling import make_coordinate_grid
    from fomm_lessons.tps import ThinPlateSplineTransform

    grid = tf.reshape(make_coordinate_grid(points, points) * extent, [1, points * points, 2])
    jacobian = ThinPlateSplineTransform.from_params(theta, control_params).jacobian(grid)  # (T, N, 2, 2)
    return tf.reduce_min(tf.linalg.det(jacobian), axis=1).numpy()


def random_motion(rng, num_frames, sigma_affine, sigma_tps, points_tps, keyframe_every=8, min_det=0.5):
    """Smooth motion: theta (T, 2, 3) and control_params (T, P*P), float32.

    Key poses every ``keyframe_every`` frames are the original's random
    transform (identity plus N(0, sigma_affine) affine and N(0, sigma_tps)
    spline weights); between them a Catmull-Rom spline, which is smooth in
    time. ``T(z)`` is linear in the parameters, so interpolating parameters
    interpolates the warps themselves. Motions that fold or squeeze space
    (``det dT/dz < min_det`` somewhere a frame can reach) are drawn again, so
    that every warp can be inverted (:func:`ground_truth_flow`).
    """
    count = -(-(num_frames - 1) // keyframe_every) + 2  # enough keys for the last segment
    for _ in range(1000):
        keys_theta = np.eye(2, 3)[None] + rng.normal(0.0, sigma_affine, size=(count, 2, 3))
        keys_control = rng.normal(0.0, sigma_tps, size=(count, points_tps**2))
        theta = _catmull_rom(keys_theta, num_frames, keyframe_every).astype(np.float32)
        control = _catmull_rom(keys_control, num_frames, keyframe_every).astype(np.float32)
        if smallest_jacobian_determinant(theta, control).min() >= min_det:
            return theta, control
    raise RuntimeError(f"no motion with det(dT/dz) >= {min_det} found; lower sigma_affine or sigma_tps")


def render(base, margin, theta, control_params):
    """Frames (T, H, W, 3): ``base`` sampled at ``T_t(z) / margin`` with border padding."""
    import tensorflow as tf

    from fomm_lessons.sampling import grid_sample, make_coordinate_grid
    from fomm_lessons.tps import ThinPlateSplineTransform

    steps = base.shape[0] - 1
    size = int(round(steps / margin)) + 1
    grid = tf.reshape(make_coordinate_grid(size, size), [1, size * size, 2])
    transform = ThinPlateSplineTransform.from_params(theta, control_params)
    coords = transform.warp_coordinates(grid) / margin  # (T, H*W, 2) in base coordinates
    coords = tf.reshape(coords, [-1, size, size, 2])
    bases = tf.tile(tf.constant(base)[None], [coords.shape[0], 1, 1, 1])  # (T, N, N, 3)
    return grid_sample(bases, coords, padding_mode="border").numpy()


def make_sample_dataset(out, size=64, seed=0, num_frames=24, videos_per_identity=3,
                        sigma_affine=0.05, sigma_tps=0.005, points_tps=5, margin=1.25,
                        keyframe_every=8, overwrite=True, identities="faces"):
    """Write the sample dataset to ``out`` (``train/``, ``test/``, ``meta/sample.json``); returns ``out``.

    Identities are disjoint between the splits (``identities`` names a pair of
    ``IDENTITY_SETS``); everything follows from ``seed``.
    """
    if identities not in IDENTITY_SETS:
        raise ValueError(f"expected identities in {sorted(IDENTITY_SETS)}, got {identities!r}")
    size = int(size)
    if size < 8:
        raise ValueError(f"expected a frame size of at least 8, got {size}")
    if num_frames < 2:
        raise ValueError(f"expected at least 2 frames per video, got {num_frames}")
    out = os.fspath(out)
    check_ours(out)
    if overwrite:
        remove_earlier(out)
    meta = {"format": FORMAT, "size": size, "seed": int(seed), "num_frames": int(num_frames),
            "sigma_affine": sigma_affine, "sigma_tps": sigma_tps, "points_tps": points_tps,
            "keyframe_every": keyframe_every, "identity_set": identities,
            "convention": "frame_t(z) = base(T_t(z) / margin), T_t = ThinPlateSplineTransform."
                          "from_params(theta[t], control_params[t]); z in [-1, 1] (x, y)",
            "identities": {}, "videos": {}}
    number = 0
    for split, names in zip(("train", "test"), IDENTITY_SETS[identities]):
        for name in names:
            base, effective_margin, info = base_crop(name, size, margin)
            meta["identities"][name] = {"split": split, **info}
            meta["margin"] = effective_margin
            for k in range(videos_per_identity):
                rng = np.random.default_rng([int(seed), number])
                number += 1
                theta, control = random_motion(rng, num_frames, sigma_affine, sigma_tps, points_tps,
                                               keyframe_every)
                video = f"{split}/{name}#sample#{k:05d}.mp4"
                write_video(os.path.join(out, video), render(base, effective_margin, theta, control))
                meta["videos"][video] = {"identity": name, "theta": theta.tolist(),
                                         "control_params": control.tolist()}
    os.makedirs(os.path.join(out, "meta"), exist_ok=True)
    with open(os.path.join(out, META_FILE), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    return out


def _earlier_meta(out, meta_file=META_FILE, format=FORMAT):
    """The metadata of a dataset of ``format`` written to ``out`` before, or None."""
    try:
        with open(os.path.join(out, meta_file)) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == format else None


def _our_paths(out, meta_file=META_FILE, format=FORMAT, extra=None):
    """(video folders, files) that an earlier run wrote to ``out``, by its metadata.

    ``extra(out, meta)`` names further files that run wrote (a set of paths).
    """
    meta = _earlier_meta(out, meta_file, format)
    videos = {os.path.normpath(os.path.join(out, v)) for v in meta["videos"]} if meta else set()
    files = {os.path.normpath(os.path.join(out, meta_file))} if meta else set()
    if meta and extra is not None:
        files.update(extra(out, meta))
    for video in videos:  # a PNG folder of frames (or, written by hand, one file)
        if os.path.isdir(video):
            files.update(os.path.join(video, f) for f in os.listdir(video) if _is_frame_name(f))
        else:
            files.add(video)
    return videos, files


def _is_frame_name(name):
    stem, dot, ext = name.partition(".")
    return dot == "." and ext == "png" and stem.isdigit()


def check_ours(out, meta_file=META_FILE, format=FORMAT, command="fomm-lessons data sample", extra=None):
    """Refuses an ``out`` whose train/, test/ or meta/ hold files ``command`` did not write."""
    _, ours = _our_paths(out, meta_file, format, extra)
    for part in ("train", "test", "meta"):
        for folder, _, files in os.walk(os.path.join(out, part)):
            other = [f for f in files if os.path.normpath(os.path.join(folder, f)) not in ours]
            if other:
                raise ValueError(f"{os.path.join(folder, other[0])} was not written by `{command}`; "
                                 f"expected a new folder or one it made, got --out {out}")


def remove_earlier(out, meta_file=META_FILE, format=FORMAT, extra=None):
    """Deletes the videos and metadata an earlier run wrote to ``out`` (nothing else)."""
    videos, files = _our_paths(out, meta_file, format, extra)
    for path in files:
        os.remove(path)
    folders = set()
    for path in files:  # every folder between a file and ``out``, deepest first below
        folder = os.path.dirname(path)
        while folder not in folders and os.path.normpath(folder) != os.path.normpath(out) and folder:
            folders.add(folder)
            folder = os.path.dirname(folder)
    for folder in sorted(folders | videos, key=len, reverse=True):
        try:
            os.rmdir(folder)
        except OSError:  # missing, a file, or holds something else
            pass


def made_once(root, meta_file, make):
    """``root`` as a Path, after ``make(root)`` wrote it when ``root/meta_file`` is missing.

    Processes that ask for the same ``root`` at once (chapters run in parallel) take turns on a
    lock on the folder: the first makes the dataset, the others wait and then read it.
    """
    from pathlib import Path

    root = Path(root)
    if (root / meta_file).is_file():
        return root
    root.mkdir(parents=True, exist_ok=True)
    handle = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        if not (root / meta_file).is_file():
            make(root)
    finally:
        os.close(handle)  # releases the lock
    return root


def ensure_sample_dataset(root="../data/generated/sample-64", size=64, **options):
    """The sample dataset at ``root`` as a Path, made first when it is missing (what chapters call)."""
    return made_once(root, META_FILE, lambda folder: make_sample_dataset(folder, size=size, **options))


def ensure_eval_dataset(root="../data/generated/sample-64-eval", size=64, **options):
    """The held-out motions of the ``sample-64`` model at ``root``, made first when missing.

    The same identities as sample-64's training set (``identities="extended"``)
    moving along other motions (``seed=1``; training used seed 0), so nothing in
    it was trained on, and its test split (grace_hopper) is a face sample-64
    never saw. ``options`` go to :func:`make_sample_dataset`.
    """
    return ensure_sample_dataset(root, size=size, **{"identities": "extended", "seed": 1, **options})


def load_meta(root):
    """The motion metadata of a sample dataset (``ROOT/meta/sample.json``)."""
    path = os.path.join(os.fspath(root), META_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no sample-dataset metadata at {path}; make it with "
                                f"`fomm-lessons data sample --out {os.fspath(root)}`")
    with open(path) as f:
        return json.load(f)


def _find_video(meta, video):
    """The metadata key of ``video``: ``train/NAME.mp4``, ``NAME.mp4`` or a path ending in it."""
    video = os.fspath(video).rstrip("/\\").replace("\\", "/")
    if video in meta["videos"]:
        return video
    matches = [key for key in meta["videos"] if key.split("/")[-1] == video.split("/")[-1]]
    if len(matches) != 1:
        raise ValueError(f"expected one of the sample videos {sorted(meta['videos'])}, got {video!r}")
    return matches[0]


def motion_params(root, video, index, meta=None):
    """(theta (1, 2, 3), control_params (1, P*P)) of frame ``index`` of ``video``."""
    meta = meta or load_meta(root)
    entry = meta["videos"][_find_video(meta, video)]
    count = len(entry["theta"])
    if not -count <= int(index) < count:
        raise ValueError(f"expected a frame index in [0, {count}) for {video!r}, got {index}")
    theta = np.asarray(entry["theta"][index], np.float32)[None]
    control = np.asarray(entry["control_params"][index], np.float32)[None]
    return theta, control


def invert_warp(transform, targets, iterations=40, tolerance=2e-6):
    """Points ``y`` with ``T(y) = targets`` (1, N, 2) by damped Newton steps on ``T``'s jacobian.

    A step is halved where it would not shrink the residual (far outside the
    frame the spline term grows like ``r^2 log r`` and full steps overshoot).
    Raises when some point cannot be inverted to 1e-4.
    """
    def residual_of(points):
        return transform.warp_coordinates(points.astype(np.float32)).numpy().astype(np.float64) - targets

    theta = transform.theta.numpy()[0].astype(np.float64)  # (2, 3)
    targets = np.asarray(targets, np.float64)
    points = np.linalg.solve(theta[:, :2], (targets[0] - theta[:, 2]).T).T[None]  # affine guess, (1, N, 2)
    residual = residual_of(points)
    for _ in range(iterations):
        size = np.abs(residual).max(axis=-1)  # (1, N)
        if size.max() < tolerance:
            break
        jacobian = transform.jacobian(points.astype(np.float32)).numpy().astype(np.float64)  # (1, N, 2, 2)
        step = np.linalg.solve(jacobian, residual[..., None])[..., 0]  # (1, N, 2)
        scale = np.ones_like(size)
        for _ in range(12):  # backtracking, point by point
            trial = points - scale[..., None] * step
            trial_residual = residual_of(trial)
            better = np.abs(trial_residual).max(axis=-1) < size
            if better.all():
                break
            scale = np.where(better, scale, scale / 2)
        points = np.where(better[..., None], trial, points)
        residual = np.where(better[..., None], trial_residual, residual)
    worst = np.abs(residual).max()
    if worst > 1e-4:
        raise RuntimeError(f"the warp could not be inverted: residual {worst:.2g} after {iterations} steps")
    return points.astype(np.float32)


def ground_truth_flow(root, video, source_index, driving_index):
    """Exact backward flow ``T_{S<-D} = T_S^{-1} o T_D`` as an (H, W, 2) grid of (x, y) in [-1, 1].

    ``grid_sample(source[None], flow[None])`` reproduces the driving frame
    wherever the flow stays inside [-1, 1] (the part of the driving frame
    visible in the source frame).
    """
    import tensorflow as tf

    from fomm_lessons.sampling import make_coordinate_grid
    from fomm_lessons.tps import ThinPlateSplineTransform

    meta = load_meta(root)
    size = meta["size"]
    theta_s, control_s = motion_params(root, video, source_index, meta)
    theta_d, control_d = motion_params(root, video, driving_index, meta)
    grid = tf.reshape(make_coordinate_grid(size, size), [1, size * size, 2])
    target = ThinPlateSplineTransform.from_params(theta_d, control_d).warp_coordinates(grid)  # T_D(z)
    flow = invert_warp(ThinPlateSplineTransform.from_params(theta_s, control_s), target.numpy())
    return flow.reshape(size, size, 2)  # (H, W, 2)


def write_example_video(path, name="grace_hopper", seed=0, num_frames=50, height=240, width=320, fps=25,
                        sigma_affine=0.05, sigma_tps=0.005, points_tps=5, keyframe_every=10):
    """A stand-in for a phone video, made offline: a landscape ``.mp4`` of one photograph moving.

    The photograph ``name`` (one of :data:`SOURCES`) is scaled to the frame's height and placed
    left of centre on a plain backdrop; the whole picture then moves by one smooth random warp
    (:func:`random_motion`, ``seed``), so the face drifts, turns a little and grows and shrinks,
    as a hand-held camera would make it. It has no parts moving on their own: it is material for
    ``fomm-lessons crop`` and a fine-tuning example, not for judging motion. Returns ``path``.
    """
    import tensorflow as tf
    from skimage.transform import resize

    from fomm_lessons.sampling import grid_sample, make_coordinate_grid
    from fomm_lessons.tps import ThinPlateSplineTransform

    if name not in SOURCES:
        raise ValueError(f"expected a photograph in {sorted(SOURCES)}, got {name!r}")
    if min(height, width) < 64 or num_frames < 2:
        raise ValueError(f"expected frames of at least 64x64 and 2 frames, got {height}x{width} and {num_frames}")
    photo = to_rgb(SOURCES[name]["load"](), name)
    photo_width = min(width, int(round(photo.shape[1] * height / photo.shape[0])))
    canvas = np.empty((height, width, 3), np.float32)
    canvas[:] = np.linspace([0.55, 0.6, 0.7], [0.35, 0.4, 0.5], height, dtype=np.float32)[:, None]  # a wall
    left = (width - photo_width) // 3
    canvas[:, left:left + photo_width] = resize(photo, (height, photo_width), order=1, anti_aliasing=True)
    theta, control = random_motion(np.random.default_rng([int(seed), 7919]), num_frames, sigma_affine,
                                   sigma_tps, points_tps, keyframe_every)
    grid = tf.reshape(make_coordinate_grid(height, width), [1, height * width, 2])
    coords = ThinPlateSplineTransform.from_params(theta, control).warp_coordinates(grid)
    frames = grid_sample(tf.tile(tf.constant(canvas)[None], [num_frames, 1, 1, 1]),
                         tf.reshape(coords, [num_frames, height, width, 2]), padding_mode="border")
    return write_video(path, frames.numpy(), as_folder=False, fps=fps)

"""How good is a model: reconstruction L1 (Sec. 4 of the paper) and the motion's end-point error.

Reconstruction is the paper's evaluation protocol: the first frame of each test
video is the source, every frame drives it, and the output is compared with
that frame (L1 per video, then averaged over videos, as in Table 1). On the
offline sample dataset, whose motion is known exactly, the dense motion
T_{S<-D} the generator predicts (Eq. 4-7) is also compared with the true flow
(end-point error in pixels, where the driving pixel is visible in the source).
``fomm-lessons reconstruct`` calls :func:`main`. The measures of each mechanism
against the puppets world's ground truth are :mod:`fomm_lessons.measures`'.
"""

import json
import os

import numpy as np

from fomm_lessons.animate import BATCH_SIZE, animate
from fomm_lessons.checkpoint import load_checkpoint
from fomm_lessons.data.media import check_output_path, claim_output_folder

NOT_COMPUTED_AED = ("needs a pretrained face-identity network (the paper's AED uses an OpenFace-style "
                    "re-identification model), which is not available offline")


def l1_per_frame(predicted, target):
    """Mean absolute difference of each frame: (T,) for frames (T, H, W, 3) in [0, 1]."""
    predicted, target = np.asarray(predicted, np.float64), np.asarray(target, np.float64)
    if predicted.shape != target.shape:
        raise ValueError(f"expected predicted and target frames of one shape, got {predicted.shape} and {target.shape}")
    return np.abs(predicted - target).reshape(len(target), -1).mean(axis=1)


def reconstruct(video, models, batch_size=BATCH_SIZE, outputs=("prediction",), kp_driving=None, first_order=True):
    """Every frame of ``video`` (T, H, W, 3) rebuilt from its first frame with absolute keypoints.

    ``kp_driving``: the frames' keypoints when already detected; ``first_order=False``
    replaces every Jacobian by the identity (the zeroth-order motion).
    """
    return animate(video[0], video, models, relative=False, batch_size=batch_size, outputs=outputs,
                   kp_driving=kp_driving, first_order=first_order)


def list_test_videos(root, frame_shape, split="test"):
    """Paths of one split of ``root`` (the loader's rules: folders of frames or video files)."""
    from fomm_lessons.data.loader import FramesDataset

    return FramesDataset(root, split, frame_shape=frame_shape).videos


def reconstruction_l1(root, models, frame_shape=(256, 256, 3), batch_size=BATCH_SIZE, out=None,
                      max_videos=None, landmarks=None, split="test"):
    """``{"videos": {name: mean L1}, "l1": mean over videos}`` on a split; reconstructions to ``out``.

    With a ``landmarks`` function (image -> (N, 2)), also ``"akd_videos"`` and ``"akd"``.
    With ``models=None`` the prediction is the source frame itself: the no-motion baseline.
    """
    from fomm_lessons.data.frames import load_frames, write_video

    per_video, akd = {}, {}
    for path in list_test_videos(root, frame_shape, split)[:max_videos]:
        video, _ = load_frames(path, None, frame_shape)  # (T, H, W, 3)
        if models is None:
            predicted = np.repeat(video[:1], len(video), axis=0)
        else:
            predicted = reconstruct(video, models, batch_size)
        name = os.path.basename(path)
        per_video[name] = float(l1_per_frame(predicted, video).mean())
        if landmarks is not None:
            akd[name] = average_keypoint_distance(video, predicted, landmarks)[0]
        if out is not None:
            write_video(os.path.join(out, "reconstruction", name), predicted, as_folder=True)
    result = {"videos": per_video, "l1": float(np.mean(list(per_video.values())))}
    if landmarks is not None:
        result.update(akd_videos=akd, akd=float(np.nanmean(list(akd.values()))))
    return result


def average_keypoint_distance(driving, predicted, landmarks):
    """AKD: mean distance in pixels between ``landmarks(frame)`` (N, 2) of driving and generated frames.

    Frames where either side has no landmarks are skipped; returns (AKD,
    fraction of frames skipped). The paper uses the face-alignment network.
    """
    distances, missed = [], 0
    for real, fake in zip(driving, predicted):
        a, b = landmarks(real), landmarks(fake)
        if a is None or b is None:
            missed += 1
            continue
        distances.append(np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1).mean())
    return (float(np.mean(distances)) if distances else float("nan")), missed / max(len(driving), 1)


def keypoint_metrics_status():
    """How AKD and AED can be computed: (``{metric: {"computed": bool, "reason": str}}``, landmarks or None)."""
    from fomm_lessons.animate import face_alignment_landmarks

    try:
        landmarks = face_alignment_landmarks()
        reason = "face-alignment landmarks" if landmarks else "needs the optional face-alignment package"
    except Exception as error:  # the package is there but its model could not be loaded (offline)
        landmarks, reason = None, f"face-alignment could not load its model: {type(error).__name__}"
    status = {"akd": {"computed": landmarks is not None, "reason": reason},
              "aed": {"computed": False, "reason": NOT_COMPUTED_AED}}
    return status, landmarks


# ---------------------------------------------------------------------------
# End-point error of the dense motion against the known flow
# ---------------------------------------------------------------------------

def visible_mask(flow):
    """Driving pixels that land inside the source: ground-truth grid (H, W, 2) with both coordinates in [-1, 1]."""
    flow = np.asarray(flow)
    return np.all(np.abs(flow) <= 1.0, axis=-1)


def resize_deformation(deformation, height, width):
    """A deformation (h, w, 2) resized to (height, width) as the generator does (bilinear, align_corners=False)."""
    from fomm_lessons.generator import resize_to

    deformation = np.asarray(deformation, np.float32)
    return np.asarray(resize_to(deformation[None], int(height), int(width)))[0]


def area_scale(deformation, radius=None):
    """Mean ``det dT/dz`` of a sampling grid T (h, w, 2) of (x, y) in [-1, 1]: the source area one unit of
    the output shows, averaged over the pixels with ``|z| < radius`` (all pixels when None).

    Above 1 the warp shrinks what it shows (a face drawn smaller than in the
    source), below 1 it enlarges it; ``area_scale ** -0.5`` is the change of size.
    Derivatives are central differences (one-sided at the border).
    """
    from fomm_lessons.sampling import make_coordinate_grid

    deformation = np.asarray(deformation, np.float64)
    if deformation.ndim != 3 or deformation.shape[-1] != 2 or min(deformation.shape[:2]) < 2:
        raise ValueError(f"expected a sampling grid of shape (h, w, 2) with h, w >= 2, got {deformation.shape}")
    height, width = deformation.shape[:2]
    d_dx = np.gradient(deformation, 2.0 / (width - 1), axis=1)  # (h, w, 2): dT/dx
    d_dy = np.gradient(deformation, 2.0 / (height - 1), axis=0)  # (h, w, 2): dT/dy
    det = d_dx[..., 0] * d_dy[..., 1] - d_dx[..., 1] * d_dy[..., 0]  # (h, w)
    if radius is None:
        return float(det.mean())
    inside = np.linalg.norm(np.asarray(make_coordinate_grid(height, width)), axis=-1) < radius
    if not inside.any():
        raise ValueError(f"expected a radius that holds at least one pixel centre, got {radius}")
    return float(det[inside].mean())


def end_point_error(deformation, ground_truth, where=None):
    """Mean end-point error in pixels of a deformation (h, w, 2) against the true flow (H, W, 2) where visible.

    Both are grids of (x, y) in [-1, 1] with -1/+1 at corner pixel centres, so
    one unit of x is (W - 1) / 2 pixels. ``where`` (H, W) bool: the pixels to
    average over (default: those the flow takes inside the source frame).
    Returns (EPE, fraction of pixels averaged over).
    """
    ground_truth = np.asarray(ground_truth, np.float64)
    height, width = ground_truth.shape[:2]
    predicted = resize_deformation(deformation, height, width).astype(np.float64)
    pixels = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    error = np.linalg.norm((predicted - ground_truth) * pixels, axis=-1)  # (H, W)
    visible = visible_mask(ground_truth) if where is None else np.asarray(where, bool)
    if visible.shape != error.shape:
        raise ValueError(f"expected a mask of the flow's shape {error.shape}, got {visible.shape}")
    if not visible.any():
        return float("nan"), 0.0
    return float(error[visible].mean()), float(visible.mean())


def motion_epe(root, models, frame_step=1, batch_size=BATCH_SIZE, max_videos=None, split="test",
               flows=None):
    """EPE of the predicted motion (source = frame 0) on one split of an offline sample dataset.

    ``flows``, a dict, keeps the true flows between calls on the same dataset
    (they take a Newton solve each).

    Returns ``{"videos": {name: EPE}, "epe": mean, "identity_epe": mean EPE of
    no motion at all, "visible": mean visible fraction}``.
    """
    from fomm_lessons.data.frames import read_video
    from fomm_lessons.data.sample import ground_truth_flow, load_meta
    from fomm_lessons.sampling import make_coordinate_grid

    meta = load_meta(root)
    names = sorted(v for v in meta["videos"] if v.startswith(f"{split}/"))[:max_videos]
    per_video, identity, visible = {}, [], []
    for name in names:
        video = read_video(os.path.join(root, name))  # (T, H, W, 3)
        indices = list(range(0, len(video), int(frame_step)))
        deformation = reconstruct(video[indices], models, batch_size, outputs=("deformation",))["deformation"]
        grid = np.asarray(make_coordinate_grid(*video.shape[1:3]))
        errors = []
        for t, index in enumerate(indices):
            if flows is None or (name, index) not in flows:
                truth = ground_truth_flow(root, name, 0, index)  # (H, W, 2)
                if flows is not None:
                    flows[name, index] = truth
            truth = flows[name, index] if flows is not None else truth
            epe, seen = end_point_error(deformation[t], truth)
            errors.append(epe)
            identity.append(end_point_error(grid, truth)[0])
            visible.append(seen)
        per_video[os.path.basename(name)] = float(np.nanmean(errors))
    return {"videos": per_video, "epe": float(np.mean(list(per_video.values()))),
            "identity_epe": float(np.nanmean(identity)), "visible": float(np.mean(visible))}


def keypoint_equivariance(root, models, split="test", transform_params=None, seed=0,
                          batch_size=BATCH_SIZE, max_videos=None, frame_shape=(64, 64, 3)):
    """How far keypoints move off a known warp, in pixels (the equivariance of Sec. 3.3, measured).

    Each frame X is warped by a random thin-plate-spline transform T (the
    training settings by default), X' = X o T, and the keypoints of X are
    compared with T applied to the keypoints of X': a detector that follows the
    image gives ``|kp(X) - T(kp(X'))| = 0``. Returns ``{"videos": {name: px}, "px": mean}``.
    """
    import tensorflow as tf

    from fomm_lessons.animate import detect_keypoints
    from fomm_lessons.data.frames import load_frames
    from fomm_lessons.tps import ThinPlateSplineTransform

    params = {"sigma_affine": 0.05, "sigma_tps": 0.005, "points_tps": 5, **(transform_params or {})}
    per_video = {}
    for number, path in enumerate(list_test_videos(root, frame_shape, split)[:max_videos]):
        video, _ = load_frames(path, None, frame_shape)  # (T, H, W, 3)
        transform = ThinPlateSplineTransform(len(video), params["sigma_affine"], params["sigma_tps"],
                                             params["points_tps"], seed=[int(seed), number])
        warped = transform.transform_frame(tf.constant(video)).numpy()
        kp = detect_keypoints(models.kp_detector, video, batch_size)["value"]  # (T, K, 2)
        kp_warped = detect_keypoints(models.kp_detector, warped, batch_size)["value"]
        back = transform.warp_coordinates(tf.constant(kp_warped)).numpy()  # (T, K, 2)
        pixels = np.array([(video.shape[2] - 1) / 2.0, (video.shape[1] - 1) / 2.0])
        per_video[os.path.basename(path)] = float(np.linalg.norm((kp - back) * pixels, axis=-1).mean())
    return {"videos": per_video, "px": float(np.mean(list(per_video.values())))}


def quality(root, models, untrained=None, splits=("train", "test"), max_videos=None, frame_step=1,
            frame_shape=(64, 64, 3)):
    """The quality report of a model on an offline sample dataset, one entry per split.

    For each split: reconstruction L1 of the model, of the no-motion baseline
    (the source frame itself) and of ``untrained`` networks when given; the
    end-point error of the dense motion against the true flow next to zero
    flow; and the keypoints' equivariance error in pixels. Ratios below 1 beat
    the baseline.
    """
    report = {}
    for split in splits:
        kwargs = dict(frame_shape=frame_shape, max_videos=max_videos, split=split)
        l1 = reconstruction_l1(root, models, **kwargs)["l1"]
        baseline = reconstruction_l1(root, None, **kwargs)["l1"]
        flows = {}
        motion = motion_epe(root, models, frame_step=frame_step, max_videos=max_videos, split=split,
                            flows=flows)
        entry = {"l1": l1, "l1_no_motion": baseline, "l1_ratio": l1 / baseline,
                 "epe_px": motion["epe"], "epe_zero_flow_px": motion["identity_epe"],
                 "epe_ratio": motion["epe"] / motion["identity_epe"],
                 "keypoint_equivariance_px": keypoint_equivariance(root, models, **kwargs)["px"]}
        if untrained is not None:
            entry["l1_untrained"] = reconstruction_l1(root, untrained, **kwargs)["l1"]
            entry["epe_untrained_px"] = motion_epe(root, untrained, frame_step=frame_step,
                                                   max_videos=max_videos, split=split, flows=flows)["epe"]
            entry["keypoint_equivariance_untrained_px"] = keypoint_equivariance(
                root, untrained, **kwargs)["px"]
        report[split] = {key: round(value, 5) for key, value in entry.items()}
    return report


def main(args):
    """``fomm-lessons reconstruct``: L1 on the test split (and EPE on a sample dataset) to OUT/metrics.json."""
    from fomm_lessons.config import load_config

    config = load_config(args.config)
    frame_shape = config.get("dataset_params", {}).get("frame_shape", [256, 256, 3])
    inputs = {"--data": args.data, "--checkpoint": args.checkpoint, "--config": args.config}
    check_output_path(args.out, folder=True, command="reconstruct", inputs=inputs)  # new, empty, or ours
    if not os.path.isdir(os.path.join(args.data, "test")):
        raise FileNotFoundError(f"no test split: {os.path.join(args.data, 'test')} is not a folder")
    models = load_checkpoint(args.checkpoint, config["model_params"], f"the config {args.config}")
    claim_output_folder(args.out, "reconstruct", inputs)
    status, landmarks = keypoint_metrics_status()
    metrics = {"reconstruction": reconstruction_l1(args.data, models, frame_shape, out=args.out,
                                                   landmarks=landmarks), **status}
    print(f"L1 {metrics['reconstruction']['l1']:.4f} over {len(metrics['reconstruction']['videos'])} test videos")
    for key in ("akd", "aed"):
        if metrics[key]["computed"]:
            print(f"{key.upper()} {metrics['reconstruction'][key]:.3f} px")
        else:
            print(f"{key.upper()}: not computed ({metrics[key]['reason']})")
    if os.path.isfile(os.path.join(args.data, "meta", "sample.json")):
        metrics["motion"] = motion_epe(args.data, models)
        print(f"motion EPE {metrics['motion']['epe']:.3f} px (no motion: {metrics['motion']['identity_epe']:.3f} px)")
    path = os.path.join(args.out, "metrics.json")
    with open(path, "w") as file:
        json.dump(metrics, file, indent=1)
        file.write("\n")
    print(path)
    return 0

"""Does a model do what the paper says its parts do? One measure per mechanism, each beside its baseline.

On the procedural puppets world (:mod:`fomm_lessons.data.puppets`), whose
true backward flow, uncovered pixels and part labels are known, the paper's
reconstruction protocol (source = frame 0 of each test video, every frame
drives it, absolute keypoints: :func:`fomm_lessons.evaluate.reconstruct`) is
measured against that ground truth, mechanism by mechanism:

- the picture: reconstruction L1 against the source itself (no motion);
- the dense motion T_{S<-D} (Eq. 4-7): end-point error on the pixels the source
  shows, against zero flow and against the same model with its Jacobians
  replaced by the identity (the zeroth-order motion, Eq. 4 without J_k);
- the occlusion map O (Eq. 8): how well it separates pixels the source shows
  from the rest (ROC AUC; 0.5 is chance);
- the masks M_k (Eq. 7) as parts: purity per true part and how many masks are in use;
- the keypoints: their spread, and whether each stays on one true part.

:func:`collapse_measures` needs no ground truth (any dataset): keypoint spread,
masks in use, and the reconstruction of a frame from itself.
"""

import importlib

import numpy as np

from fomm_lessons.animate import BATCH_SIZE, animate, detect_keypoints
from fomm_lessons.evaluate import end_point_error, l1_per_frame, list_test_videos, reconstruct

MASK_IN_USE = 0.05  # a mask is in use when it is the strongest on at least this share of the pixels

# The goals of issue 22 on unseen identities and motions: name -> (text, test of one model's measures).
GOALS = {
    "l1": ("L1 at most 0.5 of the no-motion baseline", lambda r: r["reconstruction"]["ratio"] <= 0.5),
    "epe": ("EPE at most 0.35 of zero flow", lambda r: r["motion"]["ratio_zero_flow"] <= 0.35),
    "first_order": ("first order at least 10% better than zeroth order (EPE)",
                    lambda r: r["motion"]["first_order_gain"] >= 0.10),
    "occlusion": ("occlusion AUC at least 0.85", lambda r: r["occlusion"]["auc"] >= 0.85),
    "masks": ("mask purity at least 0.7 (mean over true parts, background included) with at least "
              "3 masks in use", lambda r: r["masks"]["purity_mean"] >= 0.7 and r["masks"]["masks_in_use"] >= 3),
    "spread": ("keypoint spread at least 15% of the frame width",
               lambda r: r["keypoints"]["spread_share"] >= 0.15),
    "on_part": ("each keypoint on one part in at least 90% of frames", lambda r: r["keypoints"]["on_part_min"] >= 0.9),
}


# ---------------------------------------------------------------------------
# The measures on arrays
# ---------------------------------------------------------------------------

def roc_auc(scores, positives):
    """ROC AUC of ``scores`` separating ``positives`` (bool, same shape) from the rest, by ranks.

    The Mann-Whitney statistic: the chance that a random positive scores above
    a random negative, a tie counting one half. 0.5 is chance, 1 a perfect
    separation, 0 a perfectly reversed one; NaN when either class is empty.
    """
    scores, positives = np.asarray(scores, np.float64), np.asarray(positives, bool)
    if scores.shape != positives.shape:
        raise ValueError(f"expected scores and labels of one shape, got {scores.shape} and {positives.shape}")
    scores, positives = scores.ravel(), positives.ravel()
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)  # 1-based, ties share their mean rank
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def occlusion_separation(occlusion, shown):
    """How the occlusion map (N, H, W) (1 keeps a feature, 0 hides it) tells ``shown`` (N, H, W) pixels
    from the uncovered ones: AUC (shown is the positive class) and the map's mean on each set."""
    occlusion, shown = np.asarray(occlusion, np.float64), np.asarray(shown, bool)
    return {"auc": roc_auc(occlusion, shown), "auc_chance": 0.5,
            "mean_shown": float(occlusion[shown].mean()) if shown.any() else float("nan"),
            "mean_not_shown": float(occlusion[~shown].mean()) if (~shown).any() else float("nan"),
            "not_shown_fraction": float(1.0 - shown.mean())}


def mask_part_counts(masks, parts, num_parts):
    """Pixels of each true part (rows, 0 = background) on which each mask is the strongest (columns).

    ``masks`` (N, H, W, M) soft masks at the frame's size, ``parts`` (N, H, W)
    labels in [0, num_parts): a (num_parts, M) integer matrix.
    """
    masks, parts = np.asarray(masks), np.asarray(parts, np.int64)
    if masks.shape[:-1] != parts.shape:
        raise ValueError(f"expected masks (N, H, W, M) over the labels' (N, H, W) = {parts.shape}, got {masks.shape}")
    if parts.size and (parts.min() < 0 or parts.max() >= num_parts):
        raise ValueError(f"expected part labels in [0, {num_parts}), got [{parts.min()}, {parts.max()}]")
    count = masks.shape[-1]
    strongest = np.argmax(masks, axis=-1)
    return np.bincount((parts * count + strongest).ravel(), minlength=num_parts * count).reshape(num_parts, count)


def masks_as_parts(counts, part_names, in_use=MASK_IN_USE):
    """Purity of each true part from :func:`mask_part_counts`, and the masks in use on the figure.

    Purity of a part: the share of its pixels whose strongest mask is the mask
    that wins most often on it. The background (row 0) is a part like the others
    and is in the mean. Baseline: masks drawn independently of the parts at the
    same rates, whose purity is the largest mask's share of all pixels (1 when
    one mask takes everything: purity alone rewards collapse, hence the count of
    masks in use, those winning at least ``in_use`` of the figure's pixels).
    """
    counts = np.asarray(counts, np.float64)
    totals = counts.sum(axis=1)
    seen = totals > 0
    purity = np.where(seen, counts.max(axis=1) / np.maximum(totals, 1), np.nan)
    independent = float(counts.sum(axis=0).max() / counts.sum())
    figure = counts[1:].sum(axis=0)
    shares = figure / max(figure.sum(), 1)
    return {"purity": {part_names[p]: float(purity[p]) for p in range(len(counts)) if seen[p]},
            "winner": {part_names[p]: int(counts[p].argmax()) for p in range(len(counts)) if seen[p]},
            "purity_mean": float(np.nanmean(purity)), "purity_independent": independent,
            "masks_in_use": int((shares >= in_use).sum()), "figure_shares": [float(s) for s in shares]}


def to_pixels(points, height, width):
    """Points (..., 2) of (x, y) in [-1, 1] (corner pixel centres at +-1) -> pixel (x, y)."""
    points = np.asarray(points, np.float64)
    return (points + 1.0) / 2.0 * np.array([width - 1, height - 1])


def keypoint_spread(keypoints, height, width):
    """Mean distance in pixels of the K keypoints (N, K, 2) to their centroid, averaged over the N frames."""
    pixels = to_pixels(keypoints, height, width)  # (N, K, 2)
    return float(np.linalg.norm(pixels - pixels.mean(axis=1, keepdims=True), axis=-1).mean())


def parts_spread(parts):
    """The same spread for the centres of the figure's parts (labels >= 1) in label maps (N, H, W)."""
    spreads = []
    for frame in np.asarray(parts):
        rows, cols = np.nonzero(frame > 0)
        labels = frame[rows, cols]
        centres = np.array([[cols[labels == p].mean(), rows[labels == p].mean()] for p in np.unique(labels)])
        if len(centres):
            spreads.append(np.linalg.norm(centres - centres.mean(axis=0), axis=-1).mean())
    return float(np.mean(spreads)) if spreads else float("nan")


def parts_under(keypoints, parts):
    """Part label (N, K) under each keypoint (N, K, 2) in label maps (N, H, W), at its nearest pixel."""
    parts = np.asarray(parts)
    height, width = parts.shape[1:]
    pixels = np.rint(to_pixels(keypoints, height, width)).astype(np.int64)
    cols, rows = np.clip(pixels[..., 0], 0, width - 1), np.clip(pixels[..., 1], 0, height - 1)
    return parts[np.arange(len(parts))[:, None], rows, cols]


def keypoints_on_parts(labels, part_names):
    """For each keypoint, its most frequent true part over all frames and the share of frames on it.

    ``labels`` (N, K) from :func:`parts_under`, pooled over the frames of every video.
    """
    labels = np.asarray(labels, np.int64)
    per_keypoint = []
    for column in labels.T:
        counts = np.bincount(column, minlength=len(part_names))
        per_keypoint.append({"part": part_names[int(counts.argmax())], "share": float(counts.max() / len(column))})
    shares = [entry["share"] for entry in per_keypoint]
    return {"on_part": per_keypoint, "on_part_mean": float(np.mean(shares)), "on_part_min": float(np.min(shares))}


# ---------------------------------------------------------------------------
# The puppets world: every measure of a model against the ground truth
# ---------------------------------------------------------------------------

def _to_frame(maps, height, width):
    """Maps (T, h, w, C) resized to the frame (bilinear, align_corners=False), as the generator resizes."""
    from fomm_lessons.generator import resize_to

    return np.asarray(resize_to(np.asarray(maps, np.float32), int(height), int(width)))


class _Tally:
    """What one model's measures pool over the videos of a split."""

    def __init__(self):
        self.l1, self.epe, self.zeroth, self.occlusion, self.shown = [], [], [], [], []
        self.epe_figure = []
        self.counts, self.kp, self.kp_parts = 0, [], []


def _run_video(video, truths, models, tally, batch_size, num_parts):
    height, width = video.shape[1:3]
    kp = detect_keypoints(models.kp_detector, video, batch_size)  # value (T, K, 2)
    outputs = ("prediction", "deformation", "mask") + (("occlusion_map",) * models.generator.estimate_occlusion_map)
    out = reconstruct(video, models, batch_size, outputs=outputs, kp_driving=kp)
    zeroth = reconstruct(video, models, batch_size, outputs=("deformation",), kp_driving=kp,
                         first_order=False)["deformation"]
    tally.l1.append(float(l1_per_frame(out["prediction"], video).mean()))
    tally.epe.append(np.nanmean([end_point_error(d, g["flow"], g["shown"])[0]
                                 for d, g in zip(out["deformation"], truths)]))
    tally.zeroth.append(np.nanmean([end_point_error(d, g["flow"], g["shown"])[0]
                                    for d, g in zip(zeroth, truths)]))
    tally.epe_figure.append(np.nanmean([end_point_error(d, g["flow"], g["shown"] & (g["parts_driving"] > 0))[0]
                                        for d, g in zip(out["deformation"], truths)]))
    shown = np.stack([g["shown"] for g in truths])  # (T, H, W)
    parts = np.stack([g["parts_driving"] for g in truths])  # (T, H, W)
    if "occlusion_map" in out:
        tally.occlusion.append(_to_frame(out["occlusion_map"], height, width)[..., 0])
        tally.shown.append(shown)
    tally.counts = tally.counts + mask_part_counts(_to_frame(out["mask"], height, width), parts, num_parts)
    tally.kp.append(kp["value"])
    tally.kp_parts.append(parts_under(kp["value"], parts))


def _summary(tally, no_motion, zero_flow, zero_flow_figure, part_names, height, width, parts_centres_px):
    l1, epe, zeroth = float(np.mean(tally.l1)), float(np.mean(tally.epe)), float(np.mean(tally.zeroth))
    epe_figure = float(np.nanmean(tally.epe_figure))
    spread = float(np.mean([keypoint_spread(kp, height, width) for kp in tally.kp]))
    return {
        "reconstruction": {"l1": l1, "l1_no_motion": no_motion, "ratio": l1 / no_motion},
        "motion": {"epe_px": epe, "epe_zero_flow_px": zero_flow, "epe_zeroth_order_px": zeroth,
                   "ratio_zero_flow": epe / zero_flow, "first_order_gain": 1.0 - epe / zeroth,
                   # the same on the figure's shown pixels alone (the background does not move)
                   "epe_figure_px": epe_figure, "epe_figure_zero_flow_px": zero_flow_figure,
                   "ratio_figure_zero_flow": epe_figure / zero_flow_figure},
        "occlusion": (occlusion_separation(np.concatenate(tally.occlusion), np.concatenate(tally.shown))
                      if tally.occlusion else None),
        "masks": masks_as_parts(tally.counts, part_names),
        "keypoints": {"spread_px": spread, "spread_share": spread / width,
                      "parts_spread_px": parts_centres_px, "parts_spread_share": parts_centres_px / width,
                      **keypoints_on_parts(np.concatenate(tally.kp_parts), part_names)},
    }


def goals(result):
    """Issue 22's goals, each with its text and whether ``result`` (one model's measures) meets it."""
    verdicts = {}
    for name, (text, test) in GOALS.items():
        try:
            passed = bool(test(result))
        except (TypeError, KeyError):  # a measure the model has not (no occlusion map)
            passed = False
        verdicts[name] = {"goal": text, "passed": passed}
    return verdicts


def _rounded(tree, digits=5):
    if isinstance(tree, dict):
        return {key: _rounded(value, digits) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_rounded(value, digits) for value in tree]
    if isinstance(tree, float):
        return round(tree, digits) if np.isfinite(tree) else None
    return tree


def puppets_quality(root, models, untrained=None, split="test", max_videos=None, batch_size=BATCH_SIZE):
    """Every puppets measure of ``models`` on one split of a puppets dataset, beside its baselines, and
    the issue's goals passed or not: a JSON-able dict (NaN written as None, floats to 5 digits).

    Protocol as the paper's reconstruction (:func:`fomm_lessons.evaluate.reconstruct`). With
    ``untrained`` networks, their measures too (under ``"untrained"``).
    """
    from fomm_lessons.data.frames import load_frames
    from fomm_lessons.sampling import make_coordinate_grid

    puppets = importlib.import_module("fomm_lessons.data.puppets")
    meta = puppets.load_meta(root)
    part_names = list(meta["part_names"])
    names = sorted(v for v in meta["videos"] if v.startswith(f"{split}/"))[:max_videos]
    if not names:
        raise ValueError(f"expected {split} videos in the puppets dataset {root}, found none "
                         f"(its videos: {sorted(meta['videos'])[:4]}...)")
    runs = {"model": (models, _Tally())}
    if untrained is not None:
        runs["untrained"] = (untrained, _Tally())
    no_motion, zero_flow, zero_flow_figure, centres, frames = [], [], [], [], 0
    for name in names:
        video, _ = load_frames(f"{root}/{name}")  # (T, H, W, 3)
        height, width = video.shape[1:3]
        truths = [puppets.ground_truth(root, name, 0, t) for t in range(len(video))]
        identity = np.asarray(make_coordinate_grid(height, width))
        no_motion.append(float(l1_per_frame(np.repeat(video[:1], len(video), axis=0), video).mean()))
        zero_flow.append(np.nanmean([end_point_error(identity, g["flow"], g["shown"])[0] for g in truths]))
        zero_flow_figure.append(np.nanmean([end_point_error(identity, g["flow"], g["shown"] & (g["parts_driving"] > 0))[0]
                                            for g in truths]))
        centres.append(parts_spread(np.stack([g["parts_driving"] for g in truths])))
        frames += len(video)
        for model, tally in runs.values():
            _run_video(video, truths, model, tally, batch_size, len(part_names))
    baselines = (float(np.mean(no_motion)), float(np.mean(zero_flow)), float(np.nanmean(zero_flow_figure)),
                 part_names, height, width,
                 float(np.nanmean(centres)))
    report = {"split": split, "videos": len(names), "frames": frames, "size": [int(height), int(width)],
              "part_names": part_names}
    for key, (_, tally) in runs.items():
        report[key] = _summary(tally, *baselines)
    report["goals"] = goals(report["model"])
    return _rounded(report)


# ---------------------------------------------------------------------------
# Collapse: what can be measured without ground truth
# ---------------------------------------------------------------------------

def collapse_measures(root, models, split="test", max_videos=None, frame_shape=(64, 64, 3), batch_size=BATCH_SIZE,
                      blur_sigma=1.0):
    """Signs of collapse on one split of any dataset: keypoint spread (px and share of the width), masks
    in use over all pixels (reconstruction protocol), and each frame rebuilt from itself (driving =
    source): its L1 to the frame (0 is perfect), beside a Gaussian blur of ``blur_sigma`` px for scale,
    and the occlusion map's mean there (1 is right: nothing is uncovered)."""
    from scipy.ndimage import gaussian_filter

    from fomm_lessons.data.frames import load_frames

    spreads, self_l1, blur_l1, occlusion, counts = [], [], [], [], 0
    for path in list_test_videos(root, frame_shape, split)[:max_videos]:
        video, _ = load_frames(path, None, frame_shape)  # (T, H, W, 3)
        height, width = video.shape[1:3]
        kp = detect_keypoints(models.kp_detector, video, batch_size)
        spreads.append(keypoint_spread(kp["value"], height, width))
        mask = reconstruct(video, models, batch_size, outputs=("mask",), kp_driving=kp)["mask"]
        counts = counts + mask_part_counts(_to_frame(mask, height, width), np.zeros(video.shape[:3], int), 1)[0]
        outputs = ("prediction",) + (("occlusion_map",) * models.generator.estimate_occlusion_map)
        for t, frame in enumerate(video):
            same = animate(frame, frame[None], models, relative=False, batch_size=1,
                           kp_driving={key: value[t:t + 1] for key, value in kp.items()}, outputs=outputs)
            same = same if isinstance(same, dict) else {"prediction": same}
            self_l1.append(float(np.abs(same["prediction"][0] - frame).mean()))
            occlusion.append(float(same["occlusion_map"].mean()) if "occlusion_map" in same else np.nan)
            blur_l1.append(float(np.abs(gaussian_filter(frame, (blur_sigma, blur_sigma, 0)) - frame).mean()))
    shares = np.asarray(counts, np.float64) / np.sum(counts)
    spread = float(np.mean(spreads))
    return _rounded({"split": split, "frames": len(self_l1), "spread_px": spread, "spread_share": spread / width,
                     "masks_in_use": int((shares >= MASK_IN_USE).sum()),
                     "mask_shares": sorted((float(s) for s in shares), reverse=True),
                     "self_l1": float(np.mean(self_l1)), "self_l1_perfect": 0.0,
                     f"self_l1_blur_{blur_sigma:g}px": float(np.mean(blur_l1)),
                     "self_occlusion_mean": float(np.mean(occlusion))})

"""The shipped puppets-64 model must have learned parts, motion and occlusion, on figures it never saw.

A broken, untrained or mis-loaded checkpoint fails here: each threshold sits
between what the untrained networks reach and what the shipped ones do (both
are in fomm_lessons/weights/puppets-64/quality.json, measured on 16 unseen
figures; here 4 unseen figures of another seed keep the test short).
"""

import json
import subprocess
import sys

import keras
import pytest

from fomm_lessons import pretrained
from fomm_lessons.checkpoint import build_models
from fomm_lessons.data.puppets import make_puppets_dataset
from fomm_lessons.measures import puppets_quality

# measure: (how to read it from a puppets_quality result, threshold, True when the value must be at least it)
THRESHOLDS = {
    "keypoint spread, share of the width": (lambda r: r["keypoints"]["spread_share"], 0.10, True),
    "masks in use on the figure": (lambda r: r["masks"]["masks_in_use"], 3, True),
    "reconstruction L1 / no motion": (lambda r: r["reconstruction"]["ratio"], 2.0, False),
    "EPE on the figure / zero flow": (lambda r: r["motion"]["ratio_figure_zero_flow"], 0.8, False),
    "occlusion mean, shown minus not shown": (
        lambda r: r["occlusion"]["mean_shown"] - r["occlusion"]["mean_not_shown"], 0.04, True),
    "share of frames a keypoint stays on its part (mean)": (lambda r: r["keypoints"]["on_part_mean"], 0.75, True),
}


@pytest.fixture(scope="module")
def unseen(tmp_path_factory):
    """Four figures and motions of seed 2 (training used seed 0, the card's measures seed 1)."""
    root = tmp_path_factory.mktemp("puppets-unseen")
    return make_puppets_dataset(root, size=64, identities=1, test_identities=4, num_frames=16, seed=2,
                                progress=False)


@pytest.fixture(scope="module")
def report(unseen):
    models, config = pretrained.load("puppets-64")
    keras.utils.set_random_seed(0)
    untrained = build_models(config["model_params"], discriminator=False)
    return puppets_quality(unseen, models, untrained=untrained)


@pytest.mark.parametrize("name", sorted(THRESHOLDS))
def test_the_shipped_model_passes_and_untrained_networks_fail(report, name):
    read, threshold, at_least = THRESHOLDS[name]
    trained, untrained = read(report["model"]), read(report["untrained"])
    if at_least:
        assert trained >= threshold > untrained, (name, trained, untrained)
    else:
        assert trained <= threshold < untrained, (name, trained, untrained)


def test_loads_by_name_offline_in_a_fresh_process():
    # The weights loaded (float16 files into float32 variables) must be the files' numbers: every array
    # of the file, read by h5py alone, against every weight of the network, by their sorted sums.
    code = ("import h5py, numpy as np; from fomm_lessons import pretrained; m, c = pretrained.load('puppets-64'); "
            "arrays = []; f = h5py.File(pretrained.shipped_folder('puppets-64') / 'kp_detector.weights.h5'); "
            "f.visititems(lambda n, o: arrays.append(o[()]) if isinstance(o, h5py.Dataset) else None); "
            "a = sorted(float(np.sum(x, dtype=np.float64)) for x in arrays if x.dtype == np.float16); "
            "b = sorted(float(np.sum(w.numpy(), dtype=np.float64)) for w in m.kp_detector.weights); "
            "print(c['model_params']['common_params']['num_kp'], m.discriminator is None, len(a), a == b)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "TF_CPP_MIN_LOG_LEVEL": "2",
                               "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"})
    assert done.returncode == 0, done.stderr
    num_kp, no_discriminator, arrays, same = done.stdout.split()
    assert (num_kp, no_discriminator, same) == ("5", "True", "True") and int(arrays) > 50


def test_the_card_reports_the_shipped_numbers_and_goals():
    folder = pretrained.shipped_folder("puppets-64")
    quality = json.loads((folder / "quality.json").read_text())
    card = (folder / "MODEL_CARD.md").read_text()
    model = quality["model"]
    for value in (model["reconstruction"]["ratio"], model["motion"]["ratio_figure_zero_flow"],
                  model["occlusion"]["auc"], model["masks"]["purity_mean"], model["keypoints"]["spread_share"]):
        assert f"{value:.2f}" in card, value
    for goal in quality["goals"].values():
        assert goal["goal"] in card

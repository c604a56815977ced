"""The shipped sample-64 model must have learned something, on motions it never saw.

A broken, untrained or mis-loaded checkpoint fails here: the thresholds sit
between what the untrained networks reach and what the shipped ones do (the
numbers of both are in fomm_lessons/weights/sample-64/quality.json).
"""

import json

import keras
import pytest

from fomm_lessons import pretrained
from fomm_lessons.checkpoint import build_models
from fomm_lessons.evaluate import motion_epe, reconstruction_l1


@pytest.fixture(scope="module")
def sample64():
    models, config = pretrained.load("sample-64")
    return models, config


def test_motion_on_the_unseen_face(sample64, sample_new_motions):
    models, _ = sample64
    result = motion_epe(sample_new_motions, models, frame_step=3, split="test")
    ratio = result["epe"] / result["identity_epe"]
    assert ratio <= 0.75, f"EPE {result['epe']:.3f} px against {result['identity_epe']:.3f} px for zero flow"


def test_reconstruction_of_the_training_faces(sample64, sample_new_motions):
    models, config = sample64
    shape = tuple(config["dataset_params"]["frame_shape"])
    l1 = reconstruction_l1(sample_new_motions, models, shape, split="train")["l1"]
    baseline = reconstruction_l1(sample_new_motions, None, shape, split="train")["l1"]
    assert l1 <= 0.75 * baseline, f"L1 {l1:.4f} against {baseline:.4f} for copying the source"


def test_the_thresholds_reject_untrained_networks(sample64, sample_new_motions):
    _, config = sample64
    keras.utils.set_random_seed(0)
    untrained = build_models(config["model_params"], discriminator=False)
    result = motion_epe(sample_new_motions, untrained, frame_step=6, split="test")
    assert result["epe"] / result["identity_epe"] > 0.75
    shape = tuple(config["dataset_params"]["frame_shape"])
    l1 = reconstruction_l1(sample_new_motions, untrained, shape, split="train", max_videos=2)["l1"]
    baseline = reconstruction_l1(sample_new_motions, None, shape, split="train", max_videos=2)["l1"]
    assert l1 > 0.75 * baseline


def test_the_card_reports_the_shipped_numbers():
    folder = pretrained.shipped_folder("sample-64")
    quality = json.loads((folder / "quality.json").read_text())
    card = (folder / "MODEL_CARD.md").read_text()
    for split in ("train", "test"):
        for key in ("l1_ratio", "epe_ratio"):
            assert f"{quality[split][key]:.2f}" in card, (split, key)

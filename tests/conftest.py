"""Fixtures more than one test file needs."""

import pytest


@pytest.fixture(scope="session")
def sample_new_motions(tmp_path_factory):
    """The offline sample set's training images and unseen face (``extended``) along motions of
    another seed (1; the shipped models trained on seed 0), one video per image."""
    from fomm_lessons.data.sample import make_sample_dataset

    root = tmp_path_factory.mktemp("sample-64-eval")
    return make_sample_dataset(root, size=64, seed=1, identities="extended", videos_per_identity=1)

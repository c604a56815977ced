"""What the installed package reads lies inside it, so a wheel works without the repository."""

import json
import os
import re
from pathlib import Path

import pytest

import fomm_lessons
from fomm_lessons.config import load_config
from fomm_lessons.data import voxceleb


def test_pinned_voxceleb_manifest_and_configs_are_inside_the_package():
    package = Path(fomm_lessons.__file__).resolve().parent
    assert voxceleb.REPO_MANIFEST.is_relative_to(package) and voxceleb.REPO_MANIFEST.is_file()
    assert json.loads(voxceleb.REPO_MANIFEST.read_text())["revision"] == voxceleb.REVISION
    assert load_config("cpu-64")["model_params"]  # a built-in config, read from the package


@pytest.mark.skipif(not os.environ.get("FOMM_EXPECT_INSTALLED"),
                    reason="set by `make test-colab`, which tests fomm_lessons installed from a wheel")
def test_the_package_under_test_is_the_installed_wheel_not_the_checkout():
    package = Path(fomm_lessons.__file__).resolve().parent
    assert "site-packages" in package.parts and package != Path(__file__).resolve().parents[1] / "fomm_lessons"


def test_a_missing_pinned_manifest_stops_the_fetcher_by_name(tmp_path, monkeypatch):
    missing = tmp_path / "voxceleb-manifest.json"
    monkeypatch.setattr(voxceleb, "REPO_MANIFEST", missing)
    assert voxceleb._load_pinned_hashes("https://mirror.invalid/vox.zip") == {}  # not the pinned URL
    with pytest.raises(voxceleb.VoxCelebError, match=re.escape(f"{missing} is missing")):
        voxceleb._load_pinned_hashes(voxceleb.URL)


def test_a_manifest_of_another_revision_is_refused(tmp_path, monkeypatch):
    other = tmp_path / "voxceleb-manifest.json"
    other.write_text(json.dumps({"revision": "0" * 40, "clips": {}}))
    monkeypatch.setattr(voxceleb, "REPO_MANIFEST", other)
    with pytest.raises(voxceleb.VoxCelebError, match=f"pins revision '{'0' * 40}', expected"):
        voxceleb._load_pinned_hashes(voxceleb.URL)

"""The VoxCeleb fetcher end to end, offline: tiny clips zipped as VoxCeleb2, served on 127.0.0.1."""

import argparse
import copy
import hashlib
import io
import json
import os
import socket
import sys
import zipfile
import zlib

import numpy as np
import pytest

from fomm_lessons import cli
from fomm_lessons.data import remote_zip, voxceleb

sys.path.insert(0, os.path.dirname(__file__))
from zip_server import COMMIT, ZipServer  # noqa: E402

IDENTITIES, CLIPS, SIZE, SEED = 3, 2, 32, 1


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(remote_zip, "RETRY_BACKOFF_S", 0.0)
    monkeypatch.setattr(remote_zip, "TIMEOUT_S", 5.0)
    monkeypatch.delenv(voxceleb.URL_ENV, raising=False)


@pytest.fixture(scope="module")
def vox(tmp_path_factory):
    """A ZIP64 zip laid out as vox2_test_mp4.zip: 6 identities x 2 videos x 2 clips, plus filler."""
    import imageio.v2 as imageio
    from PIL import Image
    from skimage import data

    photo = np.asarray(Image.fromarray(data.astronaut()).resize((96, 96)))
    unique = []  # (mp4 bytes, frame count); frames of 64x64 and non-square 64x80, 80x64
    for count, (height, width) in zip((5, 6, 7, 8), ((64, 64), (64, 80), (80, 64), (64, 64))):
        path = tmp_path_factory.mktemp("clips") / f"{count}.mp4"
        frames = [photo[i:i + height, 2 * i:2 * i + width] for i in range(count)]
        imageio.mimwrite(path, frames, format="FFMPEG", fps=25, macro_block_size=16)
        unique.append((path.read_bytes(), count))
    members = {}
    for i in range(6):
        for j, video in enumerate(("Aa1_bB2-cC3", "Dd4_eE5-fF6")):
            for k in range(2):
                members[f"mp4/id{10 + i:05d}/{video}/{k + 1:05d}.mp4"] = unique[(i + 2 * j + k) % 4]
    buffer, limit = io.BytesIO(), zipfile.ZIP64_LIMIT
    zipfile.ZIP64_LIMIT = 1000  # forces 64-bit offsets and the ZIP64 end record, as in the 9 GB zip
    try:
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("vox2_meta/filler.bin", np.random.default_rng(0).bytes(400_000))
            for name, (clip, _) in members.items():
                archive.writestr(name, clip)
    finally:
        zipfile.ZIP64_LIMIT = limit
    blob = buffer.getvalue()
    assert b"PK\x06\x06" in blob
    return blob, members


def run(out, **options):
    args = argparse.Namespace(out=str(out), identities=IDENTITIES, clips_per_identity=CLIPS, size=SIZE,
                              seed=SEED, zip=None, videos=None)
    for key, value in options.items():
        setattr(args, key, value)
    return voxceleb.main(args)


def error_lines(err):
    """The lines of stderr that are not tqdm's progress bars."""
    lines = [line.split("\r")[-1] for line in err.strip().splitlines()]
    return [line for line in lines if line and not line.startswith(("zip:", "voxceleb clips:"))]


def check_dataset(out, members, identities=IDENTITIES, clips=CLIPS, size=SIZE, count=None):
    """Layout, frame counts and sizes, SHA-256 of the clips, identities disjoint between splits."""
    import imageio.v3 as imageio

    manifest = json.loads((out / "meta" / "voxceleb-manifest.json").read_text())
    names = {split: sorted(os.listdir(out / split)) for split in ("train", "test")}
    ids = {split: {name.split("#")[0] for name in names[split]} for split in names}
    assert not ids["train"] & ids["test"]
    assert len(ids["train"] | ids["test"]) == identities and len(ids["test"]) >= 1
    assert sum(map(len, names.values())) == (identities * clips if count is None else count)
    assert set(manifest["splits"]["train"]) == ids["train"] and set(manifest["splits"]["test"]) == ids["test"]
    for record in manifest["clips"]:
        data, frame_count = members[record["member"]]
        identity, video, number = record["name"][:-4].split("#")
        assert record["member"].endswith(f"{identity}/{video}/{number}.mp4")
        assert record["sha256"] == hashlib.sha256(data).hexdigest() and record["bytes"] == len(data)
        folder = out / record["split"] / record["name"]
        assert sorted(os.listdir(folder)) == [f"{i:07d}.png" for i in range(frame_count)]
        first = imageio.imread(folder / "0000000.png")
        assert first.shape == (size, size, 3) and first.dtype == np.uint8 and first.std() > 10
    return manifest


def test_range_requests_fetch_only_the_chosen_clips(vox, tmp_path, monkeypatch, capsys):
    blob, members = vox
    with ZipServer(blob) as server:
        monkeypatch.setenv(voxceleb.URL_ENV, server.url)
        assert cli.main(["data", "voxceleb", "--out", str(tmp_path), "--identities", str(IDENTITIES),
                         "--clips-per-identity", str(CLIPS), "--size", str(SIZE), "--seed", str(SEED)]) == 0
    manifest = check_dataset(tmp_path, members)
    chosen = sum(len(members[record["member"]][0]) for record in manifest["clips"])
    # End records and central directory (< 70 kB here) plus the chosen clips; not the filler.
    assert server.state.bytes_sent < 70_000 + chosen * 1.1 < len(blob) / 4
    assert manifest["source"]["kind"] == "http-range" and manifest["source"]["x_repo_commit"]
    assert "wrote 4 train and 2 test clips" in capsys.readouterr().out


def test_same_seed_same_subset_from_every_source(vox, tmp_path, monkeypatch):
    blob, members = vox
    with ZipServer(blob) as server:
        monkeypatch.setenv(voxceleb.URL_ENV, server.url)
        assert run(tmp_path / "range") == 0
    (tmp_path / "vox.zip").write_bytes(blob)
    assert run(tmp_path / "zip", zip=str(tmp_path / "vox.zip")) == 0
    zipfile.ZipFile(io.BytesIO(blob)).extractall(tmp_path / "videos")
    assert run(tmp_path / "videos_out", videos=str(tmp_path / "videos")) == 0
    listings = []
    for out in ("range", "zip", "videos_out"):
        check_dataset(tmp_path / out, members)
        listings.append({split: sorted(os.listdir(tmp_path / out / split)) for split in ("train", "test")})
    assert listings[0] == listings[1] == listings[2]
    assert run(tmp_path / "other_seed", zip=str(tmp_path / "vox.zip"), seed=SEED + 1) == 0
    other = {split: sorted(os.listdir(tmp_path / "other_seed" / split)) for split in ("train", "test")}
    assert other != listings[0]


def test_server_without_range_falls_back_to_full_download(vox, tmp_path, monkeypatch):
    blob, members = vox
    with ZipServer(blob, ranges=False) as server:
        monkeypatch.setenv(voxceleb.URL_ENV, server.url)
        assert run(tmp_path) == 0
    manifest = check_dataset(tmp_path, members)
    assert manifest["source"]["kind"] == "http-full-download"
    assert (tmp_path / ".download" / "vox2_test_mp4.zip").read_bytes() == blob
    assert run(tmp_path) == 0  # the server is gone: the kept copy serves the re-run
    assert json.loads((tmp_path / "meta" / "voxceleb-manifest.json").read_text())["skipped_as_done"] == 6


def test_dropped_connections_are_resumed(vox, tmp_path, monkeypatch):
    blob, members = vox
    drops = [30_000, 0, 1500, 0, 700, 100, 900]
    with ZipServer(blob, drops=drops, drop_min_bytes=1000) as server:
        monkeypatch.setenv(voxceleb.URL_ENV, server.url)
        assert run(tmp_path) == 0
        assert server.state.drops == []  # every planned drop happened
    check_dataset(tmp_path, members)


def test_rerun_skips_verified_clips_and_redoes_damaged_ones(vox, tmp_path, monkeypatch):
    blob, members = vox
    with ZipServer(blob) as server:
        monkeypatch.setenv(voxceleb.URL_ENV, server.url)
        assert run(tmp_path) == 0
        first_bytes = server.state.bytes_sent
        stamps = {path: path.stat().st_mtime_ns for path in tmp_path.glob("*/*/*.png")}
        assert run(tmp_path) == 0
        listing_only = server.state.bytes_sent - first_bytes
        manifest = json.loads((tmp_path / "meta" / "voxceleb-manifest.json").read_text())
        assert manifest["skipped_as_done"] == IDENTITIES * CLIPS
        assert {path: path.stat().st_mtime_ns for path in tmp_path.glob("*/*/*.png")} == stamps
        damaged = sorted(tmp_path.glob("train/*"))[0]
        (damaged / "0000001.png").unlink()
        assert run(tmp_path) == 0
        refetch = server.state.bytes_sent - first_bytes - 2 * listing_only
    manifest = check_dataset(tmp_path, members)
    assert manifest["skipped_as_done"] == IDENTITIES * CLIPS - 1
    member = next(record for record in manifest["clips"] if record["name"] == damaged.name)["member"]
    assert 0 < refetch < len(members[member][0]) + 200  # only the damaged clip came again
    unchanged = {path: stamp for path, stamp in stamps.items() if path.parent != damaged}
    assert {path: path.stat().st_mtime_ns for path in unchanged} == unchanged


def test_other_options_in_the_same_folder_are_refused(vox, tmp_path, capsys):
    blob, _ = vox
    (tmp_path / "vox.zip").write_bytes(blob)
    assert run(tmp_path / "out", zip=str(tmp_path / "vox.zip")) == 0
    assert cli.main(["data", "voxceleb", "--out", str(tmp_path / "out"), "--zip", str(tmp_path / "vox.zip"),
                     "--identities", "3", "--clips-per-identity", "2", "--size", "64"]) == 2
    assert "already holds a subset" in capsys.readouterr().err


def test_videos_folder_with_person_subfolders(vox, tmp_path):
    _, members = vox
    clips = list(members.values())
    for index, path in enumerate(("alice/talk one.mp4", "alice/talk2.mp4", "bob/x.mp4")):
        (tmp_path / "videos" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "videos" / path).write_bytes(clips[index][0])
    assert run(tmp_path / "out", videos=str(tmp_path / "videos"), identities=2, clips_per_identity=2) == 0
    names = sorted(os.listdir(tmp_path / "out" / "train")) + sorted(os.listdir(tmp_path / "out" / "test"))
    assert sorted(names) == ["alice#v#talk2.mp4", "alice#v#talk_one.mp4", "bob#v#x.mp4"]


def _with_bad_clips(blob, members):
    """The zip with one chosen train clip that is not a video and one chosen test clip failing its CRC."""
    source = zipfile.ZipFile(io.BytesIO(blob))
    clips = voxceleb.clips_from_names(source.namelist(), lambda name: name)
    chosen = voxceleb.choose_clips(clips, IDENTITIES, CLIPS, SEED)
    not_video, bad_crc = chosen["train"][0].member, chosen["test"][1].member
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for info in source.infolist():
            data = b"not a video at all" * 20 if info.filename == not_video else source.read(info)
            archive.writestr(info.filename, data, zipfile.ZIP_STORED if info.filename == bad_crc else None)
    data = bytearray(buffer.getvalue())
    info = zipfile.ZipFile(io.BytesIO(bytes(data))).getinfo(bad_crc)
    at = info.header_offset + 30 + len(bad_crc) + len(info.extra) + 100  # a byte inside the clip's data
    assert data[at:at + 100] == members[bad_crc][0][100:200]
    data[at] ^= 0xFF
    good = {name: value for name, value in members.items() if name not in (not_video, bad_crc)}
    return bytes(data), good, not_video, bad_crc


@pytest.mark.parametrize("kind", ["range", "zip"])
def test_bad_clips_are_skipped_recorded_and_the_fetch_goes_on(vox, tmp_path, monkeypatch, capsys, kind):
    blob, members = vox
    blob, good, not_video, bad_crc = _with_bad_clips(blob, members)
    (tmp_path / "vox.zip").write_bytes(blob)
    out = tmp_path / "out"
    with ZipServer(blob) as server:
        monkeypatch.setenv(voxceleb.URL_ENV, server.url)
        zip_path = str(tmp_path / "vox.zip") if kind == "zip" else None
        for attempt in range(2):  # a re-run neither fails on the same clips nor fetches the good ones again
            assert run(out, zip=zip_path) == 0
            printed, err = capsys.readouterr()
            assert error_lines(err) == [] and "wrote 3 train and 1 test clips" in printed, err
            assert "2 bad clips skipped, listed under 'bad'" in printed
            manifest = json.loads((out / "meta" / "voxceleb-manifest.json").read_text())
            assert manifest["skipped_as_done"] == 4 * attempt
    bad = {entry["member"]: entry for entry in manifest["bad"]}
    assert sorted(bad) == sorted([not_video, bad_crc])
    assert bad[bad_crc]["split"] == "test" and "CRC" in bad[bad_crc]["reason"] and "log" not in bad[bad_crc]
    decode = bad[not_video]
    assert decode["split"] == "train" and decode["reason"].startswith(f"cannot decode {not_video}: ")
    assert "\n" not in decode["reason"] and "Invalid data found" in decode["reason"]
    log = (out / "meta" / "logs" / f"{decode['name']}.log").read_text()
    assert decode["log"] == str(out / "meta" / "logs" / f"{decode['name']}.log")
    assert log.count("\n") > 10 and "ffmpeg version" in log  # the whole of ffmpeg's log is kept
    check_dataset(out, good, count=IDENTITIES * CLIPS - 2)
    assert not (out / "train" / decode["name"]).exists() and not (out / "test" / bad[bad_crc]["name"]).exists()


def test_server_announcing_more_than_it_sends_ends_in_one_line(vox, tmp_path, monkeypatch, capsys):
    """No Range, and a Content-Length longer than the body: the fallback download fails, once."""
    blob, _ = vox
    with ZipServer(blob, ranges=False, announce_extra=1000, max_requests=60) as server:
        monkeypatch.setenv(voxceleb.URL_ENV, server.url)
        assert run(tmp_path) == 2
    (err,) = error_lines(capsys.readouterr().err)
    assert err.startswith("fomm-lessons data voxceleb: error: ") and server.url in err
    assert "ignores Range and ended the whole file" in err and "--zip PATH" in err
    assert len(server.state.requests) == 6  # probe, download and one retry, each with its redirect


def test_errors_name_the_url_or_file_and_the_reason(vox, tmp_path, monkeypatch, capsys):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/vox2_test_mp4.zip"
    monkeypatch.setenv(voxceleb.URL_ENV, url)
    assert run(tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert url in err and "gave up" in err and "--zip PATH" in err
    bad = io.BytesIO()
    with zipfile.ZipFile(bad, "w") as archive:
        for name in ("mp4/id00001/v/00001.mp4", "mp4/id00002/v/00001.mp4"):
            archive.writestr(name, b"not a video at all")
    (tmp_path / "bad.zip").write_bytes(bad.getvalue())
    assert run(tmp_path / "b", zip=str(tmp_path / "bad.zip"), identities=2, clips_per_identity=1) == 2
    (err,) = error_lines(capsys.readouterr().err)  # every clip is bad: the split that got none ends the run
    assert "no usable clip in the train split" in err
    assert "cannot decode mp4/id0000" in err and "ffmpeg version" not in err
    missing = str(tmp_path / "none.zip")
    assert cli.main(["data", "voxceleb", "--out", str(tmp_path / "c"), "--zip", missing]) == 2
    assert "none.zip: no such file" in capsys.readouterr().err


def test_pinned_manifest_records_and_enforces_hashes(vox, tmp_path, monkeypatch, capsys):
    blob, members = vox
    pinned = tmp_path / "voxceleb-manifest.json"
    pinned.write_text(json.dumps({"revision": voxceleb.REVISION, "zip_bytes": None, "clips": {}}))
    monkeypatch.setattr(voxceleb, "REPO_MANIFEST", pinned)
    with ZipServer(blob) as server:
        monkeypatch.setattr(voxceleb, "URL", server.url)
        assert run(tmp_path / "first") == 0
        recorded = voxceleb.update_repo_manifest(tmp_path / "first")
        assert recorded["zip_bytes"] == len(blob) and recorded["observed_commit"] == COMMIT
        assert len(recorded["clips"]) == IDENTITIES * CLIPS
        for name, entry in recorded["clips"].items():
            data = members[name][0]
            assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                             "crc32": f"{zlib.crc32(data):08x}"}  # as the zip's directory gives it
        assert json.loads(pinned.read_text()) == recorded
        assert run(tmp_path / "again") == 0  # verified against the recorded hashes
        name = sorted(recorded["clips"])[0]
        changed = copy.deepcopy(recorded)  # the directory disagrees: noticed before the clip is read
        changed["clips"][name]["crc32"] = "00000000"
        pinned.write_text(json.dumps(changed))
        assert run(tmp_path / "changed") == 2
        assert (f"{name}: the zip's directory gives {len(members[name][0])} bytes with CRC-32 "
                f"{recorded['clips'][name]['crc32']}") in capsys.readouterr().err
        recorded["clips"][name]["sha256"] = "0" * 64
        pinned.write_text(json.dumps(recorded))
        assert run(tmp_path / "bad") == 2
    assert f"{name}: SHA-256" in capsys.readouterr().err
    (tmp_path / "vox.zip").write_bytes(blob)
    assert run(tmp_path / "local", zip=str(tmp_path / "vox.zip")) == 0
    with pytest.raises(ValueError, match="only runs from"):
        voxceleb.update_repo_manifest(tmp_path / "local")


def test_choose_clips_alternates_videos_and_splits_identities():
    clips = [voxceleb.Clip(f"id{i:05d}", f"video{v}", f"{c:05d}", member="", ref=None)
             for i in range(10) for v in range(3) for c in range(4)]
    chosen = voxceleb.choose_clips(clips, identities=5, clips_per_identity=3, seed=7)
    assert chosen == voxceleb.choose_clips(list(reversed(clips)), 5, 3, seed=7)  # listing order is irrelevant
    assert chosen != voxceleb.choose_clips(clips, 5, 3, seed=8)
    test_ids = {clip.identity for clip in chosen["test"]}
    train_ids = {clip.identity for clip in chosen["train"]}
    assert len(test_ids) == 1 and len(train_ids) == 4 and not test_ids & train_ids
    for identity in test_ids | train_ids:
        picked = [clip for clip in chosen["train"] + chosen["test"] if clip.identity == identity]
        assert len({clip.video for clip in picked}) == 3  # three clips, three different videos
    with pytest.raises(ValueError, match="only 10"):
        voxceleb.choose_clips(clips, identities=11, clips_per_identity=1, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        voxceleb.choose_clips(clips, identities=1, clips_per_identity=1, seed=0)


def test_a_member_larger_than_the_cap_is_refused_before_it_is_inflated(tmp_path, monkeypatch, capsys):
    """A few kB of zip that inflate to 8 MB of zeros per clip: refused unread, from a local zip and by range."""
    from fomm_lessons.data import voxceleb_sources

    monkeypatch.setattr(voxceleb_sources, "MAX_CLIP_BYTES", 1 << 20)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in ("mp4/id00001/v/00001.mp4", "mp4/id00002/v/00001.mp4"):
            archive.writestr(name, bytes(8 << 20))
    blob = buffer.getvalue()
    assert len(blob) < 40_000
    (tmp_path / "bomb.zip").write_bytes(blob)
    assert run(tmp_path / "local", zip=str(tmp_path / "bomb.zip"), identities=2, clips_per_identity=1) == 2
    (err,) = error_lines(capsys.readouterr().err)
    assert "8388608 bytes" in err and "more than the 1048576 a clip may hold" in err, err
    with ZipServer(blob) as server:
        monkeypatch.setenv(voxceleb.URL_ENV, server.url)
        assert run(tmp_path / "range", identities=2, clips_per_identity=1) == 2
    (err,) = error_lines(capsys.readouterr().err)
    assert "more than the 1048576 a clip may hold" in err, err

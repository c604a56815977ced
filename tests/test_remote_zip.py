"""Range reading of a zip over HTTP, checked against the standard library's zipfile on 127.0.0.1."""

import io
import os
import struct
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest

from fomm_lessons.data import remote_zip

sys.path.insert(0, os.path.dirname(__file__))
from zip_server import COMMIT, ZipServer  # noqa: E402


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(remote_zip, "RETRY_BACKOFF_S", 0.0)
    monkeypatch.setattr(remote_zip, "TIMEOUT_S", 5.0)


def make_zip(zip64=False):
    """A zip with deflated and stored members; ``zip64`` forces ZIP64 offsets and end records."""
    rng = np.random.default_rng(0)
    members = {
        "mp4/id00001/aaaaaaaaaaa/00001.mp4": rng.integers(0, 256, 3000, dtype=np.uint8).tobytes(),
        "mp4/id00001/aaaaaaaaaaa/00002.mp4": b"compressible " * 900,
        "mp4/id00002/bbbbbbbbbbb/00001.mp4": rng.integers(0, 4, 5000, dtype=np.uint8).tobytes(),
        "filler.bin": rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes(),
        "mp4/id00003/ccccccccccc/00001.mp4": b"",
    }
    buffer = io.BytesIO()
    limit = zipfile.ZIP64_LIMIT
    if zip64:  # small limits make zipfile write what a 9 GB zip needs: 64-bit offsets and end record
        zipfile.ZIP64_LIMIT = 1000
    try:
        with zipfile.ZipFile(buffer, "w") as archive:
            for index, (name, data) in enumerate(members.items()):
                info = zipfile.ZipInfo(name)
                info.compress_type = zipfile.ZIP_STORED if index % 2 else zipfile.ZIP_DEFLATED
                with archive.open(info, "w", force_zip64=zip64) as member:
                    member.write(data)
            archive.comment = b"a comment to skip over"
    finally:
        zipfile.ZIP64_LIMIT = limit
    return buffer.getvalue(), members


def test_make_zip_uses_zip64_records():
    blob, _ = make_zip(zip64=True)
    assert b"PK\x06\x06" in blob and b"PK\x06\x07" in blob  # ZIP64 end record and locator
    plain, _ = make_zip(zip64=False)
    assert b"PK\x06\x06" not in plain


@pytest.mark.parametrize("zip64", [False, True])
def test_central_directory_matches_zipfile(zip64):
    blob, _ = make_zip(zip64)
    expected = zipfile.ZipFile(io.BytesIO(blob)).infolist()
    with ZipServer(blob) as server:
        members = remote_zip.RemoteZip(server.url).members()
    assert [m.name for m in members] == [info.filename for info in expected]
    assert [(m.size, m.compressed_size, m.crc32, m.header_offset, m.method) for m in members] == [
        (i.file_size, i.compress_size, i.CRC, i.header_offset, i.compress_type) for i in expected]
    if zip64:
        assert max(m.header_offset for m in members) > 1000


@pytest.mark.parametrize("zip64", [False, True])
def test_members_read_by_range_only(zip64):
    blob, originals = make_zip(zip64)
    with ZipServer(blob, redirect=False) as server:
        remote = remote_zip.RemoteZip(server.url)
        wanted = [m for m in remote.members() if m.name.endswith(".mp4")]
        sent_before = server.state.bytes_sent
        for member in wanted:
            assert remote.read(member) == originals[member.name]
        sent = server.state.bytes_sent - sent_before
    assert {m.method for m in wanted} == {0, 8}
    # One request per member: its local header, the compressed bytes and at most
    # LOCAL_EXTRA_GUESS bytes more, nothing of the filler.
    # Probe, end records (ZIP64 adds one), central directory, then one request per member.
    assert len(server.state.requests) == 3 + zip64 + len(wanted)
    headers = sum(30 + len(m.name) for m in wanted) + sum(m.compressed_size for m in wanted)
    assert headers <= sent <= headers + remote_zip.LOCAL_EXTRA_GUESS * len(wanted)
    assert server.state.bytes_sent < len(blob) / 2


def test_long_extra_field_costs_a_second_request():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("mp4/id00001/v/00001.mp4")
        info.extra = struct.pack("<HH", 0xCAFE, 196) + bytes(196)  # an unknown extra field of 200 bytes
        archive.writestr(info, b"clip bytes" * 50)
    with ZipServer(buffer.getvalue(), redirect=False) as server:
        remote = remote_zip.RemoteZip(server.url)
        (member,) = remote.members()
        assert remote.read(member) == b"clip bytes" * 50
        assert len(server.state.requests) == 5  # probe, end record, directory, member, its rest


def test_redirect_keeps_range_and_records_commit():
    blob, _ = make_zip()
    with ZipServer(blob, redirect=True) as server:
        remote = remote_zip.RemoteZip(server.url)
        remote.members()
    assert remote.http.redirect_headers["X-Repo-Commit"] == COMMIT
    assert all(rng is not None for _, rng in server.state.requests)


@pytest.mark.parametrize("mode", ["close", "reset", "stall"])
def test_dropped_connection_is_resumed(mode):
    blob, originals = make_zip()
    name = "mp4/id00001/aaaaaaaaaaa/00001.mp4"
    with ZipServer(blob, drops=[700, 100, 5], drop_min_bytes=1000, drop_mode=mode) as server:
        server.state.stall_s = 0.8
        # Progress between failures resets the count; a stalled read times out after 0.5 s.
        remote = remote_zip.RemoteZip(server.url, retries=3 if mode == "reset" else 1,
                                      timeout=0.5 if mode == "stall" else 5.0)
        member = next(m for m in remote.members() if m.name == name)
        server.state.drops = [700, 100, 5]
        assert remote.read(member) == originals[name]
        assert server.state.drops == []
        resumed = [rng for path, rng in server.state.requests if path.startswith("/blob/")]
    start = member.header_offset
    end = start + 30 + len(name) + remote_zip.LOCAL_EXTRA_GUESS + member.compressed_size - 1
    if mode == "reset":  # bytes in flight when the reset arrives may be lost: it may take more requests
        tries = resumed[resumed.index(f"bytes={start}-{end}"):]
        starts = [int(rng.split("=")[1].split("-")[0]) for rng in tries]
        assert len(tries) >= 4 and starts == sorted(starts) and all(rng.endswith(f"-{end}") for rng in tries)
    else:
        assert resumed[-4:] == [f"bytes={start + cut}-{end}" for cut in (0, 700, 800, 805)]


def test_gives_up_naming_url_and_reason():
    blob, _ = make_zip()
    with ZipServer(blob, drops=[0] * 50) as server:
        remote = remote_zip.HttpFile(server.url, retries=2)
        with pytest.raises(remote_zip.RemoteZipError, match="gave up after 2 retries") as error:
            remote.probe()
            remote.read(0, 100)
    assert server.url in str(error.value)


def test_server_announcing_more_than_it_sends_is_given_up(tmp_path):
    """No Range, and a Content-Length 1000 bytes longer than the body: every download ends short."""
    blob, _ = make_zip()
    started = time.monotonic()
    with ZipServer(blob, ranges=False, announce_extra=1000, redirect=False, max_requests=50) as server:
        remote = remote_zip.HttpFile(server.url)
        remote.probe()
        with pytest.raises(remote_zip.RemoteZipError, match=rf"ignores Range and ended the whole file after "
                           rf"{len(blob)} of the {len(blob) + 1000} bytes it announces") as error:
            remote.download(tmp_path / "copy.zip")
    assert len(server.state.requests) == 3  # the probe, the download, one retry that ended where it did
    assert time.monotonic() - started < 5
    assert server.url in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "copy.zip").exists()


def test_retries_are_bounded_per_range_even_when_bytes_arrive():
    """Every body is cut after 10 bytes: each retry brings bytes, yet one range gives up."""
    blob, _ = make_zip()
    with ZipServer(blob, drops=[10] * 1000, redirect=False, max_requests=200) as server:
        remote = remote_zip.HttpFile(server.url)
        remote.probe()
        with pytest.raises(remote_zip.RemoteZipError, match=rf"gave up after {remote_zip.RANGE_FAILURES + 1} "
                           "failed requests for this range while reading bytes 0-4999"):
            remote.read(0, 5000)
    assert len(server.state.requests) == 1 + remote_zip.RANGE_FAILURES + 1


def test_retries_are_bounded_for_the_whole_file(monkeypatch):
    """One failure per range, each range then read: the file's total of failures still ends it."""
    monkeypatch.setattr(remote_zip, "TOTAL_FAILURES", 10)
    blob, _ = make_zip()
    with ZipServer(blob, drops=[50] * 1000, drop_min_bytes=60, redirect=False, max_requests=200) as server:
        remote = remote_zip.HttpFile(server.url)
        with pytest.raises(remote_zip.RemoteZipError, match="gave up after 11 failed requests for this file"):
            for start in range(0, 3000, 100):  # bodies of 100 bytes are cut at 50, the rest comes
                assert remote.read(start, 100) == blob[start:start + 100]
    assert start == 1000 and len(server.state.requests) == 1 + 2 * 10 + 1  # probe, 10 ranges, a cut


def test_missing_file_is_not_retried():
    blob, _ = make_zip()
    with ZipServer(blob) as server:
        url = server.url.replace("vox2_test_mp4", "nothing")
        with pytest.raises(remote_zip.RemoteZipError, match="HTTP 404") as error:
            remote_zip.RemoteZip(url).members()
        assert len(server.state.requests) == 1
    assert url in str(error.value)


def test_server_without_range_is_reported_and_downloaded_whole(tmp_path):
    blob, _ = make_zip()
    with ZipServer(blob, ranges=False, drops=[50_000], drop_min_bytes=100) as server:
        remote = remote_zip.RemoteZip(server.url)
        with pytest.raises(remote_zip.RangeNotSupported):
            remote.members()
        server.state.drops = [50_000]  # the first full download is cut: it restarts from byte 0
        remote.http.download(tmp_path / "copy.zip")
    assert (tmp_path / "copy.zip").read_bytes() == blob
    assert not (tmp_path / "copy.zip.part").exists()


def test_download_resumes_with_range(tmp_path):
    blob, _ = make_zip()
    with ZipServer(blob, drops=[60_000], drop_min_bytes=100_000) as server:
        remote_zip.HttpFile(server.url).download(tmp_path / "copy.zip")
        sent = server.state.bytes_sent
    assert (tmp_path / "copy.zip").read_bytes() == blob
    assert sent == len(blob)  # the second request asked only for the rest
    assert server.state.requests[-1][1] == "bytes=60000-"


def test_not_a_zip_is_a_clear_error():
    with ZipServer(b"\0" * 5000) as server:
        with pytest.raises(remote_zip.RemoteZipError, match="not a zip"):
            remote_zip.RemoteZip(server.url).members()


def test_inflate_checks_crc():
    member = remote_zip.ZipMember("x.mp4", 0, 0, crc32=0, compressed_size=3, size=3, header_offset=0)
    with pytest.raises(ValueError, match="x.mp4.*CRC-32"):
        remote_zip.inflate(member, b"abc")


def test_corrupt_deflate_data_is_a_value_error_naming_the_member():
    data = zlib.compress(b"clip bytes" * 100)[2:-4]  # raw deflate, as in a zip
    broken = data[:5] + bytes(b ^ 0xFF for b in data[5:12]) + data[12:]
    member = remote_zip.ZipMember("x.mp4", 8, 0, crc32=zlib.crc32(b"clip bytes" * 100),
                                  compressed_size=len(broken), size=1000, header_offset=0)
    assert remote_zip.inflate(member, data) == b"clip bytes" * 100
    with pytest.raises(ValueError, match="x.mp4: corrupt deflate data"):
        remote_zip.inflate(member, broken)


def test_inflate_to_streams_and_stops_at_the_announced_size():
    clip = bytes(range(256)) * 4000  # 1 MB
    data = zlib.compress(clip)[2:-4]
    member = remote_zip.ZipMember("x.mp4", 8, 0, crc32=zlib.crc32(clip), compressed_size=len(data),
                                  size=len(clip), header_offset=0)
    out = io.BytesIO()
    assert remote_zip.inflate_to(member, data, out) == len(clip) and out.getvalue() == clip
    liar = remote_zip.ZipMember("x.mp4", 8, 0, crc32=zlib.crc32(clip[:1000]), compressed_size=len(data),
                                size=1000, header_offset=0)  # its entry says 1000 bytes
    out = io.BytesIO()
    with pytest.raises(ValueError, match="inflates past the 1000 bytes"):
        remote_zip.inflate_to(liar, data, out)
    assert len(out.getvalue()) <= 1000
    with pytest.raises(ValueError, match="more than the 4096 a clip may hold"):
        remote_zip.inflate_to(member, data, io.BytesIO(), limit=4096)

"""Models by name: the shipped sample-64, and published checkpoints fetched from HTTP servers on 127.0.0.1.

The servers run in threads of this process and serve a checkpoint in the
published structure (kp_detector / generator / discriminator state_dicts,
optimizer entries and the epoch, written by torch in the legacy and the zip
layouts) of the tiny cpu-64 config, under a test entry of the registry.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses
import hashlib
import http.server
import json
import re
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fomm_lessons import cli, download, pretrained
from zip_server import LocalServer, answer_range, byte_range

TORCH_REASON = "PyTorch writes the published checkpoints of these tests: pip install -e '.[oracle]'"
NAME = "test-cpu-64"
FILENAME = "test-cpk.pth.tar"


# ---------------------------------------------------------------------------
# a file server with Range requests, 404s, a Yandex-like API and cut connections
# ---------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        state = self.server.state
        with state.lock:
            state.requests.append((self.path, self.headers.get("Range")))
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404, "no such file")
            return
        if isinstance(body, dict):  # an API answer
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        start, end = 0, len(body) - 1
        wanted = self.headers.get("Range")
        if wanted:
            if not answer_range(self, wanted, len(body)):
                return
            start, end = byte_range(wanted, len(body))
        else:
            self.send_response(200)
        chunk = body[start:end + 1]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        cut = len(chunk)
        with state.lock:
            if state.drops and len(chunk) > 1:  # never the one-byte size probe
                cut = min(cut, state.drops.pop(0))
        try:
            self.wfile.write(chunk[:cut])
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        self.close_connection = True


class FileServer(LocalServer):
    """Serve ``files`` ({path: bytes, or a dict answered as JSON}); ``drops`` cut successive bodies."""

    def __init__(self, files, drops=()):
        super().__init__(_Handler, type("State", (), {})())
        self.state.files, self.state.drops = dict(files), list(drops)
        self.state.requests, self.state.lock = [], threading.Lock()

    def url(self, path):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    @property
    def requests(self):
        return list(self.state.requests)


def _closed_port_url(path="/gone.pth.tar"):
    """A URL on 127.0.0.1 where nothing listens: what offline looks like, without waiting for DNS."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The state of a cpu-64 checkpoint and its bytes as torch writes them: {"legacy": b, "zip": b}."""
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    from fomm_lessons.checkpoint import PARTS, build_models
    from fomm_lessons.config import load_config
    from torch_state import random_torch_state

    models = build_models(load_config("cpu-64")["model_params"])
    rng = np.random.default_rng(0)
    state = random_torch_state(models, rng, lambda name, field, shape: rng.normal(0.0, 0.05, shape))
    payload = dict(state)
    for number, part in enumerate(PARTS):  # Adam state_dicts as torch 1.0 wrote them (ids, int steps)
        params = [name for name, value in state[part].items() if value.dtype == torch.float32]
        ids = [140000000000000 + 1000 * number + i for i in range(len(params))]
        moments = {} if part != "kp_detector" else {
            i: {"step": 3, "exp_avg": torch.zeros_like(state[part][name]),
                "exp_avg_sq": torch.full_like(state[part][name], 1e-6)} for i, name in zip(ids, params)}
        payload[f"optimizer_{part}"] = {"state": moments, "param_groups": [
            {"lr": 2e-4, "betas": (0.5, 0.999), "eps": 1e-8, "weight_decay": 0, "amsgrad": False,
             "initial_lr": 2e-4, "params": ids}]}
    payload["epoch"] = 99
    folder = tmp_path_factory.mktemp("published")
    blobs = {}
    for layout, zipped in (("legacy", False), ("zip", True)):
        path = folder / f"{layout}.pth.tar"
        torch.save(payload, path, _use_new_zipfile_serialization=zipped)
        blobs[layout] = path.read_bytes()
    assert blobs["legacy"][:2] == b"\x80\x02" and blobs["zip"][:4] == b"PK\x03\x04"
    arrays = {part: {name: value.numpy() for name, value in entries.items()} for part, entries in state.items()}
    return {"state": arrays, "blobs": blobs, "folder": folder}


@pytest.fixture(scope="module")
def reference(published):
    """The networks of the published checkpoint as checkpoint.py reads a local file with torch."""
    from fomm_lessons.checkpoint import load_torch_checkpoint
    from fomm_lessons.config import load_config

    return load_torch_checkpoint(published["folder"] / "zip.pth.tar", load_config("cpu-64")["model_params"])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder, and quick retries."""
    monkeypatch.setenv(pretrained.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(download, "RETRIES", 1)
    monkeypatch.setattr(download, "BACKOFF_S", 0.01)
    monkeypatch.setattr(download, "TIMEOUT_S", 5.0)
    return tmp_path / "cache"


@pytest.fixture
def entry():
    """``entry(sources, **fields)`` registers the test model; it is removed after the test."""
    def make(sources, **fields):
        fields = {"config": "cpu-64", "summary": "a test model", "trained_on": "nothing", "licence": "MIT",
                  "filename": FILENAME, **fields}
        sources = tuple(s if isinstance(s, download.Source) else download.Source(s) for s in sources)
        return pretrained.register(pretrained.Entry(NAME, sources=sources, **fields), replace=True)

    yield make
    if NAME in pretrained.names():
        pretrained.unregister(NAME)


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _run_cli(argv, capsys):
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _assert_one_line_error(status, err, command, *fragments):
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fomm-lessons {command}: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---------------------------------------------------------------------------
# the registry and the shipped model
# ---------------------------------------------------------------------------

def test_registry_describes_each_model():
    assert pretrained.names()[:5] == ["sample-64", "puppets-64", "sample-64-v2", "vox-256", "vox-adv-256"]
    for name in ("sample-64", "puppets-64", "sample-64-v2"):
        sample = pretrained.info(name)
        folder = Path(sample["folder"])
        assert sample["kind"] == "shipped" and sample["verified"] and sample["config"] == name
        assert sorted(sample["files"]) == ["generator.weights.h5", "kp_detector.weights.h5"]
        for filename, recorded in sample["files"].items():  # digests against hashlib, independently
            data = (folder / filename).read_bytes()
            assert recorded == {"size": len(data), "sha256": _sha256(data)}
        assert sample["size"] == sum(f["size"] for f in sample["files"].values()) < 3 * 2 ** 20  # the cap
        assert sample["quality"] == json.loads((folder / "quality.json").read_text())
        assert Path(sample["card"]).is_file() and (folder / "log.csv").is_file()
    for name in ("vox-256", "vox-adv-256"):
        published = pretrained.info(name)
        assert published["kind"] == "download" and published["config"] == name
        assert published["verified"] is True and published["note"].startswith("verified")
        urls = [s["url"] for s in published["sources"]]
        assert "lEw8uRm140L_eQ" in urls[0] and len(urls) >= 3  # the authors' own folder first
        assert all(url.startswith("https://") for url in urls)
        assert any("graphemecluster/first-order-model-demo/releases/download/checkpoints/" in url for url in urls)
        assert published["licence"] and published["trained_on"].startswith("VoxCeleb")
    with pytest.raises(ValueError, match="unknown model 'nope'.*sample-64"):
        pretrained.info("nope")


# What issue 24 records of the published files, typed here again from the issue (not read from the
# registry), so that a changed hash in the registry fails this test.
VOX_ADV = (750926934, "6792d6810d7f46e3c5c487a1cfec916b96fad8912c3c6cc81baa1fc300c820d3")
VOX = "abb41ab1f279f26326c0d6e4d20702de6658364665aa1313daa7a63e89ea2b23"
AVATARIFY_MD5 = "8a45a24037871c045fbb8a6a8aa95ebc"


def test_the_published_files_carry_their_recorded_pairs_and_hugging_face_mirrors():
    adv, vox = pretrained.info("vox-adv-256"), pretrained.info("vox-256")
    assert (adv["size"], adv["sha256"]) == VOX_ADV and adv["verified_by"] == 2
    assert any("abhishek/first-order-motion-model" in s for s in adv["sha256_sources"])
    assert any("ashpexx/my-models" in s for s in adv["sha256_sources"])
    assert (vox["size"], vox["sha256"]) == (None, VOX) and vox["sha256_sources"] == ["huggingface.co/MCMLXXXVII/thinplatesv1"]
    assert "a single source" in vox["note"] and "a single source" not in adv["note"]
    hugging_face = re.compile(r"^https://huggingface\.co/(?:spaces/)?[\w.-]+/[\w.-]+/resolve/main/[\w./-]+$")
    assert [s["url"] for s in adv["sources"] if s["url"].startswith("https://huggingface.co/")] == [
        "https://huggingface.co/spaces/abhishek/first-order-motion-model/resolve/main/weights/vox-adv-cpk.pth.tar",
        "https://huggingface.co/ashpexx/my-models/resolve/main/vox-adv-cpk.pth.tar"]
    assert [s["url"] for s in vox["sources"] if s["url"].startswith("https://huggingface.co/")] == [
        "https://huggingface.co/MCMLXXXVII/thinplatesv1/resolve/main/vox-cpk.pth.tar"]
    for source in adv["sources"] + vox["sources"]:
        if source["url"].startswith("https://huggingface.co/"):
            assert hugging_face.match(source["url"]) and not source["own_copy"]  # checked against the pair
    # Avatarify's 228 MB copy is another file: checked by its md5, never by the 751 MB file's size or sha256.
    entry = pretrained.lookup("vox-adv-256")
    avatarify = [s for s in entry.sources if s.publisher.startswith("avatarify")]
    assert len(avatarify) == 3 and all(s.expected(*VOX_ADV) == (None, None, AVATARIFY_MD5) for s in avatarify)
    assert "avatarify" in adv["note"] and "never against the recorded sha256" in adv["note"]


def test_a_file_is_checked_against_the_pair_then_each_mirrors_own_copy(tmp_path):
    path = tmp_path / "copy.pth.tar"
    path.write_bytes(b"PK\x03\x04" + bytes(200))
    entry = pretrained.lookup("vox-adv-256")
    problem, digests, match = download.check_copy(path, entry.size, entry.sha256, entry.sources)
    assert match is None and digests["size"] == 204 and digests["md5"] == hashlib.md5(path.read_bytes()).hexdigest()
    assert problem.startswith(f"204 bytes, expected {VOX_ADV[0]}; nor avatarify (S3)'s copy: md5 ")
    assert problem.endswith(f"expected {AVATARIFY_MD5}")
    mine = download.Source("http://127.0.0.1:1/x", publisher="mine", md5=digests["md5"])
    assert download.check_copy(path, *VOX_ADV, entry.sources + (mine,)) == (None, digests, mine)
    assert download.check_copy(path, 204, digests["sha256"], (mine,))[2] is None  # the pair wins


def test_load_sample_64_by_name():
    import h5py

    from fomm_lessons.config import load_config

    models, config = pretrained.load("sample-64")
    assert config == load_config("sample-64") and models.discriminator is None
    folder = Path(pretrained.info("sample-64")["folder"])
    with h5py.File(folder / "kp_detector.weights.h5", "r") as stored:  # read without Keras
        np.testing.assert_array_equal(models.kp_detector.kp.kernel.numpy(), stored["kp/vars/0"][...])
        np.testing.assert_array_equal(models.kp_detector.jacobian.kernel.numpy(), stored["jacobian/vars/0"][...])
    image = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    kp = models.kp_detector(image)["value"].numpy()  # (1, K, 2)
    assert kp.shape == (1, 10, 2) and np.all(np.abs(kp) <= 1)


def test_changed_shipped_weights_are_refused_until_the_digests_are_updated(tmp_path, monkeypatch, capsys):
    weights = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS_DIR / "sample-64", weights / "sample-64")
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", weights)
    generator = weights / "sample-64" / "generator.weights.h5"
    data = bytearray(generator.read_bytes())
    data[-1] ^= 0xFF
    generator.write_bytes(bytes(data))
    hint = "python -m fomm_lessons.pretrained --update-digests sample-64"
    with pytest.raises(ValueError, match=re.escape(hint)) as refused:
        pretrained.resolve("sample-64")
    assert f"sha256 {_sha256(bytes(data))}" in str(refused.value) and "generator.weights.h5" in str(refused.value)
    (weights / "sample-64" / "discriminator.weights.h5").write_bytes(b"new")
    with pytest.raises(ValueError, match="discriminator.weights.h5"):
        pretrained.verify_shipped("sample-64")
    assert pretrained.main(["--update-digests", "sample-64"]) == 0  # the one step after replacing weights
    assert f"sha256 {_sha256(bytes(data))}" in capsys.readouterr().out
    assert pretrained.resolve("sample-64") == (str(weights / "sample-64"), "sample-64")
    assert pretrained.main(["--verify", "sample-64"]) == 0


# ---------------------------------------------------------------------------
# published checkpoints over HTTP
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("layout, torch_present", [("legacy", False), ("zip", True)])
def test_a_published_checkpoint_loads_and_a_second_load_reads_the_converted_cache(
        published, reference, cache, entry, layout, torch_present, monkeypatch, capsys):
    from fomm_lessons.checkpoint import PARTS
    from fomm_lessons.config import load_config

    blob = published["blobs"][layout]
    with FileServer({"/ckpt": blob}) as server:
        entry([server.url("/ckpt")], size=len(blob), sha256=_sha256(blob))
        with monkeypatch.context() as patch:
            if not torch_present:
                patch.setitem(sys.modules, "torch", None)  # `import torch` fails: the torch-free reader
            models, config = pretrained.load(NAME, progress=False)
        assert "converting" in capsys.readouterr().err
        first_requests = len(server.requests)
        assert first_requests == 2  # the size probe and one transfer
        pth = cache / NAME / FILENAME
        assert pth.read_bytes() == blob
        pth.rename(cache / "elsewhere.pth.tar")  # the second load must not need it
        start = time.perf_counter()
        again, config_again = pretrained.load(NAME, progress=False)
        seconds = time.perf_counter() - start
        assert len(server.requests) == first_requests and config_again == config == load_config("cpu-64")
    print(f"second load of {layout}: {seconds:.2f} s")
    state = published["state"]
    kernel = models.generator.final.kernel.numpy()  # (kh, kw, in, out) from (out, in, kh, kw)
    np.testing.assert_array_equal(kernel, np.transpose(state["generator"]["final.weight"], (2, 3, 1, 0)))
    for part in PARTS:
        for loaded, cached, expected in zip(getattr(models, part).weights, getattr(again, part).weights,
                                            getattr(reference, part).weights):
            np.testing.assert_array_equal(loaded.numpy(), expected.numpy(), err_msg=loaded.path)
            np.testing.assert_array_equal(cached.numpy(), expected.numpy(), err_msg=cached.path)


def test_a_verified_download_says_by_how_many_sources_and_a_mirrors_own_copy_is_not_held_to_the_pair(
        published, cache, entry, capsys):
    blob, other = published["blobs"]["zip"], published["blobs"]["legacy"]  # two files, one name
    own = download.Source("", publisher="a mirror of another file", md5=hashlib.md5(other).hexdigest())
    with FileServer({"/ckpt": blob, "/other": other}) as server:
        entry([server.url("/ckpt")], size=len(blob), sha256=_sha256(blob), sha256_sources=("one", "two"))
        assert pretrained.info(NAME)["verified_by"] == 2
        pretrained.converted_folder(NAME, progress=False)
        printed = capsys.readouterr().err
        assert "verified: size and sha256 match the pair recorded from 2 sources" in printed
        assert pretrained.info(NAME)["cached"] == "verified: size and sha256 match the pair recorded from 2 sources"
        shutil.rmtree(cache / NAME)
        # A mirror that serves another file and publishes its md5: no size probe against the pair, the
        # md5 checked, and the converted copy kept (the next load makes no request).
        entry([dataclasses.replace(own, url=server.url("/other"))], size=len(blob), sha256=_sha256(blob),
              sha256_sources=("one",))
        pretrained.converted_folder(NAME, progress=False)
        requests = len(server.requests)
        pretrained.converted_folder(NAME, progress=False)
        assert len(server.requests) == requests and (cache / NAME / FILENAME).read_bytes() == other
        assert "a mirror of another file's own copy, checked by its md5" in pretrained.info(NAME)["cached"]
        assert "a mirror of another file serves another file" in pretrained.info(NAME)["note"]
        # The same file from a mirror without a checksum of its own is held to the pair, and refused.
        shutil.rmtree(cache / NAME)
        entry([server.url("/other")], size=len(blob), sha256=_sha256(blob))
        with pytest.raises(download.DownloadError, match=f"serves {len(other)} bytes, expected {len(blob)}"):
            pretrained.fetch(NAME, progress=False)


def test_an_interrupted_transfer_resumes_with_a_range_request(published, cache, entry):
    blob = published["blobs"]["zip"]
    cut = len(blob) // 3
    with FileServer({"/ckpt": blob}, drops=[cut]) as server:
        entry([server.url("/ckpt")], sha256=_sha256(blob))
        path = pretrained.fetch(NAME, progress=False)
    assert path.read_bytes() == blob
    assert server.requests == [("/ckpt", "bytes=0-0"), ("/ckpt", None), ("/ckpt", f"bytes={cut}-")]


def test_a_partial_download_is_kept_and_resumed_by_the_next_run(published, cache, entry, monkeypatch):
    blob = published["blobs"]["legacy"]
    cut = len(blob) // 4
    monkeypatch.setattr(download, "RETRIES", 0)
    with FileServer({"/ckpt": blob}, drops=[cut, 0]) as server:  # then one try that brings nothing
        entry([server.url("/ckpt")], sha256=_sha256(blob))
        with pytest.raises(download.DownloadError) as failed:
            pretrained.fetch(NAME, progress=False)
        part = cache / NAME / f"{FILENAME}.part"
        assert "is kept and resumes next time" in str(failed.value) and part.stat().st_size == cut
        path = pretrained.fetch(NAME, progress=False)  # "the next run"
    assert path.read_bytes() == blob and not part.exists()
    assert server.requests[-1] == ("/ckpt", f"bytes={cut}-") and len(server.requests) == 5


def test_a_part_changed_since_its_run_stopped_is_downloaded_again(published, cache, entry, monkeypatch):
    """No sha256 recorded (as for the published files): the part's own digest guards the resume."""
    blob = published["blobs"]["legacy"]
    cut = len(blob) // 2
    monkeypatch.setattr(download, "RETRIES", 0)
    with FileServer({"/ckpt": blob}, drops=[cut, 0]) as server:
        entry([server.url("/ckpt")])
        with pytest.raises(download.DownloadError):
            pretrained.fetch(NAME, progress=False)
        assert server.requests[-1] == ("/ckpt", f"bytes={cut}-")  # the first fetch's retry, cut at 0
        part = cache / NAME / f"{FILENAME}.part"
        assert part.stat().st_size == cut
        changed = bytearray(part.read_bytes())
        # 400 bytes inverted, so that they change whatever they held: zeroing them changed nothing when
        # they fell in a storage of zeros (Adam's exp_avg), and where they fall moves from run to run
        # with the storage keys torch's legacy format writes (the tensors' addresses).
        changed[cut // 2:cut // 2 + 400] = bytes(byte ^ 0xFF for byte in changed[cut // 2:cut // 2 + 400])
        part.write_bytes(bytes(changed))
        before = len(server.requests)
        path = pretrained.fetch(NAME, progress=False)
    assert path.read_bytes() == blob
    second = [request for request in server.requests[before:] if request[1] != "bytes=0-0"]  # the size probe
    assert second == [("/ckpt", None)]  # from the first byte, not bytes={cut}-


def test_converted_weights_that_changed_are_converted_again_from_the_cached_file(published, cache, entry,
                                                                                 capsys):
    blob = published["blobs"]["zip"]
    keras_folder = cache / NAME / "keras"
    with FileServer({"/ckpt": blob}) as server:
        entry([server.url("/ckpt")], sha256=_sha256(blob))
        status, _, err = _run_cli(["models", "fetch", NAME], capsys)
        assert status == 0, err
        written = {path.name: path.read_bytes() for path in keras_folder.glob("*.weights.h5")}
        requests = len(server.requests)
        generator = keras_folder / "generator.weights.h5"
        for damage in ("truncated", "swapped"):
            if damage == "truncated":
                generator.write_bytes(written["generator.weights.h5"][:1000])
            else:
                generator.write_bytes(written["kp_detector.weights.h5"])
            status, out, err = _run_cli(["models", "fetch", NAME], capsys)
            assert status == 0, err
            assert f"{generator} has" in err and "converting again" in err
            assert generator.read_bytes() == written["generator.weights.h5"]
        assert len(server.requests) == requests  # from the cached .pth.tar: nothing downloaded again
        status, _, err = _run_cli(["models", "fetch", NAME], capsys)
        assert status == 0 and "converting" not in err


def test_a_wrong_checksum_is_refused_moved_aside_and_the_next_mirror_used(published, cache, entry):
    blob = published["blobs"]["zip"]
    bad = bytearray(blob)
    bad[len(bad) // 2] ^= 0xFF
    with FileServer({"/bad": bytes(bad), "/good": blob}) as server:
        entry([server.url("/bad"), server.url("/good")], size=len(blob), sha256=_sha256(blob))
        path = pretrained.fetch(NAME, progress=False)
        assert path.read_bytes() == blob
        assert (cache / NAME / f"{FILENAME}.rejected").read_bytes() == bytes(bad)  # kept, renamed
        entry([server.url("/bad")], size=len(blob), sha256=_sha256(blob))
        path.unlink()
        with pytest.raises(download.DownloadError) as refused:
            pretrained.load(NAME, progress=False)
    message = str(refused.value)
    assert f"sha256 {_sha256(bytes(bad))}, expected {_sha256(blob)}" in message
    assert "moved to test-cpk.pth.tar.rejected" in message and not path.exists()


def test_a_404_or_a_web_page_falls_through_to_the_next_mirror(published, cache, entry, capsys):
    blob = published["blobs"]["zip"]
    page = b"<!DOCTYPE html><html>Google Drive can't scan this file for viruses.</html>"
    api = {"href": None}
    with FileServer({"/page": page, "/ckpt": blob, "/api": api}) as server:
        api["href"] = server.url("/ckpt")
        server.state.files["/api"] = api
        entry([server.url("/missing"), server.url("/page"), download.Source(server.url("/api"), "yandex")])
        path = pretrained.fetch(NAME, progress=False)
    assert path.read_bytes() == blob
    assert (cache / NAME / f"{FILENAME}.rejected").read_bytes() == page
    assert [p for p, _ in server.requests] == ["/missing", "/page", "/page", "/api", "/ckpt", "/ckpt"]
    printed = capsys.readouterr().err  # unverified: the sha256 it computed, to record
    assert f"sha256 {_sha256(blob)}" in printed and "unverified" in printed


def test_offline_is_one_line_naming_each_url_and_the_way_to_pass_a_file(published, cache, entry, capsys):
    urls = [_closed_port_url("/a.pth.tar"), _closed_port_url("/b.pth.tar")]
    entry(urls)
    start = time.perf_counter()
    status, _, err = _run_cli(["models", "fetch", NAME], capsys)
    assert time.perf_counter() - start < 10
    _assert_one_line_error(status, err, "models", *urls, "--checkpoint PATH --config cpu-64",
                           f"fomm-lessons models fetch {NAME} --checkpoint PATH")
    assert "Connection refused" in err
    # The file you have, given by path: checked, converted into the cache, never moved.
    mine = published["folder"] / "legacy.pth.tar"
    status, out, err = _run_cli(["models", "fetch", NAME, "--checkpoint", mine], capsys)
    assert status == 0, err
    assert Path(out.strip()) == cache / NAME / "keras" and mine.exists()
    assert f"sha256 {_sha256(mine.read_bytes())}" in err


def test_a_part_this_program_did_not_start_is_moved_aside_not_deleted(published, cache, entry):
    blob = published["blobs"]["zip"]
    part = cache / NAME / f"{FILENAME}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"someone else's bytes")
    with FileServer({"/ckpt": blob}) as server:
        entry([server.url("/ckpt")], sha256=_sha256(blob))
        assert pretrained.fetch(NAME, progress=False).read_bytes() == blob
    assert Path(f"{part}.rejected-1").read_bytes() == b"someone else's bytes"


class _Trickle(http.server.BaseHTTPRequestHandler):
    """Announces 10,000 bytes, then sends one every ``state.pause_s`` seconds (at most 200 in all)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "10000")
        self.end_headers()
        try:
            for _ in range(200):
                self.wfile.write(b"\x80")
                self.wfile.flush()
                time.sleep(self.server.state.pause_s)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.mark.parametrize("bound", ["min-rate", "deadline"])
def test_a_trickling_mirror_is_left_after_a_bounded_time(cache, entry, monkeypatch, bound):
    """A mirror that trickles bytes: too slow for a window of 1 s, or past a deadline of 1.5 s."""
    from fomm_lessons.data import remote_zip

    monkeypatch.setattr(download, "RATE_WINDOW_S", 1.0)
    if bound == "min-rate":
        monkeypatch.setenv(remote_zip.MIN_RATE_ENV, "100")
    else:
        monkeypatch.setenv(remote_zip.MIN_RATE_ENV, "0")
        monkeypatch.setenv(remote_zip.DEADLINE_ENV, "1.5")
    with LocalServer(_Trickle, type("State", (), {"pause_s": 0.1})()) as server:
        url = f"http://127.0.0.1:{server.httpd.server_address[1]}/slow.pth.tar"
        entry([url])
        start = time.perf_counter()
        with pytest.raises(download.DownloadError) as failed:
            pretrained.fetch(NAME, progress=False)
        took = time.perf_counter() - start
    err = str(failed.value)
    assert url in err
    expected = ("below the 100 bytes/s a download must keep (set FOMM_LESSONS_DOWNLOAD_MIN_RATE"
                if bound == "min-rate" else "ran past its time limit (set FOMM_LESSONS_DOWNLOAD_TIMEOUT_S")
    assert expected in err
    assert took < 8


def test_one_rejected_copy_is_kept_however_many_fetches_fail(cache, entry):
    page = b"<!DOCTYPE html><html>not the file</html>"
    with FileServer({"/page": page}) as server:
        entry([server.url("/page")])
        for _ in range(4):
            with pytest.raises(download.DownloadError, match="moved to test-cpk.pth.tar.rejected"):
                pretrained.fetch(NAME, progress=False)
    assert sorted(p.name for p in (cache / NAME).iterdir()) == [f"{FILENAME}.rejected"]


def test_an_api_link_to_a_local_file_is_not_followed(cache, entry, tmp_path):
    secret = tmp_path / "secret.pth.tar"
    secret.write_bytes(b"\x80\x02 a local file, not a download")
    with FileServer({"/api": {"href": secret.as_uri()}}) as server:
        entry([download.Source(server.url("/api"), "yandex")])
        with pytest.raises(download.DownloadError, match="expected an https:// URL"):
            pretrained.fetch(NAME, progress=False)
    assert not (cache / NAME / FILENAME).exists() and not (cache / NAME / f"{FILENAME}.rejected").exists()


def test_a_mirror_is_tried_before_the_published_sources(published, cache, entry, monkeypatch, capsys):
    blob = published["blobs"]["zip"]
    with FileServer({"/fomm/test-cpk.pth.tar": blob}) as server:
        entry([_closed_port_url("/published.pth.tar")], sha256=_sha256(blob))
        monkeypatch.setenv(pretrained.MIRROR_ENV, server.url("/fomm/"))
        assert pretrained.fetch(NAME, progress=False).read_bytes() == blob
        assert server.requests[0][0] == "/fomm/test-cpk.pth.tar"
        monkeypatch.delenv(pretrained.MIRROR_ENV)
        (cache / NAME / FILENAME).unlink()
        status, out, err = _run_cli(["models", "fetch", NAME, "--mirror", server.url("/fomm")], capsys)
    assert status == 0, err
    assert Path(out.strip()) == cache / NAME / "keras"


# ---------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------

def test_models_list_and_info(cache, capsys):
    status, out, _ = _run_cli(["models", "list"], capsys)
    assert status == 0
    rows = {line.split()[0]: line.split() for line in out.strip().splitlines()[1:]}
    assert rows["sample-64"][1:3] == ["shipped", "sample-64"] and "verified" in rows["sample-64"]
    assert rows["vox-256"][1] == "download" and "verified(1)" in rows["vox-256"]
    assert rows["vox-adv-256"][1:4] == ["download", "vox-adv-256", "716.1"] and "verified(2)" in rows["vox-adv-256"]
    status, out, _ = _run_cli(["models", "info", "vox-adv-256"], capsys)
    card = json.loads(out)
    assert status == 0 and card["verified_by"] == 2 and "2 independent sources" in card["note"]
    assert [s["md5"] for s in card["sources"] if s["publisher"].startswith("avatarify")] == [
        "8a45a24037871c045fbb8a6a8aa95ebc"] * 3


def test_convert_takes_a_model_name_and_its_config(published, cache, entry, tmp_path, capsys):
    blob = published["blobs"]["zip"]
    with FileServer({"/ckpt": blob}) as server:
        entry([server.url("/ckpt")], sha256=_sha256(blob))
        status, out, err = _run_cli(["convert", "--checkpoint", NAME, "--out", tmp_path / "out"], capsys)
    assert status == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == [".fomm-lessons-output.json", "discriminator.weights.h5",
                                                    "generator.weights.h5", "kp_detector.weights.h5"]
    status, _, err = _run_cli(["convert", "--checkpoint", "sample-64", "--out", tmp_path / "x"], capsys)
    _assert_one_line_error(status, err, "convert", "sample-64 ships Keras weights")


def test_animate_takes_a_model_name_without_a_config(tmp_path, capsys):
    from fomm_lessons.data.frames import read_video, write_video

    rng = np.random.default_rng(0)
    frames = (rng.random((3, 64, 64, 3)) * 255).astype(np.uint8)
    write_video(tmp_path / "driving", frames, as_folder=True)
    out = tmp_path / "out.gif"
    status, _, err = _run_cli(["animate", "--checkpoint", "sample-64", "--source", tmp_path / "driving" / "0000000.png",
                               "--driving", tmp_path / "driving", "--out", out], capsys)
    assert status == 0, err
    assert read_video(out).shape == (3, 64, 64, 3)


def test_checkpoint_names_and_paths_errors_are_one_line(tmp_path, capsys):
    base = ["reconstruct", "--data", tmp_path, "--out", tmp_path / "out", "--checkpoint"]
    status, _, err = _run_cli(base + ["vox-257"], capsys)
    _assert_one_line_error(status, err, "reconstruct", "'vox-257'", "vox-256")
    status, _, err = _run_cli(base + [tmp_path], capsys)
    _assert_one_line_error(status, err, "reconstruct", "needs its config (--config)")


# ---------------------------------------------------------------------------
# torchvision's VGG19 for the perceptual loss
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg19_file(tmp_path_factory):
    """torchvision's vgg19 state dict as torch writes it (random values, the real names and shapes):

    the 13 convolutions the features use at full size, one unused convolution and
    a small classifier as the real file has them; ~80 MB instead of 548 MB.
    """
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    from test_perceptual import _torchvision_like_state

    state = _torchvision_like_state(seed=4)
    full = {key: torch.from_numpy(value) for key, value in state.items()}
    full["features.34.weight"] = torch.zeros(512, 512, 3, 3)  # block5_conv4, unused
    full["classifier.6.bias"] = torch.zeros(1000)
    path = tmp_path_factory.mktemp("vgg19") / "vgg19.pth"
    torch.save(full, path)
    return state, path.read_bytes()


@pytest.fixture
def vgg19_server(vgg19_file, cache, monkeypatch, tmp_path):
    """The file served at /models/vgg19-PREFIX.pth (its sha256's first 8 hex digits), and the URL patched."""
    from fomm_lessons import perceptual

    state, blob = vgg19_file
    name = f"vgg19-{_sha256(blob)[:8]}.pth"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-torch-hub"))  # nothing in the torch hub cache
    monkeypatch.delenv(perceptual.WEIGHTS_ENV, raising=False)
    with FileServer({f"/models/{name}": blob, "/models/vgg19-00000000.pth": blob}) as server:
        monkeypatch.setattr(pretrained, "TORCHVISION_VGG19_URL", server.url(f"/models/{name}"))
        yield server, name


def test_torchvision_vgg19_is_downloaded_checked_by_its_name_and_converted_once(vgg19_file, vgg19_server, cache,
                                                                                 monkeypatch, capsys):
    import torch

    from fomm_lessons.perceptual import Vgg19Features
    from test_perceptual import _assert_features_equal, _images, _torch_features

    state, blob = vgg19_file
    server, name = vgg19_server
    path = pretrained.vgg19_weights("torchvision", progress=False)
    assert path == str(cache / "vgg19" / name.replace(".pth", ".keras.npz"))
    assert "converting" in capsys.readouterr().err and (cache / "vgg19" / name).read_bytes() == blob
    assert 0.1 < os.path.getsize(path) / len(blob) <= 1  # the 13 convolutions only
    model = Vgg19Features(weights=path)
    assert model.preprocessing == "torch"
    assert model.weights_source.startswith(f"torchvision's ImageNet VGG19 ({name}, sha256 {_sha256(blob)})")
    images = _images(size=32)
    _assert_features_equal(model(images), _torch_features(torch, state, images))
    requests = len(server.requests)
    assert pretrained.vgg19_weights("auto", progress=False) == path and len(server.requests) == requests
    assert "converting" not in capsys.readouterr().err
    assert pretrained.vgg19_weights("random") == "random" and pretrained.vgg19_weights("imagenet") == "imagenet"
    # A file whose sha256 does not start as its name says is refused and set aside.
    monkeypatch.setattr(pretrained, "TORCHVISION_VGG19_URL", server.url("/models/vgg19-00000000.pth"))
    with pytest.raises(download.DownloadError) as refused:
        pretrained.vgg19_weights("torchvision", progress=False)
    message = str(refused.value)
    assert message.startswith("--vgg torchvision: could not fetch torchvision's VGG19 (vgg19-00000000.pth)")
    assert f"sha256 {_sha256(blob)}, expected 00000000..." in message and "--vgg random" in message
    assert (cache / "vgg19" / "vgg19-00000000.pth.rejected").read_bytes() == blob
    assert not (cache / "vgg19" / "vgg19-00000000.keras.npz").exists()


def test_train_says_which_vgg19_it_uses_and_a_failed_download_stops_it_in_one_line(
        vgg19_server, tmp_path, monkeypatch, capsys):
    import yaml

    from fomm_lessons.data.sample import make_sample_dataset
    from fomm_lessons.training import Trainer
    from test_training import PLAIN

    server, name = vgg19_server
    data = tmp_path / "data"
    make_sample_dataset(data, size=64, seed=0)
    config = tmp_path / "plain.yaml"
    config.write_text(yaml.safe_dump({**PLAIN, "dataset_params": {**PLAIN["dataset_params"], "root_dir": str(data)}}))
    monkeypatch.setattr(Trainer, "fit", lambda self, frames, **options: None)  # what is logged before a step
    base = ["train", "--config", config, "--data", data, "--steps", "1"]
    offline = _closed_port_url(f"/models/{name}")
    with monkeypatch.context() as patch:
        patch.setattr(pretrained, "TORCHVISION_VGG19_URL", offline)
        for choice in (["--vgg", "torchvision"], []):  # [] is --vgg auto
            status, _, err = _run_cli(base + ["--out", tmp_path / "offline", *choice], capsys)
            _assert_one_line_error(status, err, "train", f"--vgg {choice[1] if choice else 'auto'}: ", offline,
                                   "Connection refused", "--vgg imagenet", "--vgg random")
            assert not (tmp_path / "offline").exists()  # stopped before the run folder was made
    status, out, err = _run_cli(base + ["--out", tmp_path / "run", "--vgg", "torchvision"], capsys)
    assert status == 0, err
    used = f"torchvision's ImageNet VGG19 ({name}, sha256 "
    assert f"VGG19 weights for the perceptual loss: {used}" in out
    assert f"VGG19 weights {used}" in (tmp_path / "run" / "train.log").read_text()


def test_float16_weight_files_load_as_float32_within_half_precision(tmp_path):
    import keras
    import numpy as np

    from fomm_lessons.checkpoint import build_models
    from fomm_lessons.config import load_config

    keras.utils.set_random_seed(3)
    models = build_models(load_config("cpu-64")["model_params"], discriminator=False)
    full = tmp_path / "kp_detector.weights.h5"
    models.kp_detector.save_weights(full)
    before = [w.numpy() for w in models.kp_detector.weights]
    half = pretrained.write_float16_weights(full, tmp_path / "half.weights.h5")
    assert half.stat().st_size < 0.7 * full.stat().st_size  # small arrays: h5 metadata stays
    for w in models.kp_detector.weights:
        w.assign(np.zeros(w.shape, w.dtype))
    models.kp_detector.load_weights(half)
    for old, new in zip(before, [w.numpy() for w in models.kp_detector.weights]):
        assert new.dtype == np.float32
        np.testing.assert_allclose(new, old.astype(np.float16).astype(np.float32), rtol=0, atol=0)
        assert np.abs(new - old).max() <= 2.0 ** -11 * max(np.abs(old).max(), 1e-6)

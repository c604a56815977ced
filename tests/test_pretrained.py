"""Models by name: the shipped sample-64, and published checkpoints fetched from HTTP servers on 127.0.0.1.

The servers run in threads of this process and serve a checkpoint in the
published structure (kp_detector / generator / discriminator state_dicts,
optimizer entries and the epoch, written by torch in the legacy and the zip
layouts) of the tiny cpu-64 config, under a test entry of the registry.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
    from fomm_lessons.checkpoint import CONSTANT, IGNORED, PARTS, build_models, torch_entries, torch_state_shapes
    from fomm_lessons.config import load_config

    models = build_models(load_config("cpu-64")["model_params"])
    rng = np.random.default_rng(0)
    state = {}
    for part in PARTS:
        model = getattr(models, part)
        shapes = torch_state_shapes(model)
        entries = {}
        for name, layer, field, target in torch_entries(model):
            if target is IGNORED:
                entries[name] = torch.tensor(40, dtype=torch.int64)  # num_batches_tracked
                continue
            if target is CONSTANT:  # the anti-aliasing Gaussian, as the original stores it
                value = np.broadcast_to(layer.kernel_2d, shapes[name]).copy()
            elif field == "running_var":
                value = rng.uniform(0.5, 1.5, shapes[name])
            else:
                value = rng.normal(0.0, 0.05, shapes[name])
            entries[name] = torch.from_numpy(np.asarray(value, np.float32))
        state[part] = entries
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
    assert pretrained.names()[:3] == ["sample-64", "vox-256", "vox-adv-256"]
    sample = pretrained.info("sample-64")
    folder = Path(sample["folder"])
    assert sample["kind"] == "shipped" and sample["verified"] and sample["config"] == "sample-64"
    assert sorted(sample["files"]) == ["generator.weights.h5", "kp_detector.weights.h5"]
    for filename, recorded in sample["files"].items():  # digests against hashlib, independently
        data = (folder / filename).read_bytes()
        assert recorded == {"size": len(data), "sha256": _sha256(data)}
    assert sample["size"] == sum(f["size"] for f in sample["files"].values()) < 5 * 2 ** 20
    assert sample["quality"] == json.loads((folder / "quality.json").read_text())
    assert Path(sample["card"]).is_file() and (folder / "log.csv").is_file()
    for name in ("vox-256", "vox-adv-256"):
        published = pretrained.info(name)
        assert published["kind"] == "download" and published["config"] == name
        assert published["verified"] is False and "unverified" in published["note"]
        urls = [s["url"] for s in published["sources"]]
        assert "lEw8uRm140L_eQ" in urls[0] and len(urls) >= 2  # the authors' own folder first
        assert all(url.startswith("https://") for url in urls)
        assert published["licence"] and published["trained_on"].startswith("VoxCeleb")
    with pytest.raises(ValueError, match="unknown model 'nope'.*sample-64"):
        pretrained.info("nope")


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
        part = cache / NAME / f"{FILENAME}.part"
        changed = bytearray(part.read_bytes())
        changed[cut // 2:cut // 2 + 400] = bytes(400)  # 400 bytes inside the tensor data
        part.write_bytes(bytes(changed))
        path = pretrained.fetch(NAME, progress=False)
    assert path.read_bytes() == blob
    assert server.requests[-1] == ("/ckpt", None)  # from the first byte, not bytes={cut}-


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
    assert rows["vox-256"][1] == "download" and "unverified" in rows["vox-256"]
    status, out, _ = _run_cli(["models", "info", "vox-adv-256"], capsys)
    assert status == 0 and json.loads(out)["sources"][2]["md5"] == "8a45a24037871c045fbb8a6a8aa95ebc"


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

"""One file from a list of mirrors into a cache folder: streamed, resumed, checked, bad copies set aside.

:func:`fetch_file` tries each :class:`Source` in order. A transfer streams to
``TARGET.part`` with a progress bar and, after a dropped connection, resumes
with an HTTP ``Range`` request (:class:`fomm_lessons.data.remote_zip.HttpFile`);
a part left by an earlier run resumes too, when the server reports the same
size and the part still has the size and sha256 it had when the run stopped
(``TARGET.part.json`` records them; a part changed since, or one whose run was
killed before it could record them, starts again). A finished file is checked by its first
bytes, size, sha256 and md5, as far as they are known; one that fails is
renamed to ``TARGET.rejected`` (never used; it replaces an earlier rejected
copy, so one is kept per file) and the next mirror is tried. A download that
runs past :data:`DEADLINE_S` or keeps less than :data:`MIN_RATE` bytes/s over
a minute leaves its mirror (``bounds()``: both can be raised by environment
variables). When every mirror fails, :class:`DownloadError` names each URL
and why.

A mirror that publishes a checksum of its own (``Source.md5``, ``size`` or
``sha256``) serves its own copy, which may be another file than the one the
recorded pair describes (avatarify's 228 MB ``vox-adv-cpk.pth.tar`` is not the
authors' 751 MB one): its copy is checked against its own values only, never
against the pair recorded for the others.
"""

import dataclasses
import hashlib
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["Source", "DownloadError", "fetch_file", "check_file", "check_copy", "file_digest", "move_aside"]

RETRIES = 2  # failures in a row without progress on one URL before the next URL
# Bounds of one file's download over all its mirrors, each raised by an environment variable
# (remote_zip.DEADLINE_ENV, remote_zip.MIN_RATE_ENV): a mirror that trickles bytes is left.
DEADLINE_S = 4 * 3600.0  # 228 MB at 16 kB/s
MIN_RATE = 1024.0  # bytes/s, averaged over RATE_WINDOW_S
RATE_WINDOW_S = 60.0
BACKOFF_S = 0.5  # first wait between retries; doubles
TIMEOUT_S = 30.0
USER_AGENT = "fomm-lessons/0.1 (model download; Python urllib)"


@dataclasses.dataclass(frozen=True)
class Source:
    """One place a file is published: the file itself, or an API that answers with a link to it."""

    url: str
    kind: str = "file"  # "file": the URL serves the file; "yandex": JSON whose "href" serves it
    publisher: str = ""
    md5: str = None  # a checksum this mirror publishes for its copy
    size: int = None  # bytes of this mirror's own copy, when it differs from the recorded file
    sha256: str = None  # of this mirror's own copy, when it differs from the recorded file

    @property
    def own(self):
        """True when this mirror publishes its own checksum: its copy is checked against that alone."""
        return any(value is not None for value in (self.md5, self.size, self.sha256))

    def expected(self, size=None, sha256=None):
        """``(size, sha256, md5)`` this mirror's copy must match: its own, else the recorded pair."""
        return (self.size, self.sha256, self.md5) if self.own else (size, sha256, None)


class DownloadError(OSError):
    """No source gave a good copy; the message names each URL tried and why."""

    untruncated = True  # every URL in the message matters: the command line prints it whole


def file_digest(path, algorithms=("sha256",)):
    """``(size in bytes, {algorithm: hex digest})`` of a file, read in 1 MiB blocks."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    size = 0
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            size += len(block)
            for digest in hashes.values():
                digest.update(block)
    return size, {name: digest.hexdigest() for name, digest in hashes.items()}


def _mismatch(got_size, digests, size=None, sha256=None, md5=None):
    """Why a file of ``got_size`` bytes with ``digests`` is not the expected one; None when it is."""
    if size is not None and got_size != size:
        return f"{got_size} bytes, expected {size}"
    if sha256 is not None and not digests["sha256"].startswith(sha256):  # a shorter one: the prefix
        return f"sha256 {digests['sha256']}, expected {sha256}" + ("..." if len(sha256) < 64 else "")
    if md5 is not None and digests["md5"] != md5:
        return f"md5 {digests['md5']}, expected {md5}"
    return None


def _wrong_kind(path, magic):
    """Why ``path`` does not start as the file should (a web page served instead), or None."""
    with open(path, "rb") as file:
        head = file.read(16)
    if magic and not head.startswith(tuple(magic)):
        return f"not the expected kind of file (it starts with {head[:8]!r})"
    return None


def check_file(path, size=None, sha256=None, md5=None, magic=()):
    """``(problem, sha256)``: why ``path`` is not the expected file (None when it is), and its sha256.

    A ``sha256`` of fewer than 64 hex digits is a prefix (torchvision names its
    files by the first 8). ``magic``: byte strings one of which the file must start with (a web page
    served instead of the file fails here); unknown values are not checked.
    """
    problem = _wrong_kind(path, magic)
    if problem:
        return problem, None
    got_size, digests = file_digest(path, ("sha256", "md5"))
    return _mismatch(got_size, digests, size, sha256, md5), digests["sha256"]


def check_copy(path, size=None, sha256=None, sources=(), magic=()):
    """``(problem, digests, match)`` of a file that may be any accepted copy: read once, compared to each.

    The copies accepted are the recorded ``size`` and ``sha256`` (``match`` None)
    and the own copy of each mirror in ``sources`` that publishes a checksum
    (``match`` that :class:`Source`). ``digests``: {"size", "sha256", "md5"}.
    ``problem`` (None when a copy matches) says why it matches none.
    """
    problem = _wrong_kind(path, magic)
    if problem:
        return problem, None, None
    got_size, digests = file_digest(path, ("sha256", "md5"))
    digests["size"] = got_size
    problems = []
    for source in (None, *[s for s in sources if s.own]):
        wanted = (size, sha256, None) if source is None else source.expected()
        problem = _mismatch(got_size, digests, *wanted)
        if problem is None:
            return None, digests, source
        problems.append(problem if source is None else f"nor {source.publisher or source.url}'s copy: {problem}")
    return "; ".join(problems), digests, None


def move_aside(path, keep_earlier=False):
    """Rename a file that failed its checks to ``PATH.rejected``, in place of an earlier rejected copy
    (one per file, however many fetches fail); returns the new path.

    ``keep_earlier``: a file this program did not write goes to ``PATH.rejected-N``, deleting nothing.
    """
    if not keep_earlier:
        aside = Path(f"{path}.rejected")
        os.replace(path, aside)
        return aside
    number = 1
    while Path(f"{path}.rejected-{number}").exists():
        number += 1
    aside = Path(f"{path}.rejected-{number}")
    os.replace(path, aside)
    return aside


def _read_json(path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None


def _reason(error, url):
    """A few words for why ``url`` failed: "HTTP 404 Not Found", "Connection refused"."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason
    text = " ".join(str(error).split()) or type(error).__name__
    text = text[len(url) + 2:] if text.startswith(f"{url}: ") else text
    text = re.sub(r"^gave up after \d+ retries while [^:]*: ", "", text)  # HttpFile's wording
    text = re.sub(r"^(?:URLError: )?<urlopen error (.*)>$", r"\1", text)
    text = re.sub(r"^\[Errno -?\d+\] ", "", text)
    return re.sub(r" while [a-z ]+$", "", text)


def _check_host(url):
    """Fail at once, without retries, when the host has no address (offline) and no proxy is set."""
    parts = urllib.parse.urlsplit(url)
    if parts.hostname and parts.scheme not in urllib.request.getproxies():
        socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)


def _direct_url(source):
    """The URL that serves the file itself (a "yandex" source asks its API for it first)."""
    _check_host(source.url)
    if source.kind == "file":
        return source.url
    if source.kind != "yandex":
        raise ValueError(f"unknown source kind {source.kind!r}; expected 'file' or 'yandex'")
    request = urllib.request.Request(source.url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        answer = json.loads(response.read(1 << 16))
    if not isinstance(answer, dict) or not answer.get("href"):
        raise ValueError(f"the API answered without a download link: {str(answer)[:100]}")
    return _web_link(str(answer["href"]))


def _web_link(url):
    """``url`` when an API's answer may be followed: https, or http to this machine (the tests' servers)."""
    parts = urllib.parse.urlsplit(url)
    local = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not local:
        raise ValueError(f"the API answered with the link {url[:100]!r}; expected an https:// URL")
    return url


def bounds():
    """``(deadline in seconds, minimum bytes/s)`` of a download: the defaults, or the environment's."""
    from fomm_lessons.data.remote_zip import DEADLINE_ENV, MIN_RATE_ENV

    values = []
    for name, default in ((DEADLINE_ENV, DEADLINE_S), (MIN_RATE_ENV, MIN_RATE)):
        text = os.environ.get(name)
        try:
            value = default if text in (None, "") else float(text)
        except ValueError:
            value = -1.0
        if not value >= 0:
            raise ValueError(f"{name}={text!r}: expected a number >= 0")
        values.append(value)
    return tuple(values)


def _transfer(source, target, expected_size, label, progress, deadline=None):
    """Stream ``source`` to ``target`` through ``target.part``, resuming a part of the same size."""
    from tqdm.auto import tqdm

    from fomm_lessons.data.remote_zip import HttpFile

    url = _direct_url(source)
    _check_host(url)
    http = HttpFile(url, retries=RETRIES, timeout=TIMEOUT_S, backoff=BACKOFF_S, deadline=deadline,
                    min_rate=bounds()[1], rate_window=RATE_WINDOW_S)
    size = http.probe()  # one small request: a dead link fails here, before any byte is written
    if expected_size is not None and size is not None and size != expected_size:
        raise ValueError(f"serves {size} bytes, expected {expected_size}")
    part, record = Path(f"{target}.part"), Path(f"{target}.part.json")
    if part.exists():
        previous = _read_json(record)
        if previous is None:  # not a part this program started: keep it, out of the way
            move_aside(part, keep_earlier=True)
        elif (size is None or previous.get("size") != size or part.stat().st_size > size
              or _part_digest(part) != (previous.get("part_bytes"), previous.get("part_sha256"))):
            part.unlink()  # our own part of another file, changed since it stopped, or unrecorded: start again
        elif part.stat().st_size == size:  # complete, stopped before its rename
            os.replace(part, target)
            record.unlink()
            return
    record.write_text(json.dumps({"size": size, "url": source.url}) + "\n", encoding="utf-8")
    try:
        with tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=label, disable=not progress,
                  leave=False) as bar:
            http.download(str(target), progress=bar)
    except BaseException:  # the part's digest, so that a resume can tell it is what was received
        if part.exists():
            part_bytes, part_sha256 = _part_digest(part)
            record.write_text(json.dumps({"size": size, "url": source.url, "part_bytes": part_bytes,
                                          "part_sha256": part_sha256}) + "\n", encoding="utf-8")
        raise
    record.unlink(missing_ok=True)


def _part_digest(part):
    """``(size, sha256)`` of a partial download."""
    size, digests = file_digest(part)
    return size, digests["sha256"]


def fetch_file(target, sources, size=None, sha256=None, magic=(), progress=True, label=None):
    """Make ``target`` a checked copy of the file the ``sources`` publish; returns its sha256.

    An existing ``target`` that passes the checks is kept (no request is made):
    the recorded ``size`` and ``sha256``, or a mirror's own checksum
    (:func:`check_copy`). Without a recorded ``sha256`` the file is unverified:
    its sha256 is printed so that it can be recorded. Raises
    :class:`DownloadError` when no source gives a good copy; a partial
    download is kept to resume.
    """
    target = Path(target)
    label = label or target.name
    target.parent.mkdir(parents=True, exist_ok=True)
    tried = []
    if target.exists():
        problem, digests, _ = check_copy(target, size, sha256, sources, magic)
        if problem is None:
            return digests["sha256"]
        tried.append(f"{target} ({problem}; moved to {move_aside(target).name})")
    deadline = time.monotonic() + bounds()[0]  # for all the mirrors together
    for source in sources:
        want_size, want_sha256, want_md5 = source.expected(size, sha256)
        try:
            _transfer(source, target, want_size, label, progress, deadline)
        except (OSError, ValueError) as error:  # urllib and HttpFile raise OSErrors; a bad answer ValueError
            tried.append(f"{source.url} ({_reason(error, source.url)})")
            continue
        problem, digest = check_file(target, want_size, want_sha256, want_md5, magic)
        if problem is None:
            if want_sha256 is None:
                checked = f"checked by the md5 {source.publisher or 'its mirror'} publishes" if want_md5 else (
                    "no sha256 is recorded for it")
                print(f"fomm-lessons: {label}: downloaded from {source.url}, {target.stat().st_size} bytes, "
                      f"sha256 {digest} ({checked}: unverified)", file=sys.stderr)
            return digest
        tried.append(f"{source.url} ({problem}; moved to {move_aside(target).name})")
    part = Path(f"{target}.part")
    kept = f" The partial download {part} is kept and resumes next time." if part.exists() else ""
    raise DownloadError(f"could not fetch {label}; tried {'; '.join(tried) or 'no URL'}.{kept}")

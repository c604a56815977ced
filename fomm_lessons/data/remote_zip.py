"""Read single members of a zip on a web server with HTTP range requests (ZIP64 included).

A zip ends with its table of contents (the central directory), so the names, sizes
and offsets of all members cost one small request at the end of the file, and each
member then costs one request for its local header and one for its bytes. Only the
standard library is used. Dropped connections are retried and resumed where they
stopped; a server that ignores ``Range`` is reported with :class:`RangeNotSupported`
so that the caller can fall back to :func:`HttpFile.download` of the whole file.

Retries are bounded three ways, so that no server can keep a fetch going forever (one
that ignores ``Range`` and announces more bytes than it sends would otherwise send the
whole file again and again): :data:`RETRIES` failures in a row that bring no byte
beyond the furthest one reached, :data:`RANGE_FAILURES` failures of one byte range
(or download) in all, and :data:`TOTAL_FAILURES` failures of one file in all.
"""

import dataclasses
import http.client
import os
import re
import struct
import time
import urllib.error
import urllib.request
import zlib

USER_AGENT = "fomm-lessons/0.1 (zip range reader; Python urllib)"
CHUNK_BYTES = 1 << 16
RETRIES = 5  # failures in a row that reach no byte beyond the furthest one before giving up
RANGE_FAILURES = 30  # failures of one byte range (or one download) in all, progress or not
TOTAL_FAILURES = 100  # failures of all the requests of one HttpFile together
RETRY_BACKOFF_S = 1.0  # first wait; doubles on each consecutive failure
TIMEOUT_S = 60.0
DEADLINE_ENV = "FOMM_LESSONS_DOWNLOAD_TIMEOUT_S"  # how long one file's download may take, all mirrors
MIN_RATE_ENV = "FOMM_LESSONS_DOWNLOAD_MIN_RATE"  # bytes/s a download must keep over a minute
LOCAL_EXTRA_GUESS = 64  # bytes of a local header's extra field fetched along with it (ZIP64 needs 20)
# Headers of a redirect worth keeping (Hugging Face names the commit and the file's LFS hash).
REDIRECT_HEADERS = ("X-Repo-Commit", "X-Linked-Size", "X-Linked-Etag", "ETag")

_EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory, 22 bytes
_ZIP64_LOCATOR = struct.Struct("<4sIQI")  # 20 bytes, just before the EOCD
_ZIP64_EOCD = struct.Struct("<4sQHHIIQQQQ")  # 56 bytes (+ extensible data)
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # 46 bytes + name + extra + comment
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes + name + extra
_MAX_COMMENT = 0xFFFF
_ZIP64_EXTRA_ID = 0x0001
_FULL32 = 0xFFFFFFFF


class RemoteZipError(OSError):
    """The remote file could not be read; the message names the URL and the reason."""


class BadMemberError(RemoteZipError):
    """One member is unreadable (CRC, size, method, local header): the other members may be fine."""


class RangeNotSupported(RemoteZipError):
    """The server answered a range request with the whole file (status 200)."""


class _Dropped(Exception):
    """The connection ended before the bytes announced arrived."""


@dataclasses.dataclass(frozen=True)
class ZipMember:
    """One entry of a zip's central directory."""

    name: str
    method: int  # 0 stored, 8 deflate
    flags: int
    crc32: int
    compressed_size: int
    size: int
    header_offset: int  # where the member's local header starts


class _RecordingRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects as urllib does, keeping a few headers of the redirect responses."""

    def __init__(self, store):
        super().__init__()
        self.store = store

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        for name in REDIRECT_HEADERS:
            if headers.get(name):
                self.store[name] = headers[name]
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class HttpFile:
    """Byte ranges of one URL, with retries that resume after a dropped connection."""

    def __init__(self, url, *, retries=None, timeout=None, backoff=None, deadline=None, min_rate=None,
                 rate_window=60.0):
        self.url = url
        # Bounds of a download, so that a server trickling bytes cannot hold it forever: ``deadline``
        # (a time.monotonic() value) and ``min_rate`` bytes/s, averaged over ``rate_window`` seconds.
        self.deadline, self.min_rate, self.rate_window = deadline, min_rate, rate_window
        self.retries = RETRIES if retries is None else retries
        self.timeout = TIMEOUT_S if timeout is None else timeout
        self.backoff = RETRY_BACKOFF_S if backoff is None else backoff
        self.range_failures, self.total_failures = RANGE_FAILURES, TOTAL_FAILURES
        self.failures = 0  # failed requests, all ranges together
        self.redirect_headers = {}
        self._opener = urllib.request.build_opener(_RecordingRedirects(self.redirect_headers))
        self.size = None
        self.supports_range = None
        self.bytes_received = 0  # body bytes read, all requests together

    def _open(self, headers):
        request = urllib.request.Request(self.url, headers={
            "User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers})
        return self._opener.open(request, timeout=self.timeout)

    def _retrying(self, attempt, what, held=lambda: 0):
        """Run ``attempt()`` until it returns; transient failures are retried with backoff.

        ``held()`` is how many bytes of this range are in hand: a failure counts as
        progress only when it leaves more than any earlier attempt did.
        """
        stalled = failures = furthest = 0
        while True:
            try:
                return attempt()
            except urllib.error.HTTPError as error:
                error.close()
                if error.code < 500 and error.code != 429:
                    raise RemoteZipError(
                        f"{self.url}: HTTP {error.code} {error.reason} while {what}") from None
                reason = f"HTTP {error.code} {error.reason}"
            except RemoteZipError:
                raise
            except (OSError, http.client.HTTPException, _Dropped) as error:
                reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
            failures, self.failures = failures + 1, self.failures + 1
            stalled = 0 if held() > furthest else stalled + 1
            furthest = max(furthest, held())
            if self.deadline is not None and time.monotonic() > self.deadline:
                why = f"its time limit ({DEADLINE_ENV} allows more)"
            elif stalled > self.retries:
                why = f"{self.retries} retries"
            elif failures > self.range_failures:
                why = f"{failures} failed requests for this range"
            elif self.failures > self.total_failures:
                why = f"{self.failures} failed requests for this file"
            else:
                time.sleep(self.backoff * 2 ** max(stalled - 1, 0))
                continue
            raise RemoteZipError(f"{self.url}: gave up after {why} while {what}: {reason}")

    def _check_bounds(self, now, window_start, window_bytes, path):
        """Give up (no retry) past the deadline, or when a whole window brought less than ``min_rate``."""
        if self.deadline is not None and now > self.deadline:
            raise RemoteZipError(f"{self.url}: the download to {path} ran past its time limit (set "
                                 f"{DEADLINE_ENV} to allow more seconds)")
        elapsed = now - window_start
        if self.min_rate and elapsed >= self.rate_window and window_bytes < self.min_rate * elapsed:
            raise RemoteZipError(f"{self.url}: {window_bytes / elapsed:.0f} bytes/s over the last {elapsed:.0f} s, "
                                 f"below the {self.min_rate:.0f} bytes/s a download must keep (set "
                                 f"{MIN_RATE_ENV} to allow slower ones)")

    def probe(self):
        """Ask for the first byte: learn the size and whether ``Range`` is honoured."""

        def attempt():
            with self._open({"Range": "bytes=0-0"}) as response:
                if response.status == 206:
                    self.size = _total_from_content_range(response.headers, self.url)
                    self.supports_range = True
                    response.read()
                else:  # 200: the whole file is on its way; hang up without reading it
                    length = response.headers.get("Content-Length")
                    self.size = int(length) if length is not None else None
                    self.supports_range = False
            return self.size

        return self._retrying(attempt, "asking for the file size")

    def read(self, start, length):
        """Return ``length`` bytes from ``start`` (resuming if the connection drops)."""
        if self.supports_range is None:
            self.probe()
        if not self.supports_range:
            raise RangeNotSupported(f"{self.url}: the server ignores HTTP Range requests")
        if start < 0 or length < 0 or (self.size is not None and start + length > self.size):
            raise RemoteZipError(
                f"{self.url}: bytes {start}..{start + length} lie outside the file of {self.size} bytes")
        buffer = bytearray()

        def attempt():
            position, end = start + len(buffer), start + length - 1
            with self._open({"Range": f"bytes={position}-{end}"}) as response:
                if response.status != 206:
                    raise RangeNotSupported(
                        f"{self.url}: expected HTTP 206 for bytes {position}-{end}, got {response.status}")
                served = response.headers.get("Content-Range", "")
                if not served.startswith(f"bytes {position}-"):
                    raise RemoteZipError(
                        f"{self.url}: asked for bytes {position}-{end}, server sent {served!r}")
                while len(buffer) < length:
                    chunk = response.read1(min(CHUNK_BYTES, length - len(buffer)))  # what has arrived
                    if not chunk:
                        raise _Dropped(f"connection closed at byte {start + len(buffer)}")
                    buffer.extend(chunk)
                    self.bytes_received += len(chunk)

        if length:
            self._retrying(attempt, f"reading bytes {start}-{start + length - 1}", lambda: len(buffer))
        return bytes(buffer)

    def download(self, path, progress=None):
        """Download the whole file to ``path`` (via ``path.part``, resumed when possible)."""
        part = f"{path}.part"

        def held():
            return os.path.getsize(part) if os.path.exists(part) else 0

        def attempt():
            have = before = held()
            headers = {"Range": f"bytes={have}-"} if have else {}
            with self._open(headers) as response:
                if response.status == 206:
                    total = _total_from_content_range(response.headers, self.url)
                    if not response.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                        raise RemoteZipError(f"{self.url}: asked for bytes {have}-, server sent "
                                             f"{response.headers.get('Content-Range')!r}")
                else:
                    have = 0  # the server restarted from the first byte
                    length = response.headers.get("Content-Length")
                    total = int(length) if length is not None else None
                if progress is not None:
                    progress.reset(total=total)
                    progress.update(have)
                with open(part, "ab" if have else "wb") as out:
                    window_start, window_bytes = time.monotonic(), 0
                    while True:
                        chunk = response.read1(CHUNK_BYTES)
                        if not chunk:
                            break
                        now, window_bytes = time.monotonic(), window_bytes + len(chunk)
                        self._check_bounds(now, window_start, window_bytes, path)
                        if now - window_start >= self.rate_window:
                            window_start, window_bytes = now, 0
                        out.write(chunk)
                        have += len(chunk)
                        self.bytes_received += len(chunk)
                        if progress is not None:
                            progress.update(len(chunk))
                if total is not None and have != total:
                    if response.status != 206 and have == before:  # no Range, and cut where it was
                        raise RemoteZipError(
                            f"{self.url}: the server ignores Range and ended the whole file after "
                            f"{have} of the {total} bytes it announces, as on the try before: "
                            f"gave up downloading to {path}")
                    raise _Dropped(f"connection closed after {have} of {total} bytes")
            os.replace(part, path)
            return path

        return self._retrying(attempt, f"downloading to {path}", held)


def _total_from_content_range(headers, url):
    match = re.fullmatch(r"bytes \d+-\d+/(\d+)", headers.get("Content-Range", "").strip())
    if match is None:
        raise RemoteZipError(
            f"{url}: expected a Content-Range like 'bytes 0-0/SIZE', got {headers.get('Content-Range')!r}")
    return int(match.group(1))


def find_central_directory(read, size):
    """Return ``(offset, length, count)`` of the central directory (plain or ZIP64 end records)."""
    tail_start = max(0, size - (_EOCD.size + _MAX_COMMENT + _ZIP64_LOCATOR.size))
    tail = read(tail_start, size - tail_start)
    at = len(tail)
    while True:
        at = tail.rfind(b"PK\x05\x06", 0, at)
        if at < 0:
            raise ValueError(f"no end-of-central-directory record in the last {len(tail)} bytes: not a zip")
        if at + _EOCD.size <= len(tail):
            fields = _EOCD.unpack_from(tail, at)
            if at + _EOCD.size + fields[7] == len(tail):  # the comment runs to the end
                break
    _, disk, _, _, count, length, offset, _ = fields
    if disk not in (0, _FULL32 & 0xFFFF):
        raise ValueError(f"multi-disk zips are not supported (this is disk {disk})")
    locator_at = at - _ZIP64_LOCATOR.size
    if locator_at >= 0 and tail[locator_at:locator_at + 4] == b"PK\x06\x07":
        _, _, record_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
        record = read(record_offset, _ZIP64_EOCD.size)
        if record[:4] != b"PK\x06\x06":
            raise ValueError(f"ZIP64 locator points to offset {record_offset}, which holds no ZIP64 record")
        _, _, _, _, _, _, _, count, length, offset = _ZIP64_EOCD.unpack(record)
    if offset + length > size:
        raise ValueError(f"central directory at {offset}+{length} runs past the end of the {size}-byte file")
    return offset, length, count


def parse_central_directory(data):
    """Parse central-directory bytes into :class:`ZipMember` entries (ZIP64 extras applied)."""
    members, at = [], 0
    while at + _CENTRAL.size <= len(data) and data[at:at + 4] == b"PK\x01\x02":
        (_, _, _, flags, method, _, _, crc, compressed, size, name_len, extra_len, comment_len,
         _, _, _, offset) = _CENTRAL.unpack_from(data, at)
        name_bytes = data[at + _CENTRAL.size:at + _CENTRAL.size + name_len]
        name = name_bytes.decode("utf-8" if flags & 0x800 else "cp437")
        extra = data[at + _CENTRAL.size + name_len:at + _CENTRAL.size + name_len + extra_len]
        size, compressed, offset = _apply_zip64_extra(extra, size, compressed, offset)
        members.append(ZipMember(name, method, flags, crc, compressed, size, offset))
        at += _CENTRAL.size + name_len + extra_len + comment_len
    return members


def _apply_zip64_extra(extra, size, compressed, offset):
    """Replace the 0xFFFFFFFF fields by the 64-bit values of the ZIP64 extra field."""
    at = 0
    while at + 4 <= len(extra):
        header_id, length = struct.unpack_from("<HH", extra, at)
        if header_id == _ZIP64_EXTRA_ID:
            values = iter(struct.unpack_from(f"<{length // 8}Q", extra, at + 4))
            if size == _FULL32:
                size = next(values)
            if compressed == _FULL32:
                compressed = next(values)
            if offset == _FULL32:
                offset = next(values)
            break
        at += 4 + length
    return size, compressed, offset


def inflate(member, compressed):
    """Decompress a member's bytes (stored or deflate) and check its size and CRC-32."""
    if member.flags & 0x1:
        raise ValueError(f"{member.name}: encrypted zip members are not supported")
    if member.method == 0:
        data = compressed
    elif member.method == 8:
        inflater = zlib.decompressobj(-15)
        try:
            data = inflater.decompress(compressed) + inflater.flush()
        except zlib.error as error:
            raise ValueError(f"{member.name}: corrupt deflate data ({error})") from None
    else:
        raise ValueError(f"{member.name}: compression method {member.method} is not supported "
                         "(expected 0 stored or 8 deflate)")
    if len(data) != member.size or zlib.crc32(data) != member.crc32:
        raise ValueError(f"{member.name}: got {len(data)} bytes with CRC-32 {zlib.crc32(data):08x}, "
                         f"expected {member.size} bytes with CRC-32 {member.crc32:08x}")
    return data


def oversized(member, limit):
    """Why ``member`` is refused unread (more than ``limit`` bytes, inflated or not), or None."""
    if limit is not None and max(member.size, member.compressed_size) > limit:
        return (f"{member.name}: {member.size} bytes ({member.compressed_size} compressed), more than the "
                f"{limit} a clip may hold: refused before inflating it")
    return None


def inflate_to(member, compressed, file, limit=None):
    """Decompress a member's bytes into ``file`` as they come, never past ``member.size``; check its CRC-32.

    ``limit``: the most bytes a member may hold (:func:`oversized`). Returns the number of bytes written.
    """
    if oversized(member, limit):
        raise ValueError(oversized(member, limit))
    if member.flags & 0x1:
        raise ValueError(f"{member.name}: encrypted zip members are not supported")
    if member.method not in (0, 8):
        raise ValueError(f"{member.name}: compression method {member.method} is not supported "
                         "(expected 0 stored or 8 deflate)")
    inflater = zlib.decompressobj(-15) if member.method == 8 else None
    written, crc, pending = 0, 0, memoryview(compressed)
    while True:
        if inflater is None:
            piece, pending = bytes(pending[:CHUNK_BYTES]), pending[CHUNK_BYTES:]
        else:  # at most one byte past the announced size: a member that inflates further stops there
            try:
                room = min(CHUNK_BYTES, member.size + 1 - written)
                piece = inflater.decompress(pending, room) if pending else inflater.flush()
            except zlib.error as error:
                raise ValueError(f"{member.name}: corrupt deflate data ({error})") from None
            pending = inflater.unconsumed_tail
        if not piece:
            break
        written, crc = written + len(piece), zlib.crc32(piece, crc)
        if written > member.size:
            raise ValueError(f"{member.name}: inflates past the {member.size} bytes its entry announces")
        file.write(piece)
    if written != member.size or crc != member.crc32:
        raise ValueError(f"{member.name}: got {written} bytes with CRC-32 {crc:08x}, "
                         f"expected {member.size} bytes with CRC-32 {member.crc32:08x}")
    return written


class RemoteZip:
    """A zip file on a web server, read member by member with range requests."""

    def __init__(self, url, **http_options):
        self.http = HttpFile(url, **http_options)
        self._members = None

    @property
    def url(self):
        return self.http.url

    def members(self):
        """All entries of the central directory (two or three small requests, then cached)."""
        if self._members is None:
            size = self.http.probe()
            if not self.http.supports_range:
                raise RangeNotSupported(f"{self.url}: the server ignores HTTP Range requests")
            try:
                offset, length, _ = find_central_directory(self.http.read, size)
                self._members = parse_central_directory(self.http.read(offset, length))
            except ValueError as error:
                raise RemoteZipError(f"{self.url}: {error}") from None
        return self._members

    def read(self, member):
        """The uncompressed bytes of one member: local header and data in one request, mostly."""
        try:
            return inflate(member, self._local(member))
        except ValueError as error:
            raise BadMemberError(f"{self.url}: {error}") from None

    def _local(self, member):
        """The compressed bytes of one member, after its local header (one request, mostly)."""
        guess = _LOCAL.size + len(member.name.encode()) + LOCAL_EXTRA_GUESS + member.compressed_size
        first = self.http.read(member.header_offset, min(guess, self.http.size - member.header_offset))
        if first[:4] != b"PK\x03\x04":
            raise BadMemberError(
                f"{self.url}: no local header for {member.name} at offset {member.header_offset}")
        name_len, extra_len = _LOCAL.unpack_from(first)[-2:]
        start = _LOCAL.size + name_len + extra_len  # the data, relative to the local header
        missing = start + member.compressed_size - len(first)
        if missing > 0:  # a longer extra field than guessed: fetch the rest
            first += self.http.read(member.header_offset + len(first), missing)
        return first[start:start + member.compressed_size]

    def copy(self, member, file, limit=None):
        """Inflate one member into ``file`` (:func:`inflate_to`); one larger than ``limit`` is not even fetched."""
        if oversized(member, limit):
            raise BadMemberError(f"{self.url}: {oversized(member, limit)}")
        try:
            return inflate_to(member, self._local(member), file)
        except ValueError as error:
            raise BadMemberError(f"{self.url}: {error}") from None

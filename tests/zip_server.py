"""A tiny HTTP server on 127.0.0.1 for the remote-zip tests: Range, redirects, dropped connections,
a Content-Length that promises more than the body, and a cap on the requests it answers."""

import http.server
import re
import socket
import struct
import threading
import time

ZIP_NAME = "vox2/vox2_test_mp4.zip"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def byte_range(header, size):
    """(first, last) byte of an HTTP ``Range: bytes=...`` header on ``size`` bytes (last < first: none)."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if match.group(1):
        return int(match.group(1)), min(int(match.group(2)), size - 1) if match.group(2) else size - 1
    return max(0, size - int(match.group(2))), size - 1  # a suffix range: the last N bytes


def answer_range(handler, header, size):
    """Starts a 206 answer for ``header`` on ``size`` bytes, or sends 416; whether it is a 206."""
    start, end = byte_range(header, size)
    if start > end:
        handler.send_error(416, "range not satisfiable")
        return False
    handler.send_response(206)
    handler.send_header("Content-Range", f"bytes {start}-{end}/{size}")
    return True


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):
        state = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        if state.max_requests is not None and len(state.requests) > state.max_requests:
            self.send_error(410, "request budget of the test server spent")  # not retried by clients
            return
        if state.redirect and self.path == f"/resolve/main/{ZIP_NAME}":
            self.send_response(302)
            self.send_header("Location", f"/blob/{ZIP_NAME}")
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("X-Linked-Size", str(len(state.blob)))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path != f"/blob/{ZIP_NAME}":
            self.send_error(404, "no such file")
            return
        blob, start, end = state.blob, 0, len(state.blob) - 1
        wanted = self.headers.get("Range")
        if state.ranges and wanted:
            if not answer_range(self, wanted, len(blob)):
                return
            start, end = byte_range(wanted, len(blob))
        else:
            self.send_response(200)
        body = blob[start:end + 1]
        self.send_header("Content-Length", str(len(body) + state.announce_extra))
        self.send_header("Accept-Ranges", "bytes" if state.ranges else "none")
        self.end_headers()
        cut = len(body)
        with state.lock:
            if state.drops and len(body) > state.drop_min_bytes:
                cut = min(cut, state.drops.pop(0))
        with state.lock:  # counted before writing, so a client never sees bytes not yet counted
            state.bytes_sent += cut
        try:
            self.wfile.write(body[:cut])
            self.wfile.flush()
            if cut < len(body) and state.drop_mode == "stall":  # hang until the client times out
                time.sleep(state.stall_s)
            elif cut < len(body) and state.drop_mode == "reset":  # close with a TCP RST
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (BrokenPipeError, ConnectionResetError):  # the client hung up (no-Range probe)
            pass
        self.close_connection = True


class _State:
    def __init__(self, blob, ranges, drops, drop_min_bytes, redirect, drop_mode, announce_extra, max_requests):
        self.blob, self.ranges, self.redirect = blob, ranges, redirect
        self.announce_extra, self.max_requests = announce_extra, max_requests
        self.drops, self.drop_min_bytes, self.drop_mode, self.stall_s = list(drops), drop_min_bytes, drop_mode, 1.0
        self.bytes_sent, self.requests, self.lock = 0, [], threading.Lock()


class LocalServer:
    """A threaded HTTP server on a free port of 127.0.0.1, for ``with`` blocks; ``state`` is the
    handler's ``self.server.state``."""

    def __init__(self, handler, state):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.state = self.state = state
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class ZipServer(LocalServer):
    """Serve ``blob`` as ZIP_NAME; ``drops`` lists byte counts after which successive bodies are cut.

    ``drop_mode``: "close" ends the connection early, "reset" sends a TCP reset, "stall" stops
    sending for ``state.stall_s`` seconds (the client's read times out). ``announce_extra``
    bytes are added to every Content-Length (the body then ends early, every time);
    after ``max_requests`` requests every answer is 410 Gone, so a client that never gives
    up still ends.
    """

    def __init__(self, blob, *, ranges=True, drops=(), drop_min_bytes=0, redirect=True, drop_mode="close",
                 announce_extra=0, max_requests=None):
        super().__init__(_Handler, _State(blob, ranges, drops, drop_min_bytes, redirect, drop_mode,
                                          announce_extra, max_requests))

    @property
    def url(self):
        prefix = "/resolve/main/" if self.state.redirect else "/blob/"
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{prefix}{ZIP_NAME}"

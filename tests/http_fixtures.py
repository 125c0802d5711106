"""A real HTTP file server on 127.0.0.1 for download tests, with faults on demand.

It serves `files` (path -> bytes), honours `Range: bytes=N-`, logs every request, and can be told to
answer 503 a number of times, cut the connection after some bytes, ignore Range, or send slowly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    path: str
    range: str | None
    status: int


@dataclass
class Faults:
    fail_times: int = 0  # answer this many requests with 503 first
    drop_after: int | None = None  # send this many body bytes, then close the connection...
    drop_times: int = 0  # ...on this many requests
    ignore_range: bool = False  # answer 200 with the whole file even when asked for a range
    delay_per_chunk: float = 0.0  # seconds between body chunks (a slow server)
    chunk: int = 64 * 1024


@dataclass
class FileServer:
    files: dict[str, bytes]
    faults: Faults = field(default_factory=Faults)
    log: list[Request] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests_for(self, path: str) -> list[Request]:
        with self.lock:
            return [r for r in self.log if r.path == path]


class _Handler(BaseHTTPRequestHandler):
    server_state: FileServer  # set on a per-server subclass

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        state = self.server_state
        range_header = self.headers.get("Range")
        status, body, start = self._plan(state, range_header)
        with state.lock:
            state.log.append(Request(self.path, range_header, status))
            drop = state.faults.drop_after if status in (200, 206) and state.faults.drop_times > 0 else None
            if drop is not None:
                state.faults.drop_times -= 1
        if body is None:
            self._send_empty(status, state, start)
            return
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            total = len(state.files[self.path])
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        self.end_headers()
        self._send_body(body if drop is None else body[:drop], state.faults)
        self.close_connection = True

    def _plan(self, state: FileServer, range_header: str | None) -> tuple[int, bytes | None, int]:
        """(status, body or None for a bodyless answer, range start)."""
        with state.lock:
            if state.faults.fail_times > 0:
                state.faults.fail_times -= 1
                return 503, None, 0
        data = state.files.get(self.path)
        if data is None:
            return 404, None, 0
        if range_header is None or state.faults.ignore_range:
            return 200, data, 0
        start = int(range_header.removeprefix("bytes=").split("-", 1)[0])
        if start >= len(data):
            return 416, None, start
        return 206, data[start:], start

    def _send_empty(self, status: int, state: FileServer, start: int) -> None:
        self.send_response(status)
        if status == 416:
            self.send_header("Content-Range", f"bytes */{len(state.files[self.path])}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send_body(self, body: bytes, faults: Faults) -> None:
        try:
            for i in range(0, len(body), faults.chunk):
                self.wfile.write(body[i : i + faults.chunk])
                self.wfile.flush()
                if faults.delay_per_chunk:
                    time.sleep(faults.delay_per_chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (e.g. it was killed): nothing left to do


@contextmanager
def serve(files: dict[str, bytes], faults: Faults | None = None) -> Iterator[FileServer]:
    """Run a FileServer on 127.0.0.1 on an ephemeral port for the `with` block."""
    state = FileServer(files=files, faults=faults or Faults())
    handler = type("Handler", (_Handler,), {"server_state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

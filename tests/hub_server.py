"""A local HTTP server speaking the part of the Hugging Face Hub's file API that snapshot_download uses.

`GET /api/models/{repo}/revision/{rev}` answers the commit and the file list (siblings), `GET
/api/models/{repo}/tree/{rev}` the files with their sizes and ids (LFS files with their sha256); `HEAD` and `GET
/{repo}/resolve/{rev}/{file}` answer a file with X-Repo-Commit, ETag and Content-Length, honouring
`Range: bytes=N-` (206). Faults on demand: cut the body of the next `drop_times` GETs of `drop_file`
after `drop_after` bytes (an interrupted download). Bound to 127.0.0.1; every request is logged.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Repo:
    commit: str  # 40 hex digits
    files: dict[str, bytes]
    branches: tuple[str, ...] = ("main",)


@dataclass
class HubServer:
    repos: dict[str, Repo]
    drop_after: int | None = None
    drop_times: int = 0
    drop_file: str = ""  # only GETs of this file are cut
    log: list[tuple[str, str, str | None, int]] = field(default_factory=list)  # (method, path, range, status)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def resolve(self, repo_id: str, revision: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo and (revision == repo.commit or revision in repo.branches):
            return repo
        return None


REVISION = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/?]+)")
TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/?]+)")
LFS_FROM = 100_000  # bytes: larger files are LFS files on the hub (their ETag is the sha256, not the git blob id)


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest() if len(data) >= LFS_FROM else git_blob_id(data)


def tree_entry(path: str, data: bytes) -> dict:
    entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_id(data)}
    if len(data) >= LFS_FROM:
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>[^?]+)")


def _handler(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            with hub.lock:
                hub.log.append((self.command, self.path, self.headers.get("Range"), status))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)

        def _not_found(self) -> None:
            body = b'{"error": "Repository Not Found"}'
            self._send(404, {"Content-Length": str(len(body)), "X-Error-Code": "RepoNotFound"}, body)

        def do_GET(self) -> None:  # noqa: N802
            match = REVISION.match(self.path)
            if match:
                repo = hub.resolve(match["repo"], match["rev"])
                if repo is None:
                    return self._not_found()
                info = {
                    "id": match["repo"],
                    "modelId": match["repo"],
                    "sha": repo.commit,
                    "private": False,
                    "siblings": [{"rfilename": name} for name in sorted(repo.files)],
                }
                body = json.dumps(info).encode()
                return self._send(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body)
            match = TREE.match(self.path)
            if match:
                repo = hub.resolve(match["repo"], match["rev"])
                if repo is None:
                    return self._not_found()
                body = json.dumps([tree_entry(name, data) for name, data in sorted(repo.files.items())]).encode()
                return self._send(200, {"Content-Type": "application/json", "Content-Length": str(len(body))}, body)
            self._file()

        def do_HEAD(self) -> None:  # noqa: N802
            self._file()

        def _file(self) -> None:
            match = RESOLVE.match(self.path)
            repo = hub.resolve(match["repo"], match["rev"]) if match else None
            if repo is None or match["file"] not in repo.files:
                return self._not_found()
            data = repo.files[match["file"]]
            headers = {
                "X-Repo-Commit": repo.commit,
                "ETag": f'"{etag(data)}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            start = 0
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", "") or "")
            if ranged and self.command == "GET":
                start = int(ranged[1])
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            headers["Content-Length"] = str(len(body))
            status = 206 if ranged and self.command == "GET" else 200
            with hub.lock:
                drop = (
                    self.command == "GET"
                    and match["file"] == hub.drop_file
                    and hub.drop_times > 0
                    and hub.drop_after is not None
                )
                if drop:
                    hub.drop_times -= 1
            if not drop:
                return self._send(status, headers, body)
            # An interrupted transfer: promise the whole body, send part of it, close the connection.
            with hub.lock:
                hub.log.append((self.command, self.path, self.headers.get("Range"), -status))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body[: hub.drop_after])
            self.wfile.flush()
            self.close_connection = True

    return Handler


@contextmanager
def serve_hub(repos: dict[str, Repo]) -> Iterator[HubServer]:
    hub = HubServer(repos)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()

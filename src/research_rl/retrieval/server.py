"""The retriever service: FastAPI over one loaded Searcher, speaking the ReSearch and Search-R1 APIs.

ReSearch (FlashRAG's server): POST /search, POST /batch_search, GET /health.
Search-R1: POST /retrieve with {"queries", "topk", "return_scores"} -> {"result": [...]}.

Concurrent requests are coalesced by a micro-batcher into one index search (one encoder forward
pass, one faiss call), which is where the throughput of a CPU or GPU index comes from. Bad requests
get a 4xx with a message; the limits come from `retriever.server` in the config.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictBool, StrictInt, StrictStr

from research_rl.retrieval.searcher import Searcher, load_searcher

DEFAULTS = {
    "max_batch_size": 512,
    "max_query_chars": 2048,
    "max_top_k": 100,
    "max_body_bytes": 1 << 20,
    "batch_wait_ms": 2,
    "micro_batching": True,
    "default_topk": 3,  # Search-R1's default when a request sends no topk
}

PARENT_PID_ENV = "RESEARCH_RL_RETRIEVER_PARENT_PID"
INDEX_LOADS = 0  # times this process loaded an index: /health reports it, so a run can see it loaded once

SearchResult = tuple[list[list[dict]], list[list[float]]]


# ---- request bodies (strict: "5" is not a top_n, 1.5 is not a top_n, 7 is not a query) ----


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class SearchRequest(_Strict):
    query: StrictStr
    top_n: StrictInt = 10
    return_score: StrictBool = False


class BatchSearchRequest(_Strict):
    query: list[StrictStr]
    top_n: StrictInt = 10
    return_score: StrictBool = False


class RetrieveRequest(_Strict):
    queries: list[StrictStr]
    topk: StrictInt | None = None
    return_scores: StrictBool = False


# ---- micro-batching ----


@dataclass
class _Job:
    queries: list[str]
    top_n: int
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Gathers the queries of concurrent requests for up to batch_wait_ms, searches them in one call.

    One worker thread runs the searches, so while one batch is searched the next one gathers. With
    micro_batching off each request is searched alone, one after another, on the same thread.
    """

    def __init__(self, searcher: Searcher, max_batch_size: int, wait_ms: float, enabled: bool = True) -> None:
        self.searcher = searcher
        self.max_batch_size = max_batch_size
        self.wait_seconds = wait_ms / 1000.0
        self.enabled = enabled
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="search")
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        if self.enabled:
            self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def search(self, queries: list[str], top_n: int) -> SearchResult:
        if not queries:
            return [], []
        loop = asyncio.get_running_loop()
        if not self.enabled:
            return await loop.run_in_executor(self._executor, self.searcher.batch_search, queries, top_n)
        assert self._queue is not None, "MicroBatcher.start() was not awaited"
        job = _Job(queries, top_n, loop.create_future())
        await self._queue.put(job)
        return await job.future

    async def _run(self) -> None:
        assert self._queue is not None
        carry: _Job | None = None
        while True:
            jobs = [carry or await self._queue.get()]
            carry = None
            if self.wait_seconds > 0:
                await asyncio.sleep(self.wait_seconds)
            size = len(jobs[0].queries)
            while size < self.max_batch_size and not self._queue.empty():
                job = self._queue.get_nowait()
                if size + len(job.queries) > self.max_batch_size:
                    carry = job  # it opens the next batch
                    break
                jobs.append(job)
                size += len(job.queries)
            await self._execute(jobs)

    async def _execute(self, jobs: list[_Job]) -> None:
        queries = [query for job in jobs for query in job.queries]
        top_n = max(job.top_n for job in jobs)
        loop = asyncio.get_running_loop()
        try:
            docs, scores = await loop.run_in_executor(self._executor, self.searcher.batch_search, queries, top_n)
        except Exception as error:  # every waiting caller learns of it; the worker keeps serving
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        start = 0
        for job in jobs:
            end = start + len(job.queries)
            if not job.future.done():  # a caller that disconnected has cancelled its future
                job.future.set_result(
                    ([d[: job.top_n] for d in docs[start:end]], [s[: job.top_n] for s in scores[start:end]])
                )
            start = end


# ---- body size limit ----


class BodyLimitMiddleware:
    """Answer 413 to a body over max_body_bytes before it is parsed, declared length or streamed."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await self._reject(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                return await self._reject(scope, receive, send)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope: dict, receive: Callable, send: Callable) -> None:
        response = JSONResponse(
            {"detail": f"request body over the limit of {self.max_body_bytes} bytes"}, status_code=413
        )
        await response(scope, receive, send)


# ---- the app ----


def _check_queries(queries: list[str], limits: dict[str, Any]) -> None:
    if len(queries) > limits["max_batch_size"]:
        raise HTTPException(413, f"{len(queries)} queries in one request; the limit is {limits['max_batch_size']}")
    for query in queries:
        if not query.strip():
            raise HTTPException(400, "query content cannot be empty")
        if len(query) > limits["max_query_chars"]:
            raise HTTPException(413, f"a query of {len(query)} characters; the limit is {limits['max_query_chars']}")


def _check_top_k(top_k: int, limits: dict[str, Any]) -> None:
    if top_k < 1:
        raise HTTPException(422, f"top_n/topk must be a positive integer, got {top_k}")
    if top_k > limits["max_top_k"]:
        raise HTTPException(422, f"top_n/topk {top_k} is over the limit of {limits['max_top_k']}")


def freeze_loaded_heap() -> None:
    """Exempt everything loaded so far (model, index, corpus offsets, libraries) from garbage collection.

    A full collection walks every object of the heap: with torch, transformers and the index loaded
    that took ~250 ms in our measurements, stalling whichever batch was being searched. The loaded
    objects live as long as the server, so collecting them is wasted work.
    """
    gc.collect()
    gc.freeze()


def create_app(searcher: Searcher, server_cfg: dict[str, Any], identity: dict[str, Any] | None = None) -> FastAPI:
    """The service over `searcher`; server_cfg is `retriever.server` (missing limits take DEFAULTS).

    identity (index fingerprint and dir, pid, host, Slurm job) is added to /health: a job checks the
    fingerprint before it trusts a shared service with its searches.
    """
    identity = dict(identity or {})
    limits = {**DEFAULTS, **{key: value for key, value in server_cfg.items() if value is not None}}
    batcher = MicroBatcher(
        searcher, limits["max_batch_size"], limits["batch_wait_ms"], enabled=limits["micro_batching"]
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="research-rl retriever", lifespan=lifespan)
    app.state.batcher = batcher

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "healthy",
            "retrievers": {"total": 1, "available": 1},
            "kind": searcher.meta.get("kind"),
            "model": searcher.meta.get("model"),
            "passages": len(searcher),
            "micro_batching": batcher.enabled,
            "pid": os.getpid(),
            "index_loads": INDEX_LOADS,
            **identity,
        }

    @app.post("/search")
    async def search(request: SearchRequest) -> JSONResponse:
        _check_queries([request.query], limits)
        _check_top_k(request.top_n, limits)
        docs, scores = await batcher.search([request.query], request.top_n)
        return JSONResponse([docs[0], scores[0]] if request.return_score else docs[0])

    @app.post("/batch_search")
    async def batch_search(request: BatchSearchRequest) -> JSONResponse:
        _check_queries(request.query, limits)
        _check_top_k(request.top_n, limits)
        docs, scores = await batcher.search(request.query, request.top_n)
        return JSONResponse([docs, scores] if request.return_score else docs)

    @app.post("/retrieve")
    async def retrieve(request: RetrieveRequest) -> JSONResponse:
        top_k = limits["default_topk"] if request.topk is None else request.topk
        _check_queries(request.queries, limits)
        _check_top_k(top_k, limits)
        docs, scores = await batcher.search(request.queries, top_k)
        if not request.return_scores:
            return JSONResponse({"result": docs})
        result = [
            [{"document": doc, "score": score} for doc, score in zip(query_docs, query_scores, strict=True)]
            for query_docs, query_scores in zip(docs, scores, strict=True)
        ]
        return JSONResponse({"result": result})

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=limits["max_body_bytes"])
    return app


# ---- running it ----


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket; port 0 picks a free one. SO_REUSEADDR lets a restart reuse the port."""
    # proto IPPROTO_TCP, not the default 0: asyncio disables Nagle only on sockets that say they are TCP,
    # and with Nagle on, every keep-alive response waited ~40 ms for a delayed ACK.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _AnnouncingServer(uvicorn.Server):
    """uvicorn.Server that calls on_ready once it accepts connections, and on_stop once it has shut down.

    on_stop runs inside uvicorn's shutdown: after it, uvicorn re-raises the SIGTERM it caught, and the
    process ends there, before any `finally` of the caller.
    """

    def __init__(
        self, config: uvicorn.Config, on_ready: Callable[[], None], on_stop: Callable[[], None] | None = None
    ) -> None:
        super().__init__(config)
        self.on_ready = on_ready
        self.on_stop = on_stop

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            self.on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().shutdown(sockets)
        finally:
            if self.on_stop is not None:
                self.on_stop()


def _uvicorn_config(app: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=10)


def app_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """retriever.server plus the default top-k that a Search-R1 request without `topk` gets."""
    return {**cfg["retriever"]["server"], "default_topk": cfg["retriever"]["topk"]}


def service_identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """What /health tells a job about the index served and where the service runs."""
    from research_rl import paths
    from research_rl.retrieval.run_service import index_fingerprint

    index_dir = paths.index_dir(cfg)
    return {
        "fingerprint": index_fingerprint(index_dir),
        "index_dir": str(index_dir),
        "hostname": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": time.time(),
    }


def _write_url_file(path: str, url: str, identity: dict[str, Any]) -> None:
    from research_rl.data.jsonl import write_json

    host, port = url.removeprefix("http://").rsplit(":", 1)
    write_json(path, {"url": url, "host": host.strip("[]"), "port": int(port), "pid": os.getpid(), **identity})


def _remove_url_file(path: str) -> None:
    """Remove the URL file on the way out, unless another service has written its own since."""
    import json

    with contextlib.suppress(OSError, ValueError):
        if json.loads(open(path, encoding="utf-8").read()).get("pid") == os.getpid():
            os.unlink(path)


def serve(
    cfg: dict[str, Any],
    host: str | None = None,
    port: int | None = None,
    url_file: str | None = None,
    advertise_host: str | None = None,
) -> None:
    """Load the index once and serve it until SIGTERM/SIGINT; print the URL on stdout when ready.

    url_file: also write the URL and the index's identity there (atomically) when ready, and remove it
    when stopping: the run's shared service (run_service.py). The URL names advertise_host, else the
    bind address, else (binding 0.0.0.0 or ::) this machine's name, so other nodes can reach it.
    """
    global INDEX_LOADS
    from research_rl.retrieval.run_service import advertised_host

    server_cfg = cfg["retriever"]["server"]
    host = host or server_cfg.get("host", "127.0.0.1")
    port = server_cfg.get("port", 0) if port is None else port
    identity = service_identity(cfg)
    searcher = load_searcher(cfg)
    INDEX_LOADS += 1
    freeze_loaded_heap()
    try:
        sock = bind_socket(host, port)
    except OSError as error:
        raise SystemExit(
            f"retriever: cannot listen on {host}:{port}: {error.strerror or error}; set the bind address in "
            "retriever.service.host (the run's service) or retriever.server.host / --host to one of this "
            "node's addresses (0.0.0.0: all of them)"
        ) from error
    bound_port = sock.getsockname()[1]
    public = advertised_host(host, advertise_host)
    url = f"http://[{public}]:{bound_port}" if ":" in public else f"http://{public}:{bound_port}"

    def on_ready() -> None:
        if url_file:
            _write_url_file(url_file, url, identity)
        print(url, flush=True)

    # uvicorn installs SIGTERM/SIGINT handlers in the main thread: in-flight requests finish, then exit.
    def on_stop() -> None:
        if url_file:
            _remove_url_file(url_file)

    server = _AnnouncingServer(_uvicorn_config(create_app(searcher, app_settings(cfg), identity)), on_ready, on_stop)
    try:
        server.run(sockets=[sock])
    finally:
        on_stop()  # a start-up failure never reaches shutdown


class ServerThread:
    """The service in a background thread of this process (tests, benchmarks): start() -> URL, stop()."""

    def __init__(
        self,
        searcher: Searcher,
        server_cfg: dict[str, Any],
        host: str = "127.0.0.1",
        port: int = 0,
        identity: dict[str, Any] | None = None,
    ):
        self.app = create_app(searcher, server_cfg, identity)
        self.host, self.port = host, port
        self.url = ""
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: _AnnouncingServer | None = None

    def start(self, timeout: float = 30.0) -> str:
        freeze_loaded_heap()
        sock = bind_socket(self.host, self.port)
        self.url, self.port = socket_url(sock), sock.getsockname()[1]
        self._ready.clear()
        self._server = _AnnouncingServer(_uvicorn_config(self.app), self._ready.set)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"the retriever service did not start within {timeout} s")
        return self.url

    def stop(self, timeout: float = 15.0) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
        self._server = self._thread = None

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def _load_config(path: str) -> dict[str, Any]:
    from research_rl.config import load_config

    return load_config(path)


def die_with_parent() -> None:
    """When started by service.start_service: ask Linux to SIGTERM us when that parent dies, even by
    SIGKILL, so a crashed job leaves no orphan server holding the index."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != int(parent):  # the parent died before the request took effect
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the config's retrieval index over HTTP.")
    parser.add_argument("--config", required=True, help="pipeline config file")
    parser.add_argument("--host", default=None, help="bind address; default retriever.server.host")
    parser.add_argument("--port", type=int, default=None, help="port; 0 picks a free one")
    parser.add_argument("--url-file", default=None, help="write the URL and index identity here when ready")
    parser.add_argument("--advertise-host", default=None, help="host name in the URL; default: see serve()")
    args = parser.parse_args(argv)
    die_with_parent()
    # Idle OpenMP threads (torch, faiss) otherwise spin on their cores; on a node shared with other jobs
    # that spinning starves everyone, queries took 5x longer in our measurements. Set before they load.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    serve(
        _load_config(args.config),
        host=args.host,
        port=args.port,
        url_file=args.url_file,
        advertise_host=args.advertise_host,
    )


if __name__ == "__main__":
    sys.exit(main())

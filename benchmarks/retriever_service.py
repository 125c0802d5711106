"""One retriever service per run vs one per process: index loads, memory, and time until a process can search.

Prints figures; it is not a test. Example:
    .venv/bin/python benchmarks/retriever_service.py                    # 2000 passages, 4 processes
    .venv/bin/python benchmarks/retriever_service.py --passages 5000 --processes 8

A synthetic corpus is embedded with the config's encoder (the embedded default: all-MiniLM-L6-v2) into
a flat faiss index. Then, for P "processes" (as a training job with P ranks would hold):
- per process: each starts its own service (retrieval/service.py start_service, what a job does
  without retriever.service), all at once: P index loads;
- per run: one service launched through run_service.ensure (retriever.service.enabled), then each
  process attaches (URL file, /health, fingerprint check): one load.
Reported: services started, their summed resident memory (VmRSS, from /proc), wall time until every
process could search, and the per-process attach time to the running run service.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from research_rl import paths  # noqa: E402
from research_rl.retrieval import index, run_service  # noqa: E402
from research_rl.retrieval.client import http_client_from_config  # noqa: E402
from research_rl.retrieval.service import start_service  # noqa: E402
from research_rl.retrieval.synthetic import write_synthetic_corpus  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def per_process(cfg: dict, processes: int, query: str) -> tuple[float, list[dict]]:
    """P services started at once, one per process; (seconds until all searched, their /health)."""
    healths: list[dict] = []
    errors: list[BaseException] = []
    ready = threading.Barrier(processes + 1)
    done = threading.Event()

    def one() -> None:
        try:
            with start_service(cfg) as url, http_client_from_config(cfg, url) as client:
                client.batch_search([query], 3)
                healths.append(client.health())
                ready.wait()
                done.wait(120)  # keep every service up until all are measured
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
            ready.abort()

    start = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(processes)]
    for thread in threads:
        thread.start()
    try:
        ready.wait(900)
    except threading.BrokenBarrierError:
        raise RuntimeError(f"a per-process service failed: {errors}") from None
    seconds = time.perf_counter() - start
    for health in healths:
        health["rss_mb"] = rss_mb(health["pid"])
    done.set()
    for thread in threads:
        thread.join(60)
    return seconds, healths


def per_run(cfg: dict, processes: int, query: str) -> tuple[float, list[float], dict]:
    """One run service; (seconds until launched + all searched, each process's attach seconds, /health)."""
    start = time.perf_counter()
    record = run_service.ensure(cfg)
    attaches = []
    health: dict = {}
    for _ in range(processes):
        t0 = time.perf_counter()
        attached = run_service.ensure(cfg)  # what retriever_for_job does in each process
        with http_client_from_config(cfg, attached["url"]) as client:
            client.batch_search([query], 3)
            attaches.append(time.perf_counter() - t0)
            health = client.health()
    seconds = time.perf_counter() - start
    health["rss_mb"] = rss_mb(record["pid"])
    return seconds, attaches, health


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--config", default=str(REPO_ROOT / "config" / "config.yaml"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rrl-service-bench-") as tmp:
        cfg = copy.deepcopy(yaml.safe_load(Path(args.config).read_text()))
        cfg["paths"] = {"data": f"{tmp}/data", "results": f"{tmp}/results"}
        cfg["corpus"]["name"] = "synthetic"
        cfg["retriever"]["kind"] = "dense"
        cfg["retriever"]["service"] = {"enabled": True, "launcher": "local", "startup_timeout_seconds": 900}
        people = write_synthetic_corpus(paths.corpus_path(cfg), args.passages, seed=3)
        t0 = time.perf_counter()
        index.run(cfg, "dense")
        print(f"index: {args.passages} passages embedded and indexed in {time.perf_counter() - t0:.1f} s")
        query = f"Who is {people[11]['name']}?"

        seconds, healths = per_process(cfg, args.processes, query)
        pids = {health["pid"] for health in healths}
        rss = sum(health["rss_mb"] for health in healths)
        print(f"\nper process ({args.processes} processes, each its own service, started at once):")
        print(f"  services: {len(pids)}, index loads: {sum(h['index_loads'] for h in healths)}")
        print(f"  resident memory of the services: {rss:.0f} MB in all")
        print(f"  wall time until every process had searched: {seconds:.1f} s")

        try:
            seconds, attaches, health = per_run(cfg, args.processes, query)
            print(f"\nper run ({args.processes} processes, one service, retriever.service.enabled):")
            print(f"  services: 1, index loads: {health['index_loads']}")
            print(f"  resident memory of the service: {health['rss_mb']:.0f} MB")
            print(f"  wall time: launch + every process attached and searched: {seconds:.1f} s")
            attach_ms = sorted(1000 * value for value in attaches)
            print(
                f"  attach to the running service (URL file, /health, fingerprint, 1 search), per process: "
                f"median {attach_ms[len(attach_ms) // 2]:.0f} ms, max {attach_ms[-1]:.0f} ms"
            )
        finally:
            with contextlib.suppress(Exception):
                run_service.stop(cfg)


if __name__ == "__main__":
    main()

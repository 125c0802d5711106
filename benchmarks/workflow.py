"""Workflow-engine overhead on the embedded default (DESIGN.md section 7).

    .venv/bin/python benchmarks/workflow.py            # no-op `snakemake` and `dvc repro` (targets < 5 s each)
    .venv/bin/python benchmarks/workflow.py --full     # also the whole DAG from scratch (target < 15 min)

Works in a temporary copy of the workflow. Without --full, every stage's outputs are first produced by a
stub `research-rl` (writes the declared outputs, so no stage runs for real) and recorded by both engines;
with --full, Snakemake runs the real stages and DVC records their outputs with `dvc commit -f`. Then a
no-op run of each engine is timed (the median of --repeat runs). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
COPY = ["Snakefile", "workflow", "envs", "config", "src", "notebooks", ".dvcignore"]

STUB = """#!{python}
import json, os, sys, time
from pathlib import Path
stage = json.loads(Path(os.environ["RRL_STUB_MAP"]).read_text())["research-rl " + " ".join(sys.argv[1:])]
for out in stage["outs"] + stage["resumable"]:
    path = Path(out)
    if out in stage["dirs"]:
        path.mkdir(parents=True, exist_ok=True)
        (path / "content.txt").write_text(str(time.time_ns()))
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(time.time_ns()))
"""


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed


def prepare(work: Path) -> None:
    for name in COPY:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, work / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            shutil.copy2(source, work / name)


def stub_env(work: Path) -> dict[str, str]:
    sys.path.insert(0, str(REPO / "src"))
    os.chdir(work)
    from research_rl import workflow
    from research_rl.config import load_config

    cfg = load_config("config/config.yaml")
    mapping = {
        s.cmd: {"outs": list(s.outs), "dirs": sorted(s.out_dirs), "resumable": list(s.resumable)}
        for s in workflow.plan(cfg)
    }
    (work / "stub_map.json").write_text(json.dumps(mapping))
    bindir = work / "stub_bin"
    bindir.mkdir()
    (bindir / "research-rl").write_text(STUB.format(python=sys.executable))
    (bindir / "research-rl").chmod(0o755)
    return dict(os.environ, PATH=f"{bindir}:{BIN}:{os.environ['PATH']}", RRL_STUB_MAP=str(work / "stub_map.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="run the real DAG from scratch first (minutes)")
    parser.add_argument("--repeat", type=int, default=3, help="no-op runs per engine (median reported)")
    parser.add_argument("--cores", default="all")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rrl-bench-"))
    prepare(work)
    results: dict[str, object] = {"workdir": str(work), "cpus": os.cpu_count()}
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    snakemake = [str(BIN / "snakemake"), "--cores", args.cores, "--quiet"]
    dvc = str(BIN / "dvc")
    try:
        if args.full:
            results["full_snakemake_s"] = round(sh(snakemake, work, env), 1)
        else:
            env = stub_env(work)
            results["stub_snakemake_s"] = round(sh(snakemake, work, env), 1)
        sys.path.insert(0, str(REPO / "src"))
        os.chdir(work)
        from research_rl import workflow
        from research_rl.config import load_config

        sh([dvc, "init", "--no-scm", "-q"], work, env)
        workflow.write_dvc_yaml(load_config("config/config.yaml"), work / "dvc.yaml")
        results["dvc_commit_s"] = round(sh([dvc, "commit", "-f", "-q"], work, env), 1)
        noop_smk = [sh(snakemake, work, env) for _ in range(args.repeat)]
        noop_dvc = [sh([dvc, "repro", "-q"], work, env) for _ in range(args.repeat)]
        noop_status = [sh([dvc, "status", "-q"], work, env) for _ in range(args.repeat)]
        results.update(
            noop_snakemake_s=round(statistics.median(noop_smk), 2),
            noop_dvc_repro_s=round(statistics.median(noop_dvc), 2),
            noop_dvc_status_s=round(statistics.median(noop_status), 2),
            stages=len(workflow.plan(load_config("config/config.yaml"))),
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

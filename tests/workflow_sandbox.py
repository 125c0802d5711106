"""A temporary copy of the workflow with a stub `research-rl` CLI, shared by the engine tests.

The stub writes each stage's declared outputs (fresh content every run; JSON for `.json` files, so DVC
can read the evaluation metrics) and logs which stage ran, so Snakemake, DVC and Slurm run the whole
DAG in seconds without the stages' heavy dependencies.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from research_rl import workflow as rrl
from research_rl.config import load_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
DVC = str(BIN / "dvc")

# (root, environment with the stub first on PATH, ran) where ran() returns and clears the stub's log.
Sandbox = tuple[Path, dict[str, str], Callable[[], list[str]]]

STUB = """#!{python}
# Stub `research-rl`: writes the declared outputs of the stage whose command this is, logs its name.
import json, os, sys, time
from pathlib import Path
stages = json.loads(Path(os.environ["RRL_STUB_MAP"]).read_text())
cmd = "research-rl " + " ".join(sys.argv[1:])
stage = stages[cmd]
nonce = f"{{stage['name']}} {{time.time_ns()}}"
for out in stage["outs"] + stage["resumable"]:
    path = Path(out)
    if out in stage["dirs"]:
        path.mkdir(parents=True, exist_ok=True)
        (path / "content.txt").write_text(nonce + "\\n")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({{"nonce": nonce}}) if out.endswith(".json") else nonce + "\\n")
with open(os.environ["RRL_STUB_LOG"], "a") as log:
    log.write(stage["name"] + "\\n")
"""

COPY = ["Snakefile", "workflow", "envs", "config", "src", "notebooks", "profiles", ".dvcignore"]


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300) -> str:
    """stdout + stderr of `cmd`; raises with both when it fails and `check` is set."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def edit(path: str | Path, old: str, new: str) -> None:
    text = Path(path).read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {path}"
    Path(path).write_text(text.replace(old, new))


def copy_workflow(root: Path) -> None:
    """The workflow's files (Snakefile, rules, config, sources...) copied into `root`."""
    for name in COPY:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif source.exists():
            shutil.copy2(source, root / name)


def make_sandbox(root: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """Copy the workflow into `root`, shrink its evaluation grid, install the stub CLI and chdir there
    for the test (the plan names the config and source files relative to the working directory)."""
    copy_workflow(root)
    monkeypatch.chdir(root)
    config = "config/config.yaml"
    # A smaller evaluation grid keeps the engines' runs to seconds; the DAG's shape is unchanged.
    edit(config, "    2wikimultihopqa: dev\n    musique: dev\n", "")
    edit(
        config,
        "methods: [zero_shot, naive_rag, iter_retgen, ircot, research_base, research]",
        "methods: [zero_shot, naive_rag, research]",
    )
    stub_map = {
        stage.cmd: {
            "name": stage.name,
            "outs": list(stage.outs),
            "dirs": sorted(stage.out_dirs),
            "resumable": list(stage.resumable),
        }
        for stage in rrl.plan(load_config(config))
    }
    (root / "stub_map.json").write_text(json.dumps(stub_map))
    bindir = root / "stub_bin"
    bindir.mkdir()
    stub = bindir / "research-rl"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    log = root / "ran.log"
    env = dict(
        os.environ,
        PATH=f"{bindir}:{BIN}:{os.environ['PATH']}",
        RRL_STUB_MAP=str(root / "stub_map.json"),
        RRL_STUB_LOG=str(log),
    )

    def ran() -> list[str]:
        names = log.read_text().split() if log.exists() else []
        log.unlink(missing_ok=True)
        return names

    return root, env, ran

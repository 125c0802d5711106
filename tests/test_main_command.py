"""After the main command the git tree is clean, DVC is up to date and `dvc push` works.

The main command (`bash scripts/run.sh` = set-up + scripts/pipeline.sh) runs here on the stub sandbox of
workflow_sandbox, inside a git repository that holds the project's .gitignore and .dvc/config: Snakemake
builds every stage, DVC records them. A run's outputs differ across machines (README, "What differs across
machines"), so none of them may be a tracked file; the reference outputs live in results/reference/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from workflow_sandbox import DVC, REPO, Sandbox, make_sandbox, run

from research_rl import workflow as rrl
from research_rl.config import load_config

TIMEOUT = 300
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "DVC_NO_ANALYTICS": "1",
}


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Sandbox:
    return make_sandbox(tmp_path, monkeypatch)


def checkout(root: Path, env: dict[str, str]) -> None:
    """The sandbox as a clone of the project: its ignore rules, DVC config, scripts and reference results."""
    shutil.copy2(REPO / ".gitignore", root / ".gitignore")
    shutil.copytree(REPO / "scripts", root / "scripts")
    shutil.copytree(REPO / "results" / "reference", root / "results" / "reference")
    run(["git", "init", "-q"], root, env=env)
    run([DVC, "init", "-q"], root, env=env)
    shutil.copy2(REPO / ".dvc" / "config", root / ".dvc" / "config")
    rrl.write_dvc_yaml(load_config("config/config.yaml"), "dvc.yaml")
    # The stub's own files are test machinery, not part of the project.
    (root / ".git" / "info" / "exclude").write_text("stub_bin/\nstub_map.json\nran.log\n")
    run(["git", "add", "-A"], root, env=env)
    run(["git", "commit", "-q", "-m", "clone"], root, env=env)


def test_main_command_leaves_a_clean_tree_and_an_up_to_date_dvc(sandbox):
    root, env, ran = sandbox
    env = dict(env, **GIT_IDENTITY)
    checkout(root, env)
    tracked_before = run(["git", "ls-files"], root, env=env).split()
    assert not any(p.startswith("results/tables") for p in tracked_before)

    out = run(["bash", "scripts/pipeline.sh"], root, env=env, timeout=TIMEOUT)
    assert sorted(ran()) == sorted(stage.name for stage in rrl.plan(load_config("config/config.yaml")))
    assert (root / "results" / "tables" / "content.txt").is_file(), "the run writes its own tables"
    assert "up to date" in out, out
    assert run(["git", "status", "--porcelain"], root, env=env) == "", "the main command must not dirty the tree"
    assert "up to date" in run([DVC, "status"], root, env=env, timeout=TIMEOUT)

    run([DVC, "push", "-q"], root, env=env, timeout=TIMEOUT)
    pushed = [p for p in (root / "dvc-storage").rglob("*") if p.is_file()]
    assert len(pushed) >= len(rrl.plan(load_config("config/config.yaml"))), "every stage's outputs reach the remote"
    assert run(["git", "status", "--porcelain"], root, env=env) == ""

    # Again: nothing to build, nothing to record, still clean.
    run(["bash", "scripts/pipeline.sh"], root, env=env, timeout=TIMEOUT)
    assert ran() == []
    assert run(["git", "status", "--porcelain"], root, env=env) == ""


def test_a_dry_run_records_nothing(sandbox):
    root, env, ran = sandbox
    env = dict(env, **GIT_IDENTITY)
    checkout(root, env)
    run(["bash", "scripts/pipeline.sh", "-n"], root, env=env, timeout=TIMEOUT)
    assert ran() == []
    assert not (root / "dvc.lock").exists()

"""A fresh clone can `dvc pull` every artifact from a DVC remote and is then up to date.

On the stub sandbox of workflow_sandbox: `dvc repro` in a git repository, `dvc push` to a local
directory remote, commit (dvc.yaml, dvc.lock, .dvc/config, code), `git clone`, `dvc pull` in the
clone. The clone must then hold the same outputs (metrics, checkpoints, tables and figures, all from the
remote), `dvc status` must be clean and `dvc repro` must run no
stage: what DESIGN.md section 7 promises a collaborator who clones the repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from workflow_sandbox import DVC, Sandbox, make_sandbox, run

from research_rl import workflow as rrl
from research_rl.config import load_config

TIMEOUT = 120  # seconds per command; the whole test takes a few seconds more than its dvc calls
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}
# The stub's own files are test machinery, not part of the project a collaborator clones.
STUB_FILES = "stub_bin/\nstub_map.json\nran.log\n"


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Sandbox:
    return make_sandbox(tmp_path, monkeypatch)


def artifacts(root: Path) -> dict[str, bytes]:
    """Every file under data/ and results/ (the pipeline's outputs), by path relative to `root`."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for top in ("data", "results")
        for path in sorted((root / top).rglob("*"))
        if path.is_file() and path.name != ".gitignore"
    }


def publish(root: Path, env: dict[str, str], remote: Path) -> None:
    """Run the pipeline with DVC in a new git repository, push its artifacts, commit the rest."""
    git, dvc = ["git", "-C", str(root)], [DVC, "--cd", str(root)]
    run([*git, "init", "-q"], root, env=env)
    run([*dvc, "init", "-q"], root, env=env)
    rrl.write_dvc_yaml(load_config("config/config.yaml"), "dvc.yaml")
    run([*dvc, "repro", "-q"], root, env=env, timeout=TIMEOUT)
    run([*dvc, "remote", "add", "-d", "local", str(remote)], root, env=env)
    run([*dvc, "push", "-q"], root, env=env, timeout=TIMEOUT)
    with open(root / ".gitignore", "a") as handle:
        handle.write(STUB_FILES)
    run([*git, "add", "-A"], root, env=env)
    run([*git, "commit", "-q", "-m", "pipeline run"], root, env=env)


def test_fresh_clone_pulls_and_is_up_to_date(sandbox, tmp_path_factory):
    root, env, ran = sandbox
    env = dict(env, DVC_NO_ANALYTICS="1", **GIT_IDENTITY)
    remote = tmp_path_factory.mktemp("remote")
    publish(root, env, remote)
    assert sorted(ran()) == sorted(stage.name for stage in rrl.plan(load_config("config/config.yaml")))
    committed = run(["git", "ls-files"], root, env=env).split()
    assert {"dvc.yaml", "dvc.lock", ".dvc/config"} <= set(committed)
    in_git = [p for p in committed if p.startswith(("data/", "results/")) and not p.endswith(".gitignore")]
    assert in_git == [], f"a run's outputs, tables included, reach the clone through DVC, not git: {in_git}"

    clone = tmp_path_factory.mktemp("clone") / "repo"
    run(["git", "clone", "-q", str(root), str(clone)], clone.parent, env=env)
    run([DVC, "pull", "-q"], clone, env=env, timeout=TIMEOUT)
    expected = artifacts(root)
    assert any(path.startswith("results/tables/") for path in expected)
    assert any(path.endswith("/metrics.json") for path in expected)
    assert artifacts(clone) == expected

    assert "up to date" in run([DVC, "status"], clone, env=env, timeout=TIMEOUT)
    run([DVC, "repro", "-q"], clone, env=env, timeout=TIMEOUT)
    assert ran() == [], "dvc repro in a freshly pulled clone must run no stage"

    shown = json.loads(run([DVC, "metrics", "show", "--json"], clone, env=env, timeout=TIMEOUT))
    listed = {path: value.get("data") for path, value in shown[""]["data"].items()}
    declared = {path for path in expected if path.startswith("results/eval/") and path.endswith("/metrics.json")}
    assert listed == {path: json.loads(expected[path]) for path in declared}, "dvc metrics show must read them all"

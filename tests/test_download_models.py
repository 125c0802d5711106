"""download_models: huggingface_hub.snapshot_download against a local server speaking the hub's file API.

The stage fetches every hub model of the config at its pinned revision into paths.models, resumes interrupted
files (Range requests), writes a manifest (repo -> commit), and points the cache's refs/main at the pinned
commit so that later jobs load the model offline by its hub name. The paper plan runs it upstream of
build_index (E5) and of the Qwen jobs; the embedded default, whose model is built locally, has no such stage.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from hub_server import Repo, serve_hub
from typer.testing import CliRunner
from workflow_sandbox import REPO

from research_rl import workflow as rrl
from research_rl.cli import app
from research_rl.config import load_config
from research_rl.data import models

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OLD = "fedcba9876543210fedcba9876543210fedcba98"
WEIGHTS = os.urandom(3_000_000)
FILES = {"config.json": b'{"hidden_size": 8}', "model.safetensors": WEIGHTS, "sub/tokenizer.json": b"{}"}


def cfg_for(cache: Path, url: str, revision: str | None = COMMIT) -> dict:
    entry = {"name": "q", "path": "Qwen/Tiny", "apply_chat": False, "template": "re_search_template", "size": "7b"}
    if revision:
        entry["revision"] = revision
    return {
        "paths": {"models": str(cache), "hub_endpoint": url},
        "models": [entry],
        "retriever": {"kind": "dense", "dense": {"model": "intfloat/tiny-e5", "revision": "main"}},
    }


@pytest.fixture
def hub():
    repos = {
        # main moved on after the commit the config pins: the download must take the pinned one
        "Qwen/Tiny": Repo(COMMIT, FILES, branches=()),
        "intfloat/tiny-e5": Repo(OLD, {"config.json": b"{}", "model.safetensors": b"e5" * 1000}),
    }
    with serve_hub(repos) as server:
        yield server


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    # huggingface_hub writes (and so can resume from) whole 10 MB chunks; small ones let a 3 MB file resume.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)


def snapshot_file(cache: Path, repo_id: str, commit: str, name: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / commit / name


def test_snapshot_pinned_resumed_and_readable_offline(hub, tmp_path):
    cache = tmp_path / "models"
    hub.drop_after, hub.drop_times, hub.drop_file = 1_000_000, 1, "model.safetensors"
    commits = models.run(cfg_for(cache, hub.url))
    assert commits == {"Qwen/Tiny": COMMIT, "intfloat/tiny-e5": OLD}
    cfg = cfg_for(cache, hub.url)
    assert json.loads(models.manifest_path(cfg, "Qwen/Tiny").read_text()) == {
        "repo": "Qwen/Tiny",
        "revision": COMMIT,
        "commit": COMMIT,
    }
    assert json.loads(models.manifest_path(cfg, "intfloat/tiny-e5").read_text())["commit"] == OLD
    for name, data in FILES.items():
        assert snapshot_file(cache, "Qwen/Tiny", COMMIT, name).read_bytes() == data
    # The cut transfer went on from where it stopped, not from byte 0.
    resumed = [r for m, p, r, s in hub.log if m == "GET" and p.endswith("/model.safetensors") and s == 206]
    assert resumed and int(re.fullmatch(r"bytes=(\d+)-", resumed[0])[1]) > 0
    # Offline, by hub name and no revision, the pinned snapshot is what loads (refs/main points at it).
    from huggingface_hub import hf_hub_download

    path = hf_hub_download("Qwen/Tiny", "config.json", cache_dir=str(cache), local_files_only=True)
    assert Path(path).read_bytes() == FILES["config.json"] and COMMIT in path


def test_a_failed_run_resumes_file_by_file(hub, tmp_path):
    """A run that dies on one file keeps the complete ones: the next run fetches only what is missing.

    Within a file, huggingface_hub 2.4 resumes only inside one process (http_get's retries, above): each process
    writes to its own `<etag>.<random>.incomplete` (huggingface_hub PR 4228), so a rerun starts that file at
    byte 0."""
    cache = tmp_path / "models"
    hub.drop_after, hub.drop_times, hub.drop_file = 0, 100, "model.safetensors"  # the big file never arrives
    with pytest.raises(Exception, match="model.safetensors|peer closed"):
        models.run(cfg_for(cache, hub.url))
    assert not models.manifest_path(cfg_for(cache, hub.url), "Qwen/Tiny").exists()
    assert snapshot_file(cache, "Qwen/Tiny", COMMIT, "config.json").read_bytes() == FILES["config.json"]
    hub.drop_times = 0
    hub.log.clear()
    models.run(cfg_for(cache, hub.url))
    fetched = sorted(p.rsplit(COMMIT + "/", 1)[1] for m, p, *_ in hub.log if m == "GET" and "Tiny/resolve/" in p)
    assert fetched == ["model.safetensors"]
    assert snapshot_file(cache, "Qwen/Tiny", COMMIT, "model.safetensors").read_bytes() == WEIGHTS
    # A third run downloads nothing.
    hub.log.clear()
    models.run(cfg_for(cache, hub.url))
    assert not [p for m, p, *_ in hub.log if m == "GET" and "/resolve/" in p]


def test_unknown_revision_fails_naming_the_repo(hub, tmp_path):
    with pytest.raises(Exception, match="Qwen/Tiny"):
        models.run(cfg_for(tmp_path / "models", hub.url, revision="no-such-branch"))
    assert not models.manifest_path(cfg_for(tmp_path / "models", hub.url), "Qwen/Tiny").exists()


def test_cli_prints_commits(hub, tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(REPO)
    raw = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    raw["paths"].update(models=str(tmp_path / "models"), hub_endpoint=hub.url)
    raw["models"] = [{**raw["models"][0], "path": "Qwen/Tiny", "revision": COMMIT}]
    raw["retriever"]["dense"].update(model="intfloat/tiny-e5", revision="main")
    raw["evaluation"]["baseline_models"] = []
    config = tmp_path / "paper_tiny.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = CliRunner().invoke(app, ["download-models", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"Qwen/Tiny: {COMMIT}" in result.output and f"intfloat/tiny-e5: {OLD}" in result.output


def test_paper_plan_downloads_before_index_and_training(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "config" / "paper.yaml")
    stages = rrl.plan(cfg)
    downloads = {s.wildcards["repo"]: s.outs[0] for s in stages if s.rule == "download_models"}
    assert set(downloads) == {
        "Qwen--Qwen2.5-7B",
        "Qwen--Qwen2.5-7B-Instruct",
        "Qwen--Qwen2.5-32B",
        "Qwen--Qwen2.5-32B-Instruct",
        "intfloat--e5-base-v2",
    }
    assert downloads["intfloat--e5-base-v2"] == str(Path("models") / "manifests" / "intfloat--e5-base-v2.json")
    # The encoder is read by the embedding jobs (build_index only reads their shards).
    assert downloads["intfloat--e5-base-v2"] in rrl.find_stage(cfg, "embed_shard", {"shard": "00000"}).deps
    for model in ("Qwen2.5-7B", "Qwen2.5-32B-Instruct"):
        manifest = downloads["Qwen--" + model]
        assert manifest in rrl.find_stage(cfg, "prepare_train", {"model": model}).deps
        assert manifest in rrl.find_stage(cfg, "train_grpo", {"model": model}).deps
    baseline = {"model": "Qwen2.5-7B-Instruct", "benchmark": "bamboogle", "method": "zero_shot"}
    assert downloads["Qwen--Qwen2.5-7B-Instruct"] in rrl.find_stage(cfg, "evaluate", baseline).deps
    # A new encoder revision reruns its download and the index, not the Qwen downloads or zero-shot baselines.
    affected = rrl.affected_by_param(cfg, "retriever.dense.revision")
    assert "download_models--intfloat--e5-base-v2" in affected and "build_index" in affected
    assert not any(name.startswith("download_models--Qwen") or name.endswith("zero_shot") for name in affected)


def test_default_plan_has_no_download(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "config" / "config.yaml")
    assert "download_models" not in {s.rule for s in rrl.plan(cfg)}
    assert models.run(cfg) == {}

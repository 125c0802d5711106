"""download_models: revision-pinned, resumable snapshots of every hub model the config names.

Policy models (`models:` entries whose path is not a local directory) and the dense retriever's encoder go into
the Hugging Face cache at `paths.models` through huggingface_hub.snapshot_download (the field's engine: it
resumes partial files with Range requests and skips complete ones). Later jobs read that cache offline: the CLI
points HF_HUB_CACHE at it and keeps HF_HUB_OFFLINE=1, and this stage writes the cache's `refs/main` of each repo
to the pinned commit, so `from_pretrained("Qwen/Qwen2.5-7B")` offline loads exactly the revision of the config.
One stage per repo; its manifest (repo, revision, commit) is written last, atomically: it is the stage's output
and the dep of the stages that read that model (so a new E5 revision reruns the index, not the Qwen baselines).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from research_rl.atomic import atomic_write_text

log = logging.getLogger(__name__)


def is_hub_id(path: str) -> bool:
    """A hub repo id (owner/name) rather than a local directory."""
    return not Path(path).exists() and path.count("/") == 1 and not path.startswith((".", "/"))


def hub_models(cfg: dict[str, Any]) -> dict[str, str | None]:
    """repo id -> revision (None: the branch main) of every hub model the config names."""
    wanted: dict[str, str | None] = {}
    for entry in cfg["models"]:
        if is_hub_id(entry["path"]):
            wanted[entry["path"]] = entry.get("revision")
    dense = cfg.get("retriever", {}).get("dense", {})
    if cfg.get("retriever", {}).get("kind") == "dense" and is_hub_id(dense.get("model", "")):
        wanted[dense["model"]] = dense.get("revision")
    return wanted


def models_cache(cfg: dict[str, Any]) -> Path | None:
    """The cache download_models fills (paths.models), or None when the config downloads no model."""
    models = cfg["paths"].get("models")
    return Path(models) if models and hub_models(cfg) else None


def repo_key(repo_id: str) -> str:
    """A file- and wildcard-safe name of a repo id (the hub cache's own spelling: owner--name)."""
    return repo_id.replace("/", "--")


def repo_of_key(cfg: dict[str, Any], key: str) -> str:
    for repo_id in hub_models(cfg):
        if repo_key(repo_id) == key:
            return repo_id
    raise KeyError(f"no hub model {key!r} in the config (known: {sorted(map(repo_key, hub_models(cfg)))})")


def manifest_path(cfg: dict[str, Any], repo_id: str) -> Path:
    """The stage's output for one repo: {"repo", "revision", "commit"}, written last (the later stages' dep)."""
    cache = models_cache(cfg)
    if cache is None:
        raise ValueError("paths.models is not set or the config names no hub model: nothing to download")
    return cache / "manifests" / f"{repo_key(repo_id)}.json"


def pin_main(cache: Path, repo_id: str, commit: str) -> None:
    """Point the cache's refs/main of a model repo at `commit` (the cache layout of huggingface_hub:
    models--owner--name/refs/main holds a commit hash), so offline loads without a revision get the pinned one."""
    refs = cache / ("models--" + repo_key(repo_id)) / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    atomic_write_text(refs / "main", commit)


def run(cfg: dict[str, Any], repo_id: str | None = None) -> dict[str, str]:
    """Snapshot one hub model of the config (or all of them); returns repo id -> commit."""
    from huggingface_hub import constants, snapshot_download

    cache = models_cache(cfg)
    if cache is None:
        log.info("download_models: no hub model to download (paths.models unset or every model is local)")
        return {}
    wanted = hub_models(cfg)
    if repo_id is not None:
        if repo_id not in wanted:
            raise KeyError(f"download_models: {repo_id!r} is not a hub model of the config (known: {sorted(wanted)})")
        wanted = {repo_id: wanted[repo_id]}
    cache.mkdir(parents=True, exist_ok=True)
    endpoint = cfg["paths"].get("hub_endpoint")
    commits = {}
    # The one stage that goes online: every other stage reads this cache with HF_HUB_OFFLINE=1 (set by the CLI).
    offline, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, False
    try:
        for repo, revision in wanted.items():
            log.info("download_models: %s@%s into %s", repo, revision or "main", cache)
            snapshot = Path(snapshot_download(repo, revision=revision, cache_dir=str(cache), endpoint=endpoint))
            commits[repo] = snapshot.name  # snapshots/<commit>
            pin_main(cache, repo, snapshot.name)
            record = {"repo": repo, "revision": revision or "main", "commit": snapshot.name}
            atomic_write_text(manifest_path(cfg, repo), json.dumps(record, indent=2) + "\n")
    finally:
        constants.HF_HUB_OFFLINE = offline
    return commits

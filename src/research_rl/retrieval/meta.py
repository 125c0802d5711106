"""meta.json: what an index was built from, and the check that refuses a stale or foreign index.

Written last by a build, so its presence also means the index is complete.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from research_rl.data.jsonl import write_json

META_NAME = "meta.json"
BM25_MODEL = "bm25"


class IndexMismatchError(RuntimeError):
    """The index on disk was built from another corpus, model or retriever kind than the config names."""


def make_meta(
    *, kind: str, model: str, dimension: int | None, count: int, corpus_sha256: str, index_type: str, **extra: Any
) -> dict[str, Any]:
    return {
        "kind": kind,
        "model": model,
        "dimension": dimension,
        "count": count,
        "corpus_sha256": corpus_sha256,
        "index_type": index_type,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }


def write_meta(index_dir: Path, meta: dict[str, Any]) -> None:
    write_json(index_dir / META_NAME, meta)


def read_meta(index_dir: Path) -> dict[str, Any]:
    path = index_dir / META_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no complete index at {index_dir} ({META_NAME} missing): run build-index first")
    return json.loads(path.read_text(encoding="utf-8"))


def expected_model(cfg: dict[str, Any], kind: str) -> str:
    return cfg["retriever"]["dense"]["model"] if kind == "dense" else BM25_MODEL


def check_meta(meta: dict[str, Any], cfg: dict[str, Any], kind: str, corpus_sha256: str, count: int) -> None:
    """Raise IndexMismatchError naming the index's value and the config's value of the first mismatch."""
    checks = [
        ("kind", meta.get("kind"), kind),
        ("model", meta.get("model"), expected_model(cfg, kind)),
        ("corpus sha256", meta.get("corpus_sha256"), corpus_sha256),
        ("passage count", meta.get("count"), count),
    ]
    for what, built, wanted in checks:
        if built != wanted:
            raise IndexMismatchError(
                f"the index was built with {what} {built!r} but the config names {what} {wanted!r}; "
                "rebuild it (research-rl build-index) or point the config at the right corpus/model"
            )

"""How the corpus splits into embedding shards, known before the corpus exists (the DAG is planned from it).

Shard k holds corpus rows [k*shard_size, (k+1)*shard_size). The plan (research_rl.workflow) takes the
number of shards from the passage count the config declares (`corpus.num_passages`, e.g. 21,015,324
for wiki-18) or, for the embedded default, from the toy world its settings generate.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

DEFAULT_SHARD_SIZE = 1024


def shard_stem(number: int | str) -> str:
    """`shard-00007` for shard 7; a string passes through (the Snakemake rule's `{shard}` wildcard)."""
    return f"shard-{number:05d}" if isinstance(number, int) else f"shard-{number}"


def shard_files(shard_dir: Path, number: int | str) -> tuple[Path, Path]:
    """(the vectors, `.npy`; what they were made from and their rows, `.json`, written last)."""
    stem = shard_stem(number)
    return shard_dir / f"{stem}.npy", shard_dir / f"{stem}.json"


def shard_size(cfg: dict[str, Any]) -> int:
    return cfg["retriever"]["dense"].get("shard_size") or DEFAULT_SHARD_SIZE


def shard_count(count: int, size: int) -> int:
    return max(1, math.ceil(count / size))


def shard_rows(number: int, size: int, count: int) -> range:
    return range(number * size, min(count, (number + 1) * size))


def declared_passages(cfg: dict[str, Any]) -> int | None:
    """corpus.num_passages, checked against the corpus by embed-shard and build-index."""
    value = cfg["corpus"].get("num_passages")
    return None if value is None else int(value)

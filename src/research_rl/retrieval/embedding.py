"""Embedding the corpus in shards: the embed_shard stage (one DAG job per shard) and its resumable loop.

Shard k holds corpus rows [k*shard_size, (k+1)*shard_size) as `<data>/index/dense_shards/shard-0000k.npy`
(float32 unit vectors, row i of the array is corpus row start+i) plus `shard-0000k.json`: its row range
and what it was embedded from (model, prefixes, max length, corpus sha256), written last, so a shard
without it is incomplete. Kept apart from dense.py so that an edit of the index-building code does not
rerun the embedding jobs (each stage's code deps are its module's imports).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from research_rl import paths
from research_rl.atomic import atomic_output
from research_rl.data.jsonl import write_json
from research_rl.retrieval.corpus import Corpus
from research_rl.retrieval.encoder import Encoder, load_encoder
from research_rl.retrieval.sharding import declared_passages, shard_count, shard_files, shard_rows, shard_size


def shard_path(shard_dir: Path, number: int) -> Path:
    return shard_files(shard_dir, number)[0]


def shard_info_path(shard_dir: Path, number: int) -> Path:
    return shard_files(shard_dir, number)[1]


def save_array_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def shard_manifest(dense_cfg: dict[str, Any], corpus_sha256: str) -> dict[str, Any]:
    """What a shard's vectors depend on besides its rows; a shard made from other values is stale."""
    return {
        "model": dense_cfg["model"],
        "passage_prefix": dense_cfg.get("passage_prefix", ""),
        "max_length": dense_cfg.get("max_length", 256),
        "corpus_sha256": corpus_sha256,
    }


def embed_shard(
    corpus: Corpus, shard_dir: Path, number: int, size: int, encoder: Encoder, manifest: dict[str, Any]
) -> Path:
    """Embed rows [number*size, (number+1)*size) of the corpus into shard `number`."""
    rows = shard_rows(number, size, len(corpus))
    if len(rows) == 0:
        raise ValueError(
            f"shard {number} of size {size} starts at row {rows.start}, past the corpus's "
            f"{len(corpus)} passages ({corpus.path})"
        )
    vectors = encoder.encode_passages([corpus.record(row)["contents"] for row in rows])
    path = shard_path(shard_dir, number)
    save_array_atomic(path, vectors)
    info = {**manifest, "shard": number, "start": rows.start, "stop": rows.stop, "dimension": int(vectors.shape[1])}
    write_json(shard_info_path(shard_dir, number), info)  # last: its presence marks the shard complete
    return path


def shard_problem(shard_dir: Path, number: int, rows: range, manifest: dict[str, Any]) -> str | None:
    """Why shard `number` cannot be used for `rows` under `manifest` (None when it can)."""
    info_path, path = shard_info_path(shard_dir, number), shard_path(shard_dir, number)
    if not info_path.is_file() or not path.is_file():
        return "missing"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        shape = np.load(path, mmap_mode="r").shape
    except (ValueError, OSError, EOFError) as error:
        return f"unreadable ({error})"
    wanted = {**manifest, "start": rows.start, "stop": rows.stop}
    for key, value in wanted.items():
        if info.get(key) != value:
            return f"made with {key} {info.get(key)!r}, not {value!r}"
    if shape != (len(rows), info.get("dimension")):
        return f"holds an array of shape {shape}, not ({len(rows)}, {info.get('dimension')})"
    return None


def embed_corpus(
    corpus: Corpus, shard_dir: Path, size: int, make_encoder: Callable[[], Encoder], manifest: dict[str, Any]
) -> list[Path]:
    """Embed every missing or stale shard; return all shard paths in row order. The encoder loads only if needed."""
    count = len(corpus)
    numbers = range(shard_count(count, size))
    todo = []
    for number in numbers:
        problem = shard_problem(shard_dir, number, shard_rows(number, size, count), manifest)
        if problem is not None:
            if problem != "missing":
                print(f"shard {number} in {shard_dir} is {problem}: re-embedding it", file=sys.stderr)
            todo.append(number)
    if todo:
        shard_dir.mkdir(parents=True, exist_ok=True)
        encoder = make_encoder()
        for number in tqdm(todo, desc="embedding", unit="shard", file=sys.stderr):
            embed_shard(corpus, shard_dir, number, size, encoder, manifest)
    return [shard_path(shard_dir, number) for number in numbers]


def check_num_passages(corpus: Corpus, declared: int | None) -> None:
    """The plan made one embed_shard job per shard of corpus.num_passages; the corpus must agree."""
    if declared is not None and declared != len(corpus):
        raise ValueError(
            f"corpus.num_passages is {declared} (the DAG's embed_shard jobs were planned from it) but "
            f"{corpus.path} holds {len(corpus)} passages: set it to {len(corpus)}"
        )


def run_embed_shard(cfg: dict[str, Any], number: int) -> Path:
    """The embed_shard stage: embed shard `number` of the config's corpus (one job of the DAG each)."""
    from research_rl.retrieval.corpus import file_sha256

    dense_cfg = cfg["retriever"]["dense"]
    corpus_file = paths.corpus_path(cfg)
    if not corpus_file.is_file():
        raise FileNotFoundError(f"corpus {corpus_file} not found: run download-corpus first")
    corpus = Corpus(corpus_file)
    check_num_passages(corpus, declared_passages(cfg))
    size = shard_size(cfg)
    total = shard_count(len(corpus), size)
    if not 0 <= number < total:
        raise ValueError(f"--shard {number} is out of range: the corpus has {total} shards of {size} passages")
    manifest = shard_manifest(dense_cfg, file_sha256(corpus_file))
    path = embed_shard(corpus, paths.shard_dir(cfg), number, size, load_encoder(dense_cfg), manifest)
    print(f"shard {number} of {total} written to {path}", file=sys.stderr)
    return path

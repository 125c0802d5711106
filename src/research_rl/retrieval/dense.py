"""Dense retrieval: embed the corpus in resumable shards, build a FAISS inner-product index, search it.

Memory each index type needs (N passages of dimension d, float32; wiki-18 with E5-base-v2 is
N = 21,015,324, d = 768):

| index_type | RAM (and GPU memory when use_gpu)              | 21M x 768           | search          |
|------------|------------------------------------------------|---------------------|-----------------|
| flat       | 4*d*N                                          | ~64.6 GB (60.1 GiB) | exact           |
| ivf        | 4*d*N + 8*N (ids) + 4*d*nlist (centroids)      | ~64.8 GB            | approx (nprobe) |
| hnsw       | 4*d*N + ~8*M*N (graph links, M = hnsw_m)       | ~70 GB with M=32    | approx (efSearch)|
| ivfpq      | (pq_m + 8)*N + 4*d*nlist                       | ~1.5 GB with pq_m=64| approx, lossy   |

On GPU, faiss can store flat vectors as float16 (half of the above); an H100 (80 GB) holds the flat
wiki-18 index in float32 only just, an H200 comfortably. The embedding shards on disk take 4*d*N bytes
too (64.6 GB for wiki-18), and building ivf/ivfpq first trains on a sample of at most 64*nlist
vectors. The searcher additionally keeps 16 bytes a passage of corpus offsets (see corpus.py).

Row i of the index is row i of the corpus. Shards are `embeddings/shard_00000.npy`, `shard_size`
passages each, written atomically as they finish; a rerun after a kill embeds only the missing ones.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from research_rl.atomic import atomic_output
from research_rl.data.jsonl import write_json
from research_rl.retrieval.corpus import Corpus
from research_rl.retrieval.encoder import Encoder, load_encoder
from research_rl.retrieval.gpu import place_index

INDEX_NAME = "index.faiss"
SHARD_DIR = "embeddings"
MANIFEST_NAME = "manifest.json"
TRAIN_POINTS_PER_LIST = 64


def shard_path(shard_dir: Path, number: int) -> Path:
    return shard_dir / f"shard_{number:05d}.npy"


def save_array_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array)


def _prepare_shard_dir(shard_dir: Path, manifest: dict[str, Any]) -> None:
    """Keep shards only if they were embedded from the same corpus, model, prefix and shard size."""
    manifest_path = shard_dir / MANIFEST_NAME
    if manifest_path.is_file() and json.loads(manifest_path.read_text(encoding="utf-8")) == manifest:
        return
    if shard_dir.exists():
        print(f"embeddings in {shard_dir} were made from other inputs; re-embedding", file=sys.stderr)
        shutil.rmtree(shard_dir)
    shard_dir.mkdir(parents=True)
    write_json(manifest_path, manifest)


def embed_corpus(
    corpus: Corpus, shard_dir: Path, shard_size: int, make_encoder: Any, manifest: dict[str, Any]
) -> list[Path]:
    """Write every missing shard; return all shard paths in row order. The encoder loads only if needed."""
    _prepare_shard_dir(shard_dir, manifest)
    count = len(corpus)
    shards = [shard_path(shard_dir, number) for number in range(math.ceil(count / shard_size))]
    missing = [number for number, path in enumerate(shards) if not path.is_file()]
    if not missing:
        return shards
    encoder: Encoder = make_encoder()
    done = count - sum(min(shard_size, count - number * shard_size) for number in missing)
    with tqdm(total=count, initial=done, unit="passage", desc="embedding", file=sys.stderr) as bar:
        for number in missing:
            rows = range(number * shard_size, min(count, (number + 1) * shard_size))
            vectors = encoder.encode_passages([corpus.record(row)["contents"] for row in rows])
            save_array_atomic(shards[number], vectors)
            bar.update(len(rows))
    return shards


def gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def factory_string(index_type: str, dense_cfg: dict[str, Any], count: int) -> str:
    """The faiss index_factory description; list counts shrink for corpora too small to train them."""
    nlist = max(1, min(dense_cfg.get("ivf_nlist", 4096), count // 39))
    if index_type == "flat":
        return "Flat"
    if index_type == "ivf":
        return f"IVF{nlist},Flat"
    if index_type == "hnsw":
        return f"HNSW{dense_cfg.get('hnsw_m', 32)}"
    if index_type == "ivfpq":
        bits = 8 if count >= 256 * 39 else 4  # 8-bit codebooks need enough training points
        return f"IVF{nlist},PQ{dense_cfg.get('pq_m', 64)}x{bits}"
    raise ValueError(f"unknown index_type {index_type!r}: use flat, ivf, hnsw or ivfpq")


def _training_sample(shards: list[Path], size: int, seed: int = 0) -> np.ndarray:
    """An evenly spread sample of rows across the shards, read one shard at a time."""
    counts = [np.load(path, mmap_mode="r").shape[0] for path in shards]
    total = sum(counts)
    picks = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
    parts, offset = [], 0
    for path, count in zip(shards, counts, strict=True):
        local = picks[(picks >= offset) & (picks < offset + count)] - offset
        if len(local):
            parts.append(np.asarray(np.load(path, mmap_mode="r")[local], dtype=np.float32))
        offset += count
    return np.concatenate(parts)


def build_faiss_index(shards: list[Path], dimension: int, dense_cfg: dict[str, Any]) -> Any:
    """Train (ivf, ivfpq) and fill an inner-product index from the shards; on GPU when asked and present."""
    import faiss

    index_type = dense_cfg.get("index_type", "flat")
    count = sum(np.load(path, mmap_mode="r").shape[0] for path in shards)
    index = faiss.index_factory(dimension, factory_string(index_type, dense_cfg, count), faiss.METRIC_INNER_PRODUCT)
    on_gpu = dense_cfg.get("use_gpu", False) and gpu_available() and index_type != "hnsw"
    if dense_cfg.get("use_gpu", False) and not on_gpu:
        print("use_gpu is set but faiss has no GPU here (or hnsw has no GPU version); building on CPU", file=sys.stderr)
    needs_training = not index.is_trained
    if needs_training:
        train_size = TRAIN_POINTS_PER_LIST * max(faiss.extract_index_ivf(index).nlist, 256)
    if on_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    if needs_training:
        index.train(_training_sample(shards, train_size))
    for path in tqdm(shards, desc="indexing", unit="shard", file=sys.stderr):
        index.add(np.ascontiguousarray(np.load(path), dtype=np.float32))
    return faiss.index_gpu_to_cpu(index) if on_gpu else index


def write_index_atomic(index: Any, path: Path) -> None:
    import faiss

    with atomic_output(path) as tmp:
        faiss.write_index(index, str(tmp))


def build(cfg: dict[str, Any], corpus: Corpus, corpus_sha256: str, out_dir: Path) -> dict[str, Any]:
    """Embed (resuming) and index the corpus into out_dir; return the meta fields specific to dense."""
    dense_cfg = cfg["retriever"]["dense"]
    if len(corpus) == 0:
        raise ValueError(f"the corpus {corpus.path} holds no passages")
    manifest = {
        "model": dense_cfg["model"],
        "passage_prefix": dense_cfg.get("passage_prefix", ""),
        "max_length": dense_cfg.get("max_length", 256),
        "shard_size": dense_cfg.get("shard_size", 1024),
        "corpus_sha256": corpus_sha256,
    }
    shards = embed_corpus(
        corpus, out_dir / SHARD_DIR, manifest["shard_size"], lambda: load_encoder(dense_cfg), manifest
    )
    dimension = int(np.load(shards[0], mmap_mode="r").shape[1])
    index = build_faiss_index(shards, dimension, dense_cfg)
    write_index_atomic(index, out_dir / INDEX_NAME)
    return {
        "model": dense_cfg["model"],
        "dimension": dimension,
        "index_type": dense_cfg.get("index_type", "flat"),
        "query_prefix": dense_cfg.get("query_prefix", ""),
        "passage_prefix": manifest["passage_prefix"],
        "max_length": manifest["max_length"],
    }


class DenseBackend:
    """A loaded FAISS index plus the query encoder: queries in, (scores, rows) out."""

    def __init__(self, index_dir: Path, dense_cfg: dict[str, Any], encoder: Encoder | None = None) -> None:
        import faiss

        self.index = faiss.read_index(str(index_dir / INDEX_NAME))
        self._set_search_params(dense_cfg.get("nprobe", 64))
        # On CPU, or cloned (sharded or replicated) over the GPUs, as retriever.dense says: see gpu.py.
        self.index = place_index(self.index, dense_cfg)
        self.encoder = encoder or load_encoder(dense_cfg)

    def _set_search_params(self, nprobe: int) -> None:
        import faiss

        try:
            faiss.extract_index_ivf(self.index).nprobe = nprobe
        except RuntimeError:
            pass  # not an IVF index
        if isinstance(self.index, faiss.IndexHNSW):
            self.index.hnsw.efSearch = max(nprobe, 16)  # nprobe doubles as efSearch: one knob for recall

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(self.encoder.encode_queries(queries), k)

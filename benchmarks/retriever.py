"""Retriever benchmark: raw faiss vs the service (micro-batched and not), and embedding throughput.

Prints figures; it is not a test. Examples:
    .venv/bin/python benchmarks/retriever.py                       # toy index (or a synthetic one) + 1M x 384
    .venv/bin/python benchmarks/retriever.py --synthetic-n 200000  # scale the synthetic flat index down

Two indexes:
- the "toy" dense index of the config when it is built, else a synthetic corpus embedded with the
  config's encoder (queries are encoded, so the service figures include the encoder);
- a synthetic flat index of N random unit vectors. Its queries are text too, hashed to a fixed random
  vector, so the service does the same work as raw faiss plus HTTP, JSON and batching.
The service runs in a forked process (the index is shared copy-on-write) and the clients in another one,
an asyncio load generator with one keep-alive connection per client.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the service sets it; must precede torch and faiss
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from research_rl import paths  # noqa: E402
from research_rl.retrieval import dense, index  # noqa: E402
from research_rl.retrieval.corpus import Corpus  # noqa: E402
from research_rl.retrieval.searcher import Searcher, load_searcher  # noqa: E402
from research_rl.retrieval.server import ServerThread, app_settings  # noqa: E402
from research_rl.retrieval.synthetic import write_synthetic_corpus  # noqa: E402


class HashedQueryBackend:
    """Flat inner-product search over given vectors; a query string maps to a fixed random unit vector."""

    def __init__(self, vectors: np.ndarray) -> None:
        import faiss

        self.index = faiss.IndexFlatIP(vectors.shape[1])
        self.index.add(vectors)
        self.dimension = vectors.shape[1]

    def vector(self, query: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(query.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
        return v / np.linalg.norm(v)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(np.stack([self.vector(q) for q in queries]), k)


class FakeCorpus:
    """Documents for row numbers, without a file (the synthetic index has no text)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def doc(self, row: int) -> dict[str, str]:
        return {"id": str(row), "contents": f'"Passage {row}"\nsynthetic passage number {row}.'}


def stats(latencies: list[float], seconds: float, count: int) -> str:
    ms = np.asarray(latencies) * 1000
    return f"{count / seconds:9.1f} q/s   p50 {np.percentile(ms, 50):7.1f} ms   p99 {np.percentile(ms, 99):7.1f} ms"


def bench_raw(search, queries: list[str], batch: int, top_k: int) -> tuple[float, str]:
    search(queries[:batch], top_k)  # warm-up
    latencies, start = [], time.perf_counter()
    for i in range(0, len(queries) - batch + 1, batch):
        t = time.perf_counter()
        search(queries[i : i + batch], top_k)
        latencies.append(time.perf_counter() - t)
    seconds = time.perf_counter() - start
    done = len(latencies) * batch
    return done / seconds, stats(latencies, seconds, done)


def _serve(searcher: Searcher, server_cfg: dict, port_queue) -> None:
    server = ServerThread(searcher, server_cfg)
    port_queue.put(server.start())
    while True:
        time.sleep(3600)


async def _load(url: str, queries: list[str], clients: int, top_k: int) -> tuple[list[float], float]:
    """`clients` keep-alive connections, each sending its next query as soon as the last one is answered."""
    import aiohttp

    latencies: list[float] = []
    headers = {"content-type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as http:

        async def ask(query: str) -> float:
            t = time.perf_counter()
            body = json.dumps({"query": query, "top_n": top_k})
            async with http.post(f"{url}/search", data=body, headers=headers) as response:
                await response.read()
                response.raise_for_status()
            return time.perf_counter() - t

        pending = iter(queries)

        async def client() -> None:
            for query in pending:
                latencies.append(await ask(query))

        await asyncio.gather(*(ask(query) for query in queries[:clients]))  # warm-up: connections, first batch
        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return latencies, time.perf_counter() - start


def _clients_process(url: str, queries: list[str], clients: int, top_k: int, results) -> None:
    results.put(asyncio.run(_load(url, queries, clients, top_k)))


def bench_service(searcher: Searcher, server_cfg: dict, queries: list[str], clients: int, top_k: int):
    """The service in one forked process (the index shared copy-on-write), the clients in another: an
    asyncio load generator, so that the load costs the shared cores as little as it can."""
    context = multiprocessing.get_context("fork")
    urls, results = context.Queue(), context.Queue()
    server = context.Process(target=_serve, args=(searcher, server_cfg, urls), daemon=True)
    server.start()
    try:
        url = urls.get(timeout=120)
        load = context.Process(target=_clients_process, args=(url, queries, clients, top_k, results), daemon=True)
        load.start()
        latencies, seconds = results.get(timeout=600)
        load.join(10)
        return len(queries) / seconds, stats(latencies, seconds, len(queries))
    finally:
        server.terminate()
        server.join(10)


def run_suite(label: str, searcher: Searcher, raw_search, server_cfg: dict, queries: list[str], args) -> None:
    top_k = args.top_k
    print(f"\n== {label}: {len(searcher)} passages, top_k {top_k} ==")
    raw = {}
    for batch in (1, 8, 32):
        n = args.raw_queries if batch > 1 else max(32, args.raw_queries // 4)
        raw[batch], line = bench_raw(raw_search, queries[:n], batch, top_k)
        print(f"raw in-process, batch {batch:>2}:           {line}")
    service = {}
    for clients in (1, 8, 32):
        n = args.service_queries if clients > 1 else max(32, args.service_queries // 4)
        service[clients], line = bench_service(searcher, server_cfg, queries[:n], clients, top_k)
        print(f"service, {clients:>2} clients, batched:     {line}")
    unbatched_cfg = {**server_cfg, "micro_batching": False}
    unbatched, line = bench_service(searcher, unbatched_cfg, queries[: args.service_queries // 2], 32, top_k)
    print(f"service, 32 clients, unbatched:   {line}")
    print(
        f"service(32) / raw(batch 32) = {service[32] / raw[32]:.2f} (target >= 0.8); "
        f"batched / unbatched at 32 clients = {service[32] / unbatched:.2f} (target >= 3)"
    )
    # What this machine allows at best: batching can gain no more than raw faiss gains from batches, and
    # 32 clients that each wait for their answer see a mean latency of at least 32 / (best throughput).
    print(
        f"ceilings here: raw(batch 32) / raw(batch 1) = {raw[32] / raw[1]:.2f}; "
        f"mean latency of 32 waiting clients >= {32 / max(raw.values()) * 1000:.1f} ms"
    )


def toy_searcher(cfg: dict, workdir: Path, n: int) -> tuple[Searcher, str]:
    if (paths.index_dir(cfg, "dense") / "meta.json").is_file():
        return load_searcher(cfg, "dense"), f"toy dense index {paths.index_dir(cfg, 'dense')}"
    cfg = copy.deepcopy(cfg)
    cfg["paths"]["data"] = str(workdir / "data")
    cfg["corpus"]["name"] = "synthetic"
    write_synthetic_corpus(paths.corpus_path(cfg), n)
    index.run(cfg, "dense")
    return load_searcher(cfg, "dense"), f"synthetic corpus of {n} people, config's dense encoder (no toy index built)"


def bench_embedding(searcher: Searcher, workdir: Path, n: int, shard_size: int) -> None:
    encoder = searcher.backend.encoder
    corpus_file = workdir / "embed.jsonl"
    write_synthetic_corpus(corpus_file, n, seed=99)
    corpus = Corpus(corpus_file)
    texts = list(corpus.iter_contents())
    encoder.model.encode(texts[:64], batch_size=encoder.batch_size)  # warm-up
    start = time.perf_counter()
    for i in range(0, n, shard_size):  # the bare loop: encode, normalize, keep in memory
        encoder.model.encode(texts[i : i + shard_size], batch_size=encoder.batch_size, normalize_embeddings=True)
    bare = n / (time.perf_counter() - start)
    start = time.perf_counter()
    dense.embed_corpus(corpus, workdir / "shards", shard_size, lambda: encoder, {"bench": True})
    ours = n / (time.perf_counter() - start)
    print(f"\n== embedding {n} passages, batch {encoder.batch_size}, shard {shard_size} ==")
    print(f"bare SentenceTransformer.encode: {bare:8.1f} passages/s")
    print(f"our path (read, encode, write shards): {ours:8.1f} passages/s   ratio {ours / bare:.2f} (target >= 0.9)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "config" / "config.yaml"))
    parser.add_argument("--synthetic-n", type=int, default=1_000_000, help="passages of the synthetic flat index")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--toy-n", type=int, default=1000, help="passages when the toy index is not built")
    parser.add_argument("--embed-n", type=int, default=512)
    parser.add_argument("--raw-queries", type=int, default=256)
    parser.add_argument("--service-queries", type=int, default=320)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch-wait-ms", type=float, default=None, help="override retriever.server.batch_wait_ms")
    parser.add_argument("--skip", nargs="*", default=[], choices=["toy", "synthetic", "embedding"])
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = yaml.safe_load(Path(args.config).read_text())
    server_cfg = app_settings(cfg)
    if args.batch_wait_ms is not None:
        server_cfg["batch_wait_ms"] = args.batch_wait_ms
    print(f"cores: {os.cpu_count()}, synthetic N = {args.synthetic_n} x {args.dim}")
    with tempfile.TemporaryDirectory(prefix="retriever-bench-") as tmp:
        workdir = Path(tmp)
        searcher = None
        if "toy" not in args.skip or "embedding" not in args.skip:
            searcher, label = toy_searcher(cfg, workdir, args.toy_n)
        if "toy" not in args.skip:
            people_queries = [f"Who is the person number {i} born in a city?" for i in range(4096)]
            encoded = searcher.backend.encoder.encode_queries
            raw_index = searcher.backend.index
            run_suite(
                label + " (raw = faiss on encoded queries; service encodes)",
                searcher,
                lambda qs, k: raw_index.search(encoded(qs), k),
                server_cfg,
                people_queries,
                args,
            )
        if "synthetic" not in args.skip:
            rng = np.random.default_rng(0)
            vectors = rng.standard_normal((args.synthetic_n, args.dim), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            backend = HashedQueryBackend(vectors)
            del vectors
            synthetic = Searcher(backend, FakeCorpus(args.synthetic_n))  # type: ignore[arg-type]
            queries = [f"query {i}" for i in range(4096)]
            run_suite(
                f"synthetic flat {args.synthetic_n} x {args.dim}", synthetic, backend.search, server_cfg, queries, args
            )
        if "embedding" not in args.skip:
            bench_embedding(searcher, workdir, args.embed_n, cfg["retriever"]["dense"].get("shard_size", 1024))


if __name__ == "__main__":
    main()

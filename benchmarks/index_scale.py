"""FAISS index types at scale on CPU: build time, memory, queries/s and recall@k against exact search.

Prints figures; it is not a test. The vectors are synthetic, clustered unit vectors (research_rl.retrieval.
synthetic.clustered_unit_vectors), written once to a raw float32 file and streamed from it in chunks, so
the parent process never holds them. Each index type is built, searched and measured in its own child
process (fork), one after the other: its peak RSS is its own, and only one index is in memory at a time.
The indexes come from the same code build-index uses (research_rl.retrieval.dense: index_spec, make_index,
fill_index, set_search_params), with the parameters given here in place of retriever.dense's.

    nice -n 10 .venv/bin/python benchmarks/index_scale.py --n 200000                  # a quick estimate
    nice -n 10 .venv/bin/python benchmarks/index_scale.py --n 2000000 --hnsw-m 16 --ef-construction 40 \\
        --nlist 1024 --nprobe 16,64 --ef-search 64,256

Recall@k: the share of the exact top-k (flat inner product, computed here chunk by chunk with numpy)
that the index returns in its top-k, over the queries. Queries are data vectors plus noise, so each has
a dense neighbourhood, as a question near its passages does.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from research_rl.retrieval import dense  # noqa: E402
from research_rl.retrieval.synthetic import clustered_unit_vectors  # noqa: E402

CHUNK = 100_000


def rss_mb(field: str = "VmRSS") -> float:
    """The process's current (VmRSS) or peak (VmHWM) resident set, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_vectors(path: Path, n: int, dim: int, clusters: int, seed: int) -> None:
    with open(path, "wb") as handle:
        for start in range(0, n, CHUNK):
            clustered_unit_vectors(min(CHUNK, n - start), dim, clusters=clusters, seed=seed, start=start).tofile(handle)


def read_chunks(path: Path, n: int, dim: int):
    """The vectors in CHUNK-row arrays, read (not memory-mapped), so only one chunk is resident at a time."""
    with open(path, "rb") as handle:
        for start in range(0, n, CHUNK):
            rows = min(CHUNK, n - start)
            yield np.fromfile(handle, dtype=np.float32, count=rows * dim).reshape(rows, dim)


def sample_rows(path: Path, n: int, dim: int, size: int, seed: int) -> np.ndarray:
    picks = np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))
    data = np.memmap(path, dtype=np.float32, mode="r", shape=(n, dim))
    sample = np.array(data[picks])
    del data
    return sample


def exact_top_k(path: Path, n: int, dim: int, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top-k rows, chunk by chunk (the ground truth every index is scored against)."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), k), dtype=np.int64)
    for number, chunk in enumerate(read_chunks(path, n, dim)):
        scores = queries @ chunk.T
        rows = np.arange(number * CHUNK, number * CHUNK + len(chunk))
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_rows = np.concatenate([best_rows, np.broadcast_to(rows, scores.shape)], axis=1)
        top = np.argpartition(-merged_scores, k - 1, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, top, axis=1)
        best_rows = np.take_along_axis(merged_rows, top, axis=1)
    return best_rows


def measure(index_type: str, args: argparse.Namespace, path: Path, queries: np.ndarray, truth: np.ndarray, out) -> None:
    """Child process: build one index type, then search; report through the pipe `out`."""
    import faiss

    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: a forked child inherits its parent's peak
    faiss.omp_set_num_threads(args.threads)
    dense_cfg = {
        "index_type": index_type,
        "ivf_nlist": args.nlist,
        "ivf_train_size": args.train_size,
        "pq_m": args.pq_m,
        "hnsw_m": args.hnsw_m,
        "hnsw_ef_construction": args.ef_construction,
    }
    spec = dense.index_spec(dense_cfg, args.n, args.dim)
    before = rss_mb()
    start = time.perf_counter()
    index = dense.make_index(args.dim, spec)
    sample = None
    if "ivf_train_size" in spec:
        sample = sample_rows(path, args.n, args.dim, spec["ivf_train_size"], args.seed)
    index = dense.fill_index(index, read_chunks(path, args.n, args.dim), sample)
    del sample
    build_s = time.perf_counter() - start
    index_mb = rss_mb() - before
    # One build, searched at each query-time setting (nprobe for ivf, efSearch for hnsw).
    settings = {"ivf": args.nprobe, "ivfpq": args.nprobe, "hnsw": args.ef_search}.get(index_type, [0])
    rows_out = []
    for value in settings:
        dense.set_search_params(index, value, value)
        index.search(queries[:10], args.k)  # warm-up
        start = time.perf_counter()
        _, rows = index.search(queries, args.k)
        search_s = time.perf_counter() - start
        recall = np.mean([len(set(got) & set(want)) / args.k for got, want in zip(rows, truth, strict=True)])
        knob = {"ivf": "nprobe", "ivfpq": "nprobe", "hnsw": "efSearch"}.get(index_type)
        rows_out.append(
            {
                "index": index_type,
                "factory": spec["factory"],
                "search": f"{knob}={value}" if knob else "exact",
                "build_s": build_s,
                "index_mb": index_mb,
                "peak_mb": rss_mb("VmHWM"),
                "qps": len(queries) / search_s,
                "recall": float(recall),
            }
        )
    out.send(rows_out)
    out.close()


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2_000_000, help="vectors in the index")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--clusters", type=int, default=20_000, help="clusters the vectors are drawn around")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--types", default="flat,ivf,hnsw", help="comma-separated: flat, ivf, ivfpq, hnsw")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists (ivf_nlist)")
    parser.add_argument("--nprobe", type=_ints, default=[16, 64], help="comma-separated nprobe values to search with")
    parser.add_argument("--train-size", type=int, default=None, help="IVF training sample (default 64 per list)")
    parser.add_argument("--pq-m", type=int, default=64, help="ivfpq sub-quantizers")
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=40)
    parser.add_argument("--ef-search", type=_ints, default=[64, 256], help="comma-separated efSearch values")
    parser.add_argument("--threads", type=int, default=2, help="faiss OpenMP threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="where the raw vectors go (default: a temp dir)")
    parser.add_argument("--keep-vectors", type=Path, default=None, help="also keep the raw vectors here (a hard link)")
    parser.add_argument("--vectors", type=Path, default=None, help="reuse raw vectors kept by --keep-vectors")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = Path(tmp) / "vectors.f32"
        start = time.perf_counter()
        if args.vectors is not None:
            # Reuse a file an earlier run kept (the same generator, flags and seed give the same bytes).
            if args.vectors.stat().st_size != args.n * args.dim * 4:
                raise SystemExit(f"--vectors {args.vectors} does not hold {args.n} x {args.dim} float32 values")
            path = args.vectors
        else:
            write_vectors(path, args.n, args.dim, args.clusters, args.seed)
            if args.keep_vectors is not None:
                os.link(path, args.keep_vectors)
        picks = np.random.default_rng(args.seed + 1).choice(args.n, size=args.queries, replace=False)
        data = np.memmap(path, dtype=np.float32, mode="r", shape=(args.n, args.dim))
        noise = np.random.default_rng(args.seed + 2).standard_normal((args.queries, args.dim), dtype=np.float32)
        queries = np.array(data[picks]) + 0.5 * noise / np.sqrt(args.dim)
        del data
        queries = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True), dtype=np.float32)
        print(
            f"{args.n} x {args.dim} vectors ({args.n * args.dim * 4 / 1e9:.2f} GB) generated in "
            f"{time.perf_counter() - start:.0f} s",
            flush=True,
        )
        start = time.perf_counter()
        truth = exact_top_k(path, args.n, args.dim, queries, args.k)
        print(f"exact top-{args.k} of {args.queries} queries in {time.perf_counter() - start:.0f} s", flush=True)

        results = []
        context = multiprocessing.get_context("fork")
        for index_type in args.types.split(","):
            receive, send = context.Pipe(duplex=False)
            child = context.Process(target=measure, args=(index_type, args, path, queries, truth, send))
            child.start()
            send.close()
            result = receive.recv()
            child.join()
            results += result
            for row in result:
                print(f"{index_type}: {row}", flush=True)

    params = (
        f"ivf: nlist={args.nlist}; hnsw: M={args.hnsw_m}, efConstruction={args.ef_construction}; "
        f"faiss on {args.threads} threads"
    )
    print(f"\n{args.n:,} x {args.dim} clustered unit vectors, {args.queries} queries, k={args.k} ({params})\n")
    print(f"| index | faiss | search | build s | index RSS MB | peak RSS MB | queries/s | recall@{args.k} vs flat |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['index']} | {r['factory']} | {r['search']} | {r['build_s']:.1f} | {r['index_mb']:.0f} | "
            f"{r['peak_mb']:.0f} | {r['qps']:.1f} | {r['recall']:.3f} |"
        )


if __name__ == "__main__":
    main()

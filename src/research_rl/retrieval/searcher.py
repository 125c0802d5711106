"""Load an index and search it: the one search path used in-process and by the service."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from research_rl import paths
from research_rl.retrieval.corpus import Corpus, file_sha256
from research_rl.retrieval.meta import check_meta, read_meta


class Backend(Protocol):
    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]: ...


class Searcher:
    """Queries to the top passages of the corpus, as `{"id", "contents"}` documents with their scores."""

    def __init__(self, backend: Backend, corpus: Corpus, meta: dict[str, Any] | None = None) -> None:
        self.backend = backend
        self.corpus = corpus
        self.meta = meta or {}

    def __len__(self) -> int:
        return len(self.corpus)

    def search_rows(self, queries: list[str], top_n: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and corpus rows, shape (len(queries), min(top_n, corpus size)); -1 marks no result."""
        k = min(top_n, len(self.corpus))
        if not queries or k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        return self.backend.search(queries, k)

    def batch_search(self, queries: list[str], top_n: int) -> tuple[list[list[dict]], list[list[float]]]:
        scores, rows = self.search_rows(queries, top_n)
        docs, kept_scores = [], []
        for query_scores, query_rows in zip(scores, rows, strict=True):
            # Approximate indexes may return fewer than k hits, padded with row -1.
            hits = [(int(row), float(score)) for row, score in zip(query_rows, query_scores, strict=True) if row >= 0]
            docs.append([self.corpus.doc(row) for row, _ in hits])
            kept_scores.append([score for _, score in hits])
        return docs, kept_scores


def load_searcher(cfg: dict[str, Any], kind: str | None = None, *, index_dir: Path | None = None) -> Searcher:
    """Open the config's index, refusing one built from another corpus, model or kind."""
    kind = kind or cfg["retriever"]["kind"]
    index_dir = index_dir or paths.index_dir(cfg, kind)
    meta = read_meta(index_dir)
    corpus_file = paths.corpus_path(cfg)
    if not corpus_file.is_file():
        raise FileNotFoundError(f"corpus {corpus_file} not found: run download-corpus first")
    corpus = Corpus(corpus_file)
    check_meta(meta, cfg, kind, file_sha256(corpus_file), len(corpus))
    if kind == "dense":
        from research_rl.retrieval.dense import DenseBackend

        backend: Backend = DenseBackend(index_dir, cfg["retriever"]["dense"])
    else:
        from research_rl.retrieval.bm25 import BM25Backend

        backend = BM25Backend(index_dir)
    return Searcher(backend, corpus, meta)

"""Sparse retrieval: BM25 over the corpus with bm25s, saved and loaded with bm25s's own API.

Documents are tokenized the same way as queries (lower case, English stop words removed, no
stemming), which is what bm25s does by default and what FlashRAG's bm25s backend does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from research_rl.atomic import atomic_directory
from research_rl.retrieval.corpus import Corpus
from research_rl.retrieval.meta import BM25_MODEL

BM25_DIR = "bm25"
STOPWORDS = "en"


def _tokenize(texts: list[str], return_ids: bool) -> Any:
    import bm25s

    return bm25s.tokenize(texts, stopwords=STOPWORDS, return_ids=return_ids, show_progress=False)


def build(cfg: dict[str, Any], corpus: Corpus, out_dir: Path) -> dict[str, Any]:
    """Index the corpus into out_dir/bm25 (written to a temporary folder, then moved into place)."""
    import bm25s

    bm25_cfg = cfg["retriever"].get("bm25", {})
    k1, b = bm25_cfg.get("k1", 1.5), bm25_cfg.get("b", 0.75)
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index(_tokenize(list(corpus.iter_contents()), return_ids=True), show_progress=True)
    with atomic_directory(out_dir / BM25_DIR) as tmp:
        retriever.save(str(tmp), show_progress=False)
    return {"model": BM25_MODEL, "dimension": None, "index_type": "bm25", "k1": k1, "b": b}


class BM25Backend:
    """A loaded bm25s index: queries in, (scores, rows) out."""

    def __init__(self, index_dir: Path) -> None:
        import bm25s

        self.retriever = bm25s.BM25.load(str(index_dir / BM25_DIR), show_progress=False)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = self.retriever.retrieve(_tokenize(queries, return_ids=False), k=k, show_progress=False)
        return np.asarray(scores, dtype=np.float32), np.asarray(rows, dtype=np.int64)

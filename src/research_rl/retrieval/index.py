"""The build_index stage: corpus -> data/index/<kind>/ (FAISS or BM25) + meta.json."""

from __future__ import annotations

import sys
from typing import Any

from research_rl import paths
from research_rl.retrieval import bm25, dense
from research_rl.retrieval.corpus import Corpus, file_sha256
from research_rl.retrieval.meta import META_NAME, make_meta, write_meta

KINDS = ("dense", "bm25")


def run(cfg: dict[str, Any], kind: str | None = None) -> None:
    """Build the `kind` index (default retriever.kind) of the config's corpus; meta.json is written last."""
    kind = kind or cfg["retriever"]["kind"]
    if kind not in KINDS:
        raise ValueError(f"unknown retriever kind {kind!r}: use one of {', '.join(KINDS)}")
    corpus_file = paths.corpus_path(cfg)
    if not corpus_file.is_file():
        raise FileNotFoundError(f"corpus {corpus_file} not found: run download-corpus first")
    out_dir = paths.index_dir(cfg, kind)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A rebuild first withdraws the old meta, so a half-rebuilt index never passes for a complete one.
    (out_dir / META_NAME).unlink(missing_ok=True)
    corpus = Corpus(corpus_file)
    corpus_sha256 = file_sha256(corpus_file)
    if kind == "dense":
        fields = dense.build(cfg, corpus, corpus_sha256, out_dir)
    else:
        fields = bm25.build(cfg, corpus, out_dir)
    meta = make_meta(kind=kind, count=len(corpus), corpus_sha256=corpus_sha256, **fields)
    write_meta(out_dir, meta)
    print(f"{kind} index of {len(corpus)} passages written to {out_dir}", file=sys.stderr)

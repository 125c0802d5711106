"""Recall@k of the built indexes on the toy world's MuSiQue questions (prints figures; not a test).

For each question, does a top-k passage contain the first hop's answer (the bridge entity)? Measured for
the full question (what the policy might search first) and for the first sub-question of the
decomposition (what a well-behaved policy searches). Run after `research-rl build-index` for each kind:

    python benchmarks/retrieval_recall.py --config config/config.yaml --split dev
"""

from __future__ import annotations

import argparse
import json

from research_rl import paths
from research_rl.config import load_config
from research_rl.retrieval.searcher import load_searcher


def recall_at(searcher, queries: list[str], targets: list[str], ks: tuple[int, ...]) -> dict[int, float]:
    docs, _ = searcher.batch_search(queries, max(ks))
    hits = {k: 0 for k in ks}
    for found, target in zip(docs, targets, strict=True):
        for k in ks:
            if any(target.lower() in doc["contents"].lower() for doc in found[:k]):
                hits[k] += 1
    return {k: hits[k] / len(queries) for k in ks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--kinds", nargs="+", default=["dense", "bm25"])
    args = parser.parse_args()
    cfg = load_config(args.config)
    records = [json.loads(line) for line in open(paths.qa_path(cfg, "musique", args.split), encoding="utf-8")]
    records = [
        r for r in records if r["metadata"].get("answerable", True) and r["metadata"].get("question_decomposition")
    ]
    bridges = [r["metadata"]["question_decomposition"][0]["answer"] for r in records]
    questions = [r["question"] for r in records]
    first_hops = [r["metadata"]["question_decomposition"][0]["question"] for r in records]
    ks = (1, 3, 5)
    print(f"{len(records)} answerable MuSiQue-{args.split} questions; target = first hop's answer (bridge entity)")
    for kind in args.kinds:
        searcher = load_searcher(cfg, kind)
        for label, queries in (("full question", questions), ("first sub-question", first_hops)):
            recalls = recall_at(searcher, queries, bridges, ks)
            figures = "  ".join(f"R@{k}={value:.3f}" for k, value in recalls.items())
            print(f"{kind:6s} {label:20s} {figures}")


if __name__ == "__main__":
    main()

"""Where ReSearch answers go wrong, before and after GRPO: each prediction sorted into one failure class.

Prints figures; it is not a test. For the `research_base` and `research` cells of every benchmark it
reads predictions.jsonl and sorts each prediction by the hop answers its trajectory states (the read
turns' "The answer to this step is X."), matched to the gold answers with the official EM rule:
- correct: the boxed answer matches a gold answer,
- gold never a hop answer: no hop found it (retrieval, reading or the sub-question went wrong),
- searched past gold: a hop found it, then the policy searched on and answered something else,
- unboxed: the last hop found it but the answer has no \\boxed{} (the format slip the reward scores 0),
- boxed a wrong copy: the last hop found it and the box holds something else.
It also prints the share of the five most frequent predictions and, on MuSiQue, the mean number of
searches by the questions' hop count (from their ids). Run it where the evaluations were written, the
repository after `bash scripts/run.sh` or a benchmarks/rl_gain.py workdir:
    .venv/bin/python benchmarks/research_failures.py [--workdir /tmp/rl_gain]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from research_rl import paths  # noqa: E402
from research_rl.config import load_config  # noqa: E402
from research_rl.evaluation.metrics import exact_match  # noqa: E402
from research_rl.model.base_model import ANSWER_PREFIX  # noqa: E402

METHODS = ("research_base", "research")
CLASSES = ("correct", "gold never a hop answer", "searched past gold", "unboxed", "boxed a wrong copy")
HOP_ANSWER = re.compile(re.escape(ANSWER_PREFIX) + r" (.*?)\.\s*</think>")


def failure_class(record: dict[str, Any]) -> str:
    if record["metrics"]["em"]:
        return "correct"
    hop_answers = HOP_ANSWER.findall(record["trajectory"])
    found = [i for i, answer in enumerate(hop_answers) if exact_match(answer, record["golden_answers"])]
    if not found:
        return "gold never a hop answer"
    if found[-1] < len(hop_answers) - 1:
        return "searched past gold"
    return "unboxed" if "\\boxed" not in record["trajectory"] else "boxed a wrong copy"


def read_cell(cfg: dict[str, Any], model: str, benchmark: str, method: str) -> list[dict[str, Any]]:
    path = paths.eval_dir(cfg, model, benchmark, method) / "predictions.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def summarize(records: list[dict[str, Any]]) -> None:
    classes = collections.Counter(failure_class(r) for r in records)
    print("  " + ", ".join(f"{name} {classes[name]}" for name in CLASSES) + f" (of {len(records)})")
    boxed = sum("\\boxed" in r["trajectory"] for r in records)
    print(f"  answers in a \\boxed{{}}: {boxed} of {len(records)}")
    answers = collections.Counter(r["prediction"].strip().lower() for r in records if r["prediction"].strip())
    top = [answer for answer, _ in answers.most_common(5)]
    correct = [r for r in records if r["metrics"]["em"]]
    in_top = sum(r["prediction"].strip().lower() in top for r in correct)
    share = sum(answers[a] for a in top) / max(1, len(records))
    print(f"  five most frequent answers {top}: {share:.0%} of predictions, {in_top} of the {len(correct)} correct")


def searches_by_hops(records: list[dict[str, Any]]) -> str:
    """MuSiQue ids start with the question's hop count (`2hop__…`, `3hop1__…`)."""
    by_hops = collections.defaultdict(list)
    for record in records:
        by_hops[record["id"].split("hop")[0]].append(record["num_searches"])
    return ", ".join(f"{hops}-hop {sum(v) / len(v):.2f} (n={len(v)})" for hops, v in sorted(by_hops.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT, help="where config/config.yaml and results are")
    parser.add_argument("--config", default="config/config.yaml", help="relative to --workdir")
    args = parser.parse_args()
    os.chdir(args.workdir)  # the config's paths are relative to the working directory, as in the DAG
    cfg = load_config(args.config)
    for entry in cfg["models"]:
        for method in METHODS:
            cells = {b: read_cell(cfg, entry["name"], b, method) for b in cfg["evaluation"]["benchmarks"]}
            pooled = [r for records in cells.values() for r in records]
            if not pooled:
                continue
            print(f"{entry['name']} / {method}:")
            summarize(pooled)
            if cells.get("musique"):
                print(f"  MuSiQue mean searches by hop count: {searches_by_hops(cells['musique'])}")


if __name__ == "__main__":
    main()

"""prepare_train: MuSiQue train/dev (FlashRAG jsonl) → the trainer's parquet, one set per model entry.

As the original's data/prepare_musique.py: every answerable train question, and 100 dev questions after
a shuffle with random.seed(42). Prompts are rendered with the template the model entry asks for, and
prompts over the token budget are dropped (the original's RLHFDataset filter), never truncated.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from research_rl import paths
from research_rl.atomic import atomic_output
from research_rl.prompts import prompt_token_count, render_prompt

console = Console(stderr=True)


def read_qa(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"normalized QA file not found: {path} (run `research-rl normalize-qa` first)")
    records = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON: {error}") from error
    return records


def is_answerable(record: dict[str, Any]) -> bool:
    """MuSiQue-Full marks unanswerable items; the original trains on the answerable set only."""
    return record.get("metadata", {}).get("answerable", True) is not False and bool(record["golden_answers"])


def dev_sample(records: list[dict[str, Any]], size: int, seed: int) -> list[dict[str, Any]]:
    """The original shuffles the whole dev list with random.seed(42) and keeps the first `size`."""
    shuffled = list(records)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:size]


def to_rows(
    records: list[dict[str, Any]], entry: dict[str, Any], tokenizer: Any, data_source: str
) -> list[dict[str, Any]]:
    rows = []
    for record in records:
        question = record["question"]
        golds = [str(answer) for answer in record["golden_answers"]]
        rows.append(
            {
                "id": str(record["id"]),
                "question": question,
                "prompt": render_prompt(question, apply_chat=entry["apply_chat"], tokenizer=tokenizer),
                "prompt_tokens": prompt_token_count(question, apply_chat=entry["apply_chat"], tokenizer=tokenizer),
                "golden_answers": golds,
                "data_source": data_source,
                "template": entry["template"],
                "apply_chat": entry["apply_chat"],
                # The columns verl's RLHFDataset and reward manager read, so the parquet also feeds verl.
                "ability": "qa",
                "reward_model": {"style": "rule", "ground_truth": golds},
                "extra_info": {"id": str(record["id"])},
            }
        )
    return rows


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    with atomic_output(path) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)


def load_tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as error:
        raise RuntimeError(
            f"cannot load the tokenizer of model path {model_path!r}: {error}. For the embedded default run "
            "`research-rl build-base-model` first; for hub models, download them into the HF cache."
        ) from error


def prepare_model(cfg: dict[str, Any], entry: dict[str, Any]) -> dict[str, int]:
    """Write train and dev parquet for one model entry; return the counts kept and dropped."""
    settings = cfg["train_data"]
    benchmark = settings["benchmark"]
    tokenizer = load_tokenizer(entry["path"])
    train = [r for r in read_qa(paths.qa_path(cfg, benchmark, settings["train_split"])) if is_answerable(r)]
    dev_all = [r for r in read_qa(paths.qa_path(cfg, benchmark, settings["dev_split"])) if is_answerable(r)]
    dev = dev_sample(dev_all, settings["dev_size"], settings["dev_seed"])
    counts: dict[str, int] = {}
    for split, records in (("train", train), ("dev", dev)):
        rows = to_rows(records, entry, tokenizer, benchmark)
        kept = [row for row in rows if row["prompt_tokens"] <= settings["max_prompt_tokens"]]
        if not kept:
            raise ValueError(
                f"model {entry['name']}: every {split} prompt is over train_data.max_prompt_tokens="
                f"{settings['max_prompt_tokens']}"
            )
        write_parquet(kept, paths.train_parquet(cfg, split, entry["name"]))
        counts[f"{split}_kept"] = len(kept)
        counts[f"{split}_dropped_over_budget"] = len(rows) - len(kept)
    return counts


def run(cfg: dict[str, Any], model_name: str | None = None) -> None:
    entries = [paths.model_entry(cfg, model_name)] if model_name else cfg["models"]
    for entry in entries:
        counts = prepare_model(cfg, entry)
        console.print(f"prepare_train [{entry['name']}]: {counts}")

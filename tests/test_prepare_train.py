"""prepare_train: parquet columns and templates for a base and an instruct entry."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml

from research_rl import paths
from research_rl.data import prepare_train
from research_rl.prompts import SYSTEM_PROMPT, render_base

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def qa_record(i: int, answerable: bool = True, long: bool = False) -> dict:
    question = f"Where was the founder of Org{i} born?" + (" padding" * 600 if long else "")
    return {
        "id": f"2hop__{i}_{i + 1}",
        "question": question,
        "golden_answers": [f"City{i}", f"C{i}"],
        "metadata": {"answerable": answerable, "hops": 2},
    }


@pytest.fixture
def cfg(tmp_path, tiny_tokenizer) -> dict:
    with open(REPO / "config" / "config.yaml", encoding="utf-8") as handle:
        cfg = yaml.safe_load(handle)
    cfg["paths"]["data"] = str(tmp_path / "data")
    tokenizer_dir = tmp_path / "tok"
    tiny_tokenizer.save_pretrained(tokenizer_dir)
    base = {
        "name": "toy-base",
        "path": str(tokenizer_dir),
        "apply_chat": False,
        "template": "re_search_template",
        "size": "tiny",
    }
    instruct = dict(base, name="toy-instruct", apply_chat=True, template="re_search_template_sys")
    cfg["models"] = [base, instruct]
    train = [qa_record(i) for i in range(20)] + [qa_record(100, answerable=False), qa_record(101, long=True)]
    dev = [qa_record(200 + i) for i in range(150)]
    write_jsonl(paths.qa_path(cfg, "musique", "train"), train)
    write_jsonl(paths.qa_path(cfg, "musique", "dev"), dev)
    return cfg


def test_parquet_columns_and_templates(cfg):
    prepare_train.run(cfg)
    base = pd.read_parquet(paths.train_parquet(cfg, "train", "toy-base"))
    instruct = pd.read_parquet(paths.train_parquet(cfg, "train", "toy-instruct"))
    for frame in (base, instruct):
        assert {"id", "question", "prompt", "golden_answers", "data_source", "prompt_tokens"} <= set(frame.columns)
        assert set(frame["data_source"]) == {"musique"}
        # The unanswerable item is left out; the over-budget prompt is dropped, not truncated.
        assert "2hop__100_101" not in set(frame["id"])
        assert "2hop__101_102" not in set(frame["id"])
        assert len(frame) == 20
        assert (frame["prompt_tokens"] <= cfg["train_data"]["max_prompt_tokens"]).all()
    row = base.iloc[0]
    assert row["prompt"] == render_base(row["question"])
    assert list(row["golden_answers"]) == ["City0", "C0"]
    assert instruct.iloc[0]["prompt"].startswith(f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n")
    assert instruct.iloc[0]["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_dev_is_the_originals_seeded_sample(cfg):
    prepare_train.run(cfg, model_name="toy-base")
    dev = pd.read_parquet(paths.train_parquet(cfg, "dev", "toy-base"))
    expected = [qa_record(200 + i)["id"] for i in range(150)]
    random.seed(42)  # exactly what data/prepare_musique.py does before its shuffle
    random.shuffle(expected)
    assert list(dev["id"]) == expected[:100]
    assert not paths.train_parquet(cfg, "dev", "toy-instruct").exists()


def test_missing_inputs_are_named(cfg, tmp_path):
    broken = copy.deepcopy(cfg)
    broken["paths"]["data"] = str(tmp_path / "elsewhere")
    with pytest.raises(FileNotFoundError, match="musique/train.jsonl"):
        prepare_train.run(broken, model_name="toy-base")
    broken = copy.deepcopy(cfg)
    broken["models"][0]["path"] = str(tmp_path / "no-model-here")
    with pytest.raises(RuntimeError, match="build-base-model"):
        prepare_train.run(broken, model_name="toy-base")

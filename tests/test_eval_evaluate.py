"""The evaluate stage: predictions and metrics files, per-question metrics, bootstrap, and resuming."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import random_qwen2
from test_eval_methods import CharGenerator, RecordingSearch

from research_rl.evaluation import evaluate
from research_rl.evaluation.bootstrap import bootstrap_ci


class FakeGenerator(CharGenerator):
    """Answers "Founder N" to "Who founded town N?" for the ids in correct_ids, "Nobody" otherwise."""

    def __init__(self, correct_ids: set[str]) -> None:
        super().__init__(self.answer)
        self.correct_ids = correct_ids

    def answer(self, prompt: str) -> str:
        n = re.findall(r"Who founded town (\d+)\?", prompt)[-1]
        return f" Founder {n}" if f"q{n}" in self.correct_ids else " Nobody"

    def asked(self) -> list[str]:
        return ["q" + re.findall(r"town (\d+)", p)[-1] for p in self.prompts]


def make_cfg(tmp_path: Path, n_questions: int = 10) -> dict:
    return {
        "seed": 1,
        "paths": {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")},
        "retriever": {"topk": 5, "server": {"max_query_chars": 2048}},
        "models": [{"name": "tiny-base", "path": str(tmp_path / "base"), "apply_chat": False, "size": "tiny"}],
        "grpo": {"max_turns": 4},
        "evaluation": {
            "benchmarks": {"bamboogle": "test"},
            "methods": ["zero_shot", "naive_rag"],
            "baseline_models": ["tiny-base"],
            "max_questions": n_questions,
            "backend": "transformers",
            "max_new_tokens": 32,
            "batch_size": 3,
            "judge": {"enabled": False},
            "bootstrap_samples": 500,
        },
    }


def write_questions(cfg: dict, n: int) -> None:
    path = Path(cfg["paths"]["data"]) / "qa" / "bamboogle" / "test.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for i in range(n):
            record = {"id": f"q{i}", "question": f"Who founded town {i}?", "golden_answers": [f"Founder {i}"]}
            handle.write(json.dumps({**record, "metadata": {}}) + "\n")


def out_dir(tmp_path: Path, method: str = "zero_shot") -> Path:
    return tmp_path / "results" / "eval" / "tiny-base" / "bamboogle" / method


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predictions_carry_per_question_metrics_and_metrics_json_the_means(tmp_path):
    cfg = make_cfg(tmp_path, n_questions=8)
    write_questions(cfg, 12)  # more in the file than max_questions
    correct = {"q0", "q1", "q4", "q6"}
    evaluate.run(cfg, "tiny-base", "bamboogle", "zero_shot", generator=FakeGenerator(correct))

    records = read_lines(out_dir(tmp_path) / "predictions.jsonl")
    assert [r["id"] for r in records] == [f"q{i}" for i in range(8)]
    first, third = records[0], records[2]
    assert first["prediction"] == "Founder 0" and first["golden_answers"] == ["Founder 0"]
    assert first["metrics"] == {"em": 1.0, "f1": 1.0, "cover_em": 1.0, "precision": 1.0, "recall": 1.0}
    assert third["prediction"] == "Nobody" and third["metrics"]["em"] == 0.0 and third["metrics"]["f1"] == 0.0
    assert {"trajectory", "searches", "num_searches", "question"} <= set(first)

    metrics = json.loads((out_dir(tmp_path) / "metrics.json").read_text())
    assert metrics["n"] == 8 and metrics["em"] == 0.5 and metrics["f1"] == 0.5
    assert metrics["mean_searches"] == 0.0
    low, high = metrics["ci95"]["em"]
    assert 0.0 <= low < 0.5 < high <= 1.0
    assert set(metrics["ci95"]) == {"em", "f1", "cover_em"}  # no judge configured
    assert (metrics["model"], metrics["benchmark"], metrics["split"], metrics["method"]) == (
        "tiny-base",
        "bamboogle",
        "test",
        "zero_shot",
    )


def test_partial_credit_is_f1_not_em(tmp_path):
    cfg = make_cfg(tmp_path, n_questions=1)
    write_questions(cfg, 1)
    generator = CharGenerator(lambda prompt: "The Founder 0 of it")
    evaluate.run(cfg, "tiny-base", "bamboogle", "zero_shot", generator=generator)
    [record] = read_lines(out_dir(tmp_path) / "predictions.jsonl")
    # tokens after normalisation: "founder 0 of it" vs "founder 0"
    assert record["metrics"]["em"] == 0.0 and record["metrics"]["cover_em"] == 1.0
    assert record["metrics"]["precision"] == 0.5 and record["metrics"]["recall"] == 1.0
    assert record["metrics"]["f1"] == pytest.approx(2 / 3)


def test_a_killed_job_resumes_with_only_the_missing_questions(tmp_path):
    cfg = make_cfg(tmp_path, n_questions=5)
    write_questions(cfg, 10)
    evaluate.run(
        cfg, "tiny-base", "bamboogle", "naive_rag", generator=FakeGenerator({"q1"}), search_client=RecordingSearch()
    )
    pred_path = out_dir(tmp_path, "naive_rag") / "predictions.jsonl"
    # The kill hit mid-write: half a line follows the five finished predictions.
    with open(pred_path, "a") as handle:
        handle.write('{"id": "q5", "question": "Who fou')

    cfg["evaluation"]["max_questions"] = 10
    generator, search = FakeGenerator({"q1", "q7"}), RecordingSearch()
    evaluate.run(cfg, "tiny-base", "bamboogle", "naive_rag", generator=generator, search_client=search)

    assert generator.asked() == ["q5", "q6", "q7", "q8", "q9"]
    assert search.queries == [f"Who founded town {i}?" for i in range(5, 10)]
    records = read_lines(pred_path)  # every line parses: the torn one is gone
    assert [r["id"] for r in records] == [f"q{i}" for i in range(10)]
    metrics = json.loads((out_dir(tmp_path, "naive_rag") / "metrics.json").read_text())
    assert metrics["n"] == 10 and metrics["em"] == 0.2 and metrics["mean_searches"] == 1.0

    # Nothing left to do: no generation at all, metrics rewritten the same.
    idle = FakeGenerator(set())
    evaluate.run(cfg, "tiny-base", "bamboogle", "naive_rag", generator=idle, search_client=RecordingSearch())
    assert idle.prompts == []
    assert json.loads((out_dir(tmp_path, "naive_rag") / "metrics.json").read_text()) == metrics


def test_unknown_method_and_missing_trained_model(tmp_path):
    cfg = make_cfg(tmp_path)
    write_questions(cfg, 2)
    with pytest.raises(ValueError, match="unknown method"):
        evaluate.run(cfg, "tiny-base", "bamboogle", "self_rag")
    with pytest.raises(FileNotFoundError, match="train-grpo"):
        evaluate.model_path(cfg, "tiny-base", "research")
    assert evaluate.model_path(cfg, "tiny-base", "ircot") == tmp_path / "base"


def test_bootstrap_ci():
    values = [1.0] * 30 + [0.0] * 70
    low, high = bootstrap_ci(values, n_samples=2000, seed=3)
    assert low < 0.3 < high and 0.18 < low and high < 0.42
    assert bootstrap_ci(values, 2000, 3) == (low, high)  # same seed, same interval
    assert bootstrap_ci([1.0, 1.0, 1.0], 100, 0) == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_ci([], 100, 0)


@pytest.fixture
def tiny_checkpoint(tmp_path, tiny_tokenizer):
    """A 1-layer random Qwen2 saved like any checkpoint, as the base model and as the trained policy."""
    model = random_qwen2(tiny_tokenizer, positions=4096)
    for path in (tmp_path / "base", tmp_path / "results" / "models" / "tiny-base" / "final"):
        model.save_pretrained(path)
        tiny_tokenizer.save_pretrained(path)
    return model


@pytest.mark.parametrize("method", ["zero_shot", "ircot", "research"])
def test_every_method_runs_on_the_in_process_transformers_backend(tmp_path, tiny_checkpoint, method):
    """The config's own backend (checkpoint loaded from disk, greedy), with a recording retriever."""
    cfg = make_cfg(tmp_path, n_questions=3)
    cfg["evaluation"]["max_new_tokens"] = 12
    write_questions(cfg, 3)
    search = RecordingSearch()
    evaluate.run(cfg, "tiny-base", "bamboogle", method, search_client=search)
    records = read_lines(out_dir(tmp_path, method) / "predictions.jsonl")
    assert [r["id"] for r in records] == ["q0", "q1", "q2"]
    assert all(r["num_searches"] == len(r["searches"]) for r in records)
    assert sum(r["num_searches"] for r in records) == len(search.queries)
    if method == "ircot":
        assert search.queries[:3] == [f"Who founded town {i}?" for i in range(3)]  # the first retrieval
    metrics = json.loads((out_dir(tmp_path, method) / "metrics.json").read_text())
    assert metrics["n"] == 3

"""The paper's evaluation settings as our code applies them: full splits of the expected size, greedy
decoding and the configured top-k in every method (config/reference/paper_settings.yaml lists them)."""

from __future__ import annotations

import json

import pytest
from test_eval_evaluate import FakeGenerator, make_cfg, out_dir, write_questions
from test_eval_methods import CFG, QUESTIONS, CharGenerator, RecordingSearch

from research_rl.evaluation import evaluate, methods


def test_max_questions_null_evaluates_the_whole_split(tmp_path):
    cfg = make_cfg(tmp_path, n_questions=None)
    cfg["evaluation"]["max_questions"] = None
    write_questions(cfg, 7)
    evaluate.run(cfg, "tiny-base", "bamboogle", "zero_shot", generator=FakeGenerator({"q1"}))
    metrics = json.loads((out_dir(tmp_path) / "metrics.json").read_text())
    assert metrics["n"] == 7 and metrics["em"] == pytest.approx(1 / 7)


def test_a_full_split_of_the_expected_size_is_evaluated(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg["evaluation"].update(max_questions=None, expected_questions={"bamboogle": 6, "hotpotqa": 7405})
    write_questions(cfg, 6)
    evaluate.run(cfg, "tiny-base", "bamboogle", "zero_shot", generator=FakeGenerator(set()))
    assert json.loads((out_dir(tmp_path) / "metrics.json").read_text())["n"] == 6


def test_a_full_split_of_another_size_fails_before_generating(tmp_path):
    cfg = make_cfg(tmp_path)
    cfg["evaluation"].update(max_questions=None, expected_questions={"bamboogle": 125})
    write_questions(cfg, 6)  # a truncated download: 6 of Bamboogle's 125
    generator = FakeGenerator(set())
    with pytest.raises(
        ValueError, match=r"test\.jsonl: 6 questions, but evaluation\.expected_questions\.bamboogle is 125"
    ):
        evaluate.run(cfg, "tiny-base", "bamboogle", "zero_shot", generator=generator)
    assert generator.prompts == [] and not (out_dir(tmp_path) / "metrics.json").exists()


def test_a_subset_by_max_questions_is_not_held_to_the_full_size(tmp_path, capsys):
    cfg = make_cfg(tmp_path, n_questions=4)
    cfg["evaluation"]["expected_questions"] = {"bamboogle": 125}
    write_questions(cfg, 6)
    evaluate.run(cfg, "tiny-base", "bamboogle", "zero_shot", generator=FakeGenerator(set()))
    assert json.loads((out_dir(tmp_path) / "metrics.json").read_text())["n"] == 4
    assert "evaluating 4 of the paper's 125 questions" in capsys.readouterr().err


def generic_script(prompt: str) -> str:
    """An answer every baseline reads out (IRCoT stops at "So the answer is")."""
    return " So the answer is: Ada Vell."


def research_script(prompt: str) -> str:
    """One search, then a boxed answer."""
    if "</result>" not in prompt.split("Assistant:")[-1]:
        return " <think> look it up </think> <search> founder of Brimmow </search>"
    return " <think> done </think> <answer> The final answer is \\boxed{Ada Vell} </answer>"


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_every_method_is_greedy_and_uses_topk(method):
    """The paper decodes greedily (the original's do_sample: False) and retrieves retriever.topk passages
    per query; topk 3 here, so a hard-coded 5 would show."""
    cfg = {**CFG, "retriever": {**CFG["retriever"], "topk": 3}, "grpo": {"max_turns": 4, "max_response_length": 400}}
    generator = CharGenerator(research_script if method.startswith("research") else generic_script)
    search = RecordingSearch()
    records = methods.METHODS[method](QUESTIONS, generator, search, cfg)
    assert all("Ada Vell" in r["prediction"] for r in records)
    assert generator.calls and all(call["temperature"] == 0.0 for call in generator.calls)
    if method in methods.USES_RETRIEVAL:
        assert search.calls and all(top_n == 3 for _, top_n in search.calls)
    else:
        assert search.calls == []


def test_a_judge_without_its_key_fails_before_the_model_is_loaded(tmp_path, monkeypatch):
    """The paper config enables the gpt-4o-mini judge with api_key_env: a missing key must stop the job
    before it starts a model server (minutes on a GPU node), naming the variable."""
    cfg = make_cfg(tmp_path, n_questions=3)
    cfg["evaluation"]["judge"] = {
        "enabled": True,
        "url": "http://127.0.0.1:9/v1",
        "model": "gpt-4o-mini",
        "api_key_env": "RRL_TEST_MISSING_KEY",
    }
    monkeypatch.delenv("RRL_TEST_MISSING_KEY", raising=False)
    write_questions(cfg, 3)
    opened = []
    monkeypatch.setattr(evaluate, "open_generator", lambda *args: opened.append(args))
    with pytest.raises(ValueError, match="RRL_TEST_MISSING_KEY"):
        evaluate.run(cfg, "tiny-base", "bamboogle", "zero_shot")
    assert opened == []

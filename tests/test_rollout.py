"""The multi-turn search rollout: token layout, env mask, budget cut, turn cap, and that masked
(retriever) tokens carry no loss in TRL's GRPO objective."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from conftest import random_qwen2

from research_rl.generation import Generation
from research_rl.training.rollout import ENV_LOGPROB, RESULT_TEMPLATE, format_passages, run_rollouts

EOS = "\x03"


class CharTokenizer:
    """One token per character (id = code point), so token counts are character counts."""

    eos_token = EOS

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i) for i in ids)


class ScriptedGenerator(CharTokenizer):
    """A fake policy: the prompt's first character picks a script, the number of `</result>` already in
    the context picks the turn; it honours stop strings, per-row budgets and EOS like a real backend."""

    def __init__(self, scripts: dict[str, list[str]]) -> None:
        self.scripts = scripts
        self.calls: list[dict] = []

    def generate(self, prompts, *, max_new_tokens, stop=(), temperature=1.0) -> list[Generation]:
        budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        self.calls.append({"n": len(prompts), "budgets": budgets, "stop": list(stop)})
        out = []
        for prompt, budget in zip(prompts, budgets, strict=True):
            context = self.decode(prompt)
            script = self.scripts[context[0]]
            text = script[min(context.count("</result>"), len(script) - 1)]
            reason = "eos"
            for s in stop:
                if s in text:
                    text, reason = text[: text.index(s) + len(s)], "stop"
            if len(text) > budget:
                text, reason = text[:budget], "length"
            ids = self.encode(text)
            out.append(Generation(ids, text, reason, logprobs=[-0.5] * len(ids)))
        return out


class FakeSearch:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def batch_search(self, queries: list[str], top_n: int) -> list[list[dict]]:
        self.calls.append((list(queries), top_n))
        return [[{"id": str(k), "contents": f'"{q}"\npassage {k}'} for k in range(top_n)] for q in queries]


def result_text(query: str, top_n: int = 5) -> str:
    docs = [{"contents": f'"{query}"\npassage {k}'} for k in range(top_n)]
    return RESULT_TEMPLATE.format(passages=format_passages(docs))


TWO_SEARCHES = [
    " <think> a </think> <search> first q </search>",
    " <think> b </think> <search> second q </search>",
    " <think> c </think> <answer> \\boxed{x} </answer>" + EOS,
]
DIRECT = [" <think> d </think> <answer> \\boxed{y} </answer>" + EOS]


def test_passages_are_joined_by_blank_lines_and_stripped():
    docs = [{"contents": '"A"\none'}, {"contents": '"B"\ntwo'}]
    assert format_passages(docs) == '"A"\none\n\n"B"\ntwo'
    assert RESULT_TEMPLATE.format(passages="P") == " <result>\nP\n</result>"


def test_mask_is_zero_exactly_on_retriever_tokens():
    generator, search = ScriptedGenerator({"A": TWO_SEARCHES, "B": DIRECT}), FakeSearch()
    prompts = [generator.encode("A: question?"), generator.encode("B: other?")]
    a, b = run_rollouts(prompts, generator, search, max_response_tokens=10_000, max_turns=5, temperature=1.0)

    expected = [(TWO_SEARCHES[0], 1), (result_text("first q"), 0), (TWO_SEARCHES[1], 1)]
    expected += [(result_text("second q"), 0), (TWO_SEARCHES[2], 1)]
    assert a.text == "".join(text for text, _ in expected)
    assert a.env_mask == [m for text, m in expected for _ in text]
    assert a.searches == ["first q", "second q"]
    assert a.finish_reason == "eos" and a.num_turns == 3 and a.text.endswith(EOS)
    assert a.logprobs == [-0.5 if m else ENV_LOGPROB for m in a.env_mask]
    assert a.model_tokens == sum(len(t) for t, m in expected if m)

    assert b.text == DIRECT[0] and b.env_mask == [1] * len(DIRECT[0]) and b.searches == []
    # One batch_search per turn with every pending query, top-5 by default.
    assert search.calls == [(["first q"], 5), (["second q"], 5)]


def test_pending_queries_of_a_turn_go_in_one_batch():
    generator, search = ScriptedGenerator({"A": TWO_SEARCHES, "C": TWO_SEARCHES}), FakeSearch()
    prompts = [generator.encode("A"), generator.encode("C"), generator.encode("A")]
    run_rollouts(prompts, generator, search, max_response_tokens=10_000, max_turns=5, top_n=3)
    assert search.calls == [(["first q"] * 3, 3), (["second q"] * 3, 3)]


def test_each_turn_gets_the_remaining_budget():
    generator, search = ScriptedGenerator({"A": TWO_SEARCHES}), FakeSearch()
    run_rollouts([generator.encode("A")], generator, search, max_response_tokens=1000, max_turns=5)
    after_first = len(TWO_SEARCHES[0]) + len(result_text("first q"))
    after_second = after_first + len(TWO_SEARCHES[1]) + len(result_text("second q"))
    assert [c["budgets"] for c in generator.calls] == [[1000], [1000 - after_first], [1000 - after_second]]


def test_budget_cuts_response_and_mask_together_inside_a_result():
    generator, search = ScriptedGenerator({"A": TWO_SEARCHES}), FakeSearch()
    budget = len(TWO_SEARCHES[0]) + 7  # seven characters into the first <result> block
    (rollout,) = run_rollouts([generator.encode("A")], generator, search, max_response_tokens=budget, max_turns=5)
    assert len(rollout.completion_ids) == len(rollout.env_mask) == len(rollout.logprobs) == budget
    assert rollout.env_mask == [1] * len(TWO_SEARCHES[0]) + [0] * 7
    assert rollout.finish_reason == "length" and not rollout.text.endswith(EOS)
    assert len(generator.calls) == 1  # no generation after the budget is spent


def test_budget_cut_inside_model_text():
    generator, search = ScriptedGenerator({"A": TWO_SEARCHES}), FakeSearch()
    (rollout,) = run_rollouts([generator.encode("A")], generator, search, max_response_tokens=10, max_turns=5)
    assert rollout.text == TWO_SEARCHES[0][:10] and rollout.env_mask == [1] * 10 and rollout.searches == []
    assert rollout.finish_reason == "length"


def test_turn_cap_makes_the_last_turn_generate_without_the_stop_string():
    looping = [" <search> again </search> and more" + EOS]
    generator, search = ScriptedGenerator({"A": looping}), FakeSearch()
    (rollout,) = run_rollouts([generator.encode("A")], generator, search, max_response_tokens=10_000, max_turns=2)
    assert rollout.searches == ["again", "again"]
    assert [c["stop"] for c in generator.calls] == [["</search>"], ["</search>"], []]
    assert rollout.num_turns == 3 and rollout.finish_reason == "eos"
    assert rollout.text.endswith("</search> and more" + EOS)  # the uncapped turn ran to EOS


def test_empty_query_is_not_sent_and_gets_an_empty_result():
    generator, search = ScriptedGenerator({"A": [" </search>", " done" + EOS], "B": TWO_SEARCHES}), FakeSearch()
    a, _ = run_rollouts(
        [generator.encode("A"), generator.encode("B")], generator, search, max_response_tokens=10_000, max_turns=5
    )
    assert search.calls[0] == (["first q"], 5)
    assert a.text == " </search>" + " <result>\n\n</result>" + " done" + EOS
    assert a.searches == [""]


# ------------------------------------------------------------ masked tokens carry no loss (TRL's objective)


@pytest.fixture(scope="module")
def trl_trainer(tmp_path_factory, tiny_tokenizer):
    """A real GRPOTrainer on a tiny random Qwen2, to call its loss directly."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model_dir = tmp_path_factory.mktemp("model")  # a path, so TRL can load the KL reference from it
    random_qwen2(tiny_tokenizer, positions=256).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    args = GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        per_device_train_batch_size=2,
        num_generations=2,
        beta=0.1,
        loss_type="bnpo",
        report_to=[],
        use_cpu=True,
    )
    return GRPOTrainer(
        model=str(model_dir),
        reward_funcs=[lambda completions, **_: [0.0] * len(completions)],
        args=args,
        train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}),
        processing_class=tiny_tokenizer,
    )


def _loss_inputs(env_mask: torch.Tensor) -> dict:
    batch, length = env_mask.shape
    return {
        "prompt_ids": torch.randint(3, 50, (batch, 4)),
        "prompt_mask": torch.ones(batch, 4, dtype=torch.long),
        "completion_ids": torch.randint(3, 50, (batch, length)),
        "completion_mask": torch.ones(batch, length, dtype=torch.long),
        "tool_mask": env_mask,
        "advantages": torch.tensor([1.0, -0.5]),
        "ref_per_token_logps": torch.full((batch, length), -2.0),
        "num_items_in_batch": env_mask.sum(),
    }


def test_trl_loss_gives_no_gradient_to_masked_tokens(trl_trainer, monkeypatch):
    env_mask = torch.tensor([[1, 1, 0, 0, 0, 1, 1, 1], [1, 0, 0, 1, 1, 1, 1, 1]])
    inputs = _loss_inputs(env_mask)
    logps = torch.full(env_mask.shape, -1.0, requires_grad=True)

    def fake_logps(*args, **kwargs):
        return logps, torch.zeros_like(logps), None

    monkeypatch.setattr(trl_trainer, "_get_per_token_logps_and_entropies", fake_logps)
    trl_trainer.model.train()
    trl_trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train() otherwise
    loss = trl_trainer._compute_loss(trl_trainer.model, inputs)
    loss.backward()
    assert torch.all(logps.grad[env_mask == 0] == 0)
    assert torch.all(logps.grad[env_mask == 1] != 0)

    # Any change at masked positions (log-probs or reference) leaves the loss unchanged; a change at a
    # model token does not.
    def loss_with(values: torch.Tensor, ref: torch.Tensor) -> float:
        nonlocal logps
        logps = values.clone().requires_grad_(True)
        with torch.no_grad():
            return float(trl_trainer._compute_loss(trl_trainer.model, {**inputs, "ref_per_token_logps": ref}))

    base = loss_with(torch.full(env_mask.shape, -1.0), inputs["ref_per_token_logps"])
    noisy = torch.where(env_mask == 0, torch.randn(env_mask.shape) * 5, torch.full(env_mask.shape, -1.0))
    noisy_ref = torch.where(env_mask == 0, torch.randn(env_mask.shape), inputs["ref_per_token_logps"])
    assert loss_with(noisy, noisy_ref) == pytest.approx(base, abs=1e-7)
    changed = torch.full(env_mask.shape, -1.0)
    changed[0, 0] = -3.0
    assert loss_with(changed, inputs["ref_per_token_logps"]) != pytest.approx(base, abs=1e-7)

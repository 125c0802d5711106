"""The five evaluation methods on a scripted generator and a recording search client.

The generator works on characters (token id = code point, 0 = EOS) and honours stop strings and
budgets like a real backend, so each test can assert the exact prompts, the queries issued, and the
answer read out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pytest

from research_rl.evaluation import methods
from research_rl.generation import Generation

EOS = "<eos>"


class CharGenerator:
    """A Generator whose policy is `script(prompt_text) -> continuation`; records every prompt."""

    eos_token = EOS

    def __init__(self, script: Callable[[str], str]) -> None:
        self.script = script
        self.prompts: list[str] = []
        self.calls: list[dict] = []

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(EOS if i == 0 else chr(i) for i in token_ids)

    def generate(self, prompts, *, max_new_tokens, stop=(), temperature=1.0) -> list[Generation]:
        budgets = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
        self.calls.append({"n": len(prompts), "stop": list(stop), "temperature": temperature})
        out = []
        for prompt, budget in zip(prompts, budgets, strict=True):
            text = self.decode(prompt)
            self.prompts.append(text)
            full = self.script(text)
            ends = [full.index(s) + len(s) for s in stop if s in full]
            cut = min(ends) if ends else None
            if cut is not None and cut <= budget:
                out.append(Generation(self.encode(full[:cut]), full[:cut], "stop"))
            elif len(full) + 1 <= budget:
                out.append(Generation(self.encode(full) + [0], full + EOS, "eos"))
            else:
                out.append(Generation(self.encode(full[:budget]), full[:budget], "length"))
        return out


class RecordingSearch:
    """Returns one passage per query naming the query; records (queries, top_n) per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    @property
    def queries(self) -> list[str]:
        return [q for queries, _ in self.calls for q in queries]

    def batch_search(self, queries: list[str], top_n: int) -> list[list[dict]]:
        self.calls.append((list(queries), top_n))
        return [[{"id": f"doc:{q}", "contents": f"Page {q}\nAbout {q}."}] for q in queries]


CFG = {
    "seed": 0,
    "retriever": {"topk": 5, "server": {"max_query_chars": 2048}},
    "evaluation": {"max_new_tokens": 64, "iter_retgen_rounds": 3, "ircot_max_steps": 5},
    "grpo": {"max_turns": 4},
}
QUESTIONS = [
    {"id": "a", "question": "Who founded Brimmow?", "golden_answers": ["Ada Vell"]},
    {"id": "b", "question": "Where was Ada Vell born?", "golden_answers": ["Orlan"]},
]


def last_question(prompt: str) -> str:
    return re.findall(r"Question: (.*?\?)", prompt)[-1]


def test_zero_shot_uses_flashrags_prompt_and_no_retrieval():
    generator = CharGenerator(lambda p: " Ada Vell\n" if "Brimmow" in last_question(p) else " unknown")
    search = RecordingSearch()
    records = methods.zero_shot(QUESTIONS, generator, search, CFG)
    assert generator.prompts[0] == (
        "Answer the question based on your own knowledge. Only give me the answer and do not output any other "
        "words.\n\nQuestion: Who founded Brimmow?"
    )
    assert search.calls == []
    assert [r["prediction"] for r in records] == ["Ada Vell", "unknown"]
    assert records[0] == {
        "id": "a",
        "question": "Who founded Brimmow?",
        "golden_answers": ["Ada Vell"],
        "prediction": "Ada Vell",
        "trajectory": " Ada Vell\n",
        "searches": [],
        "num_searches": 0,
    }
    assert generator.calls == [{"n": 2, "stop": [], "temperature": 0.0}]  # one greedy batch


def test_chat_models_get_system_and_user_messages(tiny_tokenizer):
    generator = CharGenerator(lambda p: "x")
    methods.zero_shot(QUESTIONS[:1], generator, RecordingSearch(), CFG, apply_chat=True, tokenizer=tiny_tokenizer)
    assert generator.prompts[0] == (
        "<|im_start|>system\n" + methods.ZERO_SHOT_SYSTEM + "<|im_end|>\n"
        "<|im_start|>user\nQuestion: Who founded Brimmow?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_naive_rag_retrieves_once_with_the_question():
    generator = CharGenerator(lambda p: " Ada Vell" if "About Who founded Brimmow?" in p else " Orlan")
    search = RecordingSearch()
    records = methods.naive_rag(QUESTIONS, generator, search, CFG)
    assert search.calls == [(["Who founded Brimmow?", "Where was Ada Vell born?"], 5)]
    assert generator.prompts[0] == (
        "Answer the question based on the given document.Only give me the answer and do not output any other "
        "words.\nThe following are given documents.\n\n"
        "Doc 1(Title: Page Who founded Brimmow?) About Who founded Brimmow?.\n"
        "\n\nQuestion: Who founded Brimmow?"
    )
    assert [r["prediction"] for r in records] == ["Ada Vell", "Orlan"]
    assert [r["searches"] for r in records] == [["Who founded Brimmow?"], ["Where was Ada Vell born?"]]
    assert all(r["num_searches"] == 1 for r in records)


def test_iter_retgen_feeds_each_generation_into_the_next_query():
    def script(prompt: str) -> str:
        # The answer names the round: one more than the guess the retrieved documents were found with.
        previous = [int(n) for n in re.findall(r"guess(\d)", prompt)]
        return f"guess{max(previous, default=0) + 1}"

    generator = CharGenerator(script)
    search = RecordingSearch()
    [record] = methods.iter_retgen(QUESTIONS[:1], generator, search, CFG)
    q = "Who founded Brimmow?"
    assert search.queries == [q, f"{q} guess1", f"{q} guess2"]
    assert record["searches"] == search.queries and record["num_searches"] == 3
    assert record["prediction"] == "guess3"  # the last round's answer
    assert len(generator.prompts) == 3


def test_ircot_interleaves_thoughts_and_retrieval_until_an_answer():
    def script(prompt: str) -> str:
        thought = prompt.split("\nThought:")[-1]
        if "Brimmow" not in last_question(prompt):
            return " I keep wondering. Forever."
        if "Ada Vell founded Brimmow." in thought:
            return " So the answer is: Ada Vell. Extra text"
        return " Ada Vell founded Brimmow. More thoughts"

    generator = CharGenerator(script)
    search = RecordingSearch()
    answered, unanswered = methods.ircot(QUESTIONS, generator, search, CFG)

    assert answered["searches"] == ["Who founded Brimmow?", " Ada Vell founded Brimmow."]
    assert answered["prediction"] == "Ada Vell."  # FlashRAG's parse: the text after the answer prefix
    assert answered["trajectory"] == " Ada Vell founded Brimmow.  So the answer is: Ada Vell."
    # The second prompt holds both retrievals' documents and the first thought after "Thought:".
    second = [p for p in generator.prompts if "Brimmow" in last_question(p)][1]
    assert "Wikipedia Title: Page  Ada Vell founded Brimmow.\n" in second
    assert second.endswith("Question: Who founded Brimmow?\nThought: Ada Vell founded Brimmow.")
    assert second.startswith(methods.IRCOT_INSTRUCTION + "\n\n" + methods.IRCOT_EXAMPLE)

    # Never answering: five steps, a retrieval after each but the last, the whole chain as prediction.
    assert len([p for p in generator.prompts if "born" in last_question(p)]) == 5
    assert unanswered["num_searches"] == 5
    assert unanswered["prediction"] == " ".join([" I keep wondering."] * 5).strip()
    assert all(call["stop"] == [".", "\n"] for call in generator.calls)


def test_ircot_answer_parse():
    assert methods.ircot_answer("x. So the answer is: Paris.") == "Paris."
    assert methods.ircot_answer(" no prefix ") == "no prefix"


def test_long_prompts_are_cut_in_the_middle():
    assert methods.fit_prompt(list(range(10)), 4) == [0, 1, 8, 9]
    assert methods.fit_prompt([1, 2], 4) == [1, 2]


@pytest.fixture
def rollout_module():
    return pytest.importorskip("research_rl.training.rollout")


def test_research_runs_the_rollout_and_reads_the_boxed_answer(rollout_module):
    def script(prompt: str) -> str:
        if "</result>" not in prompt.split("Assistant:")[-1]:  # the template's example has one
            return " <think> look it up </think> <search> founder of Brimmow </search> ignored"
        if "Brimmow" in prompt.split("User:")[-1].split("Assistant:")[0]:
            return " <think> done </think> <answer> The answer is \\[ \\boxed{Ada Vell} \\] </answer>"
        return " <think> " + "very long " * 100

    generator = CharGenerator(script)
    search = RecordingSearch()
    cfg = {**CFG, "grpo": {"max_turns": 4, "max_response_length": 400}}  # the training budgets apply
    done, cut = methods.research(QUESTIONS, generator, search, cfg)
    assert generator.prompts[0].endswith("User: Who founded Brimmow?. Assistant:")
    assert search.queries == ["founder of Brimmow", "founder of Brimmow"]
    assert done["prediction"] == "Ada Vell" and done["num_searches"] == 1
    assert "<result>\nPage founder of Brimmow\nAbout founder of Brimmow.\n</result>" in done["trajectory"]
    assert cut["prediction"] == ""  # cut by the budget: no answer, as in the original
    assert all(call["temperature"] == 0.0 for call in generator.calls)

"""The multi-turn search rollout of ReSearch, shared by GRPO training and the `research` evaluation.

It follows the original's vLLMRolloutWithSearch.generate_sequences turn by turn:
  1. every active row generates with the stop string `</search>` and a budget of
     max_response_tokens - (response tokens so far);
  2. a row that stopped on `</search>` is searched with the text between the last `<search>` and
     `</search>` of this turn's output; all pending queries of the batch go to the retriever in ONE
     batch_search call;
  3. the top-n passages' contents are joined by blank lines (stripped) and appended as the tokens of
     ` <result>\\n{passages}\\n</result>`; those tokens get env_mask 0, the model's own tokens 1;
  4. a row ends on EOS, on the response budget (response and mask cut there together), or when its
     turn budget is spent.

Two deliberate differences from the original, both needed outside its setting:
  - `max_turns` caps the searches of one rollout (the original has no cap). A row that has used its
    last search generates its final turn WITHOUT the stop string, so it still ends on EOS or budget.
  - an empty query (a `</search>` without a `<search>` before it) is not sent: the retriever service
    rejects empty queries with 400, so the row gets an empty result, ` <result>\\n\\n</result>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from research_rl.generation import Generator
from research_rl.tags import last_search_query

STOP = "</search>"
RESULT_TEMPLATE = " <result>\n{passages}\n</result>"
ENV_LOGPROB = 0.0  # placeholder log-prob for retriever tokens; they are masked out of every loss


@dataclass
class Rollout:
    """One multi-turn response to one prompt.

    completion_ids: every response token, the model's and the retriever's, in order.
    env_mask: 1 for a token the model generated, 0 for a retriever token (same length as completion_ids).
    logprobs: the sampling log-prob of each completion token (ENV_LOGPROB at retriever tokens), or None
      when the generator gives none.
    text: completion_ids decoded without skipping special tokens (EOS included), as the reward reads it.
    searches: the queries sent, in order; results: the text put inside each <result> block.
    finish_reason: "eos" (the model ended it) or "length" (the response budget cut it).
    num_turns: generation calls made for this row.
    """

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    logprobs: list[float] | None = field(default_factory=list)
    text: str = ""
    searches: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    finish_reason: str = "length"
    num_turns: int = 0

    @property
    def model_tokens(self) -> int:
        return sum(self.env_mask)


def format_passages(docs: Sequence[dict[str, Any]]) -> str:
    """The original's batch_search post-processing: each document's contents + a blank line, stripped."""
    return "".join(f"{doc['contents']}\n\n" for doc in docs).strip()


def _append(rollout: Rollout, ids: Sequence[int], mask_value: int, logprobs: Sequence[float] | None) -> None:
    rollout.completion_ids += list(ids)
    rollout.env_mask += [mask_value] * len(ids)
    if rollout.logprobs is not None:
        if logprobs is None:
            rollout.logprobs = None  # one turn without log-probs makes the whole row's unusable
        else:
            rollout.logprobs += list(logprobs)


def _search(queries: list[str], search_client: Any, top_n: int) -> list[str]:
    """One batch_search for every non-empty query of this turn; empty queries get an empty result."""
    to_send = [q for q in queries if q]
    found = iter(search_client.batch_search(to_send, top_n) if to_send else [])
    return [format_passages(next(found)) if q else "" for q in queries]


def _cut_at_budget(rollout: Rollout, budget: int) -> bool:
    """Cut the response and its mask (and log-probs) at the budget together; True if it was reached."""
    if len(rollout.completion_ids) < budget:
        return False
    rollout.completion_ids = rollout.completion_ids[:budget]
    rollout.env_mask = rollout.env_mask[:budget]
    if rollout.logprobs is not None:
        rollout.logprobs = rollout.logprobs[:budget]
    rollout.finish_reason = "length"
    return True


def run_rollouts(
    prompt_ids: Sequence[Sequence[int]],
    generator: Generator,
    search_client: Any,
    *,
    max_response_tokens: int,
    max_turns: int,
    top_n: int = 5,
    temperature: float = 1.0,
) -> list[Rollout]:
    """One rollout per prompt (repeat a prompt in `prompt_ids` to sample it several times)."""
    rollouts = [Rollout(prompt_ids=list(p)) for p in prompt_ids]
    active = list(range(len(rollouts)))
    while active:
        # A row that has spent its searches generates without the stop string (see module docstring).
        can_search = [i for i in active if len(rollouts[i].searches) < max_turns]
        final_turn = [i for i in active if len(rollouts[i].searches) >= max_turns]
        outputs: dict[int, Any] = {}
        for rows, stop in ((can_search, [STOP]), (final_turn, [])):
            if not rows:
                continue
            gens = generator.generate(
                [rollouts[i].prompt_ids + rollouts[i].completion_ids for i in rows],
                max_new_tokens=[max_response_tokens - len(rollouts[i].completion_ids) for i in rows],
                stop=stop,
                temperature=temperature,
            )
            outputs.update(zip(rows, gens, strict=True))

        searching, queries = [], []
        for i in active:
            gen, rollout = outputs[i], rollouts[i]
            rollout.num_turns += 1
            _append(rollout, gen.token_ids, 1, gen.logprobs)
            if gen.finish_reason == "stop":
                searching.append(i)
                queries.append(last_search_query(gen.text))
            else:
                rollout.finish_reason = gen.finish_reason

        results = _search(queries, search_client, top_n)
        next_active = []
        for i, query, passages in zip(searching, queries, results, strict=True):
            rollout = rollouts[i]
            rollout.searches.append(query)
            rollout.results.append(passages)
            result_ids = generator.encode(RESULT_TEMPLATE.format(passages=passages))
            _append(rollout, result_ids, 0, [ENV_LOGPROB] * len(result_ids))
            if not _cut_at_budget(rollout, max_response_tokens):
                next_active.append(i)
        for i in active:
            _cut_at_budget(rollouts[i], max_response_tokens)
        active = next_active

    for rollout in rollouts:
        rollout.text = generator.decode(rollout.completion_ids)
    return rollouts

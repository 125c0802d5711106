"""The five methods the paper compares, each over a batch of questions.

The four baselines follow the FlashRAG pipelines the original ReSearch evaluation ran
(SequentialPipeline.naive_run / run, IterativePipeline, IRCOTPipeline) with their prompts; `research`
is the trained policy's multi-turn rollout, the same code as in training, greedy.

Every method has the signature `fn(questions, generator, search_client, cfg, *, apply_chat, tokenizer)`
and returns one record per question: id, question, golden_answers, prediction (the final answer),
trajectory (everything the model generated, retrieved text included where the method interleaves it),
searches (the queries sent) and num_searches.

Prompt layout, as FlashRAG's PromptTemplate builds it: for chat models (the model entry's
`apply_chat`) [system, user] through the chat template; otherwise the system and user texts joined
with a blank line. IRCoT's template is always plain text (FlashRAG builds it with enable_chat=False).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from research_rl import prompts
from research_rl.generation import Generator

# FlashRAG's zero-shot template, as the original's run_eval.py gives it.
ZERO_SHOT_SYSTEM = (
    "Answer the question based on your own knowledge. Only give me the answer and do not output any other words."
)
# FlashRAG's default (retrieval) template; the missing space after "document." is FlashRAG's.
RAG_SYSTEM = (
    "Answer the question based on the given document."
    "Only give me the answer and do not output any other words."
    "\nThe following are given documents.\n\n{reference}"
)
USER_PROMPT = "Question: {question}"

# IRCoT's instruction and one-shot demonstration as FlashRAG's IRCOTPipeline ships them.
IRCOT_INSTRUCTION = (
    "You serve as an intelligent assistant, adept at facilitating users through complex, multi-hop reasoning "
    "across multiple documents. This task is illustrated through demonstrations, each consisting of a document "
    "set paired with a relevant question and its multi-hop reasoning thoughts. Your task is to generate one "
    "thought for current step, DON'T generate the whole thoughts at once! If you reach what you believe to be "
    'the final step, start with "So the answer is:".'
)
IRCOT_EXAMPLE = (
    "Wikipedia Title: Kurram Garhi\nKurram Garhi is a small village located near the city of Bannu, which is "
    "the part of Khyber Pakhtunkhwa province of Pakistan. Its population is approximately 35000. Barren hills "
    "are near this village. This village is on the border of Kurram Agency. Other nearby villages are Peppal, "
    "Surwangi and Amandi Kala.\n\n"
    "Wikipedia Title: 2001–02 UEFA Champions League second group stage\nEight winners and eight runners- up "
    "from the first group stage were drawn into four groups of four teams, each containing two group winners "
    "and two runners- up. Teams from the same country or from the same first round group could not be drawn "
    "together. The top two teams in each group advanced to the quarter- finals.\n\n"
    "Wikipedia Title: Satellite tournament\nA satellite tournament is either a minor tournament or event on a "
    "competitive sporting tour or one of a group of such tournaments that form a series played in the same "
    "country or region.\n\n"
    "Wikipedia Title: Trojkrsti\nTrojkrsti is a village in Municipality of Prilep, Republic of Macedonia.\n\n"
    "Wikipedia Title: Telephone numbers in Ascension Island\nCountry Code:+ 247< br> International Call "
    "Prefix: 00 Ascension Island does not share the same country code( +290) with the rest of St Helena.\n\n"
    "Question: Are both Kurram Garhi and Trojkrsti located in the same country?\n"
    "Thought: Kurram Garhi is located in the country of Pakistan. Trojkrsti is located in the country of "
    "Republic of Macedonia. Thus, they are not in the same country. So the answer is: no.\n\n"
)
IRCOT_USER = "{reference}Question: {question}\nThought:"
IRCOT_ANSWER_PREFIX = "So the answer is:"
# IRCoT generates one sentence per step.
IRCOT_STOP = (".", "\n")

# The original's eval budget (generator_max_input_len); prompts beyond it are cut in the middle.
DEFAULT_MAX_INPUT_TOKENS = 8192
DEFAULT_BATCH_SIZE = 8

Doc = dict[str, Any]
Method = Callable[..., list[dict[str, Any]]]


# ---------------------------------------------------------------- shared pieces


def format_reference(docs: Sequence[Doc], template: str | None = None) -> str:
    """FlashRAG's reference block: `Doc i(Title: t) text` lines, or the given per-document template."""
    parts = []
    for idx, doc in enumerate(docs):
        title, _, text = doc["contents"].partition("\n")
        if template is None:
            parts.append(f"Doc {idx + 1}(Title: {title}) {text}\n")
        else:
            parts.append(template.format(idx=idx, title=title, text=text))
    return "".join(parts)


def render_chat_or_plain(system: str, user: str, *, apply_chat: bool, tokenizer: Any = None) -> str:
    """[system, user] through the chat template for chat models, else the two joined by a blank line."""
    if apply_chat:
        if tokenizer is None:
            raise ValueError("a chat (apply_chat: true) prompt needs the model's tokenizer")
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n\n".join(part for part in (system, user) if part)


def fit_prompt(ids: list[int], max_input_tokens: int) -> list[int]:
    """Keep the first and last halves of an over-long prompt (FlashRAG's truncate_prompt)."""
    if len(ids) <= max_input_tokens:
        return ids
    half = max_input_tokens // 2
    return ids[:half] + ids[-half:]


def strip_eos(text: str, eos_token: str) -> str:
    return text[: -len(eos_token)] if eos_token and text.endswith(eos_token) else text


def _settings(cfg: dict[str, Any]) -> dict[str, Any]:
    ev = cfg["evaluation"]
    return {
        "max_new_tokens": int(ev.get("max_new_tokens", 256)),
        "max_input_tokens": int(ev.get("max_input_tokens", DEFAULT_MAX_INPUT_TOKENS)),
        "top_n": int(cfg.get("retriever", {}).get("topk", 5)),
    }


def _generate_texts(generator: Generator, prompt_texts: Sequence[str], cfg: dict[str, Any], stop=()) -> list[str]:
    """Greedy continuations of text prompts, EOS removed (the answer is the text the model wrote)."""
    s = _settings(cfg)
    ids = [fit_prompt(generator.encode(text), s["max_input_tokens"]) for text in prompt_texts]
    gens = generator.generate(ids, max_new_tokens=s["max_new_tokens"], stop=stop, temperature=0.0)
    return [strip_eos(g.text, generator.eos_token) for g in gens]


def clip_queries(queries: Sequence[str], cfg: dict[str, Any]) -> list[str]:
    """Cut queries to the retriever's length limit: a long generation fed back as a query must not fail."""
    limit = cfg.get("retriever", {}).get("server", {}).get("max_query_chars")
    return [query[:limit] if limit else query for query in queries]


def _record(question: dict[str, Any], prediction: str, trajectory: str, searches: list[str]) -> dict[str, Any]:
    return {
        "id": question["id"],
        "question": question["question"],
        "golden_answers": list(question["golden_answers"]),
        "prediction": prediction,
        "trajectory": trajectory,
        "searches": searches,
        "num_searches": len(searches),
    }


def _tokenizer(generator: Generator, tokenizer: Any) -> Any:
    return tokenizer if tokenizer is not None else getattr(generator, "tokenizer", None)


# ---------------------------------------------------------------- the methods


def zero_shot(
    questions: list[dict[str, Any]],
    generator: Generator,
    search_client: Any,
    cfg: dict[str, Any],
    *,
    apply_chat: bool = False,
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """Answer from the model's own knowledge; no retrieval."""
    tok = _tokenizer(generator, tokenizer)
    texts = [
        render_chat_or_plain(
            ZERO_SHOT_SYSTEM, USER_PROMPT.format(question=q["question"]), apply_chat=apply_chat, tokenizer=tok
        )
        for q in questions
    ]
    outputs = _generate_texts(generator, texts, cfg)
    return [_record(q, out.strip(), out, []) for q, out in zip(questions, outputs, strict=True)]


def naive_rag(
    questions: list[dict[str, Any]],
    generator: Generator,
    search_client: Any,
    cfg: dict[str, Any],
    *,
    apply_chat: bool = False,
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """Retrieve the top passages for the question once, then answer from them."""
    tok = _tokenizer(generator, tokenizer)
    queries = [q["question"] for q in questions]
    docs = search_client.batch_search(queries, _settings(cfg)["top_n"])
    texts = [_rag_prompt(q["question"], d, apply_chat, tok) for q, d in zip(questions, docs, strict=True)]
    outputs = _generate_texts(generator, texts, cfg)
    return [_record(q, out.strip(), out, [query]) for q, out, query in zip(questions, outputs, queries, strict=True)]


def _rag_prompt(question: str, docs: Sequence[Doc], apply_chat: bool, tokenizer: Any) -> str:
    system = RAG_SYSTEM.format(reference=format_reference(docs))
    return render_chat_or_plain(
        system, USER_PROMPT.format(question=question), apply_chat=apply_chat, tokenizer=tokenizer
    )


def iter_retgen(
    questions: list[dict[str, Any]],
    generator: Generator,
    search_client: Any,
    cfg: dict[str, Any],
    *,
    apply_chat: bool = False,
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """Iter-RetGen: each round retrieves with the question plus the previous round's answer, then answers.

    The last round's generation is the prediction (FlashRAG's IterativePipeline).
    """
    tok = _tokenizer(generator, tokenizer)
    rounds = int(cfg["evaluation"].get("iter_retgen_rounds", 3))
    top_n = _settings(cfg)["top_n"]
    searches: list[list[str]] = [[] for _ in questions]
    steps: list[list[str]] = [[] for _ in questions]
    outputs: list[str] = []
    for round_idx in range(rounds):
        if round_idx == 0:
            queries = [q["question"] for q in questions]
        else:
            queries = clip_queries([f"{q['question']} {prev}" for q, prev in zip(questions, outputs, strict=True)], cfg)
        docs = search_client.batch_search(queries, top_n)
        texts = [_rag_prompt(q["question"], d, apply_chat, tok) for q, d in zip(questions, docs, strict=True)]
        outputs = _generate_texts(generator, texts, cfg)
        for i, (query, out) in enumerate(zip(queries, outputs, strict=True)):
            searches[i].append(query)
            steps[i].append(f"[round {round_idx + 1}] {out}")
    return [
        _record(q, out.strip(), "\n".join(st), se)
        for q, out, st, se in zip(questions, outputs, steps, searches, strict=True)
    ]


def ircot(
    questions: list[dict[str, Any]],
    generator: Generator,
    search_client: Any,
    cfg: dict[str, Any],
    *,
    apply_chat: bool = False,
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """IRCoT: one chain-of-thought sentence per step, each sentence the next retrieval query.

    Stops when a thought says "So the answer is:" or after `ircot_max_steps` steps. The documents
    accumulate over steps without duplicates, in the order first retrieved (the retriever client
    returns no scores, so FlashRAG's re-sort by score is not reproduced). The chat template is not used,
    as in FlashRAG. `apply_chat` and `tokenizer` are accepted for a uniform signature.
    """
    max_steps = int(cfg["evaluation"].get("ircot_max_steps", 5))
    top_n = _settings(cfg)["top_n"]
    first = search_client.batch_search([q["question"] for q in questions], top_n)
    docs: list[list[Doc]] = [_merge_docs([], d) for d in first]
    searches: list[list[str]] = [[q["question"]] for q in questions]
    thoughts: list[list[str]] = [[] for _ in questions]
    active = list(range(len(questions)))
    for step in range(max_steps):
        if not active:
            break
        texts = [_ircot_prompt(questions[i]["question"], docs[i], thoughts[i]) for i in active]
        outputs = _generate_texts(generator, texts, cfg, stop=IRCOT_STOP)
        still_active, follow_up = [], []
        for i, thought in zip(active, outputs, strict=True):
            thoughts[i].append(thought)
            if IRCOT_ANSWER_PREFIX in thought:
                continue
            still_active.append(i)
            if thought.strip():  # an empty thought is no query; the retriever rejects empty queries
                follow_up.append(i)
        active = still_active
        # FlashRAG also retrieves after the last step, for documents no prompt will show; we do not.
        if follow_up and step < max_steps - 1:
            queries = clip_queries([thoughts[i][-1] for i in follow_up], cfg)
            for i, query, found in zip(follow_up, queries, search_client.batch_search(queries, top_n), strict=True):
                searches[i].append(query)
                docs[i] = _merge_docs(docs[i], found)
    records = []
    for q, th, se in zip(questions, thoughts, searches, strict=True):
        chain = " ".join(th)
        records.append(_record(q, ircot_answer(chain), chain, se))
    return records


def _ircot_prompt(question: str, docs: Sequence[Doc], thoughts: Sequence[str]) -> str:
    reference = format_reference(docs, "Wikipedia Title: {title}\n{text}\n\n")
    text = f"{IRCOT_INSTRUCTION}\n\n{IRCOT_EXAMPLE}\n\n" + IRCOT_USER.format(reference=reference, question=question)
    previous = " ".join(thoughts)
    # FlashRAG appends the previous thoughts to the prompt unless they are blank.
    return text + previous if previous not in ("", " ") else text


def _merge_docs(known: list[Doc], new: Sequence[Doc]) -> list[Doc]:
    seen = {doc["id"] for doc in known}
    merged = list(known)
    for doc in new:
        if doc["id"] not in seen:
            seen.add(doc["id"])
            merged.append(doc)
    return merged


def ircot_answer(chain: str) -> str:
    """The text after "So the answer is:" (FlashRAG's ircot_pred_parse), else the whole chain."""
    if IRCOT_ANSWER_PREFIX in chain:
        return chain.split(IRCOT_ANSWER_PREFIX)[1].strip()
    return chain.strip()


def research(
    questions: list[dict[str, Any]],
    generator: Generator,
    search_client: Any,
    cfg: dict[str, Any],
    *,
    apply_chat: bool = False,
    tokenizer: Any = None,
) -> list[dict[str, Any]]:
    """The trained policy's multi-turn search rollout (training's run_rollouts), greedy, with the
    training budgets (grpo.max_response_length tokens, grpo.max_turns searches).

    The prediction is the last \\boxed{} of the answer tag; a response cut by the token budget gets an
    empty prediction, as in the original's ReSearchPipeline.
    """
    from research_rl.reward import extract_boxed_answer
    from research_rl.training.rollout import run_rollouts

    tok = _tokenizer(generator, tokenizer)
    s = _settings(cfg)
    prompt_ids = [
        generator.encode(prompts.render_prompt(q["question"], apply_chat=apply_chat, tokenizer=tok)) for q in questions
    ]
    # The policy gets the budgets it was trained with (the original evaluates with its training budget).
    grpo = cfg.get("grpo", {})
    max_turns = int(grpo.get("max_turns", 8))
    budget = int(grpo.get("max_response_length", s["max_new_tokens"]))
    rollouts = run_rollouts(
        prompt_ids,
        generator,
        search_client,
        max_response_tokens=budget,
        max_turns=max_turns,
        top_n=s["top_n"],
        temperature=0.0,
    )
    records = []
    for q, rollout in zip(questions, rollouts, strict=True):
        answer = "" if rollout.finish_reason == "length" else (extract_boxed_answer(rollout.text) or "")
        records.append(_record(q, answer.strip(), rollout.text, list(rollout.searches)))
    return records


METHODS: dict[str, Method] = {
    "zero_shot": zero_shot,
    "naive_rag": naive_rag,
    "iter_retgen": iter_retgen,
    "ircot": ircot,
    "research": research,
    # The same multi-turn rollout on the untrained checkpoint: what GRPO starts from.
    "research_base": research,
}
USES_RETRIEVAL = {"naive_rag", "iter_retgen", "ircot", "research", "research_base"}

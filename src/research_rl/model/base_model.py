"""Stage build_base_model: the embedded default's stand-in for a pretrained base model.

A tiny Qwen2-architecture causal LM with a byte-level BPE tokenizer trained here on toy-world text,
then warmed up as a language model on a mix of (a) formatted ReSearch demonstrations: the base prompt
followed by a response that thinks, searches sub-questions, reads the results by quoting the passage
that answers (see read_turn) and answers in \\boxed{}, some of them after an earlier hop than the
last (early_answers), some without the box (unboxed_answers); (b) one-hop reading drills cut from
them; (c) plain toy-world passage chunks (the embedded default uses none: with them the model answers
from memory instead of reading).

The demonstrations' <result> blocks hold what the job's retriever (in-process, on the built index)
returns for each hop's query, so the model warms up on the results rollouts will really see; a
demonstration whose hop answer is not among its results is dropped rather than teach guessing.

Demonstration tokens are laid out exactly as the rollout lays them out (model segments and
` <result>\\n…\\n</result>` segments encoded separately and concatenated), and the result segments,
like the prompt, carry no loss: the model learns to write its own turns, not the retriever's.
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from pathlib import Path
from typing import Any

import torch

from research_rl import paths
from research_rl.atomic import atomic_directory
from research_rl.data import toyworld
from research_rl.data.jsonl import open_text
from research_rl.prompts import RE_SEARCH_TEMPLATE, SYSTEM_PROMPT, render_base
from research_rl.retrieval.service import retriever_for_job
from research_rl.training.rollout import RESULT_TEMPLATE, format_passages

EOS = "<|endoftext|>"
SPECIAL_TOKENS = [EOS, "<|im_start|>", "<|im_end|>"]
# Qwen2.5's chat layout (without its tool branch and default system message).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
PASSAGE_CHUNK_TOKENS = 128
DEMO_FRACTION = 0.25  # default share of each warm-up batch that is demonstrations (the rest: passage chunks)
IGNORE = -100


# ------------------------------------------------------------------------------------- text sources


def read_corpus(cfg: dict[str, Any]) -> list[dict[str, str]]:
    """The FlashRAG corpus the retriever indexes (the same passages the policy will read)."""
    with open_text(paths.corpus_path(cfg)) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def retrieved_contents(demos: list[dict[str, Any]], search_client: Any, top_n: int) -> dict[str, list[str]]:
    """The contents of the top_n passages the job's retriever returns for every hop query of the demos
    (one batch), so that demonstrations show the results a rollout will really see."""
    queries = sorted({hop["query"] for demo in demos for hop in demo["question_decomposition"]})
    found = search_client.batch_search(queries, top_n) if queries else []
    return {query: [doc["contents"] for doc in docs] for query, docs in zip(queries, found, strict=True)}


# How a worked response phrases its steps; benchmarks/base_model_reading.py cuts prompts at these.
SEARCH_PREFIX = " <think> I need to find out:"
READ_PREFIX = " <think> I found:"
ANSWER_PREFIX = "The answer to this step is"


def search_turn(query: str) -> str:
    return f"{SEARCH_PREFIX} {query} </think> <search> {query} </search>"


def read_turn(answer: str, passages: list[str]) -> str:
    """The turn after a result: quote the first retrieved passage that holds the hop's answer, then
    state the answer. Quoting is what lets a 2-layer model read: once it has started a passage (its
    title line), the rest is a copy it can follow token by token, and the answer a copy of its own
    quote; naming the answer straight out of five passages takes a lookup it learns far later."""
    quoted = next(contents for contents in passages if answer in contents)
    return f"{READ_PREFIX}\n{quoted}\n{ANSWER_PREFIX} {answer}. </think>"


def result_block(passages: list[str]) -> str:
    """The ` <result>…</result>` segment a rollout appends for these passage contents."""
    return RESULT_TEMPLATE.format(passages=format_passages([{"contents": contents} for contents in passages]))


def demonstration_segments(
    demo: dict[str, Any], results: dict[str, list[str]], answer_after: int | None = None
) -> list[tuple[str, bool]] | None:
    """A worked response as (text, is_model_text) segments, in rollout order, EOS not included; None
    when a hop's answer is not in what its search returned (the demonstration would teach guessing).
    answer_after=k: an early answer, the response stops searching after k hops and boxes the k-th hop's
    answer (wrong for the question: what a base model that trusts its first findings writes)."""
    hops = demo["question_decomposition"]
    if answer_after is not None and not 1 <= answer_after < len(hops):
        raise ValueError(f"answer_after={answer_after}: an early answer needs 1 <= k < {len(hops)} hops")
    segments: list[tuple[str, bool]] = []
    text = ""
    for hop in hops[:answer_after]:
        passages = results[hop["query"]]
        if not any(hop["answer"] in contents for contents in passages):
            return None
        segments.append((text + search_turn(hop["query"]), True))
        segments.append((result_block(passages), False))
        text = read_turn(hop["answer"], passages)
    answer = demo["answer"] if answer_after is None else hops[answer_after - 1]["answer"]
    segments.append((text + answer_turn(answer), True))
    return segments


def answer_turn(answer: str, boxed: bool = True) -> str:
    """The closing turn; unboxed, it is the format slip the reward scores 0 (no \\boxed{} in the answer)."""
    if not boxed:
        return f" <answer> The final answer is {answer}. </answer>"
    return f" <answer> The final answer is \\[ \\boxed{{{answer}}} \\] </answer>"


def unboxed_answers(
    demos: list[tuple[dict[str, Any], list[tuple[str, bool]]]], settings: dict[str, Any], seed: int
) -> list[tuple[dict[str, Any], list[tuple[str, bool]]]]:
    """The demonstrations with `unboxed_answer_fraction` of them closing without \\boxed{}. A pretrained
    base model often states its answer plainly although the template asks for a box: the format term of
    the reward (0 for it, against 0.1 or F1 for a boxed answer) is what GRPO learns first, on every
    question alike, whatever the model's reading is worth."""
    fraction = float(settings.get("unboxed_answer_fraction", 0.0))
    rng = random.Random(f"unboxed-answers:{seed}")
    out = []
    for demo, segments in demos:
        if rng.random() < fraction:
            closing, is_model = segments[-1]
            boxed = re.search(r"\\boxed\{(.*)\} \\\] </answer>$", closing)
            if boxed is None:
                raise ValueError(f"a demonstration does not close with a boxed answer: {closing[-80:]!r}")
            plain = closing[: closing.rindex(" <answer>")] + answer_turn(boxed.group(1), boxed=False)
            segments = [*segments[:-1], (plain, is_model)]
        out.append((demo, segments))
    return out


def early_answers(
    kept: list[tuple[dict[str, Any], list[tuple[str, bool]]]],
    results: dict[str, list[str]],
    settings: dict[str, Any],
    seed: int,
) -> list[tuple[dict[str, Any], list[tuple[str, bool]]]]:
    """The demonstrations with `early_answer_fraction` of the multi-hop ones cut to an early answer
    after a random number of hops. A pretrained base model tends to answer before it has searched
    every hop; without that prior the stand-in searches each hop deterministically, every rollout
    of a group is the same and GRPO has no search decision to learn (its entropy is ~0.1 nat/token)."""
    fraction = float(settings.get("early_answer_fraction", 0.0))
    rng = random.Random(f"early-answers:{seed}")
    out = []
    for demo, segments in kept:
        n_hops = len(demo["question_decomposition"])
        if n_hops > 1 and rng.random() < fraction:
            segments = demonstration_segments(demo, results, answer_after=rng.randint(1, n_hops - 1)) or segments
        out.append((demo, segments))
    return out


def reading_drills(demo: dict[str, Any], results: dict[str, list[str]]) -> list[list[tuple[str, bool]]]:
    """One short example per hop of a demonstration: its search, its results and the sentence that
    reads the hop's answer out of them (no prompt, no other hops): a quarter of a demonstration's
    tokens for the same reading lesson."""
    return [
        [
            (search_turn(hop["query"]), True),
            (result_block(results[hop["query"]]), False),
            (read_turn(hop["answer"], results[hop["query"]]), True),
        ]
        for hop in demo["question_decomposition"]
    ]


def qa_drills(demo: dict[str, Any], results: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Generic reading-comprehension examples in a neutral plain-text layout, (context, answer) pairs:
    the retrieved passages, a question and its short answer straight after it. A pretrained LM has seen
    such text; the stand-in, warmed up on ReSearch-format text only, otherwise meets the baselines'
    plain "documents, Question:" prompts (evaluation/methods.py) with nothing it can read them with.
    One drill per hop (its query over its own results) and one for the whole question over every hop's
    results, first hop first (the answer sits in the last hop's passages)."""
    drills = [
        (qa_context(results[hop["query"]], hop["query"]), hop["answer"])
        for hop in demo["question_decomposition"]
        if any(hop["answer"] in contents for contents in results[hop["query"]])
    ]
    merged: list[str] = []
    for hop in demo["question_decomposition"]:
        merged += [contents for contents in results[hop["query"]] if contents not in merged]
    if any(demo["answer"] in contents for contents in merged):
        drills.append((qa_context(merged, demo["question"]), demo["answer"]))
    return drills


def qa_context(passages: list[str], question: str) -> str:
    return "\n\n".join(passages) + f"\n\nQuestion: {question}"


# ---------------------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int) -> Any:
    """Byte-level BPE (Qwen's kind) trained on `texts`, with Qwen's special tokens and chat layout."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=EOS, pad_token=EOS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


# ------------------------------------------------------------------------------------- training data


def encode_demonstration(
    tokenizer: Any, question: str | None, segments: list[tuple[str, bool]]
) -> tuple[list[int], list[int]]:
    """input ids and labels: prompt and result segments get IGNORE, model segments and EOS their ids.
    A reading drill (question None) has no prompt and no EOS: it stops in mid-response."""
    ids = tokenizer.encode(render_base(question), add_special_tokens=False) if question is not None else []
    labels = [IGNORE] * len(ids)
    for text, is_model in segments:
        piece = tokenizer.encode(text, add_special_tokens=False)
        ids += piece
        labels += piece if is_model else [IGNORE] * len(piece)
    if question is not None:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return ids, labels


def encode_qa_drill(tokenizer: Any, context: str, answer: str) -> tuple[list[int], list[int]]:
    """The context carries no loss; the line break, the answer and EOS do (the model learns to answer on
    the next line and stop, so a prompt ending in its question gets the bare answer)."""
    ids = tokenizer.encode(context, add_special_tokens=False)
    answer_ids = tokenizer.encode("\n" + answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    return ids + answer_ids, [IGNORE] * len(ids) + answer_ids


def passage_chunks(tokenizer: Any, contents: list[str]) -> list[list[int]]:
    """The passages, EOS-separated and packed into fixed-length chunks (plain language modelling)."""
    stream: list[int] = []
    for text in contents:
        stream += tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    return [stream[i : i + PASSAGE_CHUNK_TOKENS] for i in range(0, len(stream), PASSAGE_CHUNK_TOKENS)]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        attention[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


# --------------------------------------------------------------------------------------------- model


def make_model(settings: dict[str, Any], tokenizer: Any) -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=settings["hidden_size"],
        intermediate_size=settings["intermediate_size"],
        num_hidden_layers=settings["num_hidden_layers"],
        num_attention_heads=settings["num_attention_heads"],
        num_key_value_heads=settings["num_key_value_heads"],
        max_position_embeddings=settings["max_position_embeddings"],
        tie_word_embeddings=True,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2ForCausalLM(config)


def _token_mean_loss(model: Any, groups: list[list], pad_id: int) -> torch.Tensor:
    """Mean loss over every labelled token of the groups, each group padded on its own (passage chunks
    are short and demonstrations long: padding them together would triple the compute). Only labelled
    positions go through the LM head: prompts and results are most of a demonstration's tokens, and
    the vocabulary projection and softmax are most of this model's per-token cost."""
    total, count = torch.zeros(()), 0
    for group in groups:
        if not group:
            continue
        batch = collate(group, pad_id)
        hidden = model.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        targets = batch["labels"][:, 1:]
        labelled = targets != IGNORE
        logits = model.lm_head(hidden[:, :-1][labelled])
        total = total + torch.nn.functional.cross_entropy(logits.float(), targets[labelled], reduction="sum")
        count += int(labelled.sum())
    return total / max(count, 1)


def warm_up(
    model: Any,
    demos: list,
    chunks: list,
    settings: dict[str, Any],
    pad_id: int,
    seed: int,
    drills: list = (),
    qa: list = (),
) -> list[float]:
    """AdamW with linear warm-up and cosine decay; each batch mixes demonstrations, reading drills,
    plain-text QA drills and passage chunks (`demo_fraction` of the batch demonstrations, `drill_fraction`
    reading drills, `qa_drill_fraction` QA drills, the rest chunks)."""
    steps, batch_size, lr = settings["warmup_steps"], settings["warmup_batch_size"], settings["warmup_lr"]
    rng = random.Random(f"warmup:{seed}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    n_demo = max(1, round(batch_size * settings.get("demo_fraction", DEMO_FRACTION))) if demos else 0
    n_drill = min(batch_size - n_demo, round(batch_size * settings.get("drill_fraction", 0.0))) if drills else 0
    n_qa = min(batch_size - n_demo - n_drill, round(batch_size * settings.get("qa_drill_fraction", 0.0))) if qa else 0
    losses = []
    model.train()
    for step in range(steps):
        scale = min(1.0, (step + 1) / max(1, steps // 10)) * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr * scale
        demo_batch = [rng.choice(demos) for _ in range(n_demo)]
        drill_batch = [rng.choice(drills) for _ in range(n_drill)]
        qa_batch = [rng.choice(qa) for _ in range(n_qa)]
        chunk_batch = [(c, c) for c in (rng.choice(chunks) for _ in range(batch_size - n_demo - n_drill - n_qa))]
        loss = _token_mean_loss(model, [demo_batch, drill_batch, qa_batch, chunk_batch], pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"build_base_model: step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)
    return losses


def run(cfg: dict[str, Any]) -> None:
    """Build, warm up and save the tiny base model (and its tokenizer) into paths.base_model_dir(cfg)."""
    settings, seed = cfg["base_model"], int(cfg.get("seed", 0))
    start = time.time()
    random.seed(seed)
    torch.manual_seed(seed)
    corpus = [doc["contents"] for doc in read_corpus(cfg)]
    world = toyworld.build_world(cfg["toyworld"])
    drawn = toyworld.demonstrations(world, settings.get("demonstrations", 200), seed)
    with retriever_for_job(cfg, mode="in_process") as client:
        results = retrieved_contents(drawn, client, int(cfg["retriever"].get("topk", 5)))
    kept = [(d, segments) for d in drawn if (segments := demonstration_segments(d, results))]
    answered = early_answers(kept, results, settings, seed)
    n_early = sum(new is not old for (_, new), (_, old) in zip(answered, kept, strict=True))
    answered_plain = unboxed_answers(answered, settings, seed)
    n_unboxed = sum(new is not old for (_, new), (_, old) in zip(answered_plain, answered, strict=True))
    demos = [(d["question"], segments) for d, segments in answered_plain]
    print(f"build_base_model: {len(demos)} of {len(drawn)} demonstrations kept (each hop's answer retrieved)")

    questions = [q.question for q in world.question_sets()["musique_train"]]
    # Every prompt repeats the template, so the tokenizer sees it as often as it sees demonstrations;
    # otherwise its words stay unmerged and each prompt costs twice the tokens.
    demo_texts = [render_base(q) + "".join(text for text, _ in segments) for q, segments in demos]
    texts = corpus + questions + demo_texts + [RE_SEARCH_TEMPLATE, SYSTEM_PROMPT] * len(demos)
    tokenizer = train_tokenizer(texts, settings["vocab_size"])
    model = make_model(settings, tokenizer)

    encoded_demos = [encode_demonstration(tokenizer, q, segments) for q, segments in demos]
    drills = []
    if settings.get("drill_fraction", 0.0) > 0:  # only encoded when the warm-up will draw them
        drills = [encode_demonstration(tokenizer, None, drill) for d, _ in kept for drill in reading_drills(d, results)]
    qa = []
    if settings.get("qa_drill_fraction", 0.0) > 0:
        qa = [encode_qa_drill(tokenizer, c, a) for d, _ in kept for c, a in qa_drills(d, results)]
    chunks = passage_chunks(tokenizer, corpus)
    losses = warm_up(model, encoded_demos, chunks, settings, tokenizer.pad_token_id, seed, drills, qa)

    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    summary = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "demonstrations": len(encoded_demos),
        "demonstrations_drawn": len(drawn),
        "reading_drills": len(drills),
        "qa_drills": len(qa),
        "early_answers": n_early,
        "unboxed_answers": n_unboxed,
        "final_loss": losses[-1] if losses else None,
        "seconds": round(time.time() - start, 1),
    }
    out_dir = paths.base_model_dir(cfg)
    save_atomically(model, tokenizer, summary, out_dir)
    print(f"build_base_model: {summary} -> {out_dir}")


def save_atomically(model: Any, tokenizer: Any, summary: dict[str, Any], out_dir: Path) -> None:
    """Written beside out_dir and renamed into place: a killed build never leaves a half-saved model."""
    with atomic_directory(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "build_info.json").write_text(json.dumps(summary, indent=2) + "\n")

"""How well a base model reads its search results: per-hop accuracy on held-out demonstrations.

Prints figures; it is not a test. For MuSiQue-dev questions of the toy world, each worked response is
laid out as the rollout lays it out (the real top-k results of the built index in its <result> blocks)
and cut before each step the model must get right; greedy decoding then writes
- the hop's read turn after "<think> I found:": a quote of a passage, then "The answer to this step is
  X." with the hop's answer (reading the answer out of the results),
- the next hop's query after "<think> I need to find out:" (carrying the answer into the next search).
A multi-hop answer is right only if every such step is, so these bound what GRPO can reward beyond
the format term. Run after `bash scripts/run.sh` has built the base model and the index:
    .venv/bin/python benchmarks/base_model_reading.py [--model-dir DIR] [--questions 60]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from research_rl import paths  # noqa: E402
from research_rl.config import load_config  # noqa: E402
from research_rl.data import toyworld  # noqa: E402
from research_rl.model.base_model import (  # noqa: E402
    ANSWER_PREFIX,
    READ_PREFIX,
    SEARCH_PREFIX,
    demonstration_segments,
    read_turn,
    result_block,
    retrieved_contents,
    search_turn,
)
from research_rl.prompts import render_base  # noqa: E402
from research_rl.retrieval.service import retriever_for_job  # noqa: E402


def greedy(model, tokenizer, text: str, max_new_tokens: int) -> str:
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids.shape[1] :]).strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "config" / "config.yaml"))
    parser.add_argument("--model-dir", default=None, help="default: the config's base model")
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--split", default="musique_dev", help="musique_train: the warm-up's own questions")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = load_config(args.config)
    model_dir = args.model_dir or str(paths.base_model_dir(cfg))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    world = toyworld.build_world(cfg["toyworld"])
    demos = toyworld.demonstrations(world, args.questions, int(cfg["seed"]), split=args.split)[: args.questions]
    with retriever_for_job(cfg, mode="in_process") as client:
        results = retrieved_contents(demos, client, int(cfg["retriever"]["topk"]))
    answers = queries = answer_steps = query_steps = skipped = 0
    for demo in demos:
        if demonstration_segments(demo, results) is None:  # a hop's answer was not retrieved: nothing to read
            skipped += 1
            continue
        prefix = render_base(demo["question"])
        for number, hop in enumerate(demo["question_decomposition"]):
            if number:  # the next query, written right after the previous hop's answer
                queries += greedy(model, tokenizer, prefix + SEARCH_PREFIX, 32).startswith(hop["query"])
                query_steps += 1
            prefix += search_turn(hop["query"]) + result_block(results[hop["query"]])
            read = greedy(model, tokenizer, prefix + READ_PREFIX, 96)  # the quote, then the answer
            answers += f"{ANSWER_PREFIX} {hop['answer']}." in read.split("</think>")[0]
            answer_steps += 1
            prefix += read_turn(hop["answer"], results[hop["query"]])
    print(f"model {model_dir}: {len(demos) - skipped} {args.split} questions")
    print(f"({skipped} more left out: a hop's answer was not among its results)")
    print(f"hop answer read from the results: {answers}/{answer_steps} = {answers / max(1, answer_steps):.2f}")
    print(f"next query written with it:      {queries}/{query_steps} = {queries / max(1, query_steps):.2f}")


if __name__ == "__main__":
    main()

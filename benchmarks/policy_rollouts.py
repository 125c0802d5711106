"""What a policy's rollouts earn: reward, F1, format rate and searches on a fixed set of training prompts.

Prints figures; it is not a test. The same prompts (a slice of the training parquet), the rollout and
the reward of train_grpo, sampled `--samples` times a prompt at each `--temperatures` value (0: greedy,
once). Run it on the base model and on a trained one to compare them on the same prompts, which the
per-step rewards of metrics.jsonl cannot do (each step draws other prompts, so a step's reward moves
with the mix of 2-, 3- and 4-hop questions as much as with the policy). It also splits reward and F1
by the number of searches a rollout made: whether searching on pays is what GRPO can learn from.
Run after `bash scripts/run.sh` has built the base model, the index and the training parquet:
    .venv/bin/python benchmarks/policy_rollouts.py [--model-dir DIR] [--prompts 40] [--offset 300]
        [--samples 5] [--temperatures 1.0,0.5,0]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from research_rl import paths  # noqa: E402
from research_rl.config import load_config  # noqa: E402
from research_rl.generation.hf import TransformersGenerator  # noqa: E402
from research_rl.retrieval.service import retriever_for_job  # noqa: E402
from research_rl.reward import score_with_reason  # noqa: E402
from research_rl.training.rollout import run_rollouts  # noqa: E402


def by_searches(rollouts: list, values: list[float]) -> dict[int, tuple[int, float]]:
    """{searches made: (rollouts, mean value)}."""
    groups: dict[int, list[float]] = {}
    for rollout, value in zip(rollouts, values, strict=True):
        groups.setdefault(len(rollout.searches), []).append(value)
    return {k: (len(v), round(statistics.mean(v), 3)) for k, v in sorted(groups.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO_ROOT / "config" / "config.yaml"))
    parser.add_argument("--model", default=None, help="a models: entry (default: the first)")
    parser.add_argument("--model-dir", default=None, help="default: the entry's path (the base model)")
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--offset", type=int, default=300, help="first row of the training parquet to use")
    parser.add_argument("--samples", type=int, default=5, help="rollouts a prompt at temperature > 0")
    parser.add_argument("--temperatures", default="1.0,0")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = load_config(args.config)
    entry = paths.model_entry(cfg, args.model or cfg["models"][0]["name"])
    model_dir = args.model_dir or entry["path"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    frame = pd.read_parquet(paths.train_parquet(cfg, "train", entry["name"]))
    frame = frame.iloc[args.offset : args.offset + args.prompts]
    prompts = list(frame["prompt"])
    encoded = [tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    generator = TransformersGenerator(model, tokenizer)
    settings = cfg["grpo"]
    print(f"{model_dir}: {len(frame)} prompts (rows {args.offset}-{args.offset + len(frame) - 1})")
    with retriever_for_job(cfg, mode="job") as client:
        for temperature in (float(t) for t in args.temperatures.split(",")):
            torch.manual_seed(args.seed)
            samples = 1 if temperature == 0 else args.samples
            prompt_ids = [ids for ids in encoded for _ in range(samples)]
            prompt_texts = [p for p in prompts for _ in range(samples)]
            golds = [list(g) for g in frame["golden_answers"] for _ in range(samples)]
            start = time.perf_counter()
            rollouts = run_rollouts(
                prompt_ids,
                generator,
                client,
                max_response_tokens=settings["max_response_length"],
                max_turns=settings["max_turns"],
                top_n=cfg["retriever"].get("topk", 5),
                temperature=temperature,
            )
            seconds = time.perf_counter() - start
            # The prompt text goes along as train_grpo's reward function passes it.
            scored = [
                score_with_reason(r.text, g, eos_token=tokenizer.eos_token, prompt=p)
                for r, g, p in zip(rollouts, golds, prompt_texts, strict=True)
            ]
            rewards = [reward for reward, _ in scored]
            f1 = [reward if why.startswith("correct") else 0.0 for reward, why in scored]
            print(
                f"temperature {temperature}: {len(rollouts)} rollouts in {seconds:.0f} s | "
                f"reward {statistics.mean(rewards):.3f} | F1 {statistics.mean(f1):.3f} | "
                f"format {sum(r > 0 for r in rewards) / len(rewards):.2f} | "
                f"searches {statistics.mean(len(r.searches) for r in rollouts):.2f} | "
                f"length {statistics.mean(len(r.completion_ids) for r in rollouts):.0f} tokens"
            )
            print(f"  reward by searches {{n: (rollouts, mean)}}: {by_searches(rollouts, rewards)}")
            print(f"  F1 by searches: {by_searches(rollouts, f1)}")


if __name__ == "__main__":
    main()

"""Rollout generation tokens/s: the transformers backend against vLLM, same prompts, same rollout code.

    python benchmarks/generation.py                    # CPU: vLLM from .venv-vllm (scripts/setup_vllm.sh)
    python benchmarks/generation.py --shape tiny --prompts 32 --response-tokens 256

A randomly initialised Qwen2 (--shape: `tiny` is the embedded default's size, `small` a 8-layer 512-wide
one, so the figure is not all per-step overhead) is saved with a tokenizer trained on the prompt template.
Both engines run research_rl's multi-turn rollout (run_rollouts, temperature 1.0, `</search>` stop, a fake
retriever returning a fixed passage) on the same ReSearch base prompts: TransformersGenerator in this
process, VLLMColocateGenerator on a `vllm.LLM` in the vLLM environment's python. Printed: each engine's
model tokens/s (retriever tokens excluded) and the ratio. One timed run each, after a short warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "tiny": dict(
        hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    "small": dict(
        hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2
    ),
}
QUESTIONS = [f"Who founded the city of town {i}, and where was the founder born?" for i in range(256)]


class FixedSearch:
    def batch_search(self, queries: list[str], top_n: int) -> list[list[dict]]:
        return [[{"id": "0", "contents": '"Title"\nA short passage about the title.'}] * top_n for _ in queries]


def build_checkpoint(path: Path, shape: str) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from research_rl.model.base_model import train_tokenizer
    from research_rl.prompts import RE_SEARCH_TEMPLATE

    torch.manual_seed(0)
    tokenizer = train_tokenizer([RE_SEARCH_TEMPLATE, *QUESTIONS], vocab_size=1024)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def timed_rollouts(generator, tokenizer, n_prompts: int, response_tokens: int) -> dict:
    from research_rl.prompts import render_base
    from research_rl.training.rollout import run_rollouts

    prompts = [tokenizer.encode(render_base(q), add_special_tokens=False) for q in QUESTIONS[:n_prompts]]
    settings = dict(max_response_tokens=response_tokens, max_turns=4, top_n=3, temperature=1.0)
    run_rollouts(prompts[:2], generator, FixedSearch(), **(settings | {"max_response_tokens": 8}))  # warm-up
    start = time.perf_counter()
    rollouts = run_rollouts(prompts, generator, FixedSearch(), **settings)
    seconds = time.perf_counter() - start
    tokens = sum(r.model_tokens for r in rollouts)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds}


def run_hf(checkpoint: Path, n_prompts: int, response_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from research_rl.generation.hf import TransformersGenerator

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    return timed_rollouts(TransformersGenerator(model, tokenizer), tokenizer, n_prompts, response_tokens)


def run_vllm(checkpoint: Path, n_prompts: int, response_tokens: int) -> dict:
    """In the vLLM environment: the colocate generator on an in-process vllm.LLM (as TRL builds it)."""
    from transformers import AutoTokenizer
    from vllm import LLM

    from research_rl.training.vllm_generator import VLLMColocateGenerator

    cuda = torch.cuda.is_available()
    llm = LLM(
        model=str(checkpoint),
        dtype="auto" if cuda else "float32",
        seed=0,
        gpu_memory_utilization=0.3 if cuda else 0.05,
    )
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    return timed_rollouts(VLLMColocateGenerator(llm, tokenizer), tokenizer, n_prompts, response_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--response-tokens", type=int, default=256)
    parser.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--engine", choices=["both", "vllm"], default="both", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.engine == "vllm":  # the child half, in the vLLM environment
        print(json.dumps(run_vllm(args.checkpoint, args.prompts, args.response_tokens)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model"
        build_checkpoint(checkpoint, args.shape)
        hf = run_hf(checkpoint, args.prompts, args.response_tokens)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
        cmd = [args.vllm_python, __file__, "--engine", "vllm", "--checkpoint", str(checkpoint)]
        cmd += ["--prompts", str(args.prompts), "--response-tokens", str(args.response_tokens)]
        child = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if child.returncode != 0:
            sys.exit(f"the vLLM run failed:\n{child.stderr[-4000:]}")
        vllm = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"shape {args.shape}, {args.prompts} rollouts, response budget {args.response_tokens} tokens, temperature 1")
    for name, result in (("transformers", hf), ("vllm", vllm)):
        print(
            f"{name:>12}: {result['tokens']:6d} model tokens in {result['seconds']:7.2f} s = "
            f"{result['tokens_per_s']:8.1f} tokens/s"
        )
    print(f"vLLM / transformers: {vllm['tokens_per_s'] / hf['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()

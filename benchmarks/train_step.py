"""Time GRPO's two halves on a randomly initialised model: the multi-turn rollout and the update.

    python benchmarks/train_step.py --shape tiny           # CPU, the embedded default's size
    python benchmarks/train_step.py --shape qwen2-0.5b     # GPU, Qwen2-0.5B's shape (random weights)

It prints the rollout's generated tokens/s (model tokens only) and the time of one policy-gradient
update (forward + backward + optimizer step over prompt + response, env tokens masked), per step.
Weights are random, so the sampled text is noise; the retriever is a fake returning fixed passages, so
that only the policy is timed. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from research_rl.generation.hf import TransformersGenerator
from research_rl.training.rollout import run_rollouts

SHAPES = {
    "tiny": dict(
        hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    "qwen2-0.5b": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
    ),
}
VOCAB = {"tiny": 2048, "qwen2-0.5b": 151936}
PASSAGE = '"Title"\nA short passage about the title, about twenty tokens long in most tokenizers.'


class ByteTokenizer:
    """Bytes as tokens (ids 0-255, EOS 256): no tokenizer files needed, lengths are predictable."""

    eos_token = "<eos>"
    eos_token_id = 256
    pad_token_id = 256

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace") + ("<eos>" if 256 in ids else "")


class FixedSearch:
    def batch_search(self, queries: list[str], top_n: int) -> list[list[dict]]:
        return [[{"id": str(k), "contents": PASSAGE} for k in range(top_n)] for _ in queries]


def make_model(shape: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=VOCAB[shape], max_position_embeddings=32768, **SHAPES[shape])
    return Qwen2ForCausalLM(config).to(device=device, dtype=dtype)


def update_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rollouts: list, device: str) -> float:
    """One clipped-ratio-free policy-gradient step with the env mask (the cost of GRPO's update)."""
    start = time.perf_counter()
    width = max(len(r.prompt_ids) + len(r.completion_ids) for r in rollouts)
    ids = torch.zeros((len(rollouts), width), dtype=torch.long)
    mask = torch.zeros((len(rollouts), width))
    for row, r in enumerate(rollouts):
        seq = r.prompt_ids + r.completion_ids
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, len(r.prompt_ids) : len(seq)] = torch.tensor(r.env_mask, dtype=torch.float)
    ids, mask = ids.to(device), mask.to(device)
    logits = model(ids).logits[:, :-1].float()
    logps = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    advantages = torch.randn(len(rollouts), 1, device=device)
    loss = -(advantages * logps * mask[:, 1:]).sum() / mask[:, 1:].sum().clamp(min=1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rollouts", type=int, default=20, help="prompts x num_generations per step")
    parser.add_argument("--prompt-tokens", type=int, default=200)
    parser.add_argument("--response-tokens", type=int, default=256)
    parser.add_argument("--max-turns", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = make_model(args.shape, args.device, dtype)
    tokenizer = ByteTokenizer()
    generator = TransformersGenerator(model, tokenizer, device=args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    prompts = [[(7 * i + j) % 200 + 32 for j in range(args.prompt_tokens)] for i in range(args.rollouts)]
    params = sum(p.numel() for p in model.parameters())
    print(
        f"shape {args.shape}: {params / 1e6:.1f}M parameters on {args.device} ({dtype}), {args.rollouts} rollouts/step"
    )
    rates, updates, totals = [], [], []
    for step in range(args.steps):
        start = time.perf_counter()
        rollouts = run_rollouts(
            prompts, generator, FixedSearch(), max_response_tokens=args.response_tokens, max_turns=args.max_turns
        )
        generation = time.perf_counter() - start
        tokens = sum(r.model_tokens for r in rollouts)
        update = update_step(model, optimizer, rollouts, args.device)
        rates.append(tokens / generation)
        updates.append(update)
        totals.append(generation + update)
        print(
            f"step {step + 1}: rollout {generation:.2f} s ({tokens} model tokens, {tokens / generation:.0f} tok/s), "
            f"update {update:.2f} s, step {generation + update:.2f} s"
        )
    print(
        f"median: step {statistics.median(totals):.2f} s, generated {statistics.median(rates):.0f} tok/s, "
        f"update {statistics.median(updates):.2f} s"
    )


if __name__ == "__main__":
    main()

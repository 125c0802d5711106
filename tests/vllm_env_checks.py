"""Checks that run inside the vLLM environment (.venv-vllm, made by scripts/setup_vllm.sh), with
PYTHONPATH=src; tests/test_vllm.py runs them as subprocesses and asserts on the JSON they write.

  colocate CHECKPOINT REQUESTS_JSON OUT_JSON
      VLLMColocateGenerator on a real vllm.LLM: the generations of the requests in REQUESTS_JSON.
  grpo CONFIG_YAML OUT_JSON
      TRL's GRPOTrainer with use_vllm (colocate) on the config's model entry, through research_rl's
      build_trainer, for the config's max_steps; what the rollouts saw and the metrics rows.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# CPU: the --gpu-memory-utilization fraction is of host memory here; a few hundred MB of KV cache is plenty.
CPU_MEMORY_FRACTION = 0.05


def colocate(checkpoint: str, requests_path: str, out_path: str) -> None:
    from transformers import AutoTokenizer
    from vllm import LLM

    from research_rl.training.vllm_generator import VLLMColocateGenerator

    requests = json.loads(Path(requests_path).read_text())
    llm = LLM(
        model=checkpoint,
        dtype="float32",
        seed=0,
        max_model_len=2048,
        gpu_memory_utilization=CPU_MEMORY_FRACTION,
        enforce_eager=True,  # no torch.compile warm-up: the check is about outputs, not speed
    )
    generator = VLLMColocateGenerator(llm, AutoTokenizer.from_pretrained(checkpoint))
    results = []
    for request in requests:
        generations = generator.generate(
            request["prompts"],
            max_new_tokens=request["max_new_tokens"],
            stop=request["stop"],
            temperature=request["temperature"],
        )
        results.append([g.__dict__ for g in generations])
    Path(out_path).write_text(json.dumps(results))


class FixedSearch:
    """One passage per query naming the query (retrieval is not what this check is about)."""

    def batch_search(self, queries: list[str], top_n: int) -> list[list[dict]]:
        return [[{"id": f"doc:{q}", "contents": f"Page {q}\nAbout {q}."}] for q in queries]


def grpo(config_path: str, out_path: str) -> None:
    from research_rl import paths
    from research_rl.config import load_config
    from research_rl.training import grpo as grpo_stage
    from research_rl.training.vllm_generator import VLLMColocateGenerator

    cfg = load_config(config_path)
    model = cfg["models"][0]["name"]
    out_dir = paths.trained_model_dir(cfg, model)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = grpo_stage.build_trainer(cfg, model, FixedSearch(), out_dir)
    seen: dict[str, Any] = {"generators": [], "rollouts": 0, "logprobs_returned": []}
    rollout_func = trainer.rollout_func

    def recording_rollout(prompts: list, trainer_: Any) -> dict:
        with rollout_func.generator(trainer_) as generator:
            seen["generators"].append(type(generator).__name__)
            assert isinstance(generator, VLLMColocateGenerator)
        batch = rollout_func(prompts, trainer_)
        seen["rollouts"] += len(batch["completion_ids"])
        seen["logprobs_returned"].append(batch["logprobs"] is not None)
        return batch

    trainer.rollout_func = recording_rollout
    before = _greedy(trainer)
    trainer.train()
    grpo_stage.save_final(trainer, out_dir)
    # The trainer's weights reach the LLM through the trainer's sync: moved by a visible step (two steps of a
    # tiny model's near-zero advantages move them too little to tell), then synced as before a rollout.
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for param in trainer.model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    trainer.vllm_generation.sync_weights()
    seen["vllm_before"], seen["vllm_after"], seen["hf_after"] = before, _greedy(trainer), _greedy_hf(trainer)
    seen["vllm_llm"] = type(trainer.vllm_generation.llm).__name__
    seen["metrics"] = grpo_stage.read_metrics(out_dir / grpo_stage.METRICS_FILE)
    seen["global_step"] = trainer.state.global_step
    Path(out_path).write_text(json.dumps(seen))


PROBE_PROMPT = "User: Who founded town 3?. Assistant:"


def _greedy(trainer: Any) -> dict:
    from research_rl.training.vllm_generator import VLLMColocateGenerator

    generator = VLLMColocateGenerator(trainer.vllm_generation.llm, trainer.processing_class)
    generation = generator.generate([generator.encode(PROBE_PROMPT)], max_new_tokens=16, temperature=0.0)[0]
    return {"token_ids": generation.token_ids, "logprobs": generation.logprobs}


def _greedy_hf(trainer: Any) -> dict:
    from research_rl.generation.hf import TransformersGenerator

    generator = TransformersGenerator(trainer.model, trainer.processing_class)
    generation = generator.generate([generator.encode(PROBE_PROMPT)], max_new_tokens=16, temperature=0.0)[0]
    return {"token_ids": generation.token_ids, "logprobs": generation.logprobs}


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"colocate": colocate, "grpo": grpo}[command](*arguments)

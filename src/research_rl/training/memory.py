"""Per-GPU memory plan of a GRPO run: does every model of the config fit its GPUs?

`research-rl plan-memory --config F` prints, for every `models:` entry, the bytes one training rank holds,
term by term, and fails naming the model and the term that does not fit. An estimate, meant to catch a plan
that cannot run (a 65 GB model in half a GPU, 100 GB of logits), not to replace a profiler. Sources:

- weights, grads, optimizer: the ZeRO paper (Rajbhandari et al. 2020, section 3.1): mixed-precision Adam holds
  2 bytes/param of bf16 weights, 2 of bf16 grads and 12 of fp32 state (master weights, momentum, variance);
  ZeRO stage 1 shards the 12 over the ranks, stage 2 the grads too, stage 3 the weights too; DeepSpeed's
  offload_optimizer / offload_param move the sharded fp32 state / weights to host memory.
- reference model (beta > 0): TRL keeps a frozen bf16 copy, prepared by DeepSpeed like the policy.
- activations: with gradient checkpointing each layer keeps its input, seq x hidden x 2 bytes per sequence,
  plus one layer's recomputed working set in the backward, ~34 x seq x hidden bytes per sequence (Korthikanti
  et al. 2022, "Reducing activation recomputation", the s*b*h*34 term; flash/SDPA attention drops the
  5*a*s^2 term); without checkpointing every layer keeps the 34 x seq x hidden.
- logits: TRL computes the completion's logits (logits_to_keep = completion length) for the whole micro-batch
  and takes a log-softmax of them: completion x vocab x 4 bytes per sequence (bf16 logits plus their
  temperature-scaled copy, or one float32 upcast).
- vLLM (colocate): vLLM reserves gpu_memory_utilization x the GPU for its weights (2 bytes/param over its
  tensor-parallel group) and KV cache. With sleep mode it frees that while the trainer trains (weights to
  host, cache dropped), so the two phases peak apart; without it, both sit on the GPU together.
- cuda context: ~1.5 GB per process (CUDA context, NCCL buffers, allocator slack); an estimate.

The model's shape: config.json when the model is a local directory, else the published config.json of the
Qwen2.5 checkpoints (tabled below), else the embedded default's base_model section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from research_rl.training.grpo import grpo_settings

GB = 1e9
CUDA_CONTEXT_BYTES = 1.5 * GB

# config.json of the published checkpoints (huggingface.co/Qwen/<name>/blob/main/config.json): the instruct
# models share their base model's shape. Qwen2.5 7B and 32B do not tie the LM head to the embedding.
QWEN25_7B = {
    "hidden_size": 3584,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "intermediate_size": 18944,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}
QWEN25_32B = {
    "hidden_size": 5120,
    "num_hidden_layers": 64,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "intermediate_size": 27648,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}
KNOWN_SHAPES: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-7B": QWEN25_7B,
    "Qwen/Qwen2.5-7B-Instruct": QWEN25_7B,
    "Qwen/Qwen2.5-32B": QWEN25_32B,
    "Qwen/Qwen2.5-32B-Instruct": QWEN25_32B,
}
SHAPE_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "intermediate_size",
    "vocab_size",
)


@dataclass(frozen=True)
class Shape:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool

    def num_params(self) -> int:
        """Qwen2's parameters: embedding, LM head (unless tied), per layer q/k/v (with bias), o, the gated MLP
        and two RMSNorms, and the final norm."""
        h, kv = self.hidden_size, self.num_key_value_heads * (self.hidden_size // self.num_attention_heads)
        attention = (h * h + h) + 2 * (h * kv + kv) + h * h
        mlp = 3 * h * self.intermediate_size
        layer = attention + mlp + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + head + self.num_hidden_layers * layer + h


def model_shape(cfg: dict[str, Any], entry: dict[str, Any]) -> Shape:
    """The shape of a `models:` entry (see the module docstring for the order of the sources)."""
    path = str(entry["path"])
    config_json = Path(path) / "config.json"
    if config_json.is_file():
        raw = json.loads(config_json.read_text())
    elif path in KNOWN_SHAPES:
        raw = KNOWN_SHAPES[path]
    elif "base_model" in cfg and Path(path) == Path(cfg["base_model"]["out_dir"]):
        raw = {**cfg["base_model"], "tie_word_embeddings": cfg["base_model"].get("tie_word_embeddings", False)}
    else:
        raise ValueError(
            f"models[{entry['name']}]: no shape for {path!r}: not a local directory with config.json, not one of "
            f"{sorted(KNOWN_SHAPES)} and not the config's base_model"
        )
    missing = [key for key in SHAPE_KEYS if key not in raw]
    if missing:
        raise ValueError(f"models[{entry['name']}]: the shape of {path!r} lacks {missing}")
    return Shape(**{key: int(raw[key]) for key in SHAPE_KEYS}, tie_word_embeddings=bool(raw.get("tie_word_embeddings")))


@dataclass(frozen=True)
class ZeroPlan:
    stage: int
    offload_optimizer: bool
    offload_param: bool


def zero_plan(deepspeed: str | None) -> ZeroPlan:
    """ZeRO stage and offloads from the DeepSpeed json the config names (no DeepSpeed: stage 0, DDP)."""
    if not deepspeed:
        return ZeroPlan(0, False, False)
    path = Path(deepspeed)
    if not path.is_file():
        raise ValueError(f"grpo.deepspeed: {deepspeed!r} is not a file")
    zero = json.loads(path.read_text()).get("zero_optimization", {})

    def offloaded(key: str) -> bool:
        return str(zero.get(key, {}).get("device", "none")) in ("cpu", "nvme")

    return ZeroPlan(int(zero.get("stage", 0)), offloaded("offload_optimizer"), offloaded("offload_param"))


@dataclass(frozen=True)
class MemoryPlan:
    model: str
    gpu_bytes: float
    ranks: int
    sequences_per_micro_batch: int
    terms: dict[str, float]  # bytes per GPU
    phases: dict[str, tuple[str, ...]]  # phase -> the terms on the GPU at once

    def phase_bytes(self, phase: str) -> float:
        return sum(self.terms[term] for term in self.phases[phase])

    def problems(self) -> list[str]:
        """Why this plan does not fit, naming the model and the term; empty when it fits."""
        out = []
        if "vllm_weights" in self.terms and self.terms["vllm_weights"] > self.terms["vllm_reserved"]:
            out.append(
                f"{self.model}: vllm_weights {self.terms['vllm_weights'] / GB:.1f} GB exceed the vllm_reserved "
                f"{self.terms['vllm_reserved'] / GB:.1f} GB (raise vllm_tensor_parallel_size or "
                "vllm_gpu_memory_utilization)"
            )
        for phase in self.phases:
            total = self.phase_bytes(phase)
            if total > self.gpu_bytes:
                term = max(self.phases[phase], key=lambda t: self.terms[t])
                out.append(
                    f"{self.model}: the {phase} phase needs {total / GB:.1f} GB per GPU, more than the "
                    f"{self.gpu_bytes / GB:.0f} GB of grpo.gpu_memory_gb; largest term: {term} "
                    f"{self.terms[term] / GB:.1f} GB"
                )
        return out


def plan_model(cfg: dict[str, Any], entry: dict[str, Any]) -> MemoryPlan:
    """Per-GPU bytes of one model's GRPO run under its per-size settings."""
    g = grpo_settings(cfg, entry["name"])
    shape = model_shape(cfg, entry)
    params = shape.num_params()
    ranks = int(g.get("num_nodes", 1)) * max(1, int(g.get("gpus_per_node", 1)))
    zero = zero_plan(g.get("deepspeed"))
    sequences = int(g.get("per_device_batch_prompts", g["train_batch_prompts"])) * int(g["num_generations"])
    seq_len = int(g["max_prompt_length"]) + int(g["max_response_length"])
    h, layers = shape.hidden_size, shape.num_hidden_layers
    weight_bytes = 2 if g.get("bf16", False) else 4

    def sharded(total: float, from_stage: int, offloaded: bool = False) -> float:
        if offloaded:
            return 0.0
        return total / ranks if zero.stage >= from_stage else total

    terms = {
        "weights": sharded(weight_bytes * params, 3, zero.offload_param),
        "grads": sharded(weight_bytes * params, 2),
        "optimizer": sharded(12 * params, 1, zero.offload_optimizer),
    }
    if g.get("beta", 0) > 0:
        terms["ref_weights"] = sharded(weight_bytes * params, 3, zero.offload_param)
    per_layer_working = 34 * seq_len * h
    if g.get("gradient_checkpointing", False):
        per_sequence = layers * seq_len * h * weight_bytes + per_layer_working
    else:
        per_sequence = layers * per_layer_working
    terms["activations"] = sequences * per_sequence
    terms["logits"] = sequences * int(g["max_response_length"]) * shape.vocab_size * 4
    terms["cuda_context"] = CUDA_CONTEXT_BYTES
    gpu_bytes = float(g.get("gpu_memory_gb", 80)) * GB
    persistent = tuple(t for t in ("weights", "grads", "optimizer", "ref_weights") if t in terms)
    train = (*persistent, "activations", "logits", "cuda_context")
    phases: dict[str, tuple[str, ...]] = {"training": train}
    if g.get("use_vllm", False) and g.get("vllm_mode", "colocate") == "colocate":
        terms["vllm_reserved"] = float(g.get("vllm_gpu_memory_utilization", 0.3)) * gpu_bytes
        terms["vllm_weights"] = 2 * params / int(g.get("vllm_tensor_parallel_size", 1))
        if g.get("vllm_enable_sleep_mode", False):
            phases["generation"] = (*persistent, "vllm_reserved", "cuda_context")
        else:
            phases["training"] = (*train, "vllm_reserved")
    return MemoryPlan(entry["name"], gpu_bytes, ranks, sequences, terms, phases)


def plan_memory(cfg: dict[str, Any]) -> list[MemoryPlan]:
    return [plan_model(cfg, entry) for entry in cfg["models"]]


def check_memory(cfg: dict[str, Any]) -> list[str]:
    """Every problem of every model (empty when all fit)."""
    return [problem for plan in plan_memory(cfg) for problem in plan.problems()]


def format_table(plans: list[MemoryPlan]) -> str:
    """One row per model: GB per GPU for each term and each phase."""
    terms = [
        "weights",
        "grads",
        "optimizer",
        "ref_weights",
        "activations",
        "logits",
        "cuda_context",
        "vllm_weights",
        "vllm_reserved",
    ]
    header = ["model", "ranks", "seqs/micro", *terms, "training", "generation", "gpu"]
    rows = [header]
    for plan in plans:
        cells = [plan.model, str(plan.ranks), str(plan.sequences_per_micro_batch)]
        cells += [f"{plan.terms[t] / GB:.1f}" if t in plan.terms else "-" for t in terms]
        cells += [f"{plan.phase_bytes(p) / GB:.1f}" if p in plan.phases else "-" for p in ("training", "generation")]
        cells.append(f"{plan.gpu_bytes / GB:.0f}")
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
        for row in rows
    ]
    note = (
        "GB per GPU; vllm_weights sit inside vllm_reserved; with vLLM sleep mode the training and generation "
        "phases peak apart"
    )
    return "\n".join([*lines, note])

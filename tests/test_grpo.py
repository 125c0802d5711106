"""GRPO on TRL: the group advantage, a short real run (metrics, checkpoints, final model), resume after
SIGKILL.

No learning check: issue 5 asks for a test that GRPO raises the embedded default's reward, and no setting
tried here does so measurably (issue 5's note; benchmarks/policy_rollouts.py measures a policy on fixed
prompts). A test asserting it would fail; one marked xfail would assert nothing, so there is none."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from research_rl import paths
from research_rl.config import load_config
from research_rl.data import toyworld
from research_rl.prompts import render_base
from research_rl.training import grpo
from research_rl.training.advantages import group_advantages

REPO = Path(__file__).resolve().parents[1]
METRIC_KEYS = {"step", "reward_mean", "reward_std", "f1", "format_rate", "searches_per_rollout", "response_length"}


# ------------------------------------------------------------------------------------------ advantage


def test_loss_aggregation_maps_to_trl_loss_types(tmp_path):
    cfg = load_config(REPO / "config" / "config.yaml")
    cfg["grpo"].pop("loss_aggregation", None)
    assert grpo.grpo_config(cfg, tmp_path).loss_type == "bnpo"  # the original's token-mean, the default
    cfg["grpo"]["loss_aggregation"] = "seq_mean_token_mean"
    assert grpo.grpo_config(cfg, tmp_path).loss_type == "grpo"


def test_group_advantages_on_a_fixed_group():
    rewards = [1.0, 0.0, 0.5, 0.5, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2]
    adv = group_advantages(rewards, group_size=5)
    first = torch.tensor(rewards[:5])
    std = first.std()  # unbiased, like verl's torch.std: sqrt(0.628 / 4)
    assert std.item() == pytest.approx((0.628 / 4) ** 0.5)
    assert torch.allclose(adv[:5], (first - 0.42) / (std + 1e-6))
    assert torch.all(adv[5:] == 0)  # a group with one reward value teaches nothing
    assert adv[:5].sum().item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size=3)


def test_reward_function_scores_the_decoded_response_with_its_eos(tiny_tokenizer):
    reward = grpo.make_reward_function(tiny_tokenizer)
    body = " <think> t </think> <search> q </search> <result>\np\n</result> <think> u </think>"
    body += " <answer> The final answer is \\[ \\boxed{Brimmow} \\] </answer>"
    ended = tiny_tokenizer.encode(body) + [tiny_tokenizer.eos_token_id]
    cut = tiny_tokenizer.encode(body)  # no EOS: cut by the budget
    logged = {}
    rewards = reward(
        prompts=[render_base("Who founded Brimmow?")] * 3,
        completions=["ignored"] * 3,
        completion_ids=[ended, cut, ended],
        golden_answers=[["Brimmow"], ["Brimmow"], ["elsewhere"]],
        num_searches=[1, 1, 1],
        response_tokens=[len(ended), len(cut), len(ended)],
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    assert rewards == [1.0, 0.0, 0.1]
    assert logged["format_rate"] == pytest.approx(2 / 3) and logged["f1"] == pytest.approx(1 / 3)
    assert logged["searches_per_rollout"] == 1.0


# ------------------------------------------------------------------------------------------ workspace


def make_workspace(root: Path, *, warmup_steps: int) -> Path:
    """A config under `root` with a toy corpus, a BM25 index, a base model and training parquet."""
    from research_rl.model import base_model
    from research_rl.retrieval import index

    cfg = copy.deepcopy(load_config(REPO / "config" / "config.yaml"))
    cfg.pop("_config_path", None)
    cfg["paths"] = {"data": str(root / "data"), "results": str(root / "results")}
    cfg["toyworld"]["out_dir"] = str(root / "data" / "toyworld")
    cfg["retriever"]["kind"] = "bm25"
    cfg["base_model"].update(out_dir=str(root / "base"), warmup_steps=warmup_steps)
    cfg["toyworld"].update(n_people=40, n_cities=8, n_countries=3, n_organizations=6, n_works=15)
    cfg["toyworld"]["questions"] = {k: 10 for k in cfg["toyworld"]["questions"]} | {"musique_train": 40}
    cfg["base_model"].update(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    cfg["base_model"].update(num_attention_heads=2, num_key_value_heads=1, demonstrations=20)
    cfg["models"][0]["path"] = cfg["base_model"]["out_dir"]
    world = toyworld.build_world(cfg["toyworld"])
    corpus = paths.corpus_path(cfg)
    corpus.parent.mkdir(parents=True, exist_ok=True)
    corpus.write_text("".join(json.dumps({"id": p.id, "contents": p.contents}) + "\n" for p in world.passages))
    index.run(cfg, "bm25")
    base_model.run(cfg)
    rows = [
        {
            "id": toyworld.musique_id(q),
            "question": q.question,
            "prompt": render_base(q.question),
            "golden_answers": list(q.aliases),
            "data_source": "musique",
        }
        for q in world.question_sets()["musique_train"]
    ]
    parquet = paths.train_parquet(cfg, "train", cfg["models"][0]["name"])
    parquet.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(parquet)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def with_grpo(config_path: Path, results: Path, **grpo_settings) -> dict:
    cfg = load_config(config_path)
    cfg["paths"]["results"] = str(results)
    cfg["grpo"].update(grpo_settings)
    return cfg


SHORT = dict(num_generations=3, train_batch_prompts=2, per_device_batch_prompts=2, max_response_length=32, max_turns=2)


@pytest.fixture(scope="module")
def small_workspace(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("grpo"), warmup_steps=3)


def test_short_run_writes_metrics_checkpoints_and_final(small_workspace, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = with_grpo(small_workspace, tmp_path, max_steps=2, save_steps=1, **SHORT)
    grpo.run(cfg, "tiny-base")
    out = paths.trained_model_dir(cfg, "tiny-base")
    rows = grpo.read_metrics(out / grpo.METRICS_FILE)
    assert [row["step"] for row in rows] == [1, 2]
    assert all(METRIC_KEYS <= row.keys() for row in rows)
    assert all(0 <= row["format_rate"] <= 1 and 0 <= row["reward_mean"] <= 1 for row in rows)
    assert all(0 < row["response_length"] <= 32 for row in rows)
    for step in (1, 2):
        checkpoint = out / f"checkpoint-{step}"
        assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "rng_state.pth").is_file()
        assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == step
    assert grpo.latest_checkpoint(out).endswith("checkpoint-2")
    final = out / grpo.FINAL_DIR
    assert (final / "model.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(final)
    assert AutoTokenizer.from_pretrained(final).eos_token == "<|endoftext|>"


def test_trl_advantages_match_group_advantages(small_workspace, tmp_path):
    """TRL's scale_rewards="group" is the original's advantage with eps 1e-4 instead of 1e-6."""
    cfg = with_grpo(small_workspace, tmp_path, max_steps=1, save_steps=5, **SHORT)
    with grpo._search_client(cfg, None) as client:
        trainer = grpo.build_trainer(cfg, "tiny-base", client, tmp_path / "run")
        captured = {}
        original = trainer._generate_and_score_completions

        def capture(inputs):
            output = original(inputs)
            captured["rewards"] = list(trainer._logs["rewards"]["re_search_reward"])
            captured["advantages"] = list(trainer._logs["advantages"])
            return output

        trainer._generate_and_score_completions = capture
        # Reward spread inside groups is what is compared; fake varied rewards so groups are not all zero.
        fake = [0.0, 0.1, 1.0, 0.5, 0.1, 0.1]
        trainer.reward_funcs[0] = lambda **kwargs: fake[: len(kwargs["completion_ids"])]
        trainer.reward_func_names = ["re_search_reward"]
        trainer.train()
    assert captured["rewards"] == pytest.approx(fake)
    ours = group_advantages(captured["rewards"], group_size=3, eps=1e-4)
    assert torch.allclose(torch.tensor(captured["advantages"]), ours, atol=1e-5)


def test_metrics_truncated_to_the_resumed_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4, 5)))
    grpo.truncate_metrics(path, 2)
    assert [row["step"] for row in grpo.read_metrics(path)] == [1, 2]


def test_incomplete_checkpoint_is_not_resumed_from(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert grpo.latest_checkpoint(tmp_path).endswith("checkpoint-4")


RUN_SCRIPT = """
import sys
from research_rl.config import load_config
from research_rl.training import grpo
cfg = load_config(sys.argv[1])
grpo.run(cfg, "tiny-base")
"""


def test_resume_after_sigkill_reaches_the_same_final_step(small_workspace, tmp_path):
    cfg = with_grpo(small_workspace, tmp_path / "results", max_steps=4, save_steps=2, **SHORT)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "_config_path"}, sort_keys=False))
    out = paths.trained_model_dir(cfg, "tiny-base")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-c", RUN_SCRIPT, str(config)]

    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while grpo.latest_checkpoint(out) is None and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = grpo.latest_checkpoint(out)
    assert killed_at is not None and not (out / grpo.FINAL_DIR).exists(), "the kill came too late to test resume"
    resumed_from = grpo.checkpoint_step(killed_at)

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {killed_at}" in rerun.stdout
    steps = [row["step"] for row in grpo.read_metrics(out / grpo.METRICS_FILE)]
    assert steps == [1, 2, 3, 4], f"resumed from step {resumed_from}"
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and (out / grpo.FINAL_DIR / "model.safetensors").is_file()


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_one_step_makes_positive_advantage_rollouts_likelier_and_the_others_less(
    small_workspace, tmp_path, aggregation
):
    """The direction of TRL's update on batches from our rollout_func: after one step on fixed rewards, the
    model tokens of each rollout with a positive advantage are likelier than before and those with a
    negative one less likely (policy loss only: beta 0). The 3-step base rarely searches, so these rollouts
    are mostly single-turn; test_rollout covers the mask of multi-turn ones."""
    cfg = with_grpo(
        small_workspace,
        tmp_path,
        max_steps=1,
        save_steps=5,
        learning_rate=1e-2,
        beta=0.0,
        **SHORT,
        loss_aggregation=aggregation,
    )
    temperature = cfg["grpo"]["temperature"]

    def model_token_logprobs(lm, batch: dict) -> list[float]:
        """Each rollout's summed log-prob of its model tokens (env_mask 1) under `lm`, at the rollout's temperature."""
        sums = []
        for prompt, completion, mask in zip(
            batch["prompt_ids"], batch["completion_ids"], batch["env_mask"], strict=True
        ):
            ids = torch.tensor([prompt + completion])
            with torch.no_grad():
                logits = lm(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
            logps = torch.log_softmax(logits, -1).gather(1, torch.tensor(completion).unsqueeze(1)).squeeze(1)
            sums.append(float((logps * torch.tensor(mask, dtype=torch.float)).sum()))
        return sums

    with grpo._search_client(cfg, None) as client:
        trainer = grpo.build_trainer(cfg, "tiny-base", client, tmp_path / "run")
        rollout_func, seen = trainer.rollout_func, {}

        def recording_rollout(prompts: list, trainer_: object) -> dict:
            # Scored here, before the update (a deep copy of the model would share TRL's patched forward).
            seen["batch"] = rollout_func(prompts, trainer_)
            seen["before"] = model_token_logprobs(trainer.model, seen["batch"])
            return seen["batch"]

        trainer.rollout_func = recording_rollout
        fake = [0.0, 0.1, 1.0, 0.5, 0.1, 0.1]
        trainer.reward_funcs[0] = lambda **kwargs: fake[: len(kwargs["completion_ids"])]
        trainer.reward_func_names = ["re_search_reward"]
        trainer.train()
        after = model_token_logprobs(trainer.model, seen["batch"])
    advantages = group_advantages(fake, group_size=3, eps=1e-4).tolist()
    changes = [a - b for a, b in zip(after, seen["before"], strict=True)]
    assert all(change * advantage > 0 for change, advantage in zip(changes, advantages, strict=True)), (
        f"advantages {[round(a, 2) for a in advantages]}, log-prob changes {[round(c, 3) for c in changes]}"
    )

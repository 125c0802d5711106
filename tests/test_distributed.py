"""train_grpo's launcher (training/launch.py) and GRPO over two processes on CPU.

The two-process test runs the real engine: `accelerate launch --multi_gpu --num_processes 2` on CPU (torchrun,
gloo, DDP) of the
tiny model with our multi-turn SearchRollout, then kills the launcher after a checkpoint and reruns it.
A probe script around grpo.run records, on each rank, the prompts its rollout_func got and a checksum of
its parameters after training (nothing in the training itself is replaced)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
import torch
import yaml
from test_grpo import make_workspace, with_grpo

from research_rl import paths
from research_rl.config import load_config
from research_rl.training import grpo, launch

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ hostlist


@pytest.mark.parametrize(
    "hostlist, hosts",
    [
        ("gpu07", ["gpu07"]),
        ("node[01-03,05]", ["node01", "node02", "node03", "node05"]),
        ("a[8-10]", ["a8", "a9", "a10"]),
        ("node[1-2],login1,gpu[008-009]-ib", ["node1", "node2", "login1", "gpu008-ib", "gpu009-ib"]),
    ],
)
def test_slurm_hostlists_expand_in_order(hostlist, hosts):
    assert launch.parse_hostlist(hostlist) == hosts


@pytest.mark.parametrize("bad", ["node[01-", "node[a-b]", "node[1-2]x[3]"])
def test_malformed_hostlist_is_an_error(bad):
    with pytest.raises(ValueError, match="hostlist"):
        launch.parse_hostlist(bad)


# ------------------------------------------------------------------------------------------ commands


def _cfg(**grpo_settings) -> dict:
    cfg = load_config(REPO / "config" / "config.yaml")
    cfg["grpo"].update(grpo_settings)
    return cfg


def _option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_embedded_default_is_one_plain_process():
    cfg = _cfg()
    assert launch.num_processes(cfg) == 1
    cmd = launch.render(cfg, Path("config/config.yaml"), "tiny-base")
    assert cmd[1:] == ["-m", "research_rl.cli", "train-grpo", "--config", "config/config.yaml", "--model", "tiny-base"]


def test_one_node_renders_accelerate_launch_with_the_deepspeed_file():
    cfg = _cfg(num_nodes=1, gpus_per_node=8, deepspeed="config/deepspeed/zero3.json", bf16=True)
    cmd = launch.accelerate_command(cfg, Path("c.yaml"), "m", env={}, cpu=False)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert _option(cmd, "--num_processes") == "8" and _option(cmd, "--num_machines") == "1"
    assert _option(cmd, "--deepspeed_config_file") == "config/deepspeed/zero3.json"
    assert _option(cmd, "--mixed_precision") == "bf16" and "--cpu" not in cmd
    assert cmd[-7:] == ["-m", "research_rl.cli", "train-grpo", "--config", "c.yaml", "--model", "m"]


def test_multi_node_runs_one_launcher_per_node_under_srun():
    cfg = _cfg(num_nodes=4, gpus_per_node=8, deepspeed="config/deepspeed/zero3.json")
    outer = launch.render(cfg, Path("c.yaml"), "tiny-base", env={"SLURM_CPUS_ON_NODE": "96"})
    assert outer[:4] == ["srun", "--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert "--gpus-per-node=8" in outer and "--cpus-per-task=96" in outer and "--overlap" in outer
    assert outer[-1] == "--node-task" and "launch-train" in outer
    env = {"SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "gpu[03-05,09]", "MASTER_PORT": "29911"}
    inner = launch.render(cfg, Path("c.yaml"), "tiny-base", node_task=True, env=env)
    assert _option(inner, "--num_processes") == "32" and _option(inner, "--num_machines") == "4"
    assert _option(inner, "--machine_rank") == "2" and _option(inner, "--main_process_ip") == "gpu03"
    assert _option(inner, "--main_process_port") == "29911"


def test_cpu_host_uses_the_torchrun_launcher_not_accelerates_single_process_cpu_flag():
    cmd = launch.accelerate_command(_cfg(gpus_per_node=2, bf16=True), Path("c.yaml"), "m", env={}, cpu=True)
    assert "--multi_gpu" in cmd and "--cpu" not in cmd and _option(cmd, "--num_processes") == "2"
    assert _option(cmd, "--mixed_precision") == "no"


def test_dry_run_prints_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "research_rl.cli", "launch-train", "--config", "config/paper.yaml", "--model",
         "Qwen2.5-7B", "--dry-run"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "accelerate.commands.launch" in done.stdout and "--num_processes 8" in done.stdout
    assert "--deepspeed_config_file config/deepspeed/zero3.json" in done.stdout


def test_paper_plan_launches_8_processes_per_node_for_7b_and_2_nodes_with_offload_for_32b():
    cfg = load_config(REPO / "config" / "paper.yaml")
    env = {"SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_NODEID": "1"}
    seven = launch.render(cfg, Path("config/paper.yaml"), "Qwen2.5-7B", env=env)
    assert _option(seven, "--num_processes") == "8" and _option(seven, "--num_machines") == "1"
    assert _option(seven, "--deepspeed_config_file") == "config/deepspeed/zero3.json"
    # 32B: grpo.per_size.32b, one launcher task per node, each starting 8 of the 16 processes.
    outer = launch.render(cfg, Path("config/paper.yaml"), "Qwen2.5-32B-Instruct", env=env)
    assert outer[0] == "srun" and "--nodes=2" in outer and "--ntasks-per-node=1" in outer
    assert "--gpus-per-node=8" in outer
    inner = launch.render(cfg, Path("config/paper.yaml"), "Qwen2.5-32B-Instruct", node_task=True, env=env)
    assert _option(inner, "--num_processes") == "16" and _option(inner, "--num_machines") == "2"
    assert _option(inner, "--machine_rank") == "1" and _option(inner, "--main_process_ip") == "gpu01"
    assert _option(inner, "--deepspeed_config_file") == "config/deepspeed/zero3_offload.json"


def test_accelerate_yaml_naming_another_deepspeed_file_is_an_error():
    cfg = _cfg(
        gpus_per_node=8,
        accelerate_config=str(REPO / "config/accelerate/zero2_1node.yaml"),
        deepspeed=str(REPO / "config/deepspeed/zero3.json"),
    )
    with pytest.raises(ValueError, match="grpo.accelerate_config"):
        launch.render(cfg, Path("c.yaml"), "tiny-base", env={})
    with pytest.raises(FileNotFoundError, match="grpo.deepspeed"):
        launch.render(_cfg(gpus_per_node=8, deepspeed="config/deepspeed/missing.json"), Path("c"), "tiny-base", env={})


def test_shipped_accelerate_yamls_name_existing_deepspeed_files():
    for path in (REPO / "config" / "accelerate").glob("*.yaml"):
        named = launch._deepspeed_file_of(path)
        assert named and (REPO / named).is_file(), path


# ------------------------------------------------------------------------------------------ batch sizes


def test_grpo_config_keeps_the_global_batch_over_ranks(tmp_path):
    """train_batch_prompts x num_generations completions per optimizer step whatever the world size;
    each rank's micro-batch holds whole groups (TRL gathers rewards over ranks before the group mean)."""
    cfg = _cfg(num_generations=5, train_batch_prompts=8, per_device_batch_prompts=2)
    for world in (1, 2, 4):
        args = grpo.grpo_config(cfg, tmp_path, world)
        per_step = args.per_device_train_batch_size * world * args.gradient_accumulation_steps
        assert per_step == 8 * 5 and args.generation_batch_size == 8 * 5
        assert args.per_device_train_batch_size % 5 == 0
    with pytest.raises(ValueError, match="per_device_batch_prompts x 3 processes"):
        grpo.grpo_config(cfg, tmp_path, 3)


# ------------------------------------------------------------------------------------------ deepspeed


def test_paper_deepspeed_config_is_accepted_by_the_engine(tmp_path, monkeypatch):
    """DeepSpeed's own config classes on the trainer's values for config/paper.yaml: every "auto" resolved
    and the batch arithmetic (train = micro x accumulation x world) checked by DeepSpeedConfig."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    monkeypatch.chdir(REPO)
    cfg = load_config(REPO / "config" / "paper.yaml")
    world = launch.num_processes(cfg)
    args = grpo.grpo_config(cfg, tmp_path, world)
    ds = HfTrainerDeepSpeedConfig(cfg["grpo"]["deepspeed"])
    monkeypatch.setattr(type(args), "world_size", property(lambda self: world))
    ds.trainer_config_process(args)
    # The model's hidden size fills the ZeRO-3 bucket sizes: Qwen2.5-7B's, from its config.json.
    qwen7b = SimpleNamespace(config=SimpleNamespace(hidden_size=3584))
    ds.trainer_config_finalize(args, model=qwen7b, num_training_steps=10)
    resolved = ds.config
    assert resolved["train_micro_batch_size_per_gpu"] == args.per_device_train_batch_size
    assert resolved["gradient_accumulation_steps"] == args.gradient_accumulation_steps
    assert resolved["train_batch_size"] == cfg["grpo"]["train_batch_prompts"] * cfg["grpo"]["num_generations"]
    assert resolved["bf16"]["enabled"] is True and resolved["zero_optimization"]["stage"] == 3
    assert resolved["zero_optimization"]["reduce_bucket_size"] == 3584 * 3584
    # No process group here: the engine's rank query is answered as rank 0 of `world` data-parallel ranks.
    import deepspeed.runtime.config as ds_config

    monkeypatch.setattr(ds_config.dist, "get_rank", lambda *args, **kwargs: 0)
    engine = DeepSpeedConfig(resolved, mpu=SimpleNamespace(get_data_parallel_world_size=lambda: world))
    assert engine.train_batch_size == resolved["train_batch_size"] and engine.zero_optimization_stage == 3


# ------------------------------------------------------------------------------------------ two processes


PROBE = """
import functools, hashlib, json, os, sys
from pathlib import Path
import torch
from research_rl.config import load_config
from research_rl.retrieval.client import InProcessSearchClient
from research_rl.retrieval.searcher import load_searcher
from research_rl.training import grpo

probe = Path(os.environ["PROBE_DIR"]); probe.mkdir(exist_ok=True)
rank = int(os.environ["RANK"])
rollout = grpo.SearchRollout.__call__

def checksum(trainer):
    digest = hashlib.sha256()
    for name, p in sorted(trainer.accelerator.unwrap_model(trainer.model).named_parameters()):
        digest.update(name.encode()); digest.update(p.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()

def recording(self, prompts, trainer):
    start = probe / f"params-start-{rank}.txt"
    if not start.exists():
        start.write_text(checksum(trainer))
    row = {"rank": rank, "world": int(os.environ["WORLD_SIZE"]), "step": trainer.state.global_step,
           "prompts": [hashlib.sha1(p.encode()).hexdigest()[:12] for p in prompts]}
    with open(probe / f"rank-{rank}.jsonl", "a") as handle:
        handle.write(json.dumps(row) + "\\n")
    return rollout(self, prompts, trainer)

save_final = grpo.save_final

def checksummed(trainer, out_dir):
    (probe / f"params-{rank}.txt").write_text(checksum(trainer))
    save_final(trainer, out_dir)

# The tiny model's rollouts all score 0 (no update would follow): spread the rewards over completions so
# that every step has nonzero advantages and each rank's gradient differs before DDP averages them.
make_reward = grpo.make_reward_function

def spread_reward_function(tokenizer):
    reward = make_reward(tokenizer)

    @functools.wraps(reward)
    def spread(*args, completion_ids, **kwargs):
        scored = reward(*args, completion_ids=completion_ids, **kwargs)
        return [r + (sum(ids) % 7) / 7 for r, ids in zip(scored, completion_ids)]

    return spread

grpo.SearchRollout.__call__ = recording
grpo.save_final = checksummed
grpo.make_reward_function = spread_reward_function
cfg = load_config(sys.argv[sys.argv.index("--config") + 1])
grpo.run(cfg, sys.argv[sys.argv.index("--model") + 1], search_client=InProcessSearchClient(load_searcher(cfg)))
"""


# Two prompts a step, one per rank, each rolled out 3 times; short responses.
SHORT_DIST = dict(
    num_generations=3, train_batch_prompts=2, per_device_batch_prompts=1, max_response_length=32, max_turns=2
)
MAX_STEPS = 8  # a step takes ~0.3 s here: room to kill the first run between checkpoint-2 and the end


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    return make_workspace(tmp_path_factory.mktemp("dist"), warmup_steps=3)


def test_launch_train_runs_train_grpo_on_two_processes(workspace, tmp_path):
    """The command the train_grpo rule runs, end to end: launch-train -> accelerate launch -> train-grpo on
    each rank (each with its own retriever service, as the job's retriever mode picks for WORLD_SIZE 2)."""
    cfg = with_grpo(workspace, tmp_path / "results", gpus_per_node=2, max_steps=1, save_steps=1, **SHORT_DIST)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "_config_path"}, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(_free_port())}
    cmd = [sys.executable, "-m", "research_rl.cli", "launch-train", "--config", str(config), "--model", "tiny-base"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "accelerate.commands.launch" in done.stdout and "--num_processes 2" in done.stdout
    out = paths.trained_model_dir(cfg, "tiny-base")
    assert [row["step"] for row in grpo.read_metrics(out / grpo.METRICS_FILE)] == [1]
    assert (out / grpo.FINAL_DIR / "model.safetensors").is_file()


def _probe_run(workspace, tmp_path: Path, **settings) -> tuple[dict, Path, Path, Path]:
    """The workspace's config with SHORT_DIST and `settings` over grpo, written to a file, and the probe
    script around grpo.run with the folder it records into."""
    cfg = with_grpo(workspace, tmp_path / "results", **{**SHORT_DIST, **settings})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in cfg.items() if k != "_config_path"}, sort_keys=False))
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    return cfg, config, script, tmp_path / "probe"


def test_two_processes_train_resume_and_agree(workspace, tmp_path):
    cfg, config, script, probe = _probe_run(workspace, tmp_path, max_steps=MAX_STEPS, save_steps=1, gpus_per_node=2)
    out = paths.trained_model_dir(cfg, "tiny-base")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env["PROBE_DIR"] = str(probe)

    def command() -> list[str]:
        return launch.accelerate_command(cfg, config, "tiny-base", env={}, port=_free_port(), program=[str(script)])

    cmd = command()
    assert "--multi_gpu" in cmd and _option(cmd, "--num_processes") == "2"
    log = tmp_path / "first.log"
    with open(log, "w") as handle:
        first = subprocess.Popen(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    while first.poll() is None and time.monotonic() < deadline:
        if grpo.latest_checkpoint(out) and grpo.checkpoint_step(grpo.latest_checkpoint(out)) >= 2:
            break
        time.sleep(0.2)
    assert first.poll() is None, f"the first run ended by itself:\n{log.read_text()[-4000:]}"
    # The launcher and both workers: torchrun starts its workers in their own sessions, so killing the
    # launcher's process group alone leaves them training (a Slurm job's kill takes the whole cgroup).
    launcher = psutil.Process(first.pid)
    workers = launcher.children(recursive=True)
    for process in [launcher, *workers]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    first.wait()
    assert not psutil.wait_procs(workers, timeout=30)[1], "a worker of the first run survived the kill"
    killed_at = grpo.latest_checkpoint(out)
    assert killed_at is not None and not (out / grpo.FINAL_DIR).exists(), "the kill came too late to test resume"
    resumed_from = grpo.checkpoint_step(killed_at)
    assert resumed_from < MAX_STEPS

    rerun = subprocess.run(command(), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"resuming from {killed_at}" in rerun.stdout
    assert [row["step"] for row in grpo.read_metrics(out / grpo.METRICS_FILE)] == list(range(1, MAX_STEPS + 1))
    assert (out / grpo.FINAL_DIR / "model.safetensors").is_file()

    # Both ranks rolled out, each its own half of the step's prompts: one group of num_generations
    # copies of one prompt per rank per step (2 prompts x 3 completions = 6 per optimizer step).
    rows = {r: [json.loads(x) for x in (probe / f"rank-{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    for rank in (0, 1):
        assert all(row["world"] == 2 for row in rows[rank])
        steps = [row["step"] for row in rows[rank]]
        assert steps[-(MAX_STEPS - resumed_from) :] == list(range(resumed_from, MAX_STEPS)), steps
        assert all(len(row["prompts"]) == 3 and len(set(row["prompts"])) == 1 for row in rows[rank])
    for r0, r1 in zip(rows[0][-(MAX_STEPS - resumed_from) :], rows[1][-(MAX_STEPS - resumed_from) :], strict=True):
        assert r0["step"] == r1["step"] and r0["prompts"][0] != r1["prompts"][0]
    # Both ranks started from the same weights, the steps changed them, and DDP kept the replicas identical.
    assert (probe / "params-start-0.txt").read_text() == (probe / "params-start-1.txt").read_text()
    assert (probe / "params-0.txt").read_text() == (probe / "params-1.txt").read_text()
    assert (probe / "params-0.txt").read_text() != (probe / "params-start-0.txt").read_text()


def test_two_processes_train_under_deepspeed_zero3_on_cpu(workspace, tmp_path):
    """The paper's ZeRO-3 JSON (parameters, gradients and optimizer state sharded) on two CPU processes
    (deepspeed.comm on gloo): both ranks roll out, the run finishes and final/ holds the gathered weights,
    changed by the steps."""
    from safetensors.torch import load_file

    zero3 = str(REPO / "config" / "deepspeed" / "zero3.json")
    cfg, config, script, probe = _probe_run(
        workspace, tmp_path, max_steps=2, save_steps=2, gpus_per_node=2, deepspeed=zero3
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    env["PROBE_DIR"] = str(probe)
    cmd = launch.accelerate_command(cfg, config, "tiny-base", env={}, port=_free_port(), program=[str(script)])
    assert _option(cmd, "--deepspeed_config_file").endswith("zero3.json")

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = paths.trained_model_dir(cfg, "tiny-base")
    assert [row["step"] for row in grpo.read_metrics(out / grpo.METRICS_FILE)] == [1, 2]
    for rank in (0, 1):
        rows = [json.loads(x) for x in (probe / f"rank-{rank}.jsonl").read_text().splitlines()]
        assert [row["step"] for row in rows] == [0, 1] and all(row["world"] == 2 for row in rows)
    base = load_file(Path(cfg["models"][0]["path"]) / "model.safetensors")
    final = load_file(out / grpo.FINAL_DIR / "model.safetensors")
    shared = set(base) & set(final)
    assert shared and all(final[k].shape == base[k].shape for k in shared)  # gathered, not rank 0's shard
    assert any(not torch.equal(final[k].float(), base[k].float()) for k in shared)

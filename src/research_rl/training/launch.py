"""How train_grpo is started: one plain process, or `accelerate launch` over num_nodes x gpus_per_node.

`research-rl launch-train --config F --model M` is what the train_grpo rule runs:
  - grpo.num_nodes x grpo.gpus_per_node <= 1 (the embedded default): `train-grpo` in this very process,
    no launcher and no process group;
  - one node, several processes: `accelerate launch --num_processes N ... -m research_rl.cli train-grpo`;
  - several nodes: `srun --nodes M --ntasks-per-node=1` of `launch-train --node-task`, which on each node
    renders the accelerate command with --machine_rank = SLURM_NODEID and --main_process_ip = the first
    host of SLURM_JOB_NODELIST (one accelerate launcher per node, each starting gpus_per_node workers).

grpo.gpus_per_node counts processes per node: one per GPU; on a host without CUDA the same torchrun
launcher starts them and they join over gloo on CPU (GRPOConfig.use_cpu), which is how tests run two
processes (accelerate's own --cpu flag would start one process only). The DeepSpeed JSON (grpo.deepspeed)
goes to accelerate as --deepspeed_config_file and to the trainer as GRPOConfig.deepspeed, the same file for both; an
accelerate YAML (grpo.accelerate_config) is passed as --config_file and must name that same JSON.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PORT = 29500
TRAIN_PROGRAM = ("-m", "research_rl.cli", "train-grpo")


def processes_per_node(cfg: dict[str, Any]) -> int:
    """Worker processes on each node: one per GPU (at least one)."""
    return max(1, int(cfg["grpo"].get("gpus_per_node", 1)))


def num_nodes(cfg: dict[str, Any]) -> int:
    return int(cfg["grpo"].get("num_nodes", 1))


def num_processes(cfg: dict[str, Any]) -> int:
    """The world size: num_nodes x gpus_per_node."""
    return num_nodes(cfg) * processes_per_node(cfg)


# ------------------------------------------------------------------------------------------ hostlist


_HOST_GROUP = re.compile(r"([^,\[]+)(?:\[([^\]]+)\])?([^,\[]*)")


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed hostlist ("gpu[01-03,05],login1") as host names, in order.

    `scontrol show hostnames` when it is installed (it knows every form); else the common forms are
    parsed here: comma-separated entries, each a prefix with at most one bracketed list of numbers and
    zero-padded ranges, and an optional suffix."""
    hostlist = hostlist.strip()
    if not hostlist:
        return []
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            done = subprocess.run(
                [scontrol, "show", "hostnames", hostlist], capture_output=True, text=True, timeout=30, check=True
            )
            hosts = done.stdout.split()
            if hosts:
                return hosts
        except (OSError, subprocess.SubprocessError):
            pass  # no controller reachable, or an older scontrol: parse it here
    return parse_hostlist(hostlist)


def parse_hostlist(hostlist: str) -> list[str]:
    """The parser behind expand_hostlist (no scontrol)."""
    hosts: list[str] = []
    pos = 0
    while pos < len(hostlist):
        match = _HOST_GROUP.match(hostlist, pos)
        if not match or match.end() == pos:
            raise ValueError(f"cannot parse Slurm hostlist {hostlist!r} at position {pos}")
        prefix, ranges, suffix = match.groups()
        if ranges is None:
            hosts.append(prefix + suffix)
        else:
            for part in ranges.split(","):
                lo, _, hi = part.partition("-")
                if not lo.isdigit() or (hi and not hi.isdigit()):
                    raise ValueError(f"cannot parse range {part!r} in Slurm hostlist {hostlist!r}")
                hi = hi or lo
                width = len(lo)  # zero padding is given by the range's first bound
                hosts.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
        pos = match.end()
        if pos < len(hostlist):
            if hostlist[pos] != ",":
                raise ValueError(f"cannot parse Slurm hostlist {hostlist!r} at position {pos}")
            pos += 1
    return hosts


def main_process_ip(env: dict[str, str]) -> str:
    """The first host of the job (rank 0's node), else this host's loopback."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    return expand_hostlist(nodelist)[0] if nodelist else "127.0.0.1"


# ------------------------------------------------------------------------------------------ commands


def _deepspeed_file_of(accelerate_config: Path) -> str | None:
    data = yaml.safe_load(accelerate_config.read_text()) or {}
    return (data.get("deepspeed_config") or {}).get("deepspeed_config_file")


def check_launcher_files(cfg: dict[str, Any]) -> None:
    """The accelerate YAML and the DeepSpeed JSON exist and agree (one DeepSpeed config for both)."""
    g = cfg["grpo"]
    deepspeed, accel = g.get("deepspeed"), g.get("accelerate_config")
    for key, value in (("deepspeed", deepspeed), ("accelerate_config", accel)):
        if value and not Path(value).is_file():
            raise FileNotFoundError(f"grpo.{key}: {value} does not exist")
    if accel:
        named = _deepspeed_file_of(Path(accel))
        if named and (not deepspeed or Path(named).resolve() != Path(deepspeed).resolve()):
            raise ValueError(
                f"grpo.accelerate_config {accel} names DeepSpeed config {named}, but grpo.deepspeed is {deepspeed}: "
                "the launcher and the trainer must use the same file"
            )


def accelerate_command(
    cfg: dict[str, Any],
    config_path: Path,
    model: str,
    *,
    env: dict[str, str] | None = None,
    port: int | None = None,
    cpu: bool | None = None,
    program: tuple[str, ...] | list[str] = TRAIN_PROGRAM,
) -> list[str]:
    """`accelerate launch` of train-grpo on this node (machine_rank from SLURM_NODEID)."""
    env = dict(os.environ) if env is None else env
    g = cfg["grpo"]
    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    if port is None:
        port = int(env.get("MASTER_PORT", DEFAULT_PORT))
    nodes = num_nodes(cfg)
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if g.get("accelerate_config"):
        cmd += ["--config_file", str(g["accelerate_config"])]
    if g.get("deepspeed"):
        cmd += ["--use_deepspeed", "--deepspeed_config_file", str(g["deepspeed"])]
        if nodes > 1:
            cmd += ["--deepspeed_multinode_launcher", "standard"]  # accelerate's own launcher on each node
    else:
        # accelerate's --cpu takes its single-process launcher (or mpirun), whatever --num_processes says;
        # its torchrun launcher (--multi_gpu) starts the workers, which find no CUDA and join over gloo.
        cmd += ["--multi_gpu"]
    cmd += [
        "--num_processes", str(num_processes(cfg)),
        "--num_machines", str(nodes),
        "--machine_rank", str(int(env.get("SLURM_NODEID", "0")) if nodes > 1 else 0),
        "--main_process_ip", main_process_ip(env) if nodes > 1 else "127.0.0.1",
        "--main_process_port", str(port),
        "--dynamo_backend", "no",
        "--mixed_precision", "bf16" if g.get("bf16") and not cpu else "no",
    ]  # fmt: skip
    return cmd + [*program, "--config", str(config_path), "--model", model]


def plain_command(config_path: Path, model: str) -> list[str]:
    return [sys.executable, *TRAIN_PROGRAM, "--config", str(config_path), "--model", model]


def srun_command(cfg: dict[str, Any], config_path: Path, model: str, env: dict[str, str] | None = None) -> list[str]:
    """One launcher task per node; each renders its own accelerate command (its SLURM_NODEID).

    The step asks for each node's GPUs and CPUs explicitly (a step gets one CPU and no GPU by default),
    and --overlap lets it start inside the one-task step that Snakemake's Slurm job step runs rules in."""
    env = dict(os.environ) if env is None else env
    cmd = ["srun", f"--nodes={num_nodes(cfg)}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--overlap"]
    if int(cfg["grpo"].get("gpus_per_node", 0)) > 0:
        cmd.append(f"--gpus-per-node={cfg['grpo']['gpus_per_node']}")
    if env.get("SLURM_CPUS_ON_NODE"):
        cmd.append(f"--cpus-per-task={env['SLURM_CPUS_ON_NODE']}")
    return cmd + [
        sys.executable, "-m", "research_rl.cli", "launch-train",
        "--config", str(config_path), "--model", model, "--node-task",
    ]  # fmt: skip


def for_model(cfg: dict[str, Any], model: str) -> dict[str, Any]:
    """cfg with `grpo` as this model trains with it: grpo.per_size[<its size>] merged over grpo (a 7B and a
    32B run differ in nodes, processes and DeepSpeed config)."""
    from research_rl.training.grpo import grpo_settings

    return {**cfg, "grpo": grpo_settings(cfg, model)}


def render(
    cfg: dict[str, Any], config_path: Path, model: str, *, node_task: bool = False, env: dict[str, str] | None = None
) -> list[str]:
    """The command launch-train runs (after the plain case, which runs in this process)."""
    cfg = for_model(cfg, model)
    if num_processes(cfg) <= 1:
        return plain_command(config_path, model)
    check_launcher_files(cfg)
    if num_nodes(cfg) > 1 and not node_task:
        return srun_command(cfg, config_path, model, env)
    return accelerate_command(cfg, config_path, model, env=env)


def run(cfg: dict[str, Any], config_path: Path, model: str, *, node_task: bool = False, dry_run: bool = False) -> int:
    """Train (or print the command with dry_run); the exit status of the launched command."""
    cmd = render(cfg, config_path, model, node_task=node_task)
    if dry_run:
        print(shlex.join(cmd), flush=True)
        return 0
    if num_processes(for_model(cfg, model)) <= 1:
        from research_rl.training import grpo

        grpo.run(cfg, model_name=model)  # the embedded default: no launcher overhead
        return 0
    print(f"launch-train [{model}]: {shlex.join(cmd)}", flush=True)
    return subprocess.run(cmd, check=False).returncode

"""Slurm resources of a stage, as snakemake-executor-plugin-slurm (2.8.0) turns them into sbatch flags.

The config's `resources:` give gpus, cpus and mem_mb per node, and `nodes`. The plugin renders `gpu: G` as
`--gpus=G` (a total, which Slurm may spread over nodes) and runs the job inside its allocation as
`srun -n1 --gpus=G --nodes=N <job>` (plugin snakemake-executor-plugin-slurm-jobstep): one process on the first
node, no rendezvous. So:
- one node: `gpu: G` and `nodes: 1` (--nodes=1 --gpus=G): the launcher (accelerate) starts the G processes;
- several nodes: the plugin's `mpi` path, which runs the job's shell in the batch script without the srun -n1
  wrapper (the rule's own `srun` starts one launcher per node), with `tasks: N` (--ntasks=N; the plugin wants
  tasks > 1 for mpi jobs), `tasks_per_gpu: 0` (else it would add --ntasks-per-gpu=N) and GPUs asked per node
  through slurm_extra: --nodes=N --ntasks=N --ntasks-per-node=1 --gpus-per-node=G.
"""

from __future__ import annotations

from typing import Any


def slurm_resources(spec: dict[str, Any]) -> dict[str, Any]:
    """Plugin resources from one `resources:` entry (after the per-size lookup).

    Keys the plugin reads: gpu, nodes, mpi, tasks, tasks_per_gpu, cpus_per_task, mem_mb, runtime,
    slurm_partition, slurm_extra. A key with value None is dropped by Snakemake (not rendered)."""
    gpus = int(spec.get("gpus", 0))
    nodes = int(spec.get("nodes") or 1)
    extra = spec.get("slurm_extra") or None
    out: dict[str, Any] = {
        "cpus_per_task": int(spec.get("cpus", 1)),
        "mem_mb": int(spec.get("mem_mb", 1000)),
        "runtime": int(spec.get("runtime", 60)),
        "slurm_partition": spec.get("slurm_partition") or None,
        "gpu": None,
        "nodes": None,
        "mpi": None,
        "tasks": None,
        "tasks_per_gpu": None,
        "slurm_extra": extra,
    }
    if nodes > 1:
        flags = ["--ntasks-per-node=1"] + ([f"--gpus-per-node={gpus}"] if gpus else [])
        out.update(
            nodes=nodes,
            mpi="srun",
            tasks=nodes,
            tasks_per_gpu=0,
            slurm_extra=" ".join(flags + ([extra] if extra else [])),
        )
    elif gpus:
        # --nodes=1: --gpus=G alone lets Slurm spread the G GPUs over several nodes.
        out.update(gpu=gpus, nodes=1)
    elif spec.get("nodes"):
        out["nodes"] = nodes
    return out


def check_nodes(cfg: dict[str, Any]) -> list[str]:
    """train_grpo's Slurm resources must match the GRPO settings of the model: nodes = grpo num_nodes and
    gpus = grpo gpus_per_node (per size). One message per model entry that disagrees."""
    from research_rl.training.grpo import grpo_settings

    problems = []
    per_size = cfg["resources"]["per_size"]
    for entry in cfg["models"]:
        g = grpo_settings(cfg, entry["name"])
        size = entry.get("size")
        spec = {**cfg["resources"]["default"], **per_size.get(size, {})}
        where = f"resources.per_size.{size}" if size in per_size else "resources.default"
        want_nodes, got_nodes = int(g.get("num_nodes", 1)), int(spec.get("nodes") or 1)
        if want_nodes != got_nodes:
            problems.append(
                f"{entry['name']}: {where}.nodes is {got_nodes} but grpo num_nodes (grpo.per_size.{size} over grpo) "
                f"is {want_nodes}; they must agree"
            )
        want_gpus, got_gpus = g.get("gpus_per_node"), int(spec.get("gpus", 0))
        if want_gpus is not None and got_gpus and int(want_gpus) != got_gpus:
            problems.append(
                f"{entry['name']}: {where}.gpus is {got_gpus} (per node) but grpo gpus_per_node is {want_gpus}; "
                "they must agree"
            )
    return problems


def conda_env(cfg: dict[str, Any], rule: str, group: str) -> str:
    """The conda env of a rule, relative to workflow/rules/: envs/<group>-gpu.yaml (vLLM, DeepSpeed, faiss-gpu;
    pins in envs/gpu-requirements.txt) when one of the rule's jobs asks for GPUs in this config, else the CPU
    envs/<group>.yaml."""
    from research_rl import workflow

    gpu = any(stage.resources.get("gpus", 0) > 0 for stage in workflow.cached_plan(cfg) if stage.rule == rule)
    return f"../../envs/{group}-gpu.yaml" if gpu else f"../../envs/{group}.yaml"

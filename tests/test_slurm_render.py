"""The sbatch line snakemake-executor-plugin-slurm renders for the paper's training jobs.

The resources come through the Snakefile's own path (research_rl.workflow.resources, then
research_rl.cluster.slurm_resources, as workflow/rules/common.smk calls them); the sbatch line from the
plugin's own get_submit_command. 7B: one node, 8 GPUs for one launcher that starts 8 processes. 32B: two
nodes, one task per node, 8 GPUs per node, and the plugin's mpi path (no `srun -n1` around the job, so the
rule's own srun starts one launcher per node). The dry run checks that Snakemake hands these resources on.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string
from workflow_sandbox import REPO, SNAKEMAKE

from research_rl import cluster
from research_rl import workflow as rrl
from research_rl.config import load_config


class Resources(dict):
    """Snakemake's job.resources as the plugin reads it: .get() and attribute access."""

    def __getattr__(self, name: str) -> Any:
        return self[name]


class Job:
    def __init__(self, resources: dict[str, Any]) -> None:
        self.resources = Resources({k: v for k, v in resources.items() if v is not None})
        self.threads = resources["cpus_per_task"]


def sbatch_line(cfg: dict, model: str) -> str:
    resources = cluster.slurm_resources(rrl.resources(cfg, "train_grpo", {"model": model}))
    params = {
        "run_uuid": "uuid",
        "slurm_logfile": "log",
        "comment_str": "rule_train_grpo",
        "account": "-A acct",
        "partition": "-p gpu",
        "workdir": "/work",
    }
    job = Job(resources)
    # As the plugin's run_job: the submit command, then the GPU/GRES flags.
    return get_submit_command(job, params) + set_gres_string(job)


@pytest.fixture
def paper(monkeypatch) -> dict:
    monkeypatch.chdir(REPO)
    return load_config(REPO / "config" / "paper.yaml")


def test_7b_one_node_eight_gpus(paper):
    line = sbatch_line(paper, "Qwen2.5-7B")
    assert "--nodes=1" in line and "--gpus=8" in line
    assert "--ntasks" not in line  # one launcher; accelerate starts the 8 processes
    # Not the mpi path: the jobstep plugin runs it as `srun -n1 --gpus=8 --nodes=1`, one launcher.
    assert cluster.slurm_resources(rrl.resources(paper, "train_grpo", {"model": "Qwen2.5-7B"}))["mpi"] is None


def test_32b_two_nodes_one_task_and_eight_gpus_per_node(paper):
    line = sbatch_line(paper, "Qwen2.5-32B")
    assert "--nodes=2" in line and "--ntasks-per-node=1" in line and "--gpus-per-node=8" in line
    assert "--ntasks=2" in line
    assert "--gpus=" not in line and "--ntasks-per-gpu" not in line  # no total GPU count, no task per GPU
    resources = cluster.slurm_resources(rrl.resources(paper, "train_grpo", {"model": "Qwen2.5-32B"}))
    assert resources["mpi"]  # the jobstep plugin runs mpi jobs without `srun -n1`


def test_cpu_jobs_stay_plain(paper):
    resources = cluster.slurm_resources(rrl.resources(paper, "download_corpus"))
    assert resources["gpu"] is None and resources["nodes"] is None and resources["mpi"] is None


def test_dry_run_passes_the_resources(paper):
    run = subprocess.run(
        [SNAKEMAKE, "-n", "--configfile", "config/paper.yaml", "--until", "train_grpo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    jobs = re.findall(r"wildcards: model=(\S+)\n(?:.*\n)*?\s+resources: (.*)", run.stdout)
    by_model = dict(jobs)
    assert "gpu=8" in by_model["Qwen2.5-7B"] and "nodes=1" in by_model["Qwen2.5-7B"]
    assert "mpi=" not in by_model["Qwen2.5-7B"]
    big = by_model["Qwen2.5-32B"]
    assert "nodes=2" in big and "mpi=srun" in big and "--gpus-per-node=8" in big and ", gpu=" not in big


def test_gpu_rules_use_the_gpu_envs(paper):
    default = load_config(REPO / "config" / "config.yaml")
    for rule, group in (("train_grpo", "train"), ("evaluate", "eval"), ("build_index", "retrieval")):
        env = cluster.conda_env(paper, rule, group)
        assert env == f"../../envs/{group}-gpu.yaml"
        assert (REPO / "workflow" / "rules" / env).resolve().is_file()
        assert (REPO / "envs" / f"{group}-gpu.post-deploy.sh").is_file()
        assert cluster.conda_env(default, rule, group) == f"../../envs/{group}.yaml"
    pins = (REPO / "envs" / "gpu-requirements.txt").read_text()
    assert "torch==2.13.0" in pins and "vllm==" in pins and "deepspeed==" in pins and "faiss-gpu-cu12==" in pins

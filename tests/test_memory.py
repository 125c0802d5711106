"""research-rl plan-memory: the per-GPU memory plan of every model, and the parse-time check of the workflow.

Figures the table must reproduce: Qwen2.5-7B has 7.62B parameters and Qwen2.5-32B 32.76B (their model cards);
paper.yaml fits 80 GB GPUs; per_device_batch_prompts 16 (80 sequences of 8,704 tokens) does not.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner
from workflow_sandbox import REPO, SNAKEMAKE

from research_rl import cluster
from research_rl.cli import app
from research_rl.config import load_config
from research_rl.training import grpo, memory

PAPER = REPO / "config" / "paper.yaml"
DEFAULT = REPO / "config" / "config.yaml"


@pytest.fixture
def paper(monkeypatch) -> dict:
    monkeypatch.chdir(REPO)  # the DeepSpeed json paths are relative to the repository
    return load_config(PAPER)


def plan_of(cfg: dict, name: str) -> memory.MemoryPlan:
    return next(plan for plan in memory.plan_memory(cfg) if plan.model == name)


def test_qwen_parameter_counts_match_the_published_models(paper):
    counts = {e["name"]: memory.model_shape(paper, e).num_params() for e in paper["models"]}
    assert round(counts["Qwen2.5-7B"] / 1e9, 2) == 7.62
    assert round(counts["Qwen2.5-32B"] / 1e9, 2) == 32.76


def test_paper_fits_and_per_size_applies(paper):
    assert memory.check_memory(paper) == []
    assert cluster.check_nodes(paper) == []
    assert plan_of(paper, "Qwen2.5-7B").ranks == 8
    assert plan_of(paper, "Qwen2.5-32B").ranks == 16  # two nodes of eight (grpo.per_size.32b)
    settings = grpo.grpo_settings(paper, "Qwen2.5-32B")
    assert settings["vllm_tensor_parallel_size"] == 2 and "per_size" not in settings


def test_a_micro_batch_of_16_prompts_fails_naming_model_and_term(paper):
    bad = copy.deepcopy(paper)
    bad["grpo"]["per_device_batch_prompts"] = 16
    problems = memory.check_memory(bad)
    assert any(p.startswith("Qwen2.5-7B:") and "largest term: logits" in p for p in problems), problems
    assert any(p.startswith("Qwen2.5-32B:") and "largest term: activations" in p for p in problems), problems


def test_vllm_weights_over_its_share_fail(paper):
    bad = copy.deepcopy(paper)
    bad["grpo"]["per_size"]["32b"]["vllm_tensor_parallel_size"] = 1  # 65 GB of weights in 0.6 x 80 GB
    problems = memory.check_memory(bad)
    assert any(p.startswith("Qwen2.5-32B:") and "vllm_weights 65.5 GB" in p for p in problems), problems
    assert not any(p.startswith("Qwen2.5-7B") for p in problems)


def test_tiny_default_fits(monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = load_config(DEFAULT)
    assert memory.check_memory(cfg) == [] and cluster.check_nodes(cfg) == []


def test_terms_scale(paper):
    base = plan_of(paper, "Qwen2.5-7B").terms
    doubled = copy.deepcopy(paper)
    doubled["grpo"]["per_size"]["7b"]["per_device_batch_prompts"] = 2
    twice = plan_of(doubled, "Qwen2.5-7B").terms
    assert twice["activations"] == pytest.approx(2 * base["activations"])
    assert twice["logits"] == pytest.approx(2 * base["logits"])
    assert twice["optimizer"] == pytest.approx(base["optimizer"])
    # ZeRO-3 over twice the ranks halves every sharded term; the micro-batch terms stay.
    wider = copy.deepcopy(paper)
    wider["grpo"]["per_size"]["7b"]["num_nodes"] = 2
    wide = plan_of(wider, "Qwen2.5-7B").terms
    for term in ("optimizer", "grads", "weights", "ref_weights"):
        assert wide[term] == pytest.approx(base[term] / 2), term
    assert wide["activations"] == pytest.approx(base["activations"])
    # Without gradient checkpointing every layer keeps its full working set (34 x seq x hidden per sequence).
    no_ckpt = copy.deepcopy(paper)
    no_ckpt["grpo"]["per_size"]["7b"]["gradient_checkpointing"] = False
    assert plan_of(no_ckpt, "Qwen2.5-7B").terms["activations"] > 10 * base["activations"]
    # ZeRO-3 offload takes the optimizer and the weights off the GPU.
    assert plan_of(paper, "Qwen2.5-32B").terms["optimizer"] == 0.0


def test_nodes_must_agree(paper):
    bad = copy.deepcopy(paper)
    bad["resources"]["per_size"]["32b"]["nodes"] = 1
    problems = cluster.check_nodes(bad)
    assert any("Qwen2.5-32B: resources.per_size.32b.nodes is 1" in p and "num_nodes" in p for p in problems)


def raw_paper() -> dict:
    """paper.yaml as written (load_config adds resolved values that the schema would not take back)."""
    return yaml.safe_load(PAPER.read_text())


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_cli_exit_codes(paper, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["plan-memory", "--config", str(PAPER)])
    assert ok.exit_code == 0, ok.output
    assert "Qwen2.5-32B" in ok.output and "logits" in ok.output
    bad = raw_paper()
    bad["grpo"]["per_device_batch_prompts"] = 16
    result = runner.invoke(app, ["plan-memory", "--config", str(write_config(bad, tmp_path / "bad.yaml"))])
    assert result.exit_code == 1
    assert "Qwen2.5-7B: the training phase needs" in result.output and "logits" in result.output


def test_snakemake_dry_run_refuses_a_plan_that_does_not_fit(paper, tmp_path):
    bad = raw_paper()
    bad["grpo"]["per_device_batch_prompts"] = 16
    config = write_config(bad, tmp_path / "bad.yaml")
    run = subprocess.run(
        [SNAKEMAKE, "-n", "--configfile", str(config)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode != 0
    assert "does not fit its GPUs" in run.stderr + run.stdout
    assert "Qwen2.5-7B: the training phase needs" in run.stderr + run.stdout

"""Issue 5's learning check: GRPO on the embedded default raises the reward, format rate and answer F1.

The embedded default exactly as the DAG runs it (config/config.yaml, its seed, its stages called in
order in a scratch directory): toy world, dense index, the tiny base model, the training parquet, then
train_grpo for grpo.max_steps. The last fifth of the steps (metrics.jsonl, the trainer's own per-step
means) must beat the first fifth on reward, format rate and answer F1, each by a margin. Searches per
rollout no longer must rise (issue 20): MuSiQue's train mix is 2-hop heavy, the base model already
searches about twice a question, and a run that answers better with as many searches is learning.

Slow (~10 minutes on 2 CPUs: the base model's warm-up is most of it); the margins are about half of
what the run measured (issue 5's note), so a machine whose floating point differs a little still passes
while a run that does not learn fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from research_rl import paths
from research_rl.config import load_config
from research_rl.training import grpo

REPO = Path(__file__).resolve().parents[1]
MARGINS = {"reward_mean": 0.04, "format_rate": 0.15, "f1": 0.04}


def test_fifths_average_the_first_and_last_fifth_of_the_steps():
    rows = [{"x": float(step)} for step in range(1, 13)]
    assert grpo.first_and_last_fifth(rows, "x") == (1.5, 11.5)
    assert grpo.first_and_last_fifth(rows[:3], "x") == (1.0, 3.0)


@pytest.fixture(scope="module")
def embedded_default_run(tmp_path_factory) -> list[dict]:
    from research_rl.data import download, normalize, prepare_train, toyworld
    from research_rl.model import base_model
    from research_rl.retrieval import index

    root = tmp_path_factory.mktemp("learning")
    shutil.copytree(REPO / "config", root / "config")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the config's paths are relative to the working directory, as in the DAG
        cfg = load_config(root / "config" / "config.yaml")
        toyworld.run(cfg)
        download.run_download_corpus(cfg)
        download.run_download_qa(cfg)
        normalize.run(cfg)
        index.run(cfg, kind=cfg["retriever"]["kind"])
        base_model.run(cfg)
        prepare_train.run(cfg)
        model = cfg["models"][0]["name"]
        grpo.run(cfg, model)
        return grpo.read_metrics(root / paths.trained_model_dir(cfg, model) / grpo.METRICS_FILE)


@pytest.mark.slow
def test_grpo_raises_reward_format_rate_and_answer_f1_on_the_embedded_default(embedded_default_run):
    rows = embedded_default_run
    cfg = load_config(REPO / "config" / "config.yaml")
    assert [row["step"] for row in rows] == list(range(1, cfg["grpo"]["max_steps"] + 1))
    gains = {key: grpo.first_and_last_fifth(rows, key) for key in MARGINS}
    for key, margin in MARGINS.items():
        first, last = gains[key]
        assert last >= first + margin, f"{key}: first fifth {first:.3f}, last fifth {last:.3f} (need +{margin})"

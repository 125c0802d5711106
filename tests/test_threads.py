"""Every job runs with the config's thread count, whether Snakemake, DVC or a user starts it."""

from __future__ import annotations

import os

import pytest
import torch

from research_rl.config import load_config
from research_rl.threads import THREAD_VARIABLES, pin_threads


@pytest.fixture
def cfg():
    return load_config("config/config.yaml")


@pytest.fixture(autouse=True)
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_without_an_engine_the_stage_cpus_apply(cfg, monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    torch.set_num_threads(2)
    # The embedded default trains the tiny model on one core (resources.per_size.tiny.cpus = 1).
    assert cfg["resources"]["per_size"]["tiny"]["cpus"] == 1
    assert pin_threads(cfg, "train_grpo", {"model": "tiny-base"}) == 1
    assert torch.get_num_threads() == 1
    assert all(os.environ[name] == "1" for name in THREAD_VARIABLES)
    # build_index takes resources.default (2 cpus); a new job starts without the variable.
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert pin_threads(cfg, "build_index") == cfg["resources"]["default"]["cpus"] == 2
    assert torch.get_num_threads() == 2


def test_the_engine_count_wins(cfg, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert pin_threads(cfg, "train_grpo", {"model": "tiny-base"}) == 3
    assert torch.get_num_threads() == 3


def test_a_job_outside_the_plan_is_left_alone(cfg, monkeypatch):
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert pin_threads(cfg, "train_grpo", {"model": "no-such-model"}) is None
    assert "OMP_NUM_THREADS" not in os.environ

"""What GRPO buys on the embedded default: ReSearch after RL against the same rollout before RL.

Prints figures; it is not a test. It runs the embedded default's stages in a scratch directory, as the
DAG does (toy world, download, normalize, index, base model, training parquet, train_grpo), then
evaluates the `research_base` (untrained checkpoint) and `research` (trained) cells on `--questions`
questions of each benchmark, and prints the paired before/after table of the report (EM and F1, paired
bootstrap 95% intervals) with the first and last fifth of the training curve. `--set` overrides config
keys, so a variant of the toy setting is one command:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_gain.py --workdir /tmp/rl_gain_a \\
        [--questions 100] [--set base_model.unboxed_answer_fraction=0.5 --set grpo.max_steps=12]
A rerun in the same --workdir reuses every finished stage (index, base model, trained model) and resumes
the evaluations, whatever --set says: a changed setting wants a new --workdir. About 27 minutes on one
core at 100 questions (base model 9 min, GRPO 6 min, the 8 evaluations 7-12 min).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402

from research_rl import paths, report  # noqa: E402
from research_rl.config import load_config  # noqa: E402


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`a.b=value` pairs; values are read as YAML (`0.5` a float, `null` None, `[1, 2]` a list)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def apply_overrides(cfg: dict[str, Any], overrides: dict[str, Any]) -> None:
    for dotted, value in overrides.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise SystemExit(f"--set {dotted}: no section {key!r} in the config")
            node = node[key]
        if leaf not in node:
            raise SystemExit(f"--set {dotted}: no key {leaf!r} in the config")
        node[leaf] = value


def write_config(workdir: Path, source: Path, overrides: dict[str, Any], questions: int | None) -> Path:
    """The source config with the overrides, in workdir/config (the schemas come along)."""
    shutil.copytree(source.parent, workdir / "config", dirs_exist_ok=True)
    cfg = yaml.safe_load(source.read_text(encoding="utf-8"))
    apply_overrides(cfg, overrides)
    cfg["evaluation"]["max_questions"] = questions
    cfg["evaluation"]["methods"] = ["research_base", "research"]
    target = workdir / "config" / source.name
    target.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return target


def timed(label: str, stage, *args) -> None:
    start = time.perf_counter()
    stage(*args)
    print(f"[rl_gain] {label}: {time.perf_counter() - start:.0f} s", flush=True)


def run_stages(cfg: dict[str, Any]) -> None:
    from research_rl.data import download, normalize, prepare_train, toyworld
    from research_rl.evaluation import evaluate
    from research_rl.model import base_model
    from research_rl.retrieval import index
    from research_rl.training import grpo

    model = cfg["models"][0]["name"]
    if not paths.index_dir(cfg).exists():
        timed("toy world", toyworld.run, cfg)
        timed("download corpus", download.run_download_corpus, cfg)
        timed("download qa", download.run_download_qa, cfg)
        timed("normalize", normalize.run, cfg)
        timed("index", lambda: index.run(cfg, kind=cfg["retriever"]["kind"]))
    if not (paths.base_model_dir(cfg) / "model.safetensors").exists():
        timed("base model", base_model.run, cfg)
    timed("prepare train", prepare_train.run, cfg)
    if not paths.trained_model_final(cfg, model).exists():
        timed("train grpo", grpo.run, cfg, model)
    for benchmark in cfg["evaluation"]["benchmarks"]:
        for method in cfg["evaluation"]["methods"]:
            timed(f"evaluate {benchmark}/{method}", evaluate.run, cfg, model, benchmark, method)


def print_training_fifths(cfg: dict[str, Any]) -> None:
    from research_rl.training import grpo

    model = cfg["models"][0]["name"]
    rows = grpo.read_metrics(paths.trained_model_dir(cfg, model) / grpo.METRICS_FILE)
    for key in ("reward_mean", "format_rate", "searches_per_rollout"):
        first, last = grpo.first_and_last_fifth(rows, key)
        print(f"training {key}: first fifth {first:.3f}, last fifth {last:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "config" / "config.yaml")
    parser.add_argument("--workdir", type=Path, required=True, help="scratch directory (reused on a rerun)")
    parser.add_argument("--questions", type=int, default=None, help="per benchmark; default: all")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    config_file = write_config(args.workdir, args.config.resolve(), parse_overrides(args.overrides), args.questions)
    os.chdir(args.workdir)  # the config's paths are relative to the working directory, as in the DAG
    cfg = load_config(config_file)
    run_stages(cfg)
    print_training_fifths(cfg)
    print(report.rl_gain_to_markdown(report.rl_gain_table(cfg)))


if __name__ == "__main__":
    main()

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
the evaluations, whatever --set says: a changed setting wants a new --workdir. About 10 minutes a seed
on one core at 40 questions (base model 6 min, GRPO 3 min, the 8 evaluations 1 min; --baselines adds
2-3 min). Issue 20's check, the four seeds two at a time (about 25 minutes on 2 cores):
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/rl_gain.py --workdir /tmp/rl_gain_seeds \
        --seeds 1234,1,2,3 --jobs 2 --questions 40 --baselines

`--seeds 1234,1,2,3` runs one such experiment per seed (the config's `seed` and `grpo.seed` set to it),
each in WORKDIR/seed-N with its log in WORKDIR/seed-N.log, `--jobs` of them at a time (each a process of
one thread), then prints one summary table: the All row of every seed. `--baselines` also evaluates the
config's baseline methods on the untrained checkpoint and prints their EM beside ReSearch's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
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


def write_config(
    workdir: Path, source: Path, overrides: dict[str, Any], questions: int | None, baselines: bool = False
) -> Path:
    """The source config with the overrides, in workdir/config (the schemas come along)."""
    shutil.copytree(source.parent, workdir / "config", dirs_exist_ok=True)
    cfg = yaml.safe_load(source.read_text(encoding="utf-8"))
    apply_overrides(cfg, overrides)
    cfg["evaluation"]["max_questions"] = questions
    rl_pair = [report.BEFORE_RL, report.AFTER_RL]
    others = [m for m in cfg["evaluation"]["methods"] if m not in rl_pair] if baselines else []
    cfg["evaluation"]["methods"] = others + rl_pair
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


def method_em(cfg: dict[str, Any]) -> dict[str, dict[str, float]]:
    """EM (a fraction) of every evaluated method, by benchmark and pooled over all of them (`All`)."""
    model = cfg["models"][0]["name"]
    table: dict[str, dict[str, float]] = {}
    for method in cfg["evaluation"]["methods"]:
        pooled: list[float] = []
        for benchmark in paths.BENCHMARKS:
            scores = [float(m["em"]) for m in report.load_question_metrics(cfg, model, benchmark, method).values()]
            if scores:
                table.setdefault(method, {})[benchmark] = sum(scores) / len(scores)
                pooled += scores
        if pooled:
            table[method][report.ALL_BENCHMARKS] = sum(pooled) / len(pooled)
    return table


def method_em_to_markdown(table: dict[str, dict[str, float]]) -> str:
    columns = [b for b in [*paths.BENCHMARKS, report.ALL_BENCHMARKS] if any(b in row for row in table.values())]
    lines = ["| Method | " + " | ".join(report.BENCHMARK_LABELS.get(c, c) for c in columns) + " |"]
    lines.append("|---|" + "|".join(["---:"] * len(columns)) + "|")
    for method, row in table.items():
        cells = [f"{100 * row[c]:.1f}" if c in row else "" for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_one(args: argparse.Namespace, overrides: dict[str, Any], workdir: Path) -> None:
    """One experiment in workdir: the stages, then the tables."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = write_config(workdir, args.config.resolve(), overrides, args.questions, args.baselines)
    os.chdir(workdir)  # the config's paths are relative to the working directory, as in the DAG
    cfg = load_config(config_file)
    run_stages(cfg)
    print_training_fifths(cfg)
    print(report.rl_gain_to_markdown(report.rl_gain_table(cfg)))
    if args.baselines:
        print("EM (%) of every method (baselines on the untrained checkpoint):")
        print(method_em_to_markdown(method_em(cfg)))


def seed_command(args: argparse.Namespace, seed: int, workdir: Path) -> list[str]:
    """This script again, for one seed in its own workdir (a process each: one thread, its own log)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--config", str(args.config.resolve())]
    command += ["--workdir", str(workdir), "--set", f"seed={seed}", "--set", f"grpo.seed={seed}"]
    if args.questions is not None:
        command += ["--questions", str(args.questions)]
    if args.baselines:
        command.append("--baselines")
    for pair in args.overrides:
        command += ["--set", pair]
    return command


def run_seeds(args: argparse.Namespace, seeds: list[int]) -> None:
    """Every seed's experiment, `--jobs` at a time, then one summary: each seed's All row."""
    args.workdir.mkdir(parents=True, exist_ok=True)
    pending = list(seeds)
    running: list[tuple[int, subprocess.Popen]] = []
    failed = []
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            log = (args.workdir / f"seed-{seed}.log").open("a", encoding="utf-8")  # a rerun keeps the first log
            print(f"[rl_gain] seed {seed}: started, log {log.name}", flush=True)
            process = subprocess.Popen(seed_command(args, seed, args.workdir / f"seed-{seed}"), stdout=log, stderr=log)
            running.append((seed, process))
        time.sleep(5)
        for seed, process in list(running):
            if process.poll() is not None:
                running.remove((seed, process))
                print(f"[rl_gain] seed {seed}: exit {process.returncode}", flush=True)
                if process.returncode != 0:
                    failed.append(seed)
    print(summary_markdown(args, [s for s in seeds if s not in failed]))
    if failed:
        raise SystemExit(f"seeds {failed} failed: see their logs in {args.workdir}")


def summary_markdown(args: argparse.Namespace, seeds: list[int]) -> str:
    """One line a seed: the All row of its gain table, and the best baseline's All EM when evaluated."""
    lines = ["| Seed | n | EM before RL | EM after RL | EM gain [95% CI] | F1 gain [95% CI] | best baseline EM |"]
    lines.append("|---|---:|---:|---:|---:|---:|---|")
    for seed in seeds:
        cfg = load_config(args.workdir / f"seed-{seed}" / "config" / args.config.name)
        os.chdir(args.workdir / f"seed-{seed}")
        gains = report.rl_gain_table(cfg)
        row = gains[gains["benchmark"] == report.ALL_BENCHMARKS].iloc[0]
        cells = [str(seed), str(row["n"]), f"{100 * row['em_before']:.1f}", f"{100 * row['em_after']:.1f}"]
        for metric in report.GAIN_METRICS:
            interval = f"[{100 * row[f'{metric}_gain_lo']:.1f}, {100 * row[f'{metric}_gain_hi']:.1f}]"
            cells.append(f"{100 * row[f'{metric}_gain']:+.1f} {interval}")
        baselines = {
            m: r[report.ALL_BENCHMARKS]
            for m, r in method_em(cfg).items()
            if m not in (report.BEFORE_RL, report.AFTER_RL)
        }
        best = max(baselines, key=baselines.get) if baselines else None
        cells.append(f"{best} {100 * baselines[best]:.1f}" if best else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "config" / "config.yaml")
    parser.add_argument("--workdir", type=Path, required=True, help="scratch directory (reused on a rerun)")
    parser.add_argument("--questions", type=int, default=None, help="per benchmark; default: all")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds, one experiment each (e.g. 1234,1,2,3)")
    parser.add_argument("--jobs", type=int, default=1, help="with --seeds: experiments run at a time")
    parser.add_argument("--baselines", action="store_true", help="also evaluate the config's baseline methods")
    args = parser.parse_args()

    args.workdir = args.workdir.resolve()
    if args.seeds:
        run_seeds(args, [int(s) for s in args.seeds.split(",") if s.strip()])
    else:
        run_one(args, parse_overrides(args.overrides), args.workdir)


if __name__ == "__main__":
    main()

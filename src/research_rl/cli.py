"""The `research-rl` command line: one subcommand per stage of the DAG (DESIGN.md section 1).

Snakemake rules and dvc.yaml stages only call these. Imports are lazy so `--help` stays instant.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="research-rl: train language models to reason with search (ReSearch), stage by stage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
retriever_app = typer.Typer(help="The retriever service.", no_args_is_help=True)
app.add_typer(retriever_app, name="retriever")

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="Pipeline config (validated against config/schemas).")
]
DEFAULT_CONFIG = Path("config/config.yaml")


def _load(config: Path, rule: str | None = None, **wildcards: str) -> dict[str, Any]:
    """The validated config; for a DAG job (`rule` given), also pin its CPU threads (research_rl.threads)."""
    from research_rl.config import ConfigError, load_config

    # Hub access is impossible in the embedded default and unwanted in reproductions: use local files.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        cfg = load_config(config)
    except ConfigError as error:
        typer.secho(str(error), fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error
    if cfg["paths"].get("models"):
        # Hub models are read from the cache download_models filled (before huggingface_hub is imported).
        os.environ.setdefault("HF_HUB_CACHE", str(Path(cfg["paths"]["models"]).resolve()))
    if rule is not None:
        from research_rl.threads import pin_threads

        pin_threads(cfg, rule, wildcards)
    return cfg


def _stage(name: str, help_text: str):
    """Register a command under its dashed name and, hidden, under the DAG's underscored stage name."""

    def register(func):
        app.command(name=name, help=help_text)(func)
        if "-" in name:
            app.command(name=name.replace("-", "_"), help=help_text, hidden=True)(func)
        return func

    return register


@_stage("validate-config", "Validate a config file against the schema and exit.")
def validate_config_cmd(config: ConfigOption = DEFAULT_CONFIG) -> None:
    cfg = _load(config)
    typer.echo(f"{config}: valid ({cfg['name']}, {len(cfg['models'])} model(s))")


@_stage("toyworld", "Generate the embedded default's toy world (corpus and raw benchmark files).")
def toyworld_cmd(config: ConfigOption = DEFAULT_CONFIG) -> None:
    cfg = _load(config)
    from research_rl.data import toyworld

    if "toyworld" not in cfg:
        typer.secho(f"{config} has no `toyworld` section: nothing to generate", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    toyworld.run(cfg)


@_stage("download-corpus", "Download the retrieval corpus and write it in FlashRAG format.")
def download_corpus_cmd(config: ConfigOption = DEFAULT_CONFIG) -> None:
    cfg = _load(config)
    from research_rl.data import download

    download.run_download_corpus(cfg)


@_stage("download-qa", "Download the benchmarks' raw files as their publishers ship them.")
def download_qa_cmd(config: ConfigOption = DEFAULT_CONFIG) -> None:
    cfg = _load(config)
    from research_rl.data import download

    download.run_download_qa(cfg)


@_stage("download-models", "Snapshot the config's hub models (pinned revisions) into paths.models; resumable.")
def download_models_cmd(
    config: ConfigOption = DEFAULT_CONFIG,
    repo: Annotated[str | None, typer.Option(help="One hub repo id of the config (default: all).")] = None,
) -> None:
    cfg = _load(config)
    from research_rl.data import models

    for repo_id, commit in models.run(cfg, repo).items():
        typer.echo(f"{repo_id}: {commit}")


@_stage("normalize-qa", "Parse each benchmark's raw files into FlashRAG dataset jsonl.")
def normalize_qa_cmd(config: ConfigOption = DEFAULT_CONFIG) -> None:
    cfg = _load(config)
    from research_rl.data import normalize

    normalize.run(cfg)


@_stage("build-base-model", "Build and warm up the embedded default's tiny Qwen2-shaped model.")
def build_base_model_cmd(config: ConfigOption = DEFAULT_CONFIG) -> None:
    cfg = _load(config, "build_base_model")
    from research_rl.model import base_model

    if "base_model" not in cfg:
        typer.secho(f"{config} has no `base_model` section: nothing to build", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2)
    base_model.run(cfg)


@_stage("prepare-train", "Render MuSiQue train/dev into the trainer's parquet, one set per model entry.")
def prepare_train_cmd(
    config: ConfigOption = DEFAULT_CONFIG,
    model: Annotated[str | None, typer.Option(help="One model entry; default: all.")] = None,
) -> None:
    cfg = _load(config)
    from research_rl.data import prepare_train

    prepare_train.run(cfg, model_name=model)


@_stage("embed-shard", "Embed one shard of the corpus for the dense index (one DAG job per shard).")
def embed_shard_cmd(
    config: ConfigOption = DEFAULT_CONFIG,
    shard: Annotated[int, typer.Option(help="Shard number k: passages [k*shard_size, (k+1)*shard_size).")] = ...,
) -> None:
    cfg = _load(config)
    from research_rl.retrieval import embedding

    embedding.run_embed_shard(cfg, shard)


@_stage("build-index", "Embed or tokenize the corpus and build the search index.")
def build_index_cmd(
    config: ConfigOption = DEFAULT_CONFIG,
    kind: Annotated[str | None, typer.Option(help="dense or bm25; default: retriever.kind.")] = None,
) -> None:
    cfg = _load(config, "build_index")
    from research_rl.retrieval import index

    index.run(cfg, kind=kind)


@retriever_app.command("serve", help="Serve the config's index over HTTP (ReSearch and Search-R1 APIs).")
def retriever_serve_cmd(
    config: ConfigOption = DEFAULT_CONFIG,
    host: Annotated[str | None, typer.Option(help="Bind address; default retriever.server.host.")] = None,
    port: Annotated[int | None, typer.Option(help="Port; 0 picks a free one.")] = None,
) -> None:
    cfg = _load(config)
    from research_rl.retrieval import server

    server.serve(cfg, host=host, port=port)


@retriever_app.command("start", help="Start the run's one retriever service (retriever.service) and wait for it.")
def retriever_start_cmd(
    config: ConfigOption = DEFAULT_CONFIG,
    wait: Annotated[bool, typer.Option(help="Wait until it serves (URL file written, index checked).")] = True,
) -> None:
    import json

    cfg = _load(config)
    from research_rl.retrieval import run_service

    typer.echo(json.dumps(run_service.start(cfg, wait=wait), indent=2, sort_keys=True))


@retriever_app.command("stop", help="Stop the run's retriever service (SIGTERM or scancel) and remove its URL file.")
def retriever_stop_cmd(config: ConfigOption = DEFAULT_CONFIG) -> None:
    cfg = _load(config)
    from research_rl.retrieval import run_service

    typer.echo(run_service.stop(cfg))


@retriever_app.command("status", help="Show the run's retriever service: none, starting, running, stale, wrong_index.")
def retriever_status_cmd(config: ConfigOption = DEFAULT_CONFIG) -> None:
    import json

    cfg = _load(config)
    from research_rl.retrieval import run_service

    current = run_service.status(cfg)
    typer.echo(json.dumps(current, indent=2, sort_keys=True))
    if current["state"] in ("stale", "wrong_index"):
        raise typer.Exit(code=1)


@_stage("train-grpo", "GRPO-train one model entry with multi-turn search rollouts.")
def train_grpo_cmd(
    config: ConfigOption = DEFAULT_CONFIG,
    model: Annotated[str, typer.Option(help="Name of an entry of `models:`.")] = ...,
) -> None:
    cfg = _load(config, "train_grpo", model=model)
    from research_rl.training import grpo

    grpo.run(cfg, model_name=model)


@_stage("launch-train", "Run train-grpo over grpo.num_nodes x gpus_per_node processes (accelerate launch).")
def launch_train_cmd(
    config: ConfigOption = DEFAULT_CONFIG,
    model: Annotated[str, typer.Option(help="Name of an entry of `models:`.")] = ...,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command and exit.")] = False,
    node_task: Annotated[bool, typer.Option("--node-task", hidden=True, help="Set by the srun.")] = False,
) -> None:
    cfg = _load(config, "train_grpo", model=model)
    from research_rl.training import launch

    code = launch.run(cfg, config, model, node_task=node_task, dry_run=dry_run)
    if code:
        raise typer.Exit(code=code)


@_stage("evaluate", "Evaluate one (model, benchmark, method) cell; resumable.")
def evaluate_cmd(
    config: ConfigOption = DEFAULT_CONFIG,
    model: Annotated[str, typer.Option(help="Name of an entry of `models:`.")] = ...,
    benchmark: Annotated[str, typer.Option(help="hotpotqa, 2wikimultihopqa, musique or bamboogle.")] = ...,
    method: Annotated[str, typer.Option(help="zero_shot, naive_rag, iter_retgen, ircot or research.")] = ...,
) -> None:
    cfg = _load(config, "evaluate", model=model, benchmark=benchmark, method=method)
    from research_rl.evaluation import evaluate

    evaluate.run(cfg, model=model, benchmark=benchmark, method=method)


@_stage("report", "Render the paper's tables and the figures through the report notebook.")
def report_cmd(config: ConfigOption = DEFAULT_CONFIG) -> None:
    cfg = _load(config, "report")
    from research_rl import report

    report.run(cfg)


@_stage("dvc-yaml", "Write dvc.yaml and params from the same plan as the Snakefile.")
def dvc_yaml_cmd(
    config: ConfigOption = DEFAULT_CONFIG,
    output: Annotated[Path, typer.Option(help="Where to write.")] = Path("dvc.yaml"),
    check: Annotated[bool, typer.Option(help="Fail if the file differs instead of writing.")] = False,
) -> None:
    cfg = _load(config)
    from research_rl import workflow

    if check:
        if not workflow.dvc_yaml_is_current(cfg, output):
            typer.secho(f"{output} is out of date: run `research-rl dvc-yaml`", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1)
        typer.echo(f"{output} is current")
        return
    workflow.write_dvc_yaml(cfg, output)


@app.command(name="plan-memory", help="Print each model's per-GPU memory plan; exit 1 naming what does not fit.")
def plan_memory_cmd(config: ConfigOption = DEFAULT_CONFIG) -> None:
    cfg = _load(config)
    from research_rl import cluster
    from research_rl.training import memory

    try:
        plans = memory.plan_memory(cfg)
        problems = [problem for plan in plans for problem in plan.problems()] + cluster.check_nodes(cfg)
    except ValueError as error:
        typer.secho(f"{config}: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error
    typer.echo(memory.format_table(plans))
    for problem in problems:
        typer.secho(f"{config}: {problem}", fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(code=1)


def main() -> None:
    app(prog_name="research-rl")


if __name__ == "__main__":
    sys.exit(main())

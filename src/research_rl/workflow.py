"""The DAG, declared once: `plan(cfg)` lists every stage instance with its command, deps, outs and params.

The Snakefile (through the helpers below) and the generated dvc.yaml (`research-rl dvc-yaml`) both read
this plan, so the two engines cannot drift apart (DESIGN.md sections 1 and 7):

- `deps` are data files or directories another stage writes (or a local input such as the report
  notebook), `code` the package's own source files the stage runs: its entry module and, followed
  statically, every `research_rl` module it imports. Editing one of them reruns the stage (Snakemake:
  the files are rule inputs, so the mtime trigger fires; DVC: they are deps, hashed).
- `params` are the dotted config keys whose values can change the stage's outputs. Snakemake holds
  their values in the rule's `params:` (the params trigger); DVC lists them under the config file.
  Operational keys (download retries, server ports, resources) are deliberately not params: changing
  them must not rerun a 13 GB download.
- `outs` are what both engines declare (and may delete before a rerun); `resumable` are files that
  only DVC versions, as `persist: true` outs, because a killed job resumes from them: the training
  run's `metrics.jsonl` (beside checkpoints that no engine declares) and the evaluation's
  `predictions.jsonl`. Snakemake never sees them, so it never deletes them.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from research_rl import paths
from research_rl.data import models as hub_models
from research_rl.retrieval import sharding

BASELINE_METHODS = ("zero_shot", "naive_rag", "iter_retgen", "ircot")
TRAINED_METHOD = "research"

# The CLI module a stage runs (the code deps are this module and its research_rl imports).
ENTRY_MODULES = {
    "toyworld": "research_rl.data.toyworld",
    "download_corpus": "research_rl.data.download",
    "download_qa": "research_rl.data.download",
    "download_models": "research_rl.data.models",
    "normalize_qa": "research_rl.data.normalize",
    "build_base_model": "research_rl.model.base_model",
    "prepare_train": "research_rl.data.prepare_train",
    "embed_shard": "research_rl.retrieval.embedding",
    "build_index": "research_rl.retrieval.index",
    "train_grpo": "research_rl.training.grpo",
    "evaluate": "research_rl.evaluation.evaluate",
    "report": "research_rl.report",
}
# Infrastructure every stage imports; an edit there changes no artifact (paths.py changes the plan itself).
NOT_CODE_DEPS = {"research_rl", "research_rl.cli", "research_rl.config", "research_rl.paths", "research_rl.workflow"}

# The envs/<group>.yaml each rule runs in.
ENV_GROUPS = {
    "toyworld": "data",
    "download_corpus": "data",
    "download_qa": "data",
    "download_models": "data",
    "normalize_qa": "data",
    "prepare_train": "data",
    "embed_shard": "retrieval",
    "build_index": "retrieval",
    "build_base_model": "train",
    "train_grpo": "train",
    "evaluate": "eval",
    "report": "report",
}

RESOURCE_KEYS = ("gpus", "cpus", "mem_mb", "runtime", "slurm_partition", "slurm_extra", "nodes")
DVC_NAME_INVALID = re.compile(r"[^A-Za-z0-9_-]")


@dataclass(frozen=True)
class Stage:
    """One job of the DAG: a Snakemake job (rule + wildcards) and a dvc.yaml stage (name)."""

    name: str  # the dvc.yaml stage name
    rule: str  # the Snakemake rule and CLI stage (underscored)
    wildcards: dict[str, str]
    cmd: str
    deps: tuple[str, ...]  # data inputs (files or directories)
    code: tuple[str, ...]  # source files whose edits rerun the stage
    outs: tuple[str, ...]  # declared by both engines
    out_dirs: frozenset[str] = frozenset()  # the outs that are directories
    resumable: tuple[str, ...] = ()  # DVC-only persist outs beside `outs` (never deleted on rerun)
    params: tuple[str, ...] = ()  # dotted config keys
    persist: bool = False  # DVC keeps outs across reruns (resumable stages)
    metrics: tuple[str, ...] = ()  # outs that are DVC metrics
    plots: tuple[str, ...] = ()  # resumable files that are DVC plots
    resources: dict[str, Any] = field(default_factory=dict)
    env: str = "data"

    @property
    def all_deps(self) -> tuple[str, ...]:
        return self.deps + self.code


# --------------------------------------------------------------------------- config helpers


def config_file(cfg: dict[str, Any]) -> str:
    from research_rl.config import config_path

    return config_path(cfg)


def lookup(cfg: dict[str, Any], key: str) -> Any:
    """The value at a dotted key; integers index lists (`models.0.path`), as DVC reads params."""
    value: Any = cfg
    for part in key.split("."):
        if isinstance(value, list):
            value = value[int(part)]
        else:
            value = value[part]
    return value


def has_key(cfg: dict[str, Any], key: str) -> bool:
    try:
        lookup(cfg, key)
    except (KeyError, IndexError, ValueError, TypeError):
        return False
    return True


def param_values(cfg: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: lookup(cfg, key) for key in keys}


def model_index(cfg: dict[str, Any], name: str) -> int:
    for i, entry in enumerate(cfg["models"]):
        if entry["name"] == name:
            return i
    raise KeyError(name)


def model_input(cfg: dict[str, Any], name: str) -> list[str]:
    """The model's weights/tokenizer as a dep when another stage builds them (the embedded tiny base)."""
    entry = paths.model_entry(cfg, name)
    if "base_model" in cfg and Path(entry["path"]) == paths.base_model_dir(cfg):
        return [str(paths.base_model_dir(cfg))]
    if hub_models.models_cache(cfg) and entry["path"] in hub_models.hub_models(cfg):
        return [str(hub_models.manifest_path(cfg, entry["path"]))]  # download_models fetched it into paths.models
    return []


def encoder_input(cfg: dict[str, Any]) -> list[str]:
    """The dense encoder's download manifest when download_models fetches it."""
    encoder = cfg["retriever"].get("dense", {}).get("model")
    if hub_models.models_cache(cfg) and encoder in hub_models.hub_models(cfg):
        return [str(hub_models.manifest_path(cfg, encoder))]
    return []


def resources_for(cfg: dict[str, Any], keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """The first of cfg["resources"]["per_size"][key] for `keys` that exists, else the default.

    Keys: a model size (train_grpo), `<size>_eval` then the size (evaluate), `embed_shard`, `build_index`."""
    spec = dict(cfg["resources"]["default"])
    for key in keys:
        if key in cfg["resources"]["per_size"]:
            spec.update(cfg["resources"]["per_size"][key])
            break
    return {k: spec[k] for k in RESOURCE_KEYS if spec.get(k) is not None}


def local_source_dep(cfg: dict[str, Any], source: dict[str, Any]) -> list[str]:
    """A `file:` source as a dep: the toy world directory when it lies there, else the file itself."""
    url = source["url"]
    if not url.startswith("file:"):
        return []
    local = Path(url[len("file:") :].removeprefix("//"))
    if "toyworld" in cfg:
        world = paths.toyworld_dir(cfg)
        if local == world or world in local.parents:
            return [str(world)]
    deps = [str(local)]
    if source.get("sha256_manifest"):
        deps.append(source["sha256_manifest"])
    return deps


# --------------------------------------------------------------------------- code deps


def _package_dir() -> tuple[Path, Path]:
    """(directory to read sources from, prefix to name them by): the repo's src/ when run from the repo."""
    repo_src = Path("src") / "research_rl"
    if (repo_src / "workflow.py").is_file():
        return repo_src, repo_src
    here = Path(__file__).resolve().parent
    return here, here


def _module_file(root: Path, module: str) -> Path | None:
    parts = module.split(".")[1:]
    candidate = root.joinpath(*parts)
    if candidate.with_suffix(".py").is_file():
        return candidate.with_suffix(".py")
    if (candidate / "__init__.py").is_file():
        return candidate / "__init__.py"
    return None


def _imports(root: Path, module: str, source: Path) -> set[str]:
    """The research_rl modules a file imports (anywhere in it: lazy imports in functions count)."""
    tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
    package = module if source.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            # `from research_rl.data import download` imports a submodule
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "research_rl" or name.startswith("research_rl.")}


_CODE_CACHE: dict[tuple[str, str], tuple[str, ...]] = {}


def code_files(entry_module: str) -> tuple[str, ...]:
    """The entry module's file and, transitively, every research_rl module file it imports, sorted."""
    root, prefix = _package_dir()
    cache_key = (str(root.resolve()), entry_module)
    if cache_key in _CODE_CACHE:
        return _CODE_CACHE[cache_key]
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [entry_module]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(root, module)
        if path is None:
            continue
        if module not in NOT_CODE_DEPS:
            files.add(path)
        todo.extend(_imports(root, module, path) - seen)
    result = tuple(sorted(str(prefix / path.relative_to(root)) for path in files))
    _CODE_CACHE[cache_key] = result
    return result


# --------------------------------------------------------------------------- the plan


def stage_name(rule: str, *parts: str) -> str:
    return "--".join([rule, *(DVC_NAME_INVALID.sub("_", part) for part in parts)])


# Stages whose command is not their dashed name: train_grpo goes through its launcher (training/launch.py).
CLI_COMMANDS = {"train_grpo": "launch-train"}


def cli_cmd(cfg: dict[str, Any], rule: str, **options: str) -> str:
    cmd = f"research-rl {CLI_COMMANDS.get(rule, rule.replace('_', '-'))} --config {config_file(cfg)}"
    for key, value in options.items():
        cmd += f" --{key} {value}"
    return cmd


def evaluations(cfg: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(model, benchmark, method) cells: baselines on evaluation.baseline_models, `research` on every
    trained model (each entry of `models:` is trained)."""
    methods = cfg["evaluation"]["methods"]
    cells = []
    for entry in cfg["models"]:
        model = entry["name"]
        for benchmark in cfg["evaluation"]["benchmarks"]:
            for method in methods:
                # research_base (the rollout on the untrained checkpoint) is a baseline like the others.
                if method == TRAINED_METHOD or model in cfg["evaluation"]["baseline_models"]:
                    cells.append((model, benchmark, method))
    return cells


def retriever_query_params(cfg: dict[str, Any]) -> list[str]:
    """Keys a search at query time reads (the index itself is a dep)."""
    keys = ["retriever.topk"]
    if cfg["retriever"]["kind"] == "dense":
        keys += ["retriever.dense.query_prefix", "retriever.dense.nprobe", "retriever.dense.hnsw_ef_search"]
    return keys


def index_params(cfg: dict[str, Any]) -> list[str]:
    kind = cfg["retriever"]["kind"]
    if kind == "bm25":
        return ["retriever.kind", "retriever.bm25"]
    dense = (
        *EMBEDDING_KEYS,
        "index_type",
        "ivf_nlist",
        "ivf_train_size",
        "hnsw_m",
        "hnsw_ef_construction",
        "pq_m",
    )
    return ["retriever.kind", "corpus.num_passages"] + [f"retriever.dense.{key}" for key in dense]


# What a shard's vectors depend on (with the corpus, a dep); build_index reads these too, since it
# embeds a missing or stale shard itself when run alone.
EMBEDDING_KEYS = ("model", "passage_prefix", "max_length", "shard_size")


def planned_passages(cfg: dict[str, Any]) -> int:
    """The corpus's passage count before it is downloaded: corpus.num_passages, or the toy world's
    (deterministic from its settings; building the world without questions takes ~0.1 s)."""
    declared = sharding.declared_passages(cfg)
    if declared is not None:
        return declared
    if "toyworld" in cfg:
        from research_rl.data.toyworld import build_world

        return len(build_world(cfg["toyworld"]).passages)
    raise ValueError(
        "corpus.num_passages is not set: the dense index is embedded in one job per retriever.dense.shard_size "
        "passages, so the plan needs the corpus's passage count (wiki-18: 21015324)"
    )


def shard_outs(cfg: dict[str, Any], shard: int | str) -> list[str]:
    """The files embed_shard writes for shard `shard` (an int, or the rule's `{shard}` wildcard)."""
    return [str(path) for path in sharding.shard_files(paths.shard_dir(cfg), shard)]


def _present(cfg: dict[str, Any], keys: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(key for key in keys if has_key(cfg, key)))


def plan(cfg: dict[str, Any]) -> list[Stage]:
    """Every stage instance of the DAG for this config, in a topological order."""
    stages: list[Stage] = []

    def add(
        rule: str,
        *,
        parts: tuple[str, ...] = (),
        wildcards: dict[str, str] | None = None,
        options: dict[str, str] | None = None,
        deps: list[str],
        outs: list[str],
        out_dirs: list[str] = (),
        params: list[str],
        resource_keys: tuple[str, ...] = (),
        **extra: Any,
    ) -> None:
        stages.append(
            Stage(
                name=stage_name(rule, *parts),
                rule=rule,
                wildcards=dict(wildcards or {}),
                cmd=cli_cmd(cfg, rule, **(options or {})),
                deps=tuple(dict.fromkeys(deps)),
                code=code_files(ENTRY_MODULES[rule]),
                outs=tuple(outs),
                out_dirs=frozenset(out_dirs),
                params=_present(cfg, params),
                resources=resources_for(cfg, resource_keys),
                env=ENV_GROUPS[rule],
                **extra,
            )
        )

    if "toyworld" in cfg:
        world = str(paths.toyworld_dir(cfg))
        add("toyworld", deps=[], outs=[world], out_dirs=[world], params=["toyworld"])

    add(
        "download_corpus",
        deps=local_source_dep(cfg, cfg["corpus"]),
        outs=[str(paths.corpus_path(cfg))],
        params=["corpus"],
    )

    splits = [(b, s) for b, by_split in cfg["datasets"].items() for s in by_split]
    raw_deps = [dep for b, s in splits for dep in local_source_dep(cfg, cfg["datasets"][b][s])]
    raw = [str(paths.raw_path(cfg, b, s)) for b, s in splits]
    add("download_qa", deps=raw_deps, outs=raw, params=["datasets"])

    # Hub models (policies, the dense encoder) into the shared cache, one stage per repo; absent when every
    # model is local (the embedded default).
    if hub_models.models_cache(cfg):
        for repo_id in hub_models.hub_models(cfg):
            if repo_id == cfg["retriever"].get("dense", {}).get("model"):
                repo_params = ["retriever.dense.model", "retriever.dense.revision"]
            else:
                repo_params = [
                    f"models.{i}.{key}"
                    for i, entry in enumerate(cfg["models"])
                    if entry["path"] == repo_id
                    for key in ("path", "revision")
                ]
            add(
                "download_models",
                parts=(hub_models.repo_key(repo_id),),
                wildcards={"repo": hub_models.repo_key(repo_id)},
                options={"repo": repo_id},
                deps=[],
                outs=[str(hub_models.manifest_path(cfg, repo_id))],
                params=["paths.models", "paths.hub_endpoint", *repo_params],
            )

    qa = [str(paths.qa_path(cfg, b, s)) for b, s in splits]
    add("normalize_qa", deps=raw, outs=qa + [str(paths.normalize_report_path(cfg))], params=["normalize"])

    if "base_model" in cfg:
        # It reads the corpus, rebuilds the toy world's demonstrations from cfg["toyworld"] and searches
        # the index for their hop queries.
        base = str(paths.base_model_dir(cfg))
        add(
            "build_base_model",
            deps=[str(paths.corpus_path(cfg)), str(paths.index_dir(cfg))],
            outs=[base],
            out_dirs=[base],
            params=["base_model", "seed", "toyworld", *retriever_query_params(cfg)],
        )

    train = cfg["train_data"]
    train_qa = [str(paths.qa_path(cfg, train["benchmark"], train[k])) for k in ("train_split", "dev_split")]
    for i, entry in enumerate(cfg["models"]):
        model = entry["name"]
        add(
            "prepare_train",
            parts=(model,),
            wildcards={"model": model},
            options={"model": model},
            deps=train_qa + model_input(cfg, model),
            outs=[str(paths.train_parquet(cfg, split, model)) for split in ("train", "dev")],
            params=["train_data", f"models.{i}"],
        )

    # Dense: one job a shard (a GPU each on the cluster), so a failed or killed run keeps the shards it
    # finished; build_index only reads them. The shard count is known before the corpus is downloaded.
    shards: list[str] = []
    if cfg["retriever"]["kind"] == "dense":
        for number in range(sharding.shard_count(planned_passages(cfg), sharding.shard_size(cfg))):
            shard = f"{number:05d}"
            outs = shard_outs(cfg, number)
            add(
                "embed_shard",
                parts=(shard,),
                wildcards={"shard": shard},
                options={"shard": shard},
                deps=[str(paths.corpus_path(cfg)), *encoder_input(cfg)],
                outs=outs,
                # Not corpus.num_passages: it sets how many shards there are, not what one holds.
                params=[f"retriever.dense.{key}" for key in EMBEDDING_KEYS],
                resource_keys=("embed_shard",),
            )
            shards += outs

    index = str(paths.index_dir(cfg))
    add(
        "build_index",
        deps=[str(paths.corpus_path(cfg)), *shards],
        outs=[index],
        out_dirs=[index],
        params=index_params(cfg),
        resource_keys=("build_index",),
    )

    for i, entry in enumerate(cfg["models"]):
        model = entry["name"]
        final = str(paths.trained_model_final(cfg, model))
        # Launcher configs are deps once they exist (another change may still be writing them); the model's
        # grpo.per_size entry may name its own.
        launch = {**cfg["grpo"], **cfg["grpo"].get("per_size", {}).get(entry.get("size"), {})}
        extra_files = [
            launch[k] for k in ("deepspeed", "accelerate_config") if launch.get(k) and Path(launch[k]).exists()
        ]
        log = str(paths.trained_model_dir(cfg, model) / "metrics.jsonl")
        add(
            "train_grpo",
            parts=(model,),
            wildcards={"model": model},
            options={"model": model},
            deps=[str(paths.train_parquet(cfg, s, model)) for s in ("train", "dev")]
            + [index]
            + model_input(cfg, model)
            + extra_files,
            outs=[final],
            out_dirs=[final],
            resumable=(log,),
            plots=(log,),
            persist=True,
            params=["grpo", "seed", f"models.{i}", *retriever_query_params(cfg)],
            resource_keys=(entry["size"],),
        )

    metrics_files = []
    for model, benchmark, method in evaluations(cfg):
        i = model_index(cfg, model)
        split = cfg["evaluation"]["benchmarks"][benchmark]
        out = paths.eval_dir(cfg, model, benchmark, method)
        model_dep = (
            [str(paths.trained_model_final(cfg, model))] if method == TRAINED_METHOD else model_input(cfg, model)
        )
        params = [
            "seed",
            f"models.{i}",
            f"evaluation.benchmarks.{benchmark}",
            "evaluation.max_questions",
            "evaluation.max_new_tokens",
            "evaluation.judge",
            "evaluation.bootstrap_samples",
        ]
        if method != "zero_shot":
            params += retriever_query_params(cfg)
        params += {
            "iter_retgen": ["evaluation.iter_retgen_rounds"],
            "ircot": ["evaluation.ircot_max_steps"],
            "research": ["grpo.max_turns", "grpo.max_response_length"],
            "research_base": ["grpo.max_turns", "grpo.max_response_length"],
        }.get(method, [])
        metrics_files.append(str(out / "metrics.json"))
        add(
            "evaluate",
            parts=(model, benchmark, method),
            wildcards={"model": model, "benchmark": benchmark, "method": method},
            options={"model": model, "benchmark": benchmark, "method": method},
            deps=[str(paths.qa_path(cfg, benchmark, split))] + ([] if method == "zero_shot" else [index]) + model_dep,
            outs=[str(out / "metrics.json")],
            metrics=(str(out / "metrics.json"),),
            resumable=(str(out / "predictions.jsonl"),),
            persist=True,
            params=params,
            resource_keys=(f"{cfg['models'][i]['size']}_eval", cfg["models"][i]["size"]),
        )

    report_outs = [str(paths.tables_dir(cfg)), str(paths.figures_dir(cfg))]
    notebook = [cfg["report"]["notebook"]] if Path(cfg["report"]["notebook"]).exists() else []
    # The paper's table (paper_vs_ours) where the config sets one beside ours; the embedded default has none.
    reference = cfg["report"].get("reference")
    reference_deps = [reference["table"]] if reference else []
    add(
        "report",
        deps=metrics_files
        + [str(paths.trained_model_final(cfg, e["name"])) for e in cfg["models"]]
        + notebook
        + reference_deps,
        outs=report_outs,
        out_dirs=report_outs,
        params=["evaluation.bootstrap_samples", "seed"] + (["report.reference"] if reference else []),
    )
    return stages


# --------------------------------------------------------------------------- Snakefile helpers


def find_stage(cfg: dict[str, Any], rule: str, wildcards: Any = None) -> Stage:
    """The plan's stage for a Snakemake job (rule + wildcards)."""
    wanted = {k: str(v) for k, v in dict(wildcards or {}).items()}
    for stage in cached_plan(cfg):
        if stage.rule == rule and all(stage.wildcards.get(k) == v for k, v in wanted.items()):
            return stage
    raise KeyError(f"no {rule} stage for {wanted}")


_PLAN_CACHE: dict[int, list[Stage]] = {}


def cached_plan(cfg: dict[str, Any]) -> list[Stage]:
    """plan(cfg), computed once per config object (the Snakefile asks for it once per job)."""
    key = id(cfg)
    if key not in _PLAN_CACHE:
        _PLAN_CACHE[key] = plan(cfg)
    return _PLAN_CACHE[key]


def inputs(cfg: dict[str, Any], rule: str, wildcards: Any = None) -> list[str]:
    return list(find_stage(cfg, rule, wildcards).all_deps)


def params(cfg: dict[str, Any], rule: str, wildcards: Any = None) -> dict[str, Any]:
    stage = find_stage(cfg, rule, wildcards)
    return param_values(cfg, stage.params)


def resources(cfg: dict[str, Any], rule: str, wildcards: Any = None) -> dict[str, Any]:
    return find_stage(cfg, rule, wildcards).resources


def final_targets(cfg: dict[str, Any]) -> list[str]:
    """Every declared out (the `all` rule's inputs)."""
    return [out for stage in cached_plan(cfg) for out in stage.outs]


def wildcard_values(cfg: dict[str, Any]) -> dict[str, list[str]]:
    cells = evaluations(cfg)
    return {
        "model": [entry["name"] for entry in cfg["models"]],
        "benchmark": sorted({b for _, b, _ in cells}) or list(paths.BENCHMARKS),
        "method": sorted({m for _, _, m in cells}) or [TRAINED_METHOD],
    }


def wildcard_regex(values: list[str]) -> str:
    return "|".join(re.escape(value) for value in values)


# --------------------------------------------------------------------------- dvc.yaml


def dvc_stages(cfg: dict[str, Any]) -> dict[str, Any]:
    config = config_file(cfg)
    stages: dict[str, Any] = {}
    for stage in plan(cfg):
        entry: dict[str, Any] = {"cmd": stage.cmd}
        if stage.all_deps:
            entry["deps"] = list(stage.all_deps)
        if stage.params:
            entry["params"] = [{config: list(stage.params)}]
        outs: list[Any] = []
        metrics: list[Any] = []
        for out in stage.outs:
            options: dict[str, Any] = {}
            if stage.persist:
                options["persist"] = True
            item = {out: options} if options else out
            (metrics if out in stage.metrics else outs).append(item)
        for out in stage.resumable:
            if out not in stage.plots:
                outs.append({out: {"persist": True}})
        if outs:
            entry["outs"] = outs
        if metrics:
            entry["metrics"] = metrics
        if stage.plots:
            entry["plots"] = [{plot: {"persist": True}} for plot in stage.plots]
        stages[stage.name] = entry
    return stages


HEADER = (
    "# Generated by `research-rl dvc-yaml --config {config}` from research_rl.workflow.plan (the same plan\n"
    "# as the Snakefile). Do not edit: change the config or the plan and regenerate;\n"
    "# `research-rl dvc-yaml --check` (and the test suite) fails when this file is stale.\n"
)


def render_dvc_yaml(cfg: dict[str, Any]) -> str:
    body = yaml.safe_dump({"stages": dvc_stages(cfg)}, sort_keys=False, width=120, default_flow_style=False)
    return HEADER.format(config=config_file(cfg)) + body


def write_dvc_yaml(cfg: dict[str, Any], path: str | Path = "dvc.yaml") -> Path:
    path = Path(path)
    path.write_text(render_dvc_yaml(cfg), encoding="utf-8")
    return path


def dvc_yaml_is_current(cfg: dict[str, Any], path: str | Path = "dvc.yaml") -> bool:
    path = Path(path)
    return path.is_file() and path.read_text(encoding="utf-8") == render_dvc_yaml(cfg)


# --------------------------------------------------------------------------- graph queries


def _covers(out: str, dep: str) -> bool:
    return dep == out or dep.startswith(out.rstrip("/") + "/")


def upstream_edges(stages: list[Stage]) -> dict[str, set[str]]:
    """For each stage name, the names of the stages whose outs it depends on."""
    edges: dict[str, set[str]] = {stage.name: set() for stage in stages}
    for stage in stages:
        for dep in stage.deps:
            for other in stages:
                if other is not stage and any(_covers(out, dep) for out in other.outs + other.resumable):
                    edges[stage.name].add(other.name)
    return edges


def downstream(stages: list[Stage], names: set[str]) -> set[str]:
    """The given stages and every stage that (transitively) depends on one of them."""
    edges = upstream_edges(stages)
    result = set(names)
    changed = True
    while changed:
        changed = False
        for name, ups in edges.items():
            if name not in result and ups & result:
                result.add(name)
                changed = True
    return result


def readers(stages: list[Stage], key: str) -> set[str]:
    """The stages whose params cover the dotted config key (the key itself, a parent or a child)."""

    def related(param: str) -> bool:
        return param == key or key.startswith(param + ".") or param.startswith(key + ".")

    return {stage.name for stage in stages if any(related(param) for param in stage.params)}


def affected_by_param(cfg: dict[str, Any], key: str) -> set[str]:
    """What a change of config key `key` reruns, in both engines."""
    stages = plan(cfg)
    return downstream(stages, readers(stages, key))


def affected_by_file(cfg: dict[str, Any], path: str) -> set[str]:
    """What an edit of source or input file `path` reruns, in both engines."""
    stages = plan(cfg)
    return downstream(stages, {stage.name for stage in stages if path in stage.all_deps})

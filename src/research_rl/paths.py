"""Every artifact path of the DAG, derived from the config.

The CLI, the Snakefile and the generated dvc.yaml all ask this module, so a path is named once.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

BENCHMARKS = ("hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
COMPRESSION_SUFFIXES = (".gz", ".bz2")


def data_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["paths"]["data"])


def results_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["paths"]["results"])


def downloads_dir(cfg: dict[str, Any]) -> Path:
    """Where published files land before they are unpacked (kept so a rerun verifies, not refetches)."""
    return data_dir(cfg) / "downloads"


def toyworld_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["toyworld"]["out_dir"])


def corpus_path(cfg: dict[str, Any]) -> Path:
    return data_dir(cfg) / "corpus" / f"{cfg['corpus']['name']}.jsonl"


def source_name(source: dict[str, Any]) -> str:
    """The file name a source unpacks to: the archive member, else the URL's basename less compression."""
    name = source.get("member") or PurePosixPath(urlparse(source["url"]).path).name
    name = PurePosixPath(name).name
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def raw_path(cfg: dict[str, Any], benchmark: str, split: str) -> Path:
    """A benchmark split in its publisher's format: data/raw/<benchmark>/<split><ext>."""
    source = cfg["datasets"][benchmark][split]
    suffix = PurePosixPath(source_name(source)).suffix or ".txt"
    return data_dir(cfg) / "raw" / benchmark / f"{split}{suffix}"


def qa_path(cfg: dict[str, Any], benchmark: str, split: str) -> Path:
    return data_dir(cfg) / "qa" / benchmark / f"{split}.jsonl"


def normalize_report_path(cfg: dict[str, Any]) -> Path:
    return data_dir(cfg) / "qa" / "normalize_report.json"


def train_parquet(cfg: dict[str, Any], split: str, model_name: str | None = None) -> Path:
    """data/train/musique_{train,dev}.parquet; one file per model entry when prompts differ by template."""
    bench = cfg["train_data"]["benchmark"]
    if model_name is None:
        return data_dir(cfg) / "train" / f"{bench}_{split}.parquet"
    return data_dir(cfg) / "train" / model_name / f"{bench}_{split}.parquet"


def index_dir(cfg: dict[str, Any], kind: str | None = None) -> Path:
    kind = kind or cfg["retriever"]["kind"]
    return data_dir(cfg) / "index" / kind


def shard_dir(cfg: dict[str, Any]) -> Path:
    """The dense embedding shards, beside (not inside) the index directory, so a failed or rerun
    build_index, whose output is that whole directory, never deletes them."""
    return data_dir(cfg) / "index" / "dense_shards"


def base_model_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["base_model"]["out_dir"])


def model_entry(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    for entry in cfg["models"]:
        if entry["name"] == name:
            return entry
    known = ", ".join(entry["name"] for entry in cfg["models"])
    raise KeyError(f"model {name!r} is not in the config's models: (known: {known})")


def trained_model_dir(cfg: dict[str, Any], name: str) -> Path:
    return results_dir(cfg) / "models" / name


def trained_model_final(cfg: dict[str, Any], name: str) -> Path:
    return trained_model_dir(cfg, name) / "final"


def eval_dir(cfg: dict[str, Any], model: str, benchmark: str, method: str) -> Path:
    return results_dir(cfg) / "eval" / model / benchmark / method


def tables_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["report"]["out_tables"])


def figures_dir(cfg: dict[str, Any]) -> Path:
    return Path(cfg["report"]["out_figures"])

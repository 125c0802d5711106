"""Load and validate the pipeline config (one file names every path and parameter).

A bad config fails before any job runs, with a message naming the field and what it may be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parent / "resources" / "config.schema.yaml"
CONFIG_PATH_KEY = "_config_path"


class ConfigError(ValueError):
    """The config file is missing, unreadable, or does not match the schema."""


def load_schema() -> dict[str, Any]:
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _field_name(error: jsonschema.ValidationError) -> str:
    parts = [str(part) for part in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    """One line per error: the dotted field, the problem, and the allowed values where the schema has them."""
    field = _field_name(error)
    if error.validator == "enum":
        allowed = ", ".join(repr(value) for value in error.validator_value)
        return f"field `{field}`: {error.instance!r} is not allowed; allowed values: {allowed}"
    if error.validator == "const":
        return f"field `{field}`: {error.instance!r} is not allowed here; it must be {error.validator_value!r}"
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"field `{field}`: {error.message}; known fields: {allowed}"
    if error.validator == "propertyNames":
        allowed = error.schema.get("propertyNames", {}).get("enum")
        suffix = f"; allowed names: {', '.join(allowed)}" if allowed else ""
        return f"field `{field}`: {error.message}{suffix}"
    return f"field `{field}`: {error.message}"


def _leaf_errors(errors: list[jsonschema.ValidationError]) -> list[jsonschema.ValidationError]:
    """if/then failures wrap the real cause; report the cause, which names the field."""
    leaves: list[jsonschema.ValidationError] = []
    for error in errors:
        if error.context:
            leaves.extend(_leaf_errors(list(error.context)))
        else:
            leaves.append(error)
    return leaves


def _cross_field_errors(cfg: dict[str, Any]) -> list[str]:
    """Checks the schema cannot express: names that must point at other entries."""
    problems = []
    model_names = [entry["name"] for entry in cfg["models"]]
    if len(set(model_names)) != len(model_names):
        problems.append(f"field `models`: model names must be unique, got {model_names}")
    sizes = cfg["resources"]["per_size"]
    for i, entry in enumerate(cfg["models"]):
        if entry["size"] not in sizes:
            problems.append(
                f"field `models.{i}.size`: {entry['size']!r} has no entry in resources.per_size; "
                f"allowed values: {', '.join(sorted(sizes))}"
            )
    for i, name in enumerate(cfg["evaluation"]["baseline_models"]):
        if name not in model_names:
            problems.append(
                f"field `evaluation.baseline_models.{i}`: {name!r} is not a model name; "
                f"allowed values: {', '.join(model_names)}"
            )
    for benchmark, split in cfg["evaluation"]["benchmarks"].items():
        if split not in cfg["datasets"].get(benchmark, {}):
            problems.append(
                f"field `evaluation.benchmarks.{benchmark}`: split {split!r} is not downloaded; "
                f"datasets.{benchmark} has: {', '.join(cfg['datasets'].get(benchmark, {})) or 'nothing'}"
            )
    train = cfg["train_data"]
    for key in ("train_split", "dev_split"):
        if train[key] not in cfg["datasets"].get(train["benchmark"], {}):
            problems.append(f"field `train_data.{key}`: datasets.{train['benchmark']} has no split {train[key]!r}")
    if any(entry["path"] == cfg.get("base_model", {}).get("out_dir") for entry in cfg["models"]):
        if "base_model" not in cfg:
            problems.append("field `base_model`: required when a model path is the built base model")
    return problems


def validate_config(cfg: Any, source: str = "config") -> dict[str, Any]:
    """Raise ConfigError listing every problem; return the config unchanged when it is valid."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: the config must be a mapping of fields, got {type(cfg).__name__}")
    validator = jsonschema.Draft202012Validator(load_schema())
    errors = _leaf_errors(sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path)))
    problems = [_describe(error) for error in errors]
    if not problems:
        problems = _cross_field_errors(cfg)
    if problems:
        lines = "\n  ".join(dict.fromkeys(problems))
        raise ConfigError(f"{source} is not a valid research-rl config:\n  {lines}")
    return cfg


def load_config(path: str | Path) -> dict[str, Any]:
    """Read, validate and return the config; its own path is kept under `_config_path` for sub-jobs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            cfg = yaml.safe_load(handle)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    validate_config(cfg, str(path))
    cfg[CONFIG_PATH_KEY] = str(path)
    return cfg


def config_path(cfg: dict[str, Any]) -> str:
    """The file a loaded config came from, for sub-processes that must load the same one."""
    if CONFIG_PATH_KEY not in cfg:
        raise ConfigError("this config was not loaded from a file (use research_rl.config.load_config)")
    return cfg[CONFIG_PATH_KEY]

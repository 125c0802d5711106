"""The config schema: both shipped configs validate; bad ones fail naming the field and allowed values."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from research_rl.config import ConfigError, load_config, validate_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def default_cfg() -> dict:
    with open(REPO / "config" / "config.yaml", encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_embedded_default_validates():
    cfg = load_config(REPO / "config" / "config.yaml")
    assert cfg["_config_path"].endswith("config.yaml")
    assert cfg["retriever"]["kind"] in ("dense", "bm25")


def test_paper_config_validates():
    paper = REPO / "config" / "paper.yaml"
    if not paper.exists():
        pytest.fail("config/paper.yaml is missing")
    cfg = load_config(paper)
    assert {entry["apply_chat"] for entry in cfg["models"]} == {True, False}


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda c: c["retriever"].update(kind="sparse"), ["retriever.kind", "'dense', 'bm25'"]),
        (lambda c: c["models"][0].update(apply_chat=True), ["models.0.template", "re_search_template_sys"]),
        (lambda c: c["grpo"].update(num_generations="five"), ["grpo.num_generations", "integer"]),
        (lambda c: c["grpo"].update(num_generations=1), ["grpo.num_generations", "minimum"]),
        (lambda c: c["corpus"].update(format="csv"), ["corpus.format", "'flashrag', 'dpr_tsv'"]),
        (lambda c: c["datasets"].update(nq={"dev": {"url": "x"}}), ["datasets", "'hotpotqa'"]),
        (lambda c: c.update(unknown_section=1), ["unknown_section", "known fields"]),
        (lambda c: c["corpus"].update(sha256="abc"), ["corpus.sha256", "does not match"]),
        (lambda c: c["evaluation"].update(methods=["research", "beam"]), ["evaluation.methods.1", "'ircot'"]),
        (lambda c: c["evaluation"].update(baseline_models=["nope"]), ["evaluation.baseline_models.0", "tiny-base"]),
        (lambda c: c["models"][0].update(size="huge"), ["models.0.size", "tiny"]),
        (lambda c: c.pop("grpo"), ["'grpo' is a required property"]),
    ],
)
def test_bad_config_names_field_and_allowed_values(default_cfg, mutate, expected):
    bad = copy.deepcopy(default_cfg)
    mutate(bad)
    with pytest.raises(ConfigError) as caught:
        validate_config(bad, "bad.yaml")
    message = str(caught.value)
    assert "bad.yaml" in message
    for fragment in expected:
        assert fragment in message


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_cli_rejects_bad_config_before_running(tmp_path, default_cfg):
    from typer.testing import CliRunner

    from research_rl.cli import app

    bad = copy.deepcopy(default_cfg)
    bad["retriever"]["kind"] = "sparse"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    result = CliRunner().invoke(app, ["build-index", "--config", str(path)])
    assert result.exit_code == 2
    assert "retriever.kind" in result.output


def test_cli_lists_every_stage():
    from typer.testing import CliRunner

    from research_rl.cli import app

    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for stage in (
        "toyworld",
        "download-corpus",
        "download-qa",
        "normalize-qa",
        "build-base-model",
        "prepare-train",
        "build-index",
        "retriever",
        "train-grpo",
        "evaluate",
        "report",
    ):
        assert stage in result.output

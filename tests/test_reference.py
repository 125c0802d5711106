"""config/reference/: the paper's Table 2 and settings, and config/paper.yaml checked against them.

These tests guard the transcribed files against accidental edits (a lost row, a value typed twice, a
setting that drifts in config/paper.yaml); they cannot prove the transcription itself, which rests on
the comparison of two copies of the paper described in config/reference/README.md.
"""

from __future__ import annotations

import csv
import itertools
import re
from pathlib import Path

import pytest
import yaml

from research_rl.config import load_config

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "config" / "reference"
FAMILIES = ("7b", "32b")
METHODS = ("naive_generation", "naive_rag", "iter_retgen", "ircot", "research_base", "research_instruct")
BENCHMARKS = ("hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
METRICS = ("em", "lj")


def read_table() -> list[dict[str, str]]:
    with open(REFERENCE / "paper_table2.csv", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["family", "method", "benchmark", "metric", "value"]
        return list(reader)


def test_table2_has_every_cell_once():
    rows = read_table()
    keys = [(r["family"], r["method"], r["benchmark"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)), "a cell appears twice"
    assert set(keys) == set(itertools.product(FAMILIES, METHODS, BENCHMARKS, METRICS))


def test_table2_values_are_percentages_with_two_decimals():
    for row in read_table():
        assert re.fullmatch(r"\d{1,3}\.\d\d", row["value"]), row
        assert 0.0 <= float(row["value"]) <= 100.0, row


@pytest.mark.parametrize(
    ("family", "method", "benchmark", "metric", "value"),
    [
        ("7b", "naive_generation", "hotpotqa", "em", "19.18"),
        ("7b", "ircot", "bamboogle", "lj", "36.80"),
        ("7b", "research_instruct", "2wikimultihopqa", "lj", "54.22"),
        ("7b", "research_base", "musique", "em", "21.68"),
        ("32b", "iter_retgen", "hotpotqa", "lj", "58.80"),
        ("32b", "ircot", "2wikimultihopqa", "em", "13.53"),
        ("32b", "research_base", "musique", "em", "26.40"),
        ("32b", "research_instruct", "hotpotqa", "lj", "67.70"),
        ("32b", "research_instruct", "bamboogle", "lj", "67.20"),
    ],
)
def test_table2_spot_values(family, method, benchmark, metric, value):
    (row,) = [
        r
        for r in read_table()
        if (r["family"], r["method"], r["benchmark"], r["metric"]) == (family, method, benchmark, metric)
    ]
    assert row["value"] == value


def _lookup(cfg: dict, dotted: str):
    node = cfg
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"config/paper.yaml has no {dotted}"
        node = node[part]
    return node


def test_paper_config_matches_the_papers_settings():
    """Every setting of paper_settings.yaml that names a config key equals config/paper.yaml's value,
    unless the entry says why it differs."""
    settings = yaml.safe_load((REFERENCE / "paper_settings.yaml").read_text(encoding="utf-8"))
    cfg = load_config(REPO / "config" / "paper.yaml")
    checked = 0
    for section in ("table4", "evaluation", "original_code"):
        for entry in settings[section]:
            assert {"parameter", "value", "config"} <= set(entry), entry
            if entry["config"] is None or "differs" in entry:
                assert entry.get("note") or entry.get("differs"), f"{entry['parameter']}: say why there is no key"
                continue
            assert _lookup(cfg, entry["config"]) == entry["value"], entry["parameter"]
            checked += 1
    assert checked >= 7 + 7 + 5  # Table 4's seven rows, section 3.1's settings with a key, the original's code


def test_paper_config_reference_table_and_rows():
    cfg = load_config(REPO / "config" / "paper.yaml")
    reference = cfg["report"]["reference"]
    assert (REPO / reference["table"]).resolve() == (REFERENCE / "paper_table2.csv").resolve()
    assert set(reference["rows"]) == set(METHODS)
    # The embedded default's toy world is not comparable: no reference there.
    assert "reference" not in load_config(REPO / "config" / "config.yaml")["report"]

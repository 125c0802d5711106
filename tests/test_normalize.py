"""normalize_qa: every configured split to FlashRAG jsonl, the report, and malformed-record policy."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

from research_rl import paths
from research_rl.data import normalize, toyworld
from research_rl.data.jsonl import read_jsonl

REPO = Path(__file__).resolve().parents[1]

GOOD = {
    "musique": lambda i: (
        json.dumps(
            {
                "id": f"2hop__{i}_{i + 100}",
                "paragraphs": [],
                "question": f"Where was the founder of Firm{i} born?",
                "question_decomposition": [
                    {"id": i, "question": f"Who founded Firm{i}?", "answer": f"P{i}", "paragraph_support_idx": None},
                    {
                        "id": i + 100,
                        "question": "Where was #1 born?",
                        "answer": f"Town{i}",
                        "paragraph_support_idx": None,
                    },
                ],
                "answer": f"Town{i}",
                "answer_aliases": [f"T{i}"],
                "answerable": True,
            }
        )
        + "\n"
    ),
    "hotpotqa": lambda i: {
        "_id": f"h{i}",
        "question": f"Q{i}?",
        "answer": f"A{i}",
        "type": "bridge",
        "level": "easy",
        "supporting_facts": [],
        "context": [],
    },
    "2wikimultihopqa": lambda i: {
        "_id": f"w{i}",
        "type": "comparison",
        "question": f"Q{i}?",
        "answer": "no",
        "evidences": [],
        "supporting_facts": [],
        "context": [],
    },
    "bamboogle": lambda i: f"Question {i}?,Answer {i}\n",
}


def load_cfg(tmp_path: Path, skip: bool = False) -> dict:
    with open(REPO / "config" / "config.yaml", encoding="utf-8") as handle:
        cfg = yaml.safe_load(handle)
    cfg["paths"]["data"] = str(tmp_path / "data")
    cfg["toyworld"]["out_dir"] = str(tmp_path / "toyworld")
    cfg["normalize"]["skip_malformed"] = skip
    return cfg


def write_raw(cfg: dict, benchmark: str, split: str, n: int = 3, extra: str = "") -> Path:
    """Hand-written raw files in the publishers' shapes at the path normalize reads."""
    path = paths.raw_path(cfg, benchmark, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    make = GOOD[benchmark]
    if benchmark == "musique":
        text = "".join(make(i) for i in range(n)) + extra
    elif benchmark == "bamboogle":
        text = "Question,Answer\n" + "".join(make(i) for i in range(n)) + extra
    else:
        text = json.dumps([make(i) for i in range(n)])
    path.write_text(text, encoding="utf-8")
    return path


def write_all(cfg: dict) -> None:
    for benchmark, split in normalize.splits(cfg):
        write_raw(cfg, benchmark, split)


def read_report(cfg: dict) -> dict:
    return json.loads(paths.normalize_report_path(cfg).read_text())


def test_every_configured_split_is_normalized_and_reported(tmp_path):
    cfg = load_cfg(tmp_path)
    write_all(cfg)
    normalize.run(cfg)
    report = read_report(cfg)
    assert report["status"] == "ok"
    assert [(f["benchmark"], f["split"]) for f in report["files"]] == normalize.splits(cfg)
    for entry in report["files"]:
        assert (entry["read"], entry["written"], entry["malformed"], entry["errors"]) == (3, 3, 0, [])
        records = read_jsonl(paths.qa_path(cfg, entry["benchmark"], entry["split"]))
        assert len(records) == 3
        assert all(set(r) == {"id", "question", "golden_answers", "metadata"} for r in records)
    musique = read_jsonl(paths.qa_path(cfg, "musique", "train"))
    assert musique[0]["golden_answers"] == ["Town0", "T0"] and musique[0]["metadata"]["answerable"] is True


def test_malformed_record_fails_the_stage_naming_file_and_line(tmp_path):
    cfg = load_cfg(tmp_path, skip=False)
    write_all(cfg)
    raw = write_raw(cfg, "musique", "dev", extra='{"id": "2hop__9_9", "question": "Q?"}\n')
    with pytest.raises(ValueError, match=rf"{raw}:4: answer: missing"):
        normalize.run(cfg)
    report = read_report(cfg)
    assert report["status"] == "failed"
    bad = [f for f in report["files"] if f["malformed"]]
    assert len(bad) == 1 and bad[0]["errors"] == [f"{raw}:4: answer: missing"]
    assert not paths.qa_path(cfg, "musique", "train").exists()  # nothing half-done is left for DVC


def test_skip_malformed_skips_and_counts(tmp_path):
    cfg = load_cfg(tmp_path, skip=True)
    write_all(cfg)
    raw = write_raw(cfg, "bamboogle", "test", extra="only one column\n")
    duplicate = GOOD["musique"](0)
    write_raw(cfg, "musique", "train", extra="{broken\n" + duplicate)
    normalize.run(cfg)
    report = {(f["benchmark"], f["split"]): f for f in read_report(cfg)["files"]}
    bamboogle = report[("bamboogle", "test")]
    assert (bamboogle["read"], bamboogle["written"], bamboogle["malformed"]) == (4, 3, 1)
    assert bamboogle["errors"][0].startswith(f"{raw}:5: <row>:")
    musique = report[("musique", "train")]
    assert (musique["read"], musique["written"], musique["malformed"]) == (5, 3, 2)
    assert "duplicate id '2hop__0_100'" in musique["errors"][1]
    assert len(read_jsonl(paths.qa_path(cfg, "musique", "train"))) == 3


def test_missing_raw_file_is_named(tmp_path):
    cfg = load_cfg(tmp_path)
    write_all(cfg)
    missing = paths.raw_path(cfg, "hotpotqa", "dev")
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=str(missing)):
        normalize.run(cfg)


def test_toy_world_through_normalize(tmp_path):
    """The generated world, placed where download_qa puts it, normalizes without a single error."""
    cfg = load_cfg(tmp_path)
    toyworld.run(cfg)
    for benchmark, split in normalize.splits(cfg):
        source = cfg["datasets"][benchmark][split]
        published = paths.toyworld_dir(cfg) / PurePosixPath(urlparse(source["url"]).path).name
        target = paths.raw_path(cfg, benchmark, split)
        target.parent.mkdir(parents=True, exist_ok=True)
        if "member" in source:
            target.write_bytes(zipfile.ZipFile(published).read(source["member"]))
        else:
            shutil.copy(published, target)
    normalize.run(cfg)
    counts = cfg["toyworld"]["questions"]
    for entry in read_report(cfg)["files"]:
        assert entry["malformed"] == 0
        assert entry["written"] == counts[f"{entry['benchmark']}_{entry['split']}"]
    musique = read_jsonl(paths.qa_path(cfg, "musique", "train"))
    assert {r["metadata"]["hops"] for r in musique} == {2, 3, 4}
    assert any(r["metadata"]["answerable"] is False for r in musique)

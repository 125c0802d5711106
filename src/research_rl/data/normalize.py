"""Stage normalize_qa: every configured benchmark split, raw → FlashRAG dataset jsonl, plus a report.

Malformed records are always listed in the report (`data/qa/normalize_report.json`). With
`normalize.skip_malformed` they are skipped and counted; otherwise the stage fails naming the first one's
file and line, after writing the report, and before writing any dataset file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from research_rl import paths
from research_rl.data.benchmarks import MalformedRecord, iter_raw
from research_rl.data.jsonl import write_json, write_jsonl

MAX_REPORTED_ERRORS = 20
console = Console(stderr=True)


@dataclass
class FileResult:
    benchmark: str
    split: str
    raw: Path
    qa: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    errors: list[MalformedRecord] = field(default_factory=list)

    def summary(self, written: int) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "split": self.split,
            "raw": str(self.raw),
            "qa": str(self.qa),
            "read": len(self.records) + len(self.errors),
            "written": written,
            "malformed": len(self.errors),
            "errors": [str(error) for error in self.errors[:MAX_REPORTED_ERRORS]],
        }


def parse_file(benchmark: str, split: str, raw: Path, qa: Path) -> FileResult:
    """Parse one raw file, collecting malformed records (duplicate ids count as malformed)."""
    if not raw.is_file():
        raise FileNotFoundError(
            f"normalize_qa: raw file for {benchmark}/{split} not found: {raw} (run `research-rl download-qa` first)"
        )
    result = FileResult(benchmark, split, raw, qa)
    seen: dict[str, int] = {}
    for position, item in enumerate(iter_raw(benchmark, raw)):
        if isinstance(item, MalformedRecord):
            result.errors.append(item)
        elif item["id"] in seen:
            # A repeated id would make predictions ambiguous downstream.
            result.errors.append(MalformedRecord(raw, position, "id", f"duplicate id {item['id']!r}", where="index"))
        else:
            seen[item["id"]] = position
            result.records.append(item)
    return result


def splits(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(benchmark, split) pairs in config order."""
    return [(benchmark, split) for benchmark, by_split in cfg["datasets"].items() for split in by_split]


def run(cfg: dict[str, Any]) -> None:
    """Normalize every benchmark split named in cfg["datasets"]; see the module docstring for failures."""
    skip = bool(cfg.get("normalize", {}).get("skip_malformed", False))
    results = []
    for benchmark, split in splits(cfg):
        raw, qa = paths.raw_path(cfg, benchmark, split), paths.qa_path(cfg, benchmark, split)
        result = parse_file(benchmark, split, raw, qa)
        results.append(result)
        console.print(
            f"normalize_qa: {benchmark}/{split}: {len(result.records)} records, {len(result.errors)} malformed"
        )
    failing = [error for result in results for error in result.errors]
    write_now = skip or not failing
    report = {
        "skip_malformed": skip,
        "status": "ok" if write_now else "failed",
        "files": [r.summary(len(r.records) if write_now else 0) for r in results],
    }
    write_json(paths.normalize_report_path(cfg), report)
    if not write_now:
        raise ValueError(
            f"normalize_qa: {len(failing)} malformed record(s), first: {failing[0]} "
            f"(set normalize.skip_malformed: true to skip them; see {paths.normalize_report_path(cfg)})"
        )
    for result in results:
        write_jsonl(result.qa, result.records)

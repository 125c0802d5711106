"""Parsers for the four benchmarks' raw files, as their publishers ship them, into FlashRAG records.

A FlashRAG dataset record is `{"id", "question", "golden_answers": [answer, *aliases], "metadata": {..}}`.
`read_raw` is the stable entry point (DESIGN.md section 8); `iter_raw` yields malformed records as
`MalformedRecord` values instead of raising, so normalize_qa can skip and count them.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from research_rl.data.jsonl import JsonlError, iter_jsonl, open_text

BENCHMARKS = ("hotpotqa", "2wikimultihopqa", "musique", "bamboogle")


class MalformedRecord(ValueError):
    """A raw record that cannot become a FlashRAG record.

    `line` is the 1-based line for line-oriented files (jsonl, csv) and the 0-based list index for JSON
    lists (`where` says which); `field` names the offending field.
    """

    def __init__(self, file: str | os.PathLike, line: int, field: str, message: str, *, where: str = "line") -> None:
        self.file = str(file)
        self.line = line
        self.field = field
        self.message = message
        self.where = where
        super().__init__(str(self))

    def __str__(self) -> str:
        location = f"{self.line}" if self.where == "line" else f"[{self.line}]"
        return f"{self.file}:{location}: {self.field}: {self.message}"


class _Bad(Exception):
    """Raised inside a converter; the caller adds file and position to make a MalformedRecord."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


# ------------------------------------------------------------------------------------------ field checks


def _text(record: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    if key not in record:
        raise _Bad(key, "missing")
    value = record[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # ids and numeric answers (years) are sometimes numbers
    if not isinstance(value, str):
        raise _Bad(key, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise _Bad(key, "empty")
    return value.strip()


def _list(record: dict[str, Any], key: str, *, required: bool = True) -> list[Any]:
    if key not in record:
        if required:
            raise _Bad(key, "missing")
        return []
    value = record[key]
    if not isinstance(value, list):
        raise _Bad(key, f"expected a list, got {type(value).__name__}")
    return value


def golden_answers(answer: str, aliases: list[Any], field: str = "answer_aliases") -> list[str]:
    """The answer first, then its aliases: stripped, empty ones dropped, duplicates removed in order."""
    answers = [answer]
    for alias in aliases:
        if not isinstance(alias, (str, int)) or isinstance(alias, bool):
            raise _Bad(field, f"expected strings, got {type(alias).__name__}")
        answers.append(str(alias))
    kept: list[str] = []
    for candidate in (a.strip() for a in answers):
        if candidate and candidate not in kept:
            kept.append(candidate)
    return kept


def _supporting_facts(record: dict[str, Any]) -> dict[str, list[Any]]:
    """HotpotQA/2Wiki `[[title, sent_idx], ...]` in FlashRAG's column layout {"title": [], "sent_id": []}."""
    titles, sentences = [], []
    for item in _list(record, "supporting_facts", required=False):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], int)):
            raise _Bad("supporting_facts", f"expected [title, sentence index], got {item!r}")
        titles.append(item[0])
        sentences.append(item[1])
    return {"title": titles, "sent_id": sentences}


def _check_context(record: dict[str, Any]) -> None:
    for item in _list(record, "context", required=False):
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], list)):
            raise _Bad("context", f"expected [title, [sentences]], got {str(item)[:80]!r}")


# -------------------------------------------------------------------------------------------- converters


def _hotpotqa(record: dict[str, Any], position: int) -> dict[str, Any]:
    _check_context(record)
    metadata = {
        "type": record.get("type"),
        "level": record.get("level"),
        "hops": 2,
        "supporting_facts": _supporting_facts(record),
    }
    return {
        "id": _text(record, "_id"),
        "question": _text(record, "question"),
        "golden_answers": golden_answers(_text(record, "answer"), []),
        "metadata": metadata,
    }


def _twowiki(record: dict[str, Any], position: int) -> dict[str, Any]:
    _check_context(record)
    evidences = _list(record, "evidences", required=False)
    for item in evidences:
        if not (isinstance(item, list) and len(item) == 3):
            raise _Bad("evidences", f"expected [subject, relation, object], got {item!r}")
    metadata = {
        "type": record.get("type"),
        "hops": len(evidences) or None,
        "evidences": evidences,
        "supporting_facts": _supporting_facts(record),
    }
    return {
        "id": _text(record, "_id"),
        "question": _text(record, "question"),
        "golden_answers": golden_answers(_text(record, "answer"), []),
        "metadata": metadata,
    }


MUSIQUE_ID = re.compile(r"^(\d+)hop(\d*)__")


def _musique(record: dict[str, Any], position: int) -> dict[str, Any]:
    qid = _text(record, "id")
    decomposition = []
    for step in _list(record, "question_decomposition", required=False):
        if not isinstance(step, dict) or "question" not in step or "answer" not in step:
            raise _Bad("question_decomposition", f"expected {{question, answer, ...}}, got {str(step)[:80]!r}")
        decomposition.append(
            {
                "id": step.get("id"),
                "question": step["question"],
                "answer": step["answer"],
                "paragraph_support_idx": step.get("paragraph_support_idx"),
            }
        )
    supporting = []
    for paragraph in _list(record, "paragraphs", required=False):
        if not isinstance(paragraph, dict) or "title" not in paragraph:
            raise _Bad(
                "paragraphs", f"expected {{idx, title, paragraph_text, is_supporting}}, got {str(paragraph)[:80]!r}"
            )
        if paragraph.get("is_supporting"):
            supporting.append({"idx": paragraph.get("idx"), "title": paragraph["title"]})
    answerable = record.get("answerable", True)
    if not isinstance(answerable, bool):
        raise _Bad("answerable", f"expected true or false, got {answerable!r}")
    # The id prefix ("2hop", "3hop1", "4hop2"...) names the hop count and the graph shape.
    match = MUSIQUE_ID.match(qid)
    hops = int(match.group(1)) if match else (len(decomposition) or None)
    metadata = {
        "type": f"{match.group(1)}hop{match.group(2)}" if match else None,
        "hops": hops,
        "answerable": answerable,
        "question_decomposition": decomposition,
        "supporting_paragraphs": supporting,
    }
    answers = golden_answers(_text(record, "answer"), _list(record, "answer_aliases", required=False))
    return {"id": qid, "question": _text(record, "question"), "golden_answers": answers, "metadata": metadata}


def _flashrag(record: dict[str, Any], position: int) -> dict[str, Any]:
    """An already-FlashRAG record (e.g. FlashRAG's bamboogle/test.jsonl): checked and passed through."""
    answers = _list(record, "golden_answers")
    if not answers:
        raise _Bad("golden_answers", "empty")
    first, *rest = answers
    if not isinstance(first, (str, int)) or isinstance(first, bool):
        raise _Bad("golden_answers", f"expected strings, got {type(first).__name__}")
    metadata = record.get("metadata", {})
    if not isinstance(metadata, dict):
        raise _Bad("metadata", f"expected an object, got {type(metadata).__name__}")
    qid = _text(record, "id") if "id" in record else str(position)
    return {
        "id": qid,
        "question": _text(record, "question"),
        "golden_answers": golden_answers(str(first), rest, "golden_answers"),
        "metadata": metadata,
    }


# --------------------------------------------------------------------------------------------- readers


Item = dict[str, Any] | MalformedRecord


def _convert(path: Path, position: int, record: Any, convert: Callable, where: str) -> Item:
    if not isinstance(record, dict):
        return MalformedRecord(
            path, position, "<record>", f"expected an object, got {type(record).__name__}", where=where
        )
    try:
        return convert(record, position)
    except _Bad as bad:
        return MalformedRecord(path, position, bad.field, bad.message, where=where)


def _iter_json_list(path: Path, convert: Callable) -> Iterator[Item]:
    """HotpotQA and 2Wiki ship one JSON list per file; positions are list indices."""
    with open_text(path) as handle:
        try:
            records = json.load(handle)
        except json.JSONDecodeError as err:
            # The whole file is unreadable: nothing to skip to, so this always raises.
            raise MalformedRecord(path, err.lineno, "<file>", f"invalid JSON: {err.msg} (column {err.colno})") from err
    if not isinstance(records, list):
        raise MalformedRecord(path, 1, "<file>", f"expected a JSON list of records, got {type(records).__name__}")
    for index, record in enumerate(records):
        yield _convert(path, index, record, convert, "index")


def _iter_jsonl(path: Path, convert: Callable) -> Iterator[Item]:
    for line, value in iter_jsonl(path):
        if isinstance(value, JsonlError):
            yield MalformedRecord(path, line, "<line>", value.message)
        else:
            yield _convert(path, line, value, convert, "line")


def _iter_bamboogle_csv(path: Path) -> Iterator[Item]:
    """Bamboogle's sheet: two columns headed `Question,Answer`; ids are the row's 0-based number."""
    with open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise MalformedRecord(path, 1, "<header>", "empty file, expected a `Question,Answer` header")
        names = [name.strip().lstrip("\ufeff").lower() for name in header]
        if "question" not in names or "answer" not in names:
            raise MalformedRecord(path, 1, "<header>", f"expected columns Question,Answer, got {header!r}")
        q_col, a_col = names.index("question"), names.index("answer")
        for number, row in enumerate(reader):
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            if len(row) != len(header):
                yield MalformedRecord(path, line, "<row>", f"expected {len(header)} columns, got {len(row)}")
                continue
            record = {"id": f"test_{number}", "question": row[q_col], "answer": row[a_col]}
            yield _convert(path, line, record, _bamboogle_row, "line")


def _bamboogle_row(record: dict[str, Any], position: int) -> dict[str, Any]:
    return {
        "id": record["id"],
        "question": _text(record, "question"),
        "golden_answers": golden_answers(_text(record, "answer"), []),
        "metadata": {},
    }


def _is_jsonl(path: Path) -> bool:
    """Bamboogle comes as a CSV or as FlashRAG jsonl: trust the extension, else sniff the first byte."""
    name = path.name.removesuffix(".gz")
    if name.endswith((".jsonl", ".json")):
        return True
    if name.endswith(".csv"):
        return False
    with open_text(path) as handle:
        return handle.read(64).lstrip().startswith("{")


def iter_raw(benchmark: str, path: str | os.PathLike) -> Iterator[Item]:
    """Yield each raw record of `path` as a FlashRAG record, or as a `MalformedRecord` when it is bad.

    A file that cannot be read as a whole (not JSON, no CSV header) raises `MalformedRecord`;
    a missing file raises `FileNotFoundError`.
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of: {', '.join(BENCHMARKS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{benchmark} raw file not found: {path}")
    if path.suffix == ".zip":
        raise ValueError(f"{path} is a zip archive; pass the extracted member (e.g. dev.json) instead")
    if benchmark == "hotpotqa":
        yield from _iter_json_list(path, _hotpotqa)
    elif benchmark == "2wikimultihopqa":
        yield from _iter_json_list(path, _twowiki)
    elif benchmark == "musique":
        yield from _iter_jsonl(path, _musique)
    elif _is_jsonl(path):
        yield from _iter_jsonl(path, _flashrag)
    else:
        yield from _iter_bamboogle_csv(path)


def read_raw(benchmark: str, path: str | os.PathLike) -> list[dict]:
    """One publisher's raw file as FlashRAG dataset records; the first malformed record raises."""
    records = []
    for item in iter_raw(benchmark, path):
        if isinstance(item, MalformedRecord):
            raise item
        records.append(item)
    return records

"""Small shared I/O helpers: JSON lines with line numbers, and atomic writes.

Every artifact of the DAG is written to a temporary file in its own directory and then renamed over the
target, so a killed job never leaves a half-written file that a later stage (or DVC) would trust.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from research_rl.atomic import atomic_write_text


class JsonlError(ValueError):
    """A line of a JSON-lines file that is not valid JSON."""

    def __init__(self, path: str | os.PathLike, line: int, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        super().__init__(f"{self.path}:{line}: {message}")


def open_text(path: str | os.PathLike) -> IO[str]:
    """Open a text file for reading, transparently decompressing `.gz`."""
    path = Path(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield `(line_number, value)` for each non-blank line (1-based numbers).

    A line that is not valid JSON yields a `JsonlError` as its value instead of raising, so that callers
    can choose between failing and skipping-and-counting.
    """
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                yield number, JsonlError(path, number, f"invalid JSON: {err.msg} (column {err.colno})")


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """All values of a JSON-lines file; the first invalid line raises `JsonlError`."""
    values = []
    for _, value in iter_jsonl(path):
        if isinstance(value, JsonlError):
            raise value
        values.append(value)
    return values


def dumps_line(record: Any) -> str:
    """One JSON line; keys sorted so the same records always give the same bytes."""
    return json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n"


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Atomically write one JSON value per line; returns the number of lines written."""
    lines = [dumps_line(record) for record in records]
    atomic_write_text(path, "".join(lines))
    return len(lines)


def write_json(path: str | os.PathLike, value: Any, *, indent: int | None = 2) -> None:
    """Atomically write one JSON document (sorted keys, trailing newline)."""
    atomic_write_text(path, json.dumps(value, ensure_ascii=False, sort_keys=True, indent=indent) + "\n")

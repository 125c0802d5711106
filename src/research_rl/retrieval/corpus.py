"""The retrieval corpus (FlashRAG jsonl): read passages by row, stream them, and checksum the file.

Row i of every index is the i-th non-blank line of the corpus file, so the corpus itself is the id
map: a search returns row numbers and this module turns them into `{"id", "contents"}` documents.
The file is memory-mapped and only two int64 offset arrays are kept in memory (16 bytes a passage:
340 MB for wiki-18's 21M passages), so the service does not hold 21M Python dicts.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from collections.abc import Iterator
from pathlib import Path

import numpy as np

CHUNK_BYTES = 1 << 26
# A line this short may be whitespace only; longer ones always hold a JSON record.
SHORT_LINE = 8


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _newlines(buffer: mmap.mmap | bytes) -> np.ndarray:
    """Positions of every b'\\n', found chunk by chunk so a 14 GB file never needs a 14 GB mask."""
    found = []
    for start in range(0, len(buffer), CHUNK_BYTES):
        chunk = np.frombuffer(buffer[start : start + CHUNK_BYTES], dtype=np.uint8)
        found.append(np.flatnonzero(chunk == ord("\n")).astype(np.int64) + start)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def _line_spans(buffer: mmap.mmap | bytes) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of the non-blank lines."""
    newlines = _newlines(buffer)
    starts = np.concatenate([[0], newlines + 1]).astype(np.int64)
    ends = np.concatenate([newlines, [len(buffer)]]).astype(np.int64)
    keep = ends > starts
    for row in np.flatnonzero(keep & (ends - starts <= SHORT_LINE)):
        keep[row] = bool(buffer[starts[row] : ends[row]].strip())
    return starts[keep], ends[keep]


class Corpus:
    """Random access to the passages of a FlashRAG corpus file by row number."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            size = handle.seek(0, 2)
            # mmap refuses empty files; an empty corpus is simply an empty bytes object.
            self._buffer: mmap.mmap | bytes = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        self._starts, self._ends = _line_spans(self._buffer)

    def __len__(self) -> int:
        return len(self._starts)

    def record(self, row: int) -> dict:
        return json.loads(self._buffer[self._starts[row] : self._ends[row]])

    def doc(self, row: int) -> dict[str, str]:
        record = self.record(row)
        return {"id": str(record["id"]), "contents": record["contents"]}

    def iter_contents(self, start: int = 0) -> Iterator[str]:
        for row in range(start, len(self)):
            yield self.record(row)["contents"]

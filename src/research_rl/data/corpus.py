"""Corpus files to the FlashRAG corpus format: one `{"id": "0", "contents": "\"Title\"\ntext"}` a line.

Both readers stream (a wiki-18 dump is ~13 GB uncompressed), accept plain, .gz or .bz2 input, report
the first bad line by number, and write `dest` atomically through `dest.part`.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

DPR_HEADER = ["id", "text", "title"]
PROGRESS_EVERY = 10_000  # lines between progress-bar updates; updating per line would dominate


class CorpusFormatError(ValueError):
    """A corpus file does not have the format the config says it has."""


def flashrag_contents(title: str, text: str) -> str:
    """FlashRAG's `contents`: the title in double quotes on the first line, then the text."""
    return f'"{title}"\n{text}'


def copy_flashrag_jsonl(src: Path, dest: Path, *, progress: bool = True) -> int:
    """Validate a FlashRAG jsonl corpus (possibly compressed) and write it uncompressed to `dest`.

    Every non-blank line must be a JSON object with a string `contents` and an `id` (an integer id
    is written back as a string). Returns the number of passages.
    """
    src = Path(src)
    count = 0
    with _atomic_output(dest) as out, _open_binary(src) as (stream, raw), _bytes_bar(src, progress) as bar:
        for number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            out.write(_checked_flashrag_line(src, number, line))
            count += 1
            if number % PROGRESS_EVERY == 0:
                bar.update(raw.tell() - bar.n)
        bar.update(raw.tell() - bar.n)
    return count


def _checked_flashrag_line(src: Path, number: int, line: bytes) -> bytes:
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorpusFormatError(f"{src}: line {number}: not valid JSON: {exc}") from exc
    if not isinstance(record, dict):
        raise CorpusFormatError(f"{src}: line {number}: expected a JSON object, got {type(record).__name__}")
    missing = [key for key in ("id", "contents") if key not in record]
    if missing:
        raise CorpusFormatError(
            f'{src}: line {number}: missing key(s) {missing}; a FlashRAG corpus line is {{"id": ..., "contents": ...}}'
        )
    if not isinstance(record["contents"], str):
        raise CorpusFormatError(f"{src}: line {number}: `contents` must be a string")
    doc_id = record["id"]
    if isinstance(doc_id, str):
        # Already in shape: keep the publisher's bytes.
        return line.rstrip(b"\r\n") + b"\n"
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        record["id"] = str(doc_id)
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    raise CorpusFormatError(f"{src}: line {number}: `id` must be a string or an integer")


def convert_dpr_tsv(src: Path, dest: Path, *, progress: bool = True) -> int:
    """Convert DPR's `psgs_w100.tsv(.gz)` (header `id<TAB>text<TAB>title`) to a FlashRAG jsonl.

    Rows are read with the csv module and a tab delimiter, as DPR's own loader reads them, so its
    quoted fields (doubled quotes inside) come out as the publisher meant. Returns the number of
    passages.
    """
    src = Path(src)
    csv.field_size_limit(sys.maxsize)  # a passage is short, but one overlong field must not abort a 21M-row run
    count = 0
    with _atomic_output(dest) as out, _open_binary(src) as (stream, raw), _bytes_bar(src, progress) as bar:
        text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
        reader = csv.reader(text, delimiter="\t")
        header = next(reader, None)
        if header != DPR_HEADER:
            raise CorpusFormatError(f"{src}: line 1: expected the DPR header {DPR_HEADER}, got {header}")
        for row in reader:
            if len(row) != 3:
                raise CorpusFormatError(
                    f"{src}: line {reader.line_num}: expected 3 tab-separated fields (id, text, title), got {len(row)}"
                )
            doc_id, passage, title = row
            record = {"id": doc_id, "contents": flashrag_contents(title, passage)}
            out.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
            count += 1
            if count % PROGRESS_EVERY == 0:
                bar.update(raw.tell() - bar.n)
        bar.update(raw.tell() - bar.n)
    return count


@contextmanager
def _open_binary(src: Path) -> Iterator[tuple[BinaryIO, BinaryIO]]:
    """(decompressed stream, raw file): the raw file's position drives the progress bar."""
    with open(src, "rb") as raw:
        name = src.name.lower()
        if name.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                yield stream, raw
        elif name.endswith(".bz2"):
            with bz2.BZ2File(raw, mode="rb") as stream:
                yield stream, raw
        else:
            yield raw, raw


@contextmanager
def _bytes_bar(src: Path, progress: bool) -> Iterator[tqdm]:
    with tqdm(
        total=src.stat().st_size,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"corpus {src.name}",
        disable=not progress,
    ) as bar:
        yield bar


@contextmanager
def _atomic_output(dest: Path) -> Iterator[BinaryIO]:
    """Write to `dest.part`, rename on success, remove it on failure: `dest` is whole or absent."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with open(part, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)

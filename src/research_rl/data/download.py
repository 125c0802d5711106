"""Resumable, checksummed downloads and the two download stages (download_qa, download_corpus).

Every published file goes through `fetch`: it lands in `<dest>.part`, is verified against its sha256,
and only then is renamed to `dest`. So `dest` existing means a complete (and, where a checksum is
known, verified) file, and an interrupted run resumes from the bytes already in `.part`.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

import httpx
from tqdm import tqdm

from research_rl import paths
from research_rl.data import corpus as corpus_io

log = logging.getLogger(__name__)

# Statuses worth another try: the server is overloaded or briefly broken, not refusing us.
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_BACKOFF_SECONDS = 60.0


class DownloadError(RuntimeError):
    """A download failed for good (bad status, retries exhausted, bad source)."""


class ChecksumMismatch(DownloadError):
    """The downloaded bytes are not the published ones."""

    def __init__(self, url: str, expected: str, actual: str) -> None:
        super().__init__(f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}")
        self.url = url
        self.expected = expected
        self.actual = actual


class ManifestError(DownloadError):
    """A sha256 manifest lacks the entry asked for, or cannot be read."""


class UnpackError(RuntimeError):
    """An archive cannot be unpacked as asked (e.g. the member is missing or ambiguous)."""


class _Incomplete(Exception):
    """The connection ended before the whole body arrived (retryable)."""


class _RetryableStatus(Exception):
    """The server answered with a status worth another try (5xx, 429, ...)."""


# --------------------------------------------------------------------------------------------------
# checksums


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def checksum_from_manifest(manifest: Path, filename: str) -> str:
    """The sha256 of `filename` in a `sha256sum`-format manifest (`<hex>  <name>` per line).

    A name may carry sha256sum's binary marker (`*name`) or a directory (`./dir/name`); an exact
    match wins over a basename match.
    """
    manifest = Path(manifest)
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ManifestError(f"cannot read sha256 manifest {manifest}: {exc}") from exc
    by_name: dict[str, str] = {}
    by_base: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64 or not _is_hex(parts[0]):
            raise ManifestError(f"{manifest}:{number}: not a sha256sum line: {line!r}")
        digest, name = parts[0].lower(), parts[1].lstrip("*")
        by_name[name] = digest
        by_base.setdefault(PurePosixPath(name).name, digest)
    if filename in by_name:
        return by_name[filename]
    if filename in by_base:
        return by_base[filename]
    known = ", ".join(sorted(by_name)) or "(none)"
    raise ManifestError(f"sha256 manifest {manifest} has no entry for {filename!r} (it lists: {known})")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


# --------------------------------------------------------------------------------------------------
# fetch


def fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    retries: int = 5,
    backoff_seconds: float = 1.0,
    timeout_seconds: float = 60,
    chunk_bytes: int = 1 << 20,
    progress: bool = True,
) -> Path:
    """Download (http/https) or copy (`file:` URL or local path) `url` to `dest`, verified and atomic.

    `retries` bounds consecutive failed attempts: an attempt that received bytes resets the count,
    so a flaky server that keeps making progress still finishes. `chunk_bytes` is the read size for
    local copies and hashing; network reads are written as they arrive so nothing received is lost
    when a connection drops.
    """
    dest = Path(dest)
    expected = sha256.lower() if sha256 else None
    local = _local_source(url)
    if dest.exists():
        if expected is not None and sha256_file(dest, chunk_bytes) == expected:
            log.info("%s is already downloaded and verified", dest)
            return dest
        if expected is None and local is None:
            # Without a checksum a remote file cannot be re-verified; `dest` only ever appears by an
            # atomic rename of a complete download, so keep it rather than fetch gigabytes again.
            log.warning("%s exists and has no sha256 to check it against; keeping it", dest)
            return dest
        # A stale or unverifiable local copy: drop it so a failure below leaves nothing behind.
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    if local is not None:
        _copy_local(local, part, chunk_bytes=chunk_bytes, progress=progress)
    else:
        _download_http(
            url,
            part,
            retries=retries,
            backoff_seconds=backoff_seconds,
            timeout_seconds=timeout_seconds,
            progress=progress,
        )
    _verify_and_rename(url, part, dest, expected, chunk_bytes)
    return dest


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _local_source(url: str) -> Path | None:
    """The local path a `file:` URL or plain path names; None for http(s)."""
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    if scheme in ("http", "https"):
        return None
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(f"file URL {url!r} names a remote host; only local files are supported")
        return Path(unquote(parsed.path))
    if scheme == "":
        return Path(url)
    raise DownloadError(f"unsupported URL scheme {parsed.scheme!r} in {url!r} (use http, https or file)")


def _copy_local(source: Path, part: Path, *, chunk_bytes: int, progress: bool) -> None:
    if not source.is_file():
        raise DownloadError(f"local source {source} does not exist (cwd: {Path.cwd()})")
    size = source.stat().st_size
    with (
        open(source, "rb") as src,
        open(part, "wb") as out,
        tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=source.name, disable=not progress) as bar,
    ):
        while block := src.read(chunk_bytes):
            out.write(block)
            bar.update(len(block))
        _sync(out)


def _verify_and_rename(url: str, part: Path, dest: Path, expected: str | None, chunk_bytes: int) -> None:
    if expected is None:
        log.warning("%s has no sha256 (none given, no manifest): downloaded UNVERIFIED", url)
    else:
        actual = sha256_file(part, chunk_bytes)
        if actual != expected:
            # The bad bytes must not be resumed from: the next run starts over.
            part.unlink()
            raise ChecksumMismatch(url, expected, actual)
    os.replace(part, dest)


def _sync(f: BinaryIO) -> None:
    f.flush()
    os.fsync(f.fileno())


def _download_http(
    url: str, part: Path, *, retries: int, backoff_seconds: float, timeout_seconds: float, progress: bool
) -> None:
    failures = 0
    # identity: Range offsets and the checksum refer to the bytes as published, never re-encoded.
    headers = {"Accept-Encoding": "identity"}
    with httpx.Client(timeout=timeout_seconds, follow_redirects=True, headers=headers) as client:
        while True:
            before = part.stat().st_size if part.exists() else 0
            try:
                _attempt(client, url, part, progress)
                return
            except (httpx.TransportError, _Incomplete, _RetryableStatus) as exc:
                after = part.stat().st_size if part.exists() else 0
                failures = 1 if after > before else failures + 1
                if failures > retries:
                    raise DownloadError(
                        f"download of {url} failed after {failures} attempts without progress: {exc}"
                    ) from exc
                delay = min(backoff_seconds * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
                log.warning("download of %s interrupted (%s); retrying in %.1f s", url, exc, delay)
                time.sleep(delay)


def _attempt(client: httpx.Client, url: str, part: Path, progress: bool) -> None:
    """One request: resume `part` from its size, append what arrives, raise if it ends short."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with client.stream("GET", url, headers=headers) as response:
        status = response.status_code
        if status == 416:
            _handle_416(response, part, offset)
            return
        if status in RETRYABLE_STATUSES:
            raise _RetryableStatus(f"HTTP {status}")
        if status not in (200, 206):
            raise DownloadError(f"download of {url} failed: HTTP {status}")
        total = _expected_total(response, offset)
        if status == 206 and _range_start(response) != offset:
            # A range we did not ask for: do not guess how to splice it; start over next attempt.
            part.unlink(missing_ok=True)
            raise _Incomplete(f"server answered range {response.headers.get('content-range')!r}")
        # 200 means the server ignored Range (or there was none): the body is the whole file.
        mode = "ab" if status == 206 else "wb"
        start = offset if status == 206 else 0
        with (
            open(part, mode) as out,
            tqdm(
                total=total,
                initial=start,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            for block in response.iter_raw():
                out.write(block)
                bar.update(len(block))
            _sync(out)
    size = part.stat().st_size
    if total is not None and size != total:
        raise _Incomplete(f"got {size} of {total} bytes")


def _handle_416(response: httpx.Response, part: Path, offset: int) -> None:
    """Range not satisfiable: either `part` is already complete, or it is longer than the file."""
    total = _content_range_total(response.headers.get("content-range", ""))
    if total is not None and total == offset:
        return
    # Larger than the remote file (or size unknown): the partial is not a prefix of it; start over.
    part.unlink(missing_ok=True)
    raise _Incomplete(f"HTTP 416 with {offset} bytes already here (remote size {total})")


def _range_start(response: httpx.Response) -> int | None:
    value = response.headers.get("content-range", "")
    try:
        unit, rest = value.split(" ", 1)
        return int(rest.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None


def _content_range_total(value: str) -> int | None:
    """The `/total` of a Content-Range header (`bytes 0-9/100` or `bytes */100`), None if unknown."""
    _, _, total = value.rpartition("/")
    return int(total) if total.strip().isdigit() else None


def _expected_total(response: httpx.Response, offset: int) -> int | None:
    if response.status_code == 206:
        return _content_range_total(response.headers.get("content-range", ""))
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


# --------------------------------------------------------------------------------------------------
# unpack


def unpack(archive: Path, dest: Path, *, member: str | None = None) -> Path:
    """Write the file `archive` holds to `dest` atomically: .gz/.bz2 decompressed, a .zip member
    extracted (`member` is required when the zip holds several files), anything else copied."""
    archive, dest = Path(archive), Path(dest)
    name = archive.name.lower()
    if member is not None and not name.endswith(".zip"):
        raise UnpackError(f"{archive} is not a zip archive, but member {member!r} was asked for")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    try:
        with _open_packed(archive, member) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            _sync(out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    return dest


@contextmanager
def _open_packed(archive: Path, member: str | None) -> Iterator[BinaryIO]:
    name = archive.name.lower()
    if name.endswith(".gz"):
        with gzip.open(archive, "rb") as f:
            yield f
    elif name.endswith(".bz2"):
        with bz2.open(archive, "rb") as f:
            yield f
    elif name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf, zf.open(_zip_member(zf, archive, member)) as f:
            yield f
    else:
        with open(archive, "rb") as f:
            yield f


def _zip_member(zf: zipfile.ZipFile, archive: Path, member: str | None) -> str:
    """The member to extract: exact name first, then a unique basename match (zips often nest a dir)."""
    files = [info.filename for info in zf.infolist() if not info.is_dir()]
    listing = ", ".join(files) or "(none)"
    if member is None:
        if len(files) == 1:
            return files[0]
        raise UnpackError(f"{archive} holds {len(files)} files; name one as `member` (members: {listing})")
    if member in files:
        return member
    matches = [f for f in files if PurePosixPath(f).name == member]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UnpackError(f"member {member!r} is ambiguous in {archive}: {', '.join(matches)}")
    raise UnpackError(f"member {member!r} is not in {archive} (members: {listing})")


# --------------------------------------------------------------------------------------------------
# stages


def download_options(cfg: dict[str, Any]) -> dict[str, Any]:
    """fetch()'s keyword options from the config's `download` section."""
    opts = cfg.get("download") or {}
    keys = ("retries", "backoff_seconds", "timeout_seconds", "chunk_bytes")
    return {key: opts[key] for key in keys if key in opts}


def source_sha256(source: dict[str, Any]) -> str | None:
    """A source's sha256: given inline, else looked up in its manifest under the URL's file name."""
    if source.get("sha256"):
        return str(source["sha256"]).lower()
    manifest = source.get("sha256_manifest")
    if manifest:
        return checksum_from_manifest(Path(manifest), url_filename(source["url"]))
    return None


def url_filename(url: str) -> str:
    name = PurePosixPath(unquote(urlparse(url).path)).name
    if not name:
        raise DownloadError(f"cannot name a file after URL {url!r}")
    return name


def fetch_source(cfg: dict[str, Any], source: dict[str, Any], *, progress: bool = True) -> Path:
    """Fetch one config source into the downloads directory, verified as the config says."""
    dest = paths.downloads_dir(cfg) / url_filename(source["url"])
    return fetch(source["url"], dest, sha256=source_sha256(source), progress=progress, **download_options(cfg))


def run_download_qa(cfg: dict[str, Any]) -> None:
    """download_qa: every benchmark split of cfg["datasets"] into data/raw/<benchmark>/<split><ext>."""
    fetched: dict[str, Path] = {}
    for benchmark, splits in cfg["datasets"].items():
        for split, source in splits.items():
            url = source["url"]
            if url not in fetched:
                # One zip may hold several splits: fetch it once, unpack each member.
                _check_consistent(cfg["datasets"], source)
                _check_unique_name(cfg["datasets"], url)
                fetched[url] = fetch_source(cfg, source)
            dest = unpack(fetched[url], paths.raw_path(cfg, benchmark, split), member=source.get("member"))
            log.info("%s %s -> %s", benchmark, split, dest)


def _check_consistent(datasets: dict[str, Any], source: dict[str, Any]) -> None:
    """Splits that share a URL must agree on its checksum, or one of them is wrong."""
    digests = {
        source_sha256(other)
        for splits in datasets.values()
        for other in splits.values()
        if other["url"] == source["url"]
    }
    digests.discard(None)
    if len(digests) > 1:
        raise DownloadError(f"splits sharing {source['url']} give different sha256: {sorted(digests)}")


def _check_unique_name(datasets: dict[str, Any], url: str) -> None:
    """Two URLs with the same file name would overwrite each other in the downloads directory."""
    name = url_filename(url)
    clashes = {
        other["url"]
        for splits in datasets.values()
        for other in splits.values()
        if other["url"] != url and url_filename(other["url"]) == name
    }
    if clashes:
        raise DownloadError(f"{url} and {sorted(clashes)} would both download to {name!r}")


def run_download_corpus(cfg: dict[str, Any]) -> None:
    """download_corpus: cfg["corpus"] fetched and written as a FlashRAG jsonl at paths.corpus_path."""
    source = cfg["corpus"]
    archive = fetch_source(cfg, source)
    dest = paths.corpus_path(cfg)
    fmt = source.get("format", "flashrag")
    if fmt == "flashrag":
        count = corpus_io.copy_flashrag_jsonl(archive, dest)
    elif fmt == "dpr_tsv":
        count = corpus_io.convert_dpr_tsv(archive, dest)
    else:
        raise ValueError(f"unknown corpus format {fmt!r} (expected flashrag or dpr_tsv)")
    log.info("corpus %s: %d passages -> %s", source["name"], count, dest)

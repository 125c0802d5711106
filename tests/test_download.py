"""The downloader against a real local HTTP server, unpacking, and the two download stages."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import logging
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from http_fixtures import Faults, serve

from research_rl import paths
from research_rl.data.corpus import CorpusFormatError, convert_dpr_tsv, copy_flashrag_jsonl
from research_rl.data.download import (
    ChecksumMismatch,
    DownloadError,
    ManifestError,
    UnpackError,
    checksum_from_manifest,
    fetch,
    run_download_corpus,
    run_download_qa,
    unpack,
)

FAST = {"backoff_seconds": 0.01, "timeout_seconds": 10, "progress": False}


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ at every offset, so a misplaced resume cannot verify."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------ fetch


def test_full_download_verifies_and_renames(tmp_path: Path) -> None:
    data = payload(300_000)
    with serve({"/f.bin": data}) as server:
        dest = fetch(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=sha(data), **FAST)
    assert dest.read_bytes() == data
    assert not (tmp_path / "f.bin.part").exists()


def test_verified_dest_is_not_fetched_again(tmp_path: Path) -> None:
    data = payload(1000)
    (tmp_path / "f.bin").write_bytes(data)
    with serve({"/f.bin": data}) as server:
        fetch(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=sha(data), **FAST)
        assert server.log == []


def test_stale_dest_is_replaced(tmp_path: Path) -> None:
    data = payload(1000)
    (tmp_path / "f.bin").write_bytes(b"old version")
    with serve({"/f.bin": data}) as server:
        fetch(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=sha(data), **FAST)
        assert len(server.log) == 1
    assert (tmp_path / "f.bin").read_bytes() == data


def test_interrupted_download_resumes_from_partial(tmp_path: Path) -> None:
    data = payload(200_000)
    half = 100_000
    faults = Faults(drop_after=half, drop_times=1)
    with serve({"/f.bin": data}, faults) as server:
        fetch(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=sha(data), retries=2, **FAST)
        ranges = [r.range for r in server.requests_for("/f.bin")]
    assert ranges == [None, f"bytes={half}-"]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_progressing_download_survives_more_drops_than_retries(tmp_path: Path) -> None:
    # Each attempt makes progress, so the retry budget (for consecutive failures) is never spent.
    data = payload(100_000)
    faults = Faults(drop_after=20_000, drop_times=4)
    with serve({"/f.bin": data}, faults) as server:
        fetch(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=sha(data), retries=1, **FAST)
        starts = [r.range for r in server.requests_for("/f.bin")]
    assert starts == [None] + [f"bytes={n}-" for n in (20_000, 40_000, 60_000, 80_000)]
    assert (tmp_path / "f.bin").read_bytes() == data


KILL_SCRIPT = """
import sys
from pathlib import Path
from research_rl.data.download import fetch
fetch(sys.argv[1], Path(sys.argv[2]), sha256=sys.argv[3], progress=False, timeout_seconds=30)
"""


def test_killed_download_resumes(tmp_path: Path) -> None:
    data = payload(2_000_000)
    dest = tmp_path / "f.bin"
    part = tmp_path / "f.bin.part"
    # 1 KiB every 5 ms: ~10 s for the whole file, so the kill lands midway.
    faults = Faults(chunk=1024, delay_per_chunk=0.005)
    with serve({"/f.bin": data}, faults) as server:
        url = f"{server.url}/f.bin"
        proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, url, str(dest), sha(data)])
        try:
            deadline = time.monotonic() + 30
            while not (part.exists() and part.stat().st_size >= 50_000):
                assert proc.poll() is None, "the download ended before it could be killed"
                assert time.monotonic() < deadline, "the download never got going"
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        partial = part.stat().st_size
        assert 0 < partial < len(data) and not dest.exists()
        faults.delay_per_chunk = 0.0
        fetch(url, dest, sha256=sha(data), **FAST)
        last = server.requests_for("/f.bin")[-1]
    assert last.range == f"bytes={partial}-" and last.status == 206
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == sha(data)


def test_checksum_mismatch_raises_and_leaves_nothing(tmp_path: Path) -> None:
    data = payload(5000)
    wrong = "0" * 64
    with serve({"/f.bin": data}) as server:
        url = f"{server.url}/f.bin"
        with pytest.raises(ChecksumMismatch) as info:
            fetch(url, tmp_path / "f.bin", sha256=wrong, **FAST)
    message = str(info.value)
    assert url in message and wrong in message and sha(data) in message
    assert not (tmp_path / "f.bin").exists()
    assert not (tmp_path / "f.bin.part").exists()


def test_corrupt_partial_is_discarded_after_mismatch(tmp_path: Path) -> None:
    # A .part whose bytes are not a prefix of the file: the resume mismatches, the next run starts over.
    data = payload(5000)
    (tmp_path / "f.bin.part").write_bytes(b"x" * 1000)
    with serve({"/f.bin": data}) as server:
        url = f"{server.url}/f.bin"
        with pytest.raises(ChecksumMismatch):
            fetch(url, tmp_path / "f.bin", sha256=sha(data), **FAST)
        fetch(url, tmp_path / "f.bin", sha256=sha(data), **FAST)
        ranges = [r.range for r in server.log]
    assert ranges == ["bytes=1000-", None]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_retries_after_503(tmp_path: Path) -> None:
    data = payload(5000)
    with serve({"/f.bin": data}, Faults(fail_times=3)) as server:
        fetch(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=sha(data), retries=3, **FAST)
        statuses = [r.status for r in server.log]
    assert statuses == [503, 503, 503, 200]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_gives_up_after_retries(tmp_path: Path) -> None:
    with serve({"/f.bin": b"abc"}, Faults(fail_times=10)) as server:
        with pytest.raises(DownloadError, match="3 attempts"):
            fetch(f"{server.url}/f.bin", tmp_path / "f.bin", retries=2, **FAST)
        assert len(server.log) == 3
    assert not (tmp_path / "f.bin").exists()


def test_client_error_is_not_retried(tmp_path: Path) -> None:
    with serve({}) as server:
        with pytest.raises(DownloadError, match="404"):
            fetch(f"{server.url}/missing.bin", tmp_path / "m.bin", retries=5, **FAST)
        assert len(server.log) == 1


def test_server_ignoring_range_restarts_cleanly(tmp_path: Path) -> None:
    data = payload(10_000)
    (tmp_path / "f.bin.part").write_bytes(data[:4000])
    with serve({"/f.bin": data}, Faults(ignore_range=True)) as server:
        fetch(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=sha(data), **FAST)
        assert [(r.range, r.status) for r in server.log] == [("bytes=4000-", 200)]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_416_with_complete_partial_is_finished(tmp_path: Path) -> None:
    data = payload(10_000)
    (tmp_path / "f.bin.part").write_bytes(data)
    with serve({"/f.bin": data}) as server:
        fetch(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=sha(data), **FAST)
        assert [r.status for r in server.log] == [416]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_416_with_oversized_partial_starts_over(tmp_path: Path) -> None:
    data = payload(10_000)
    (tmp_path / "f.bin.part").write_bytes(payload(12_000, seed=1))
    with serve({"/f.bin": data}) as server:
        fetch(f"{server.url}/f.bin", tmp_path / "f.bin", sha256=sha(data), **FAST)
        assert [(r.range, r.status) for r in server.log] == [("bytes=12000-", 416), (None, 200)]
    assert (tmp_path / "f.bin").read_bytes() == data


def test_missing_checksum_warns_unverified(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with serve({"/f.bin": b"abc"}) as server, caplog.at_level(logging.WARNING):
        fetch(f"{server.url}/f.bin", tmp_path / "f.bin", **FAST)
    assert "UNVERIFIED" in caplog.text
    assert (tmp_path / "f.bin").read_bytes() == b"abc"


# ------------------------------------------------------------------------------- local sources


def test_file_url_relative_to_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_bytes(b"hello")
    dest = fetch("file:src/a.txt", Path("out/a.txt"), sha256=sha(b"hello"), **FAST)
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"hello"
    assert dest == Path("out/a.txt")


def test_file_url_absolute_and_plain_path(tmp_path: Path) -> None:
    src = tmp_path / "a b.txt"
    src.write_bytes(b"hello")
    fetch(src.as_uri(), tmp_path / "one.txt", sha256=sha(b"hello"), **FAST)
    fetch(f"file://{src}", tmp_path / "two.txt", **FAST)
    fetch(str(src), tmp_path / "three.txt", **FAST)
    for name in ("one.txt", "two.txt", "three.txt"):
        assert (tmp_path / name).read_bytes() == b"hello"


def test_file_url_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello")
    with pytest.raises(ChecksumMismatch, match=sha(b"hello")):
        fetch(f"file://{src}", tmp_path / "out.txt", sha256="f" * 64, **FAST)
    assert not (tmp_path / "out.txt").exists()
    assert not (tmp_path / "out.txt.part").exists()


def test_missing_local_source_is_clear(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="does not exist"):
        fetch(f"file://{tmp_path}/nope.txt", tmp_path / "out.txt", **FAST)


# ------------------------------------------------------------------------------------ manifest


def test_checksum_from_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(f"{sha(b'a')}  a.json\n{sha(b'b')} *b.zip\n\n{sha(b'c')}  ./sub/c.csv\n")
    assert checksum_from_manifest(manifest, "a.json") == sha(b"a")
    assert checksum_from_manifest(manifest, "b.zip") == sha(b"b")
    assert checksum_from_manifest(manifest, "c.csv") == sha(b"c")
    with pytest.raises(ManifestError, match="no entry for 'd.txt'") as info:
        checksum_from_manifest(manifest, "d.txt")
    assert "a.json" in str(info.value)


def test_malformed_manifest_is_reported(tmp_path: Path) -> None:
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text("nothex  a.json\n")
    with pytest.raises(ManifestError, match="SHA256SUMS:1"):
        checksum_from_manifest(manifest, "a.json")


# -------------------------------------------------------------------------------------- unpack


def test_unpack_gzip_bz2_and_plain(tmp_path: Path) -> None:
    data = payload(50_000)
    (tmp_path / "a.gz").write_bytes(gzip.compress(data))
    (tmp_path / "a.bz2").write_bytes(bz2.compress(data))
    (tmp_path / "a.json").write_bytes(data)
    for name in ("a.gz", "a.bz2", "a.json"):
        out = unpack(tmp_path / name, tmp_path / "out" / f"{name}.raw")
        assert out.read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.bz2.raw", "a.gz.raw", "a.json.raw"]


def make_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_unpack_zip_members(tmp_path: Path) -> None:
    make_zip(tmp_path / "one.zip", {"only.json": b"1"})
    make_zip(tmp_path / "two.zip", {"data/train.json": b"T", "data/dev.json": b"D"})
    assert unpack(tmp_path / "one.zip", tmp_path / "o.json").read_bytes() == b"1"
    assert unpack(tmp_path / "two.zip", tmp_path / "d.json", member="dev.json").read_bytes() == b"D"
    assert unpack(tmp_path / "two.zip", tmp_path / "t.json", member="data/train.json").read_bytes() == b"T"


def test_unpack_zip_member_errors_list_members(tmp_path: Path) -> None:
    make_zip(tmp_path / "two.zip", {"train.json": b"T", "dev.json": b"D"})
    with pytest.raises(UnpackError, match="name one as `member`.*train.json.*dev.json"):
        unpack(tmp_path / "two.zip", tmp_path / "x.json")
    with pytest.raises(UnpackError, match="'test.json' is not in .*train.json, dev.json"):
        unpack(tmp_path / "two.zip", tmp_path / "x.json", member="test.json")
    assert not (tmp_path / "x.json").exists()
    assert not (tmp_path / "x.json.part").exists()


def test_unpack_member_of_non_zip_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.gz").write_bytes(gzip.compress(b"x"))
    with pytest.raises(UnpackError, match="not a zip"):
        unpack(tmp_path / "a.gz", tmp_path / "a", member="a")


# -------------------------------------------------------------------------------------- corpus


def test_dpr_tsv_conversion(tmp_path: Path) -> None:
    tsv = 'id\ttext\ttitle\n1\t"Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron\n2\tplain text here\tSecond Title\n'
    (tmp_path / "psgs.tsv.gz").write_bytes(gzip.compress(tsv.encode()))
    count = convert_dpr_tsv(tmp_path / "psgs.tsv.gz", tmp_path / "c.jsonl", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert count == 2
    assert lines == [
        {"id": "1", "contents": '"Aaron"\nAaron ( or ; "Ahärôn") is a prophet'},
        {"id": "2", "contents": '"Second Title"\nplain text here'},
    ]


def test_dpr_tsv_bad_header_and_row(tmp_path: Path) -> None:
    (tmp_path / "h.tsv").write_text("doc\ttext\ttitle\n1\ta\tb\n")
    with pytest.raises(CorpusFormatError, match="line 1"):
        convert_dpr_tsv(tmp_path / "h.tsv", tmp_path / "h.jsonl", progress=False)
    (tmp_path / "r.tsv").write_text("id\ttext\ttitle\n1\ta\tb\n2\tonly two\n")
    with pytest.raises(CorpusFormatError, match="line 3"):
        convert_dpr_tsv(tmp_path / "r.tsv", tmp_path / "r.jsonl", progress=False)
    assert not (tmp_path / "r.jsonl").exists()


def test_flashrag_validation_reports_first_bad_line(tmp_path: Path) -> None:
    good = json.dumps({"id": "0", "contents": '"T"\nx'})
    cases = {
        "notjson": "{oops",
        "nokey": json.dumps({"id": "1", "text": "x"}),
        "list": "[1, 2]",
    }
    for label, bad in cases.items():
        src = tmp_path / f"{label}.jsonl.gz"
        src.write_bytes(gzip.compress(f"{good}\n{good}\n{bad}\n{good}\n".encode()))
        with pytest.raises(CorpusFormatError, match="line 3"):
            copy_flashrag_jsonl(src, tmp_path / f"{label}.out", progress=False)
        assert not (tmp_path / f"{label}.out").exists()


def test_flashrag_copy_normalises_int_ids(tmp_path: Path) -> None:
    src = tmp_path / "c.jsonl.bz2"
    src.write_bytes(bz2.compress(b'{"id": 7, "contents": "\\"T\\"\\nx"}\n\n{"id": "8", "contents": "y"}\n'))
    assert copy_flashrag_jsonl(src, tmp_path / "c.jsonl", progress=False) == 2
    records = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert records == [{"id": "7", "contents": '"T"\nx'}, {"id": "8", "contents": "y"}]


# -------------------------------------------------------------------------------------- stages


def stage_cfg(tmp_path: Path, **sections: object) -> dict:
    cfg = {
        "paths": {"data": str(tmp_path / "data"), "results": str(tmp_path / "results")},
        "download": {"retries": 2, "backoff_seconds": 0.01, "timeout_seconds": 10, "chunk_bytes": 4096},
    }
    cfg.update(sections)
    return cfg


def test_run_download_qa_fetches_shared_zip_once(tmp_path: Path) -> None:
    zip_path = tmp_path / "2wiki.zip"
    make_zip(zip_path, {"data/train.json": b"[1]", "data/dev.json": b"[2]"})
    zip_bytes = zip_path.read_bytes()
    musique = b'{"id": "m1"}\n'
    manifest = tmp_path / "SHA256SUMS"
    manifest.write_text(f"{sha(zip_bytes)}  2wiki.zip\n")
    with serve({"/x/2wiki.zip": zip_bytes, "/m/musique_dev.jsonl.gz": gzip.compress(musique)}) as server:
        datasets = {
            "2wikimultihopqa": {
                "train": {"url": f"{server.url}/x/2wiki.zip", "member": "train.json", "sha256_manifest": str(manifest)},
                "dev": {"url": f"{server.url}/x/2wiki.zip", "member": "dev.json", "sha256_manifest": str(manifest)},
            },
            "musique": {"dev": {"url": f"{server.url}/m/musique_dev.jsonl.gz", "sha256": sha(gzip.compress(musique))}},
        }
        cfg = stage_cfg(tmp_path, datasets=datasets)
        run_download_qa(cfg)
        assert len(server.requests_for("/x/2wiki.zip")) == 1
        run_download_qa(cfg)  # a rerun verifies what is there and fetches nothing
        assert len(server.log) == 2
    assert paths.raw_path(cfg, "2wikimultihopqa", "train").read_bytes() == b"[1]"
    assert paths.raw_path(cfg, "2wikimultihopqa", "dev").read_bytes() == b"[2]"
    assert paths.raw_path(cfg, "musique", "dev").read_bytes() == musique
    assert paths.raw_path(cfg, "musique", "dev").name == "dev.jsonl"
    assert (paths.downloads_dir(cfg) / "2wiki.zip").read_bytes() == zip_bytes


def test_run_download_qa_manifest_mismatch_fails(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text("Question,Answer\nq,a\n")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  b.csv\n")
    datasets = {
        "bamboogle": {"test": {"url": f"file://{tmp_path}/b.csv", "sha256_manifest": str(tmp_path / "SHA256SUMS")}}
    }
    cfg = stage_cfg(tmp_path, datasets=datasets)
    with pytest.raises(ChecksumMismatch):
        run_download_qa(cfg)
    assert not paths.raw_path(cfg, "bamboogle", "test").exists()


def test_run_download_corpus_flashrag_from_file_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rows = [{"id": str(i), "contents": f'"Title {i}"\ntext {i}'} for i in range(5)]
    blob = gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode())
    Path("world").mkdir()
    Path("world/toywiki.jsonl.gz").write_bytes(blob)
    Path("world/SHA256SUMS").write_text(f"{sha(blob)}  toywiki.jsonl.gz\n")
    corpus = {
        "name": "toywiki",
        "url": "file:world/toywiki.jsonl.gz",
        "sha256": None,
        "sha256_manifest": "world/SHA256SUMS",
        "format": "flashrag",
    }
    cfg = stage_cfg(tmp_path, corpus=corpus)
    cfg["paths"]["data"] = "data"
    run_download_corpus(cfg)
    out = paths.corpus_path(cfg)
    assert out == Path("data/corpus/toywiki.jsonl")
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


def test_run_download_corpus_dpr_over_http(tmp_path: Path) -> None:
    tsv = "id\ttext\ttitle\n" + "".join(f"{i}\tpassage {i}\tT{i}\n" for i in range(1, 4))
    blob = gzip.compress(tsv.encode())
    with serve({"/psgs_w100.tsv.gz": blob}) as server:
        corpus = {"name": "wiki18", "url": f"{server.url}/psgs_w100.tsv.gz", "sha256": sha(blob), "format": "dpr_tsv"}
        cfg = stage_cfg(tmp_path, corpus=corpus)
        run_download_corpus(cfg)
    lines = paths.corpus_path(cfg).read_text().splitlines()
    assert json.loads(lines[2]) == {"id": "3", "contents": '"T3"\npassage 3'}
    assert len(lines) == 3

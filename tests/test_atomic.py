"""Atomic writes: the target appears whole or not at all, readable as open() would make it."""

import os
import stat

import pytest

from research_rl.atomic import atomic_output, atomic_write_text


def test_written_file_has_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "sub" / "out.json", "{}\n")
    finally:
        os.umask(old)
    path = tmp_path / "sub" / "out.json"
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_directory_replaces_the_old_one_and_clears_a_killed_attempt(tmp_path):
    from research_rl.atomic import atomic_directory

    target = tmp_path / "index"
    target.mkdir()
    (target / "stale.bin").write_text("old")
    (tmp_path / ".index.tmp").mkdir()  # what a killed build left behind
    (tmp_path / ".index.tmp" / "half.bin").write_text("half")
    with atomic_directory(target) as tmp:
        assert list(tmp.iterdir()) == []
        (tmp / "new.bin").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.bin"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]

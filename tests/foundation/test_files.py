from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from xvatool._files import (
    AtomicFile,
    atomic_output,
    file_sha256,
    temp_files_of,
    write_bytes_atomic,
)
from xvatool.errors import LocalIOError


def test_output_appears_only_when_complete(tmp_path: Path):
    out = tmp_path / "vm.xva"
    with atomic_output(out) as f:
        f.write(b"abc")
        assert not out.exists()
        assert len(temp_files_of(tmp_path)) == 1
    assert out.read_bytes() == b"abc"
    assert temp_files_of(tmp_path) == []
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_failure_leaves_nothing_and_keeps_the_old_file(tmp_path: Path):
    out = tmp_path / "vm.xva"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_output(out) as f:
        f.write(b"new")
        raise RuntimeError("boom")
    assert out.read_bytes() == b"old"
    assert temp_files_of(tmp_path) == []


def test_a_link_planted_at_the_old_part_name_is_never_followed(tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.xva"
    (tmp_path / "out.xva.part").symlink_to(victim)
    for name in ("." + out.name + ".x.part",):
        (tmp_path / name).symlink_to(victim)
    write_bytes_atomic(out, b"data")
    assert victim.read_bytes() == b"precious"
    assert out.read_bytes() == b"data"
    assert not out.is_symlink()


def test_no_overwrite_refuses_an_existing_file(tmp_path: Path):
    out = tmp_path / "a"
    out.write_bytes(b"x")
    with pytest.raises(LocalIOError, match="already exists"):
        AtomicFile(out, overwrite=False)


def test_no_overwrite_refuses_a_file_that_appeared_meanwhile(tmp_path: Path):
    out = tmp_path / "a"
    atomic = AtomicFile(out, overwrite=False)
    atomic.file.write(b"mine")
    out.write_bytes(b"theirs")
    with pytest.raises(LocalIOError, match="already exists"):
        atomic.commit()
    assert out.read_bytes() == b"theirs"
    assert temp_files_of(tmp_path) == []


def test_random_writes_and_mode(tmp_path: Path):
    out = tmp_path / "disk.raw"
    with AtomicFile(out, mode=0o640) as atomic:
        os.pwrite(atomic.fileno(), b"z", 4095)
    assert out.stat().st_size == 4096
    assert stat.S_IMODE(out.stat().st_mode) == 0o640


def test_unwritable_folder_is_a_local_error(tmp_path: Path):
    with pytest.raises(LocalIOError) as info:
        AtomicFile(tmp_path / "missing" / "x")
    assert "missing" in str(info.value)


def test_file_sha256(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(b"a" * (3 << 20))
    import hashlib

    assert file_sha256(path) == (hashlib.sha256(b"a" * (3 << 20)).hexdigest(), 3 << 20)
    with pytest.raises(LocalIOError):
        file_sha256(tmp_path / "nope")


@pytest.mark.parametrize(("durable", "fsyncs"), [(True, 2), (False, 0)])
def test_durable_fsyncs_the_file_and_its_folder(tmp_path: Path, monkeypatch, durable, fsyncs):
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    write_bytes_atomic(tmp_path / "j.json", b"{}", durable=durable)
    assert len(calls) == fsyncs
    assert (tmp_path / "j.json").read_bytes() == b"{}" and temp_files_of(tmp_path) == []

from __future__ import annotations

import os

import pytest

from xvatool.errors import LocalIOError
from xvatool.xva.disk import CHUNK_SIZE, BytesSource, RawFileSource, SparseFileSink, is_zero


def test_is_zero_on_every_buffer_type():
    assert is_zero(bytes(CHUNK_SIZE)) and is_zero(bytearray(10)) and is_zero(memoryview(bytes(512)))
    assert not is_zero(b"\0" * 100 + b"\1")
    assert not is_zero(memoryview(bytearray(CHUNK_SIZE - 1) + b"\1"))
    assert is_zero(b"")


def make_sparse(path, size, data_at):
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in data_at.items():
            f.seek(offset)
            f.write(data)


def test_raw_source_skips_holes_and_reads_data(tmp_path):
    path = tmp_path / "disk.raw"
    size = 10 * CHUNK_SIZE + 512
    make_sparse(path, size, {3 * CHUNK_SIZE + 5: b"x" * 10, 10 * CHUNK_SIZE: b"y" * 512})
    blocks = [(offset, bytes(view)) for offset, view in RawFileSource(path).blocks()]
    offsets = [o for o, _ in blocks]
    assert 3 * CHUNK_SIZE in offsets and 10 * CHUNK_SIZE in offsets
    image = bytearray(size)
    for offset, data in blocks:
        assert offset % CHUNK_SIZE == 0 and len(data) <= CHUNK_SIZE
        image[offset : offset + len(data)] = data
    assert bytes(image) == path.read_bytes()
    assert blocks[-1][0] == 10 * CHUNK_SIZE and len(blocks[-1][1]) == 512


def test_raw_source_size_override(tmp_path):
    path = tmp_path / "disk.raw"
    path.write_bytes(b"a" * (3 * CHUNK_SIZE))
    assert [o for o, _ in RawFileSource(path, size=CHUNK_SIZE + 512).blocks()] == [0, CHUNK_SIZE]
    assert RawFileSource(path, size=5 * CHUNK_SIZE).size == 5 * CHUNK_SIZE


def test_missing_file_is_local_io_error(tmp_path):
    with pytest.raises(LocalIOError) as info:
        RawFileSource(tmp_path / "nope.raw")
    assert "nope.raw" in str(info.value)


def test_bytes_source():
    source = BytesSource(b"a" * (CHUNK_SIZE + 3))
    assert [(o, len(v)) for o, v in source.blocks()] == [(0, CHUNK_SIZE), (CHUNK_SIZE, 3)]


def test_sparse_sink_commits_atomically_with_holes(tmp_path):
    target = tmp_path / "out.raw"
    with SparseFileSink(target, 8 * CHUNK_SIZE) as sink:
        sink.write_at(0, bytes(CHUNK_SIZE))
        sink.write_at(5 * CHUNK_SIZE, b"z" * CHUNK_SIZE)
        assert not target.exists() and sink.part_path.exists()
        sink.commit()
    assert target.stat().st_size == 8 * CHUNK_SIZE
    data = target.read_bytes()
    assert data[5 * CHUNK_SIZE : 6 * CHUNK_SIZE] == b"z" * CHUNK_SIZE and data.count(b"z") == CHUNK_SIZE
    assert target.stat().st_blocks * 512 <= 2 * CHUNK_SIZE  # holes, not written zeros
    assert not sink.part_path.exists()


def test_sparse_sink_removes_part_on_error(tmp_path):
    target = tmp_path / "out.raw"
    with pytest.raises(RuntimeError), SparseFileSink(target, CHUNK_SIZE) as sink:
        sink.write_at(0, b"a")
        raise RuntimeError("boom")
    assert not target.exists() and not sink.part_path.exists()
    with SparseFileSink(target, CHUNK_SIZE) as sink:
        sink.write_at(0, b"a")  # leaving without commit also discards
    assert not os.path.exists(target) and not sink.part_path.exists()


def test_sparse_sink_never_writes_through_a_planted_part_link(tmp_path):
    # Regression: a symlink at OUT.part was followed (data written outside the output folder) and
    # then renamed into place as OUT.
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    out = tmp_path / "out"
    out.mkdir()
    target = out / "disk.raw"
    (out / "disk.raw.part").symlink_to(victim)
    with SparseFileSink(target, CHUNK_SIZE) as sink:
        sink.write_at(0, b"a" * 512)
        sink.commit()
    assert victim.read_bytes() == b"keep"
    assert not target.is_symlink() and target.read_bytes()[:512] == b"a" * 512


def test_sparse_sink_commit_onto_a_directory_is_a_local_error(tmp_path):
    # Regression: os.replace's IsADirectoryError escaped as a traceback and left OUT.part behind.
    from xvatool.errors import LocalIOError

    target = tmp_path / "disk.raw"
    target.mkdir()
    with pytest.raises(LocalIOError, match=r"disk\.raw"), SparseFileSink(target, CHUNK_SIZE) as sink:
        sink.write_at(0, b"a" * 512)
        sink.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk.raw"]

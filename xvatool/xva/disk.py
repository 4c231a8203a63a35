"""Disk images as block sources (to write into archives) and sparse sinks (to extract into).

Disks are handled in 1 MiB blocks, the XVA chunk size (docs/xva-format.md §5.2). All-zero blocks are the
common case on real disks, so both sides make them cheap: sources skip holes with SEEK_DATA /
SEEK_HOLE instead of reading them, and sinks leave holes instead of writing zeros. Zero detection
compares against one preallocated zero block, which runs at memcmp speed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from xvatool._files import AtomicFile
from xvatool.errors import LocalIOError, StreamStateError

__all__ = [
    "CHUNK_SIZE",
    "ZERO_CHUNK",
    "BlockSource",
    "BytesSource",
    "RawFileSource",
    "SparseFileSink",
    "data_ranges",
    "is_zero",
]

CHUNK_SIZE = 1 << 20
ZERO_CHUNK = bytes(CHUNK_SIZE)


def is_zero(buf: bytes | bytearray | memoryview) -> bool:
    """True if `buf` (at most 1 MiB) holds only zero bytes.

    `memoryview == bytes` compares element by element and is ~20x slower than a bytes compare, so
    views are compared through a copy, which is still far cheaper.
    """
    n = len(buf)
    zeros = ZERO_CHUNK if n == CHUNK_SIZE else ZERO_CHUNK[:n]
    if isinstance(buf, memoryview):
        return buf.tobytes() == zeros
    return buf == zeros


class BlockSource(Protocol):
    """A disk to be written into an archive, read in 1 MiB blocks.

    `blocks()` yields `(offset, view)` in ascending offset order, offsets multiples of 1 MiB, each
    view at most 1 MiB long. Blocks that are known to be zero may be left out. A view is only valid
    until the next block is requested: copy it to keep it.
    """

    size: int

    def blocks(self) -> Iterator[tuple[int, memoryview]]: ...


def data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges of `fd` that may hold data, using SEEK_DATA / SEEK_HOLE.

    Falls back to the whole file where the file system cannot tell.
    """
    if not hasattr(os, "SEEK_DATA"):
        yield 0, size
        return
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after pos
            return
        if start >= size:
            return
        try:
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        except OSError:
            end = size
        yield start, end
        pos = end


class RawFileSource:
    """A raw disk image file as a block source; holes are skipped without being read.

    `size` defaults to the file's size; a larger `size` reads as zero-padded (the writer pads the
    last chunk), a smaller one cuts the image.

    Example::

        source = RawFileSource("disk.img")
        for offset, block in source.blocks():
            ...
    """

    def __init__(self, path: str | os.PathLike[str], *, size: int | None = None) -> None:
        self.path = Path(path)
        try:
            file_size = self.path.stat().st_size
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=str(self.path)) from exc
        self.file_size = file_size
        self.size = file_size if size is None else size

    def blocks(self) -> Iterator[tuple[int, memoryview]]:
        buf = bytearray(CHUNK_SIZE)
        view = memoryview(buf)
        limit = min(self.size, self.file_size)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=str(self.path)) from exc
        try:
            next_block = 0
            for start, end in data_ranges(fd, limit):
                block = max(start - start % CHUNK_SIZE, next_block)
                while block < end:
                    n = min(CHUNK_SIZE, limit - block)
                    got = os.preadv(fd, [view[:n]], block)
                    if got != n:
                        raise LocalIOError(f"short read at offset {block}", path=str(self.path))
                    yield block, view[:n]
                    block += CHUNK_SIZE
                next_block = block
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=str(self.path)) from exc
        finally:
            os.close(fd)


class BytesSource:
    """An in-memory disk; for tests and small synthetic disks only."""

    def __init__(self, data: bytes | bytearray, *, size: int | None = None) -> None:
        self._data = memoryview(bytes(data))
        self.size = len(data) if size is None else size

    def blocks(self) -> Iterator[tuple[int, memoryview]]:
        limit = min(self.size, len(self._data))
        for offset in range(0, limit, CHUNK_SIZE):
            yield offset, self._data[offset : min(offset + CHUNK_SIZE, limit)]


class SparseFileSink:
    """Writes a disk image as a sparse file, atomically (`xvatool._files.AtomicFile`).

    Data goes to a fresh temporary file next to `path`; zero blocks become holes. `commit()` sets
    the final size, fsyncs, renames to `path` and fsyncs the folder; leaving the context without
    `commit()` (or on an exception) deletes the temporary file, so a disk never looks finished
    unless it is, and nothing planted in the folder is ever written through.

    Example::

        with SparseFileSink(out / "disk.raw", size) as sink:
            for offset, data in blocks:
                sink.write_at(offset, data)
            sink.commit()
    """

    def __init__(self, path: str | os.PathLike[str], size: int) -> None:
        self.path = Path(path)
        self.size = size
        self.bytes_written = 0
        self._file: AtomicFile | None = AtomicFile(self.path)
        self.part_path = self._file.temp_path
        """The temporary file being written."""

    def _open(self) -> AtomicFile:
        if self._file is None:
            raise StreamStateError("sink already closed")
        return self._file

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at `offset`, leaving a hole if it is all zeros."""
        file = self._open()
        if not data or is_zero(data):
            return
        try:
            written = os.pwrite(file.fileno(), data, offset)
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=str(file.temp_path)) from exc
        if written != len(data):
            raise LocalIOError(f"short write at offset {offset}", path=str(file.temp_path))
        self.bytes_written += written

    def commit(self) -> Path:
        """Give the file its final size, flush it to disk and move it into place."""
        file, self._file = self._open(), None
        try:
            os.ftruncate(file.fileno(), self.size)
        except OSError as exc:
            file.abort()
            raise LocalIOError(exc.strerror or str(exc), path=str(file.temp_path)) from exc
        return file.commit()

    def abort(self) -> None:
        """Drop the partial file."""
        if self._file is not None:
            self._file.abort()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.abort()

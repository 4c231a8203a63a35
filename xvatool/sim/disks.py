"""Sparse disk files of the simulated SR: create, copy with holes preserved, write without zeros.

A VDI is one regular file of exactly `virtual_size` bytes. Zero regions are holes, so a 256 MiB
demo disk holding a few MiB of data costs a few MiB. Reading and zero detection come from the
format layer (`xvatool.xva.disk`); nothing here holds more than one 1 MiB block in memory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from xvatool._files import atomic_output
from xvatool.xva.disk import CHUNK_SIZE, RawFileSource, is_zero

__all__ = ["DiskTargets", "copy_sparse", "create_sparse", "overwrite", "write_nonzero"]


def create_sparse(path: Path, size: int) -> None:
    """A new all-hole file of `size` bytes, written as `path.part` then renamed."""
    with atomic_output(path) as handle:
        handle.truncate(size)


def write_nonzero(fd: int, offset: int, data: bytes | bytearray | memoryview) -> None:
    """Write `data` at `offset` in 1 MiB pieces, skipping all-zero pieces to keep holes.

    Only for targets whose skipped regions already read as zero (fresh sparse files); to
    overwrite existing data with zeros use `os.pwrite`.
    """
    view = memoryview(data).cast("B")
    for start in range(0, len(view), CHUNK_SIZE):
        piece = view[start : start + CHUNK_SIZE]
        if not is_zero(piece):
            os.pwrite(fd, piece, offset + start)


def copy_sparse(source: Path, target: Path) -> None:
    """Copy a disk file block by block, writing only non-zero blocks (holes stay holes)."""
    reader = RawFileSource(source)
    with atomic_output(target) as dst:
        dst.truncate(reader.size)
        for offset, block in reader.blocks():
            write_nonzero(dst.fileno(), offset, block)


class DiskTargets:
    """Open VDI files for an import; `write` places chunks, skipping zeros (fresh files only).

    Example::

        with DiskTargets({"Ref:2": path}) as targets:
            targets.write("Ref:2", 0, data)
    """

    def __init__(self, paths: Mapping[str, Path]) -> None:
        self._paths = dict(paths)
        self._fds: dict[str, int] = {}

    def __enter__(self) -> Self:
        for key, path in self._paths.items():
            self._fds[key] = os.open(path, os.O_WRONLY)
        return self

    def write(self, key: str, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at `offset` of disk `key`; data for a disk not opened is dropped."""
        fd = self._fds.get(key)
        if fd is not None:
            write_nonzero(fd, offset, data)

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._fds.clear()


def overwrite(fd: int, offset: int, data: bytes | bytearray | memoryview) -> None:
    """Write `data` at `offset` of an existing disk, zeros included, without filling holes.

    All-zero pieces that land on a hole are skipped (they already read as zero); anywhere else
    they are written, so old data is really overwritten.
    """
    view = memoryview(data).cast("B")
    for start in range(0, len(view), CHUNK_SIZE):
        piece = view[start : start + CHUNK_SIZE]
        where = offset + start
        if is_zero(piece) and _is_hole(fd, where, len(piece)):
            continue
        os.pwrite(fd, piece, where)


def _is_hole(fd: int, offset: int, length: int) -> bool:
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
    except OSError:  # ENXIO: no data at or after offset
        return True

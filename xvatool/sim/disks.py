"""Sparse disk files of the simulated SR: create, copy with holes preserved, write without zeros.

A VDI is one regular file of exactly `virtual_size` bytes. Zero regions are holes, so a 256 MiB
demo disk holding a few MiB of data costs a few MiB. Reading and zero detection come from the
format layer (`xvatool.xva.disk`); nothing here holds more than one 1 MiB block in memory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Self

from xvatool._files import AtomicFile
from xvatool.sim.values import ApiFailure
from xvatool.xva.disk import CHUNK_SIZE, RawFileSource, is_zero

__all__ = [
    "DiskTargets",
    "backend_failure",
    "copy_sparse",
    "create_sparse",
    "overwrite",
    "share",
    "unshare",
    "write_nonzero",
]


def backend_failure(action: str, exc: OSError) -> ApiFailure:
    """A disk file operation that failed on this machine, as the storage backend error it stands for."""
    return ApiFailure("SR_BACKEND_FAILURE", ["", f"cannot {action}: {exc.strerror or exc}", ""])


def create_sparse(path: Path, size: int) -> None:
    """A new all-hole file of `size` bytes, under a temporary name until complete.

    Raises `OSError` when the file system cannot hold a file that large; nothing is left then.
    """
    with AtomicFile(path) as out:
        out.file.truncate(size)


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


def copy_sparse(
    source: Path, target: Path, *, size: int | None = None, progress: Callable[[int], None] | None = None
) -> None:
    """Copy a disk file block by block, writing only non-zero blocks (holes stay holes).

    `target` (`size` bytes, default the source's) appears, or is replaced, only once the copy is
    complete. `progress` gets the bytes of the source covered so far after each block; an
    exception it raises (a cancelled task) stops the copy and leaves `target` as it was.
    """
    reader = RawFileSource(source)
    with AtomicFile(target) as out:
        out.file.truncate(reader.size if size is None else size)
        for offset, block in reader.blocks():
            write_nonzero(out.fileno(), offset, block)
            if progress is not None:
                progress(offset + len(block))


def share(source: Path, target: Path) -> None:
    """`target` becomes the same disk as `source` in constant time: a hard link, copied on write.

    How the simulator snapshots, where a host starts a new VHD child: whoever writes to either
    name first calls `unshare`. A file system without hard links gets a copy.
    """
    try:
        os.link(source, target)
    except OSError:
        copy_sparse(source, target)


def unshare(path: Path) -> bool:
    """Give `path` a file of its own if it shares one (`share`); True if it had to copy."""
    if os.stat(path).st_nlink <= 1:
        return False
    copy_sparse(path, path)  # written under a temporary name, renamed over `path`: a new inode
    return True


class DiskTargets:
    """Open VDI files for an import; `write` places chunks, skipping zeros (fresh files only).

    `on_write(key, offset, length)` hears of every write (the change log of a tracked VDI).

    Example::

        with DiskTargets({"Ref:2": path}) as targets:
            targets.write("Ref:2", 0, data)
    """

    def __init__(
        self, paths: Mapping[str, Path], *, on_write: Callable[[str, int, int], None] | None = None
    ) -> None:
        self._paths = dict(paths)
        self._fds: dict[str, int] = {}
        self._on_write = on_write

    def __enter__(self) -> Self:
        for key, path in self._paths.items():
            self._fds[key] = os.open(path, os.O_WRONLY)
        return self

    def write(self, key: str, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write `data` at `offset` of disk `key`; data for a disk not opened is dropped."""
        fd = self._fds.get(key)
        if fd is not None:
            write_nonzero(fd, offset, data)
            if self._on_write is not None:
                self._on_write(key, offset, len(data))

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

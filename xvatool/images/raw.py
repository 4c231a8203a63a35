"""Raw disk images: a local file (holes skipped) or a stream of exactly `virtual_size` bytes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from xvatool._types import Readable
from xvatool.errors import LocalIOError, TruncatedError
from xvatool.images.extents import Extent
from xvatool.xva.disk import CHUNK_SIZE, RawFileSource, data_ranges, is_zero

__all__ = ["RawFileImage", "RawStreamImage", "read_fully"]


def read_fully(stream: Readable, view: memoryview) -> int:
    """Fill `view` from `stream` unless it ends first; return the bytes read."""
    readinto = getattr(stream, "readinto", None)
    got = 0
    while got < len(view):
        if readinto is not None:
            n = int(readinto(view[got:]) or 0)
        else:
            data = stream.read(len(view) - got)
            n = len(data)
            view[got : got + n] = data
        if not n:
            break
        got += n
    return got


class RawFileImage:
    """A raw image file; holes are never read (SEEK_DATA), so sparse files are cheap.

    Example::

        image = RawFileImage("disk.img")
        for offset, data in image.extents():
            ...
    """

    ordered = True

    def __init__(self, path: str | os.PathLike[str], *, size: int | None = None) -> None:
        self.path = Path(path)
        self._source = RawFileSource(self.path, size=size)
        self.virtual_size = self._source.size

    def extents(self) -> Iterator[Extent]:
        return self._source.blocks()

    def allocated_blocks(self, unit: int) -> list[int]:
        """Indexes of the `unit`-sized blocks that hold data (by SEEK_DATA), ascending."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=str(self.path)) from exc
        try:
            limit = min(self.virtual_size, self._source.file_size)
            found: list[int] = []
            for start, end in data_ranges(fd, limit):
                first = start // unit
                if found and found[-1] >= first:
                    first = found[-1] + 1
                found.extend(range(first, -(-end // unit)))
            return found
        finally:
            os.close(fd)


class RawStreamImage:
    """A raw disk arriving as a stream of exactly `virtual_size` bytes; zero blocks are skipped."""

    ordered = True

    def __init__(self, stream: Readable, virtual_size: int, *, source: str | None = None) -> None:
        self._stream = stream
        self.virtual_size = virtual_size
        self.source = source

    def extents(self) -> Iterator[Extent]:
        buf = bytearray(CHUNK_SIZE)
        view = memoryview(buf)
        offset = 0
        while offset < self.virtual_size:
            n = min(CHUNK_SIZE, self.virtual_size - offset)
            got = read_fully(self._stream, view[:n])
            if got != n:
                raise TruncatedError(
                    f"raw disk ends at byte {offset + got} of {self.virtual_size}", file=self.source
                )
            if not is_zero(view[:n]):
                yield offset, view[:n]
            offset += n

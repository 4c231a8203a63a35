"""VHD streams of the raw VDI handlers: a disk out, a delta against a base out, an upload in.

The VHD code itself is `xvatool.images` (the host's vhd-tool layout, docs/incremental.md §3.2–§3.4);
this module decides what goes in:

- `vhd_pieces`: a dynamic VHD with the 2 MiB blocks that hold data (SEEK_DATA), as vhd-tool
  sends for ``format=vhd``;
- `delta_pieces`: ``format=vhd&base=…``, a differencing VHD whose parent is the base VDI, with
  every 2 MiB block whose content differs from the base's, whole and with all bitmap bits set.
  vhd-tool chooses blocks by the VHD trees' allocation (a superset of the blocks that differ);
  the simulator's disks are flat files, so it compares content, which is exact and needs no CBT;
- `receive_vhd`: applies a dynamic or differencing upload in file order, sector runs whose bit is
  set, clipped to the VDI's size, so a delta PUT onto a copy of its parent gives the newer disk.
"""

from __future__ import annotations

import os
import uuid as uuid_module
from collections.abc import Callable, Iterator
from pathlib import Path

from xvatool.images import RawFileImage, VhdParent, VhdReader, VhdWriter
from xvatool.images.vhd import BLOCK_SIZE, MAX_VHD_SIZE
from xvatool.sim.handlers import BodyReader
from xvatool.xva.disk import data_ranges

__all__ = ["BLOCK_SIZE", "MAX_VHD_SIZE", "delta_pieces", "differing_blocks", "receive_vhd", "vhd_pieces"]

Piece = bytes | memoryview
Write = Callable[[int, memoryview], None]


def vhd_pieces(path: os.PathLike[str], size: int) -> Iterator[Piece]:
    """A dynamic VHD of the disk file at `path` (`size` bytes), as a stream of pieces."""
    image = RawFileImage(path, size=size)
    return VhdWriter(size, image.allocated_blocks(BLOCK_SIZE)).pieces(image.extents())


def _allocated(path: Path, size: int) -> set[int]:
    """Indexes of the 2 MiB blocks in which the file holds data (SEEK_DATA); none past `size`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        limit = min(size, os.fstat(fd).st_size)
        return {
            block
            for start, end in data_ranges(fd, limit)
            for block in range(start // BLOCK_SIZE, -(-end // BLOCK_SIZE))
        }
    finally:
        os.close(fd)


def _read_block(fd: int, index: int, size: int, buf: bytearray) -> memoryview:
    """Block `index` of a `size`-byte disk into `buf`: bytes past the end of the disk are zeros."""
    view = memoryview(buf)
    start = index * BLOCK_SIZE
    n = max(0, min(BLOCK_SIZE, size - start))
    got = os.preadv(fd, [view[:n]], start) if n else 0
    view[got:] = bytes(BLOCK_SIZE - got)
    return view


def differing_blocks(path: Path, size: int, base_path: Path, base_size: int) -> list[int]:
    """The 2 MiB blocks of the disk (`size` bytes) whose content is not the base's, ascending.

    Only blocks where either file holds data are read; beyond the base's end it reads as zeros.
    """
    candidates = sorted(_allocated(path, size) | _allocated(base_path, min(base_size, size)))
    if not candidates:
        return []
    mine, theirs = bytearray(BLOCK_SIZE), bytearray(BLOCK_SIZE)
    fd, base_fd = os.open(path, os.O_RDONLY), os.open(base_path, os.O_RDONLY)
    try:
        found = []
        for index in candidates:
            _read_block(fd, index, size, mine)
            _read_block(base_fd, index, base_size, theirs)
            if mine != theirs:  # bytearrays compare with memcmp (memoryviews item by item)
                found.append(index)
        return found
    finally:
        os.close(fd)
        os.close(base_fd)


def delta_pieces(
    path: Path, size: int, base_path: Path, base_size: int, *, base_uuid: str, base_name: str
) -> Iterator[Piece]:
    """A differencing VHD of the disk against the base VDI, as vhd-tool's ``--relative-to`` sends."""
    blocks = differing_blocks(path, size, base_path, base_size)
    parent = VhdParent(uuid_module.UUID(base_uuid).bytes, base_name)
    writer = VhdWriter(size, blocks, parent=parent)

    def extents() -> Iterator[tuple[int, memoryview]]:
        buf = bytearray(BLOCK_SIZE)
        fd = os.open(path, os.O_RDONLY)
        try:
            for index in blocks:
                view = _read_block(fd, index, size, buf)
                yield index * BLOCK_SIZE, view[: min(BLOCK_SIZE, size - index * BLOCK_SIZE)]
        finally:
            os.close(fd)

    return writer.pieces(extents())


def receive_vhd(body: BodyReader, write: Write, size: int) -> None:
    """Apply a dynamic or differencing VHD upload to a disk of `size` bytes through `write`.

    A malformed or short stream raises `FormatError` (the handler's `VDI_IO_ERROR`); what came
    before it has been written, as with the host. Data past the disk's end is dropped.
    """
    reader = VhdReader(body, check_footer=False, source="upload")
    for offset, data in reader.extents():
        if offset < size:
            write(offset, data[: size - offset])

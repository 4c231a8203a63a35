"""Writing streamOptimized VMDK, the disk format OVF packages carry, as a stream of pieces.

The layout is the one VMware's exports and VirtualBox write, so that every reader (ESXi, Workstation,
VirtualBox, qemu, ovftool) takes it: header (version 3, compressed grains and markers, grain
directory "at the end"), embedded descriptor, then each non-zero 64 KiB grain as a marker and a
zlib stream padded to a sector, in ascending LBA order; after the grains of each grain table's
range (32 MiB) that table behind a GT marker; at the end the grain directory behind a GD marker,
the footer (the header with the directory's sector) behind a footer marker, and an end-of-stream
marker. Nothing is ever rewritten, so the output can go to a pipe; its size is known only at the end.

Grains are compressed in worker threads (zlib releases the GIL), one 1 MiB block per job, with a
bounded number of jobs in flight, so both cores work and memory stays flat.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from xvatool.errors import UsageError
from xvatool.images.extents import Extent, rechunk
from xvatool.images.vmdk import (
    GD_AT_END,
    MARKER_EOS,
    MARKER_FOOTER,
    MARKER_GD,
    MARKER_GT,
    SECTOR,
    VmdkHeader,
)
from xvatool.xva.disk import CHUNK_SIZE

__all__ = ["DEFAULT_LEVEL", "GRAIN_SIZE", "MAX_VMDK_SIZE", "VmdkWriter", "descriptor_text"]

GRAIN_SIZE = 64 << 10
"""Bytes per grain (128 sectors), as every writer uses."""
GTES_PER_GT = 512
DEFAULT_LEVEL = 6
"""zlib level; zlib's own default, which qemu and VirtualBox use too."""
MAX_VMDK_SIZE = (1 << 32) * SECTOR - GRAIN_SIZE
"""Bytes. Grain tables hold u32 sector numbers, so a sparse extent stays under 2 TiB."""
JOBS_IN_FLIGHT = 4
"""1 MiB blocks being compressed at once, beyond the one being written."""
WORKERS = 2
_ZERO_GRAIN = bytes(GRAIN_SIZE)


def _geometry(capacity: int, adapter_type: str) -> tuple[int, int, int]:
    heads, sectors = (16, 63) if adapter_type == "ide" else (255, 63)
    return min(65535, -(-capacity // (heads * sectors))), heads, sectors


def descriptor_text(capacity: int, name: str, *, cid: int, adapter_type: str = "lsilogic") -> str:
    """The embedded descriptor, as VMware's own streamOptimized writer lays it out."""
    cylinders, heads, sectors = _geometry(capacity, adapter_type)
    return (
        "# Disk DescriptorFile\n"
        "version=1\n"
        'encoding="UTF-8"\n'
        f"CID={cid:08x}\n"
        "parentCID=ffffffff\n"
        'createType="streamOptimized"\n'
        "\n"
        "# Extent description\n"
        f'RW {capacity} SPARSE "{name}"\n'
        "\n"
        "# The Disk Data Base\n"
        "#DDB\n"
        "\n"
        'ddb.virtualHWVersion = "4"\n'
        f'ddb.geometry.cylinders = "{cylinders}"\n'
        f'ddb.geometry.heads = "{heads}"\n'
        f'ddb.geometry.sectors = "{sectors}"\n'
        f'ddb.adapterType = "{adapter_type}"\n'
    )


def _marker(sectors: int, kind: int) -> bytes:
    return struct.pack("<QII", sectors, 0, kind) + bytes(SECTOR - 16)


def _compress_block(offset: int, data: bytes, level: int) -> list[tuple[int, bytes]]:
    """(LBA, marker + zlib stream + padding) for each non-zero grain of a 1 MiB block."""
    out = []
    for start in range(0, len(data), GRAIN_SIZE):
        grain = data[start : start + GRAIN_SIZE]
        if grain == _ZERO_GRAIN[: len(grain)]:
            continue
        if len(grain) < GRAIN_SIZE:  # the disk's last grain: readers expect a whole one
            grain += _ZERO_GRAIN[len(grain) :]
        packed = zlib.compress(grain, level)
        record = struct.pack("<QI", (offset + start) // SECTOR, len(packed)) + packed
        out.append(((offset + start) // SECTOR, record + bytes(-len(record) % SECTOR)))
    return out


class VmdkWriter:
    """A streamOptimized VMDK of a disk, produced as pieces from its ordered extents.

    `name` goes into the descriptor's extent line (readers ignore it inside an OVF package);
    `cid` is the descriptor's content id, fixed by default so that the same disk always gives the
    same bytes. `bytes_written` is the output size once `pieces()` is exhausted.

    Example::

        writer = VmdkWriter(image.virtual_size, name="disk1.vmdk")
        for piece in writer.pieces(image.extents()):
            out.write(piece)
    """

    def __init__(
        self,
        virtual_size: int,
        *,
        name: str = "disk.vmdk",
        level: int = DEFAULT_LEVEL,
        adapter_type: str = "lsilogic",
        cid: int = 1,
    ) -> None:
        if virtual_size <= 0 or virtual_size > MAX_VMDK_SIZE:
            raise UsageError(f"a streamOptimized VMDK holds 1 byte to 2 TiB, not {virtual_size}")
        if not 0 <= level <= 9:
            raise UsageError(f"zlib level must be 0..9, not {level}")
        if not 0 <= cid < 0xFFFFFFFE:
            raise UsageError("the content id must be below 0xfffffffe")
        self.virtual_size = virtual_size
        self.level = level
        capacity = -(-virtual_size // SECTOR)
        text = descriptor_text(capacity, name, cid=cid, adapter_type=adapter_type).encode("utf-8")
        descriptor_sectors = -(-len(text) // SECTOR)
        self._descriptor = text + bytes(descriptor_sectors * SECTOR - len(text))
        self.header = VmdkHeader(
            capacity=capacity,
            grain_size=GRAIN_SIZE // SECTOR,
            descriptor_offset=1,
            descriptor_size=descriptor_sectors,
            gtes_per_gt=GTES_PER_GT,
            gd_offset=GD_AT_END,
            overhead=1 + descriptor_sectors,
        )
        grains = -(-capacity // self.header.grain_size)
        self._gt_count = -(-grains // GTES_PER_GT)
        self.bytes_written = 0
        self._sector = 0

    def _emit(self, piece: bytes) -> bytes:
        self.bytes_written += len(piece)
        self._sector += len(piece) // SECTOR
        return piece

    def pieces(self, extents: Iterable[Extent]) -> Iterator[bytes]:
        """The whole VMDK; extents must be in ascending order (as every `DiskImage.ordered` gives)."""
        yield self._emit(self.header.pack())
        yield self._emit(self._descriptor)
        directory = [0] * self._gt_count
        table = [0] * GTES_PER_GT
        table_index = -1
        grain_sectors = self.header.grain_size
        for lba, record in self._compressed(extents):
            grain = lba // grain_sectors
            index = grain // GTES_PER_GT
            if index != table_index:
                if table_index >= 0:
                    yield from self._table(directory, table_index, table)
                table_index, table = index, [0] * GTES_PER_GT
            table[grain % GTES_PER_GT] = self._sector
            if self._sector + len(record) // SECTOR >= 1 << 32:
                raise UsageError("the compressed disk outgrows what a VMDK grain table can address")
            yield self._emit(record)
        if table_index >= 0:
            yield from self._table(directory, table_index, table)
        gd = struct.pack(f"<{len(directory)}I", *directory)
        gd += bytes(-len(gd) % SECTOR)
        yield self._emit(_marker(len(gd) // SECTOR, MARKER_GD))
        gd_sector = self._sector
        yield self._emit(gd)
        footer = dataclasses.replace(self.header, gd_offset=gd_sector)
        yield self._emit(_marker(1, MARKER_FOOTER))
        yield self._emit(footer.pack())
        yield self._emit(_marker(0, MARKER_EOS))

    def _table(self, directory: list[int], index: int, table: list[int]) -> Iterator[bytes]:
        yield self._emit(_marker(GTES_PER_GT * 4 // SECTOR, MARKER_GT))
        directory[index] = self._sector
        yield self._emit(struct.pack(f"<{GTES_PER_GT}I", *table))

    def _compressed(self, extents: Iterable[Extent]) -> Iterator[tuple[int, bytes]]:
        """(LBA, grain record) in LBA order, compressed by worker threads a few blocks ahead."""
        pending: deque[Future[list[tuple[int, bytes]]]] = deque()
        with ThreadPoolExecutor(WORKERS, thread_name_prefix="vmdk-deflate") as pool:
            try:
                for offset, block in rechunk(extents, self.virtual_size, CHUNK_SIZE):
                    pending.append(pool.submit(_compress_block, offset, bytes(block), self.level))
                    while len(pending) > JOBS_IN_FLIGHT:
                        yield from pending.popleft().result()
                while pending:
                    yield from pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()

"""Dynamic VHD streams for `format=vhd` on the raw VDI handlers (xapi-protocol.md §3.5, §3.6).

Layout (Microsoft VHD specification): footer copy (512) · dynamic header (1024) · BAT (one
big-endian u32 sector offset per 2 MiB block, 0xFFFFFFFF when absent, padded to a sector) ·
for each present block its sector bitmap (512) and data (2 MiB) · footer (512). Blocks are
present when the disk file has data in them (SEEK_DATA), so sparse disks give small streams.

The reader consumes a stream strictly in order: blocks are applied in file order of their BAT
entries and only sectors whose bitmap bit is set are written, so a differencing VHD applied on top
of a copy of its parent gives the newer disk (wiki "Importing only changed blocks").
"""

from __future__ import annotations

import os
import struct
import time
import uuid
from collections.abc import Iterator

from xvatool.sim.disks import overwrite
from xvatool.sim.handlers import BodyReader
from xvatool.sim.values import ApiFailure
from xvatool.xva.disk import data_ranges

__all__ = ["BLOCK_SIZE", "receive_vhd", "vhd_pieces"]

BLOCK_SIZE = 2 << 20
SECTOR = 512
_BITMAP = BLOCK_SIZE // SECTOR // 8  # 512 bytes: one bit per sector
_UNUSED = 0xFFFFFFFF
_VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z
MAX_BLOCK_SIZE = 8 << 20
"""Bytes. Larger VHD blocks are refused: each block is held in memory once while it is applied."""
MAX_BAT_ENTRIES = 1 << 22
"""8 TiB of 2 MiB blocks; a larger BAT is refused as corrupt."""
_IO_ERROR = ApiFailure("VDI_IO_ERROR", ["Device I/O errors"])


def _checksum(data: bytes) -> int:
    return ~sum(data) & 0xFFFFFFFF


def _geometry(size: int) -> int:
    """CHS geometry from the VHD specification's algorithm, packed as u16 cyl, u8 heads, u8 spt."""
    sectors = min(size // SECTOR, 65535 * 16 * 255)
    if sectors >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cyl_heads = sectors // spt
    else:
        spt = 17
        cyl_heads = sectors // spt
        heads = max((cyl_heads + 1023) // 1024, 4)
        if cyl_heads >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cyl_heads = sectors // spt
        if cyl_heads >= heads * 1024:
            spt, heads = 63, 16
            cyl_heads = sectors // spt
    return ((cyl_heads // heads) << 16) | (heads << 8) | spt


def _footer(size: int) -> bytes:
    fields = struct.pack(
        ">8sIIQI4sI4sQQIII16sB",
        b"conectix", 2, 0x00010000, SECTOR, int(time.time()) - _VHD_EPOCH, b"xvat", 0x00010000, b"Wi2k",
        size, size, _geometry(size), 3, 0, uuid.uuid4().bytes, 0,
    )  # fmt: skip
    raw = fields + bytes(SECTOR - len(fields))
    return raw[:64] + struct.pack(">I", _checksum(raw)) + raw[68:]


def _header(entries: int) -> bytes:
    fields = struct.pack(
        ">8sQQIIII", b"cxsparse", 0xFFFFFFFFFFFFFFFF, 3 * SECTOR, 0x00010000, entries, BLOCK_SIZE, 0
    )
    raw = fields + bytes(1024 - len(fields))
    return raw[:36] + struct.pack(">I", _checksum(raw)) + raw[40:]


def vhd_pieces(path: os.PathLike[str], size: int) -> Iterator[bytes | bytearray]:
    """A dynamic VHD of the disk file at `path`, `size` bytes, as a stream of pieces."""
    entries = -(-size // BLOCK_SIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        present = sorted(
            {
                b
                for start, end in data_ranges(fd, size)
                for b in range(start // BLOCK_SIZE, -(-end // BLOCK_SIZE))
            }
        )
        footer = _footer(size)
        bat_bytes = -(-entries * 4 // SECTOR) * SECTOR
        sector = (3 * SECTOR + bat_bytes) // SECTOR
        bat = bytearray(b"\xff" * bat_bytes)
        for block in present:
            struct.pack_into(">I", bat, block * 4, sector)
            sector += (_BITMAP + BLOCK_SIZE) // SECTOR
        yield footer
        yield _header(entries)
        yield bat
        buf = bytearray(BLOCK_SIZE)
        for block in present:
            start = block * BLOCK_SIZE
            n = min(BLOCK_SIZE, size - start)
            got = os.preadv(fd, [memoryview(buf)[:n]], start)
            buf[got:] = bytes(BLOCK_SIZE - got)
            yield b"\xff" * _BITMAP
            yield buf
        yield footer
    finally:
        os.close(fd)


def _read(body: BodyReader, count: int) -> bytes:
    data = body.read_exact(count)
    if len(data) != count:
        raise _IO_ERROR
    return data


def _skip(body: BodyReader, count: int) -> None:
    while count > 0:
        n = len(body.read_exact(min(count, 1 << 20)))
        if n == 0:
            raise _IO_ERROR
        count -= n


def receive_vhd(body: BodyReader, fd: int, size: int) -> None:
    """Apply a dynamic or differencing VHD stream to the disk open on `fd`."""
    footer = _read(body, SECTOR)
    if footer[:8] != b"conectix":
        raise ApiFailure("VDI_IO_ERROR", ["not a VHD: bad footer cookie"])
    disk_type = struct.unpack_from(">I", footer, 60)[0]
    header_offset = struct.unpack_from(">Q", footer, 16)[0]
    if disk_type not in (3, 4) or header_offset < SECTOR:
        raise ApiFailure("VDI_IO_ERROR", ["only dynamic and differencing VHDs can be streamed"])
    _skip(body, header_offset - SECTOR)
    header = _read(body, 1024)
    if header[:8] != b"cxsparse":
        raise ApiFailure("VDI_IO_ERROR", ["not a VHD: bad dynamic header cookie"])
    bat_offset, _, entries, block_size = struct.unpack_from(">QIII", header, 16)
    if entries > MAX_BAT_ENTRIES or block_size % SECTOR or not 0 < block_size <= MAX_BLOCK_SIZE:
        raise ApiFailure("VDI_IO_ERROR", ["corrupt VHD dynamic header"])
    position = header_offset + 1024
    if bat_offset < position:
        raise ApiFailure("VDI_IO_ERROR", ["VHD BAT before the dynamic header cannot be streamed"])
    _skip(body, bat_offset - position)
    bat = _read(body, entries * 4)
    position = bat_offset + entries * 4
    bitmap_bytes = -(-(block_size // SECTOR // 8) // SECTOR) * SECTOR
    blocks = sorted((struct.unpack_from(">I", bat, 4 * i)[0] * SECTOR, i) for i in range(entries)
                    if struct.unpack_from(">I", bat, 4 * i)[0] != _UNUSED)  # fmt: skip
    for offset, index in blocks:
        if offset < position:
            raise ApiFailure("VDI_IO_ERROR", ["overlapping VHD blocks"])
        _skip(body, offset - position)
        bitmap = _read(body, bitmap_bytes)
        data = _read(body, block_size)
        position = offset + bitmap_bytes + block_size
        _apply(fd, index * block_size, bitmap, data, size)


def _apply(fd: int, base: int, bitmap: bytes, data: bytes, size: int) -> None:
    """Write the runs of sectors whose bitmap bit is set (most significant bit first)."""
    sectors = len(data) // SECTOR
    run_start = None
    for sector in range(sectors + 1):
        bit = sector < sectors and bitmap[sector // 8] & (0x80 >> (sector % 8))
        if bit and run_start is None:
            run_start = sector
        elif not bit and run_start is not None:
            start, end = base + run_start * SECTOR, min(base + sector * SECTOR, size)
            if start < end:
                overwrite(fd, start, memoryview(data)[run_start * SECTOR : run_start * SECTOR + end - start])
            run_start = None

"""VHD images (Microsoft Virtual Hard Disk v1.0): fixed, dynamic and differencing; read and write.

Layout (big-endian, 512-byte sectors): a dynamic or differencing VHD is a copy of the footer,
a 1024-byte dynamic header, a block allocation table (BAT: one u32 sector number per block,
``0xFFFFFFFF`` when absent, padded to a sector), then each present block as a sector bitmap and
`block_size` bytes of data, and the footer again at the end. A fixed VHD is the raw disk followed
by the footer alone. Both checksums are the one's complement of the byte sum with the field zeroed.
A set bitmap bit means "this sector is stored here"; a clear bit, or an absent block, reads as
zeros in a dynamic disk and as the parent in a differencing one (docs/architecture.md, images/).

`VhdReader` reads a stream strictly in order: blocks are taken in file order (sorted by their
BAT entries) and only sectors with a set bit are handed on, so applying a differencing VHD to a
copy of its parent gives the newer disk, as the host's `/import_raw_vdi?format=vhd` does.
`vhdwriter.VhdWriter` writes the layout the host's vhd-tool writes for
`/export_raw_vdi?format=vhd` (footer copy at 0, header at 512, one locator sector at 1536, BAT at
2048, blocks in ascending order with full bitmaps, footer), and differencing VHDs (disk type 4)
with the parent's uuid, name and a ``MacX`` ``file://`` locator.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from xvatool._types import Readable
from xvatool.errors import FormatError, TruncatedError, UsageError, location_context
from xvatool.images.cursor import Cursor
from xvatool.images.extents import Extent
from xvatool.xva.disk import CHUNK_SIZE, is_zero

__all__ = [
    "BLOCK_SIZE",
    "DISK_DIFFERENCING",
    "DISK_DYNAMIC",
    "DISK_FIXED",
    "FOOTER_COOKIE",
    "MAX_VHD_SIZE",
    "ParentLocator",
    "VhdFooter",
    "VhdHeader",
    "VhdParent",
    "VhdReader",
    "bitmap_bytes",
    "geometry",
]

SECTOR = 512
BLOCK_SIZE = 2 << 20
"""Bytes per block, as the host and every common writer use."""
FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING = 2, 3, 4
UNUSED = 0xFFFFFFFF
VHD_EPOCH = 946684800
"""2000-01-01T00:00:00Z: VHD timestamps count seconds from here."""
MAX_VHD_SIZE = 2040 << 30
"""Bytes. The host refuses to export larger VHDs (VDI_TOO_LARGE); so does this writer."""
MAX_BLOCK_SIZE = 8 << 20
"""Bytes. Larger blocks are refused: one block is held in memory while it is read."""
MAX_BAT_ENTRIES = 1 << 22
"""A larger BAT (16 MiB) is refused as corrupt."""
MAX_GAP = 64 << 20
"""Bytes of unused space tolerated between the structures at the front of a VHD."""
HEADER_OFFSET = SECTOR
LOCATOR_OFFSET = 3 * SECTOR
BAT_OFFSET = 4 * SECTOR
CREATOR_APP = b"tap\0"
"""The creator XenServer's tapdisk writes. qemu takes the size from the footer only for creators it
knows (tap, win, qem2, d2v, CTXS) and from the CHS geometry otherwise, which cuts disks whose size
is not a whole geometry; so the host's own name is the one that reads back right everywhere."""
_FOOTER = struct.Struct(">8sIIQI4sI4sQQIII16sB")
_HEADER = struct.Struct(">8sQQIIII16sI4s512s")
_LOCATOR = struct.Struct(">4sIIIQ")


def _checksum(data: bytes | bytearray) -> int:
    return ~sum(data) & 0xFFFFFFFF


def _with_checksum(raw: bytearray, at: int) -> bytes:
    raw[at : at + 4] = bytes(4)
    raw[at : at + 4] = struct.pack(">I", _checksum(raw))
    return bytes(raw)


def geometry(size: int) -> int:
    """CHS geometry by the VHD specification's algorithm, packed as u16 cyl, u8 heads, u8 spt."""
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


@dataclass(frozen=True)
class VhdFooter:
    """The 512-byte footer (also the copy at offset 0 of dynamic and differencing disks)."""

    disk_type: int
    current_size: int
    unique_id: bytes
    timestamp: int = 0
    data_offset: int = 0xFFFFFFFFFFFFFFFF
    original_size: int | None = None
    creator_app: bytes = CREATOR_APP
    creator_version: int = 0x00010000
    creator_os: bytes = b"Wi2k"
    features: int = 2
    saved_state: int = 0

    @classmethod
    def parse(cls, raw: bytes, *, offset: int | None = None) -> VhdFooter:
        """Parse and check a footer; `offset` says where it was, for the error."""
        fields = _FOOTER.unpack_from(raw)
        (
            cookie,
            features,
            version,
            data_offset,
            timestamp,
            app,
            app_version,
            host_os,
            original,
            current,
            _geometry,
            disk_type,
            stored,
            unique,
            saved,
        ) = fields
        if cookie != FOOTER_COOKIE:
            raise FormatError("not a VHD footer (no 'conectix' cookie)", code="vhd-footer", offset=offset)
        if stored != _checksum(raw[:64] + bytes(4) + raw[68:SECTOR]):
            raise FormatError("VHD footer checksum mismatch", code="vhd-checksum", offset=offset)
        if version >> 16 != 1:
            raise FormatError(f"unsupported VHD version {version:#x}", code="vhd-footer", offset=offset)
        if disk_type not in (DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING):
            raise FormatError(f"unsupported VHD disk type {disk_type}", code="vhd-footer", offset=offset)
        return cls(
            disk_type,
            current,
            unique,
            timestamp,
            data_offset,
            original,
            app,
            app_version,
            host_os,
            features,
            saved,
        )

    def pack(self) -> bytes:
        original = self.current_size if self.original_size is None else self.original_size
        raw = bytearray(SECTOR)
        _FOOTER.pack_into(
            raw,
            0,
            FOOTER_COOKIE,
            self.features,
            0x00010000,
            self.data_offset,
            self.timestamp,
            self.creator_app,
            self.creator_version,
            self.creator_os,
            original,
            self.current_size,
            geometry(self.current_size),
            self.disk_type,
            0,
            self.unique_id,
            self.saved_state,
        )
        return _with_checksum(raw, 64)


@dataclass(frozen=True)
class ParentLocator:
    """One parent locator entry: platform `code` (``MacX``, ``W2ku``, ``W2ru``) and where its data is."""

    code: bytes
    space: int
    length: int
    offset: int


@dataclass(frozen=True)
class VhdHeader:
    """The 1024-byte dynamic disk header."""

    table_offset: int
    max_table_entries: int
    block_size: int = BLOCK_SIZE
    parent_uuid: bytes = bytes(16)
    parent_timestamp: int = 0
    parent_name: str = ""
    locators: tuple[ParentLocator, ...] = ()

    @classmethod
    def parse(cls, raw: bytes, *, offset: int | None = None) -> VhdHeader:
        fields = _HEADER.unpack_from(raw)
        (
            cookie,
            _data_offset,
            table_offset,
            version,
            entries,
            block_size,
            stored,
            parent_uuid,
            parent_ts,
            _reserved,
            parent_name,
        ) = fields
        if cookie != HEADER_COOKIE:
            raise FormatError("no 'cxsparse' dynamic disk header", code="vhd-header", offset=offset)
        if stored != _checksum(raw[:36] + bytes(4) + raw[40:1024]):
            raise FormatError("VHD dynamic header checksum mismatch", code="vhd-checksum", offset=offset)
        if version >> 16 != 1:
            raise FormatError(
                f"unsupported dynamic header version {version:#x}", code="vhd-header", offset=offset
            )
        locators = []
        for i in range(8):
            code, space, length, _r, loc_offset = _LOCATOR.unpack_from(raw, 576 + 24 * i)
            if code != bytes(4):
                locators.append(ParentLocator(code, space, length, loc_offset))
        name = parent_name.decode("utf-16-be", "replace").split("\0", 1)[0]
        return cls(table_offset, entries, block_size, parent_uuid, parent_ts, name, tuple(locators))

    def pack(self) -> bytes:
        raw = bytearray(1024)
        name = self.parent_name.encode("utf-16-be")[:512]
        _HEADER.pack_into(
            raw,
            0,
            HEADER_COOKIE,
            0xFFFFFFFFFFFFFFFF,
            self.table_offset,
            0x00010000,
            self.max_table_entries,
            self.block_size,
            0,
            self.parent_uuid,
            self.parent_timestamp,
            bytes(4),
            name,
        )
        for i, loc in enumerate(self.locators[:8]):
            _LOCATOR.pack_into(raw, 576 + 24 * i, loc.code, loc.space, loc.length, 0, loc.offset)
        return _with_checksum(raw, 36)


@dataclass(frozen=True)
class VhdParent:
    """The parent of a differencing VHD: its footer uuid, timestamp, name and ``file://`` locator."""

    uuid: bytes
    name: str
    timestamp: int = 0
    locator: str | None = field(default=None)
    """Written as a ``MacX`` locator; defaults to ``file://./<name>`` as vhd-tool writes it."""


def bitmap_bytes(block_size: int) -> int:
    """Bytes of the sector bitmap in front of each block: one bit per sector, whole sectors."""
    return -(-(block_size // SECTOR // 8) // SECTOR) * SECTOR


def _set_runs(bitmap: bytes | bytearray, sectors: int) -> Iterator[tuple[int, int]]:
    """(first, end) sector runs whose bit is set, most significant bit first."""
    start = None
    for byte_index in range(-(-sectors // 8)):
        byte = bitmap[byte_index]
        base = byte_index * 8
        if byte in (0, 0xFF):
            if byte and start is None:
                start = base
            elif not byte and start is not None:
                yield start, base
                start = None
            continue
        for bit in range(8):
            if byte & (0x80 >> bit):
                if start is None:
                    start = base + bit
            elif start is not None:
                yield start, base + bit
                start = None
    if start is not None:
        yield start, sectors


class VhdReader:
    """Reads a fixed, dynamic or differencing VHD from a stream, front to back, never seeking.

    A fixed VHD cannot be told from a raw disk by its first bytes, so it needs `length` (the
    stream's total size: a tar member's, a file's); dynamic and differencing ones do not.
    `check_footer=False` accepts a dynamic VHD that stops after its last block, as the host's
    importer does. Header, BAT and footer copy are read by the constructor, so `virtual_size`,
    `ordered`, `disk_type` and `parent` are known before `extents()`.

    Example::

        reader = VhdReader(open("disk.vhd", "rb"))
        for offset, data in reader.extents():
            sink.write_at(offset, data)
    """

    def __init__(
        self,
        stream: Readable,
        *,
        length: int | None = None,
        source: str | None = None,
        check_footer: bool = True,
    ) -> None:
        self.source = source
        self.length = length
        self._check_footer = check_footer
        self._in = Cursor(stream, "VHD", source)
        self._used = False
        head = self._in.read(SECTOR, "the footer copy")
        self.header: VhdHeader | None = None
        self._blocks: list[tuple[int, int]] = []  # (file offset, block index) in file order
        self._head = head
        if head[:8] != FOOTER_COOKIE:
            if length is None or length < 2 * SECTOR or length % SECTOR:
                raise FormatError(
                    "no VHD footer copy at offset 0: a fixed VHD needs its length to be read",
                    code="vhd-footer",
                    file=source,
                    offset=0,
                )
            self.footer: VhdFooter | None = None
            self.disk_type = DISK_FIXED
            self.virtual_size = length - SECTOR
            self.ordered = True
            self.parent: VhdParent | None = None
            return
        with location_context(file=source):
            self.footer = VhdFooter.parse(head, offset=0)
        if self.footer.disk_type == DISK_FIXED:
            raise FormatError("a fixed VHD footer at offset 0", code="vhd-footer", file=source, offset=0)
        self.disk_type = self.footer.disk_type
        self.virtual_size = self.footer.current_size
        self._read_structures()

    def _read_structures(self) -> None:
        assert self.footer is not None
        source = self.source
        header_offset = self.footer.data_offset
        if not SECTOR <= header_offset <= MAX_GAP:
            raise FormatError(
                f"dynamic header offset {header_offset} is implausible",
                code="vhd-header",
                file=source,
                offset=0,
            )
        self._in.skip_to(header_offset, "the dynamic header")
        with location_context(file=source):
            header = VhdHeader.parse(self._in.read(1024, "the dynamic header"), offset=header_offset)
        self.header = header
        block_size = header.block_size
        if block_size % SECTOR or not SECTOR <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1):
            raise FormatError(
                f"VHD block size {block_size} is not supported",
                code="vhd-header",
                file=source,
                offset=header_offset,
            )
        if header.max_table_entries > MAX_BAT_ENTRIES:
            raise FormatError(
                f"BAT of {header.max_table_entries} entries is over the limit",
                code="vhd-header",
                file=source,
                offset=header_offset,
            )
        if header.table_offset > header_offset + 1024 + MAX_GAP:
            raise FormatError(
                "BAT offset is implausible", code="vhd-header", file=source, offset=header_offset
            )
        self._in.skip_to(header.table_offset, "the BAT")
        bat = self._in.read(4 * header.max_table_entries, "the BAT")
        bat_end = header.table_offset + 4 * header.max_table_entries
        self._bitmap_size = bitmap_bytes(block_size)
        span = self._bitmap_size + block_size
        entries = struct.unpack(f">{header.max_table_entries}I", bat)
        blocks = sorted((sector * SECTOR, index) for index, sector in enumerate(entries) if sector != UNUSED)
        previous_end = bat_end
        for offset, index in blocks:
            if offset < previous_end:
                raise FormatError(
                    f"block {index} at {offset} overlaps the BAT or another block",
                    code="vhd-layout",
                    file=source,
                    offset=offset,
                )
            previous_end = offset + span
        self._blocks = blocks
        self.ordered = all(a[1] < b[1] for a, b in itertools.pairwise(blocks))
        self.parent = None
        if self.disk_type == DISK_DIFFERENCING:
            self.parent = VhdParent(header.parent_uuid, header.parent_name, header.parent_timestamp)

    def extents(self) -> Iterator[Extent]:
        """The stored sectors, block by block in file order; raises at the end if the footer is bad."""
        if self._used:
            raise UsageError("a VhdReader can be read only once")
        self._used = True
        if self.footer is None:
            yield from self._fixed_extents()
            return
        assert self.header is not None
        block_size = self.header.block_size
        sectors = block_size // SECTOR
        buf = bytearray(block_size)
        view = memoryview(buf)
        full = b"\xff" * (sectors // 8)
        for offset, index in self._blocks:
            self._in.skip_to(offset, f"block {index}")
            bitmap = self._in.read(self._bitmap_size, f"the bitmap of block {index}")
            self._in.read_into(view, f"block {index}")
            base = index * block_size
            if base >= self.virtual_size:
                continue
            runs = [(0, sectors)] if bitmap[: sectors // 8] == full else _set_runs(bitmap, sectors)
            for first, end in runs:
                stop = min(end * SECTOR, self.virtual_size - base)
                if first * SECTOR < stop:
                    yield base + first * SECTOR, view[first * SECTOR : stop]
        if self._check_footer:
            self._final_footer()

    def _final_footer(self) -> None:
        if self.length is not None:
            self._in.skip_to(self.length - SECTOR, "the footer")
        tail, at = self._in.drain_tail(SECTOR)
        if len(tail) < SECTOR:
            raise TruncatedError("VHD ends without its footer", file=self.source, offset=self._in.position)
        with location_context(file=self.source):
            footer = VhdFooter.parse(tail, offset=at)
        assert self.footer is not None
        if (footer.disk_type, footer.current_size, footer.unique_id) != (
            self.footer.disk_type,
            self.footer.current_size,
            self.footer.unique_id,
        ):
            raise FormatError(
                "the footer differs from its copy at offset 0", code="vhd-footer", file=self.source, offset=at
            )

    def _fixed_extents(self) -> Iterator[Extent]:
        buf = bytearray(CHUNK_SIZE)
        view = memoryview(buf)
        view[:SECTOR] = self._head
        have = SECTOR
        offset = 0
        while offset < self.virtual_size:
            n = min(CHUNK_SIZE, self.virtual_size - offset)
            if have < n:
                self._in.read_into(view[have:n], "the disk data")
            have = 0
            if not is_zero(view[:n]):
                yield offset, view[:n]
            offset += n
        raw = self._in.read(SECTOR, "the footer")
        with location_context(file=self.source):
            footer = VhdFooter.parse(raw, offset=self.virtual_size)
        if footer.disk_type != DISK_FIXED or footer.current_size != self.virtual_size:
            raise FormatError(
                f"fixed VHD footer says type {footer.disk_type}, {footer.current_size} bytes; "
                f"the data holds {self.virtual_size}",
                code="vhd-footer",
                file=self.source,
                offset=self.virtual_size,
            )
        self.footer = footer
        if self.length is not None and self._in.position != self.length:
            raise FormatError("data after the fixed VHD footer", code="vhd-footer", file=self.source)

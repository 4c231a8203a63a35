"""VMDK sparse extents: streamOptimized and monolithicSparse, read from a stream front to back.

A hosted sparse extent (VMware "Virtual Disk Format 1.1") starts with a 512-byte little-endian
header (magic ``KDMV``), an embedded text descriptor, and grain tables: a grain directory (GD)
points to grain tables (GTs) of `numGTEsPerGT` u32 entries, each the sector of one grain
(`grainSize` sectors, 64 KiB as everyone writes it); 0 is unallocated, 1 a zeroed grain.

streamOptimized (flags: compressed grains + markers) is the OVF disk format: every grain is a
marker ``u64 LBA, u32 compressed size`` followed by a zlib stream, padded to a sector, and
metadata sits behind markers with size 0 (``u64 sectors, u32 0, u32 type``: 0 end of stream,
1 GT, 2 GD, 3 footer). A stream reader needs only the grain markers, so the tables, wherever a
writer put them (at the end behind a footer, as VMware and VirtualBox do; at the front, as qemu
does), are skipped. monolithicSparse has no markers: the GD and GTs at the front say where each
uncompressed grain is, and grains are then read in file order.
"""

from __future__ import annotations

import struct
import sys
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from xvatool._types import Readable
from xvatool.errors import FormatError, UsageError
from xvatool.images.cursor import Cursor
from xvatool.images.extents import Extent
from xvatool.xva.disk import is_zero
from xvatool.xva.ovaxml import MAX_VIRTUAL_SIZE

__all__ = [
    "FLAG_COMPRESSED",
    "FLAG_MARKERS",
    "GD_AT_END",
    "MAGIC",
    "VmdkHeader",
    "VmdkReader",
    "parse_descriptor",
]

SECTOR = 512
MAGIC = b"KDMV"
GD_AT_END = 0xFFFFFFFFFFFFFFFF
FLAG_NEWLINE_TEST = 1 << 0
FLAG_REDUNDANT_GT = 1 << 1
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3
COMPRESS_DEFLATE = 1
MAX_GRAIN_SECTORS = 2048
"""1 MiB grains at most; everyone writes 64 KiB. One grain is held in memory at a time."""
MAX_DESCRIPTOR_SIZE = 1 << 20
"""Bytes; real embedded descriptors are under 10 KiB."""
MAX_GRAIN_ENTRIES = 1 << 25
"""Grain table entries held for a monolithicSparse stream (4 bytes each: 128 MiB, 2 TiB of disk)."""
MAX_UNORDERED_GRAINS = 1 << 20
"""Grains that can be re-sorted into file order when a monolithicSparse file stores them out of order."""
_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
_NEWLINE_CHARS = b"\n \r\n"
_ZERO_SECTOR = bytes(SECTOR)


@dataclass(frozen=True)
class VmdkHeader:
    """The sparse extent header (sector 0, and the footer of a streamOptimized file)."""

    capacity: int
    """Sectors."""
    grain_size: int = 128
    """Sectors per grain."""
    descriptor_offset: int = 1
    descriptor_size: int = 0
    gtes_per_gt: int = 512
    rgd_offset: int = 0
    gd_offset: int = GD_AT_END
    overhead: int = 0
    version: int = 3
    flags: int = FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS
    compress_algorithm: int = COMPRESS_DEFLATE
    unclean_shutdown: int = 0

    @classmethod
    def parse(cls, raw: bytes, *, offset: int | None = None, file: str | None = None) -> VmdkHeader:
        """Parse and check a header; `offset` and `file` say where it was, for the error."""
        fields = _HEADER.unpack_from(raw)
        (
            magic,
            version,
            flags,
            capacity,
            grain,
            desc_offset,
            desc_size,
            gtes,
            rgd,
            gd,
            overhead,
            unclean,
            chars,
            compress,
        ) = fields

        def bad(message: str) -> FormatError:
            return FormatError(message, code="vmdk-header", file=file, offset=offset)

        if magic != MAGIC:
            raise bad("not a VMDK sparse extent (no 'KDMV' magic)")
        if not 1 <= version <= 3:
            raise bad(f"unsupported VMDK sparse version {version}")
        if flags & FLAG_NEWLINE_TEST and chars != _NEWLINE_CHARS:
            raise bad("the newline detection characters are corrupt (a text-mode transfer?)")
        if grain < 1 or grain > MAX_GRAIN_SECTORS or grain & (grain - 1):
            raise bad(f"grain size of {grain} sectors is not supported")
        if capacity * SECTOR > MAX_VIRTUAL_SIZE:
            raise bad(f"capacity of {capacity} sectors is absurd")
        if gtes < 1 or gtes > 1 << 16:
            raise bad(f"{gtes} entries per grain table is not supported")
        if flags & FLAG_COMPRESSED and compress != COMPRESS_DEFLATE:
            raise bad(f"unknown grain compression {compress}")
        if desc_size * SECTOR > MAX_DESCRIPTOR_SIZE:
            raise bad(f"embedded descriptor of {desc_size} sectors is over the limit")
        return cls(
            capacity,
            grain,
            desc_offset,
            desc_size,
            gtes,
            rgd,
            gd,
            overhead,
            version,
            flags,
            compress,
            unclean,
        )

    def pack(self) -> bytes:
        raw = bytearray(SECTOR)
        _HEADER.pack_into(
            raw,
            0,
            MAGIC,
            self.version,
            self.flags,
            self.capacity,
            self.grain_size,
            self.descriptor_offset,
            self.descriptor_size,
            self.gtes_per_gt,
            self.rgd_offset,
            self.gd_offset,
            self.overhead,
            self.unclean_shutdown,
            _NEWLINE_CHARS,
            self.compress_algorithm,
        )
        return bytes(raw)

    @property
    def grain_bytes(self) -> int:
        return self.grain_size * SECTOR

    @property
    def virtual_size(self) -> int:
        return self.capacity * SECTOR


def parse_descriptor(text: str) -> tuple[dict[str, str], list[str]]:
    """``key=value`` entries (quotes removed) and extent lines of a VMDK text descriptor."""
    entries: dict[str, str] = {}
    extents: list[str] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        if line.split(None, 1)[0] in ("RW", "RDONLY", "NOACCESS"):
            extents.append(line)
            continue
        key, eq, value = line.partition("=")
        if eq:
            entries[key.strip()] = value.strip().strip('"')
    return entries, extents


class VmdkReader:
    """Reads a streamOptimized or monolithicSparse VMDK from a stream, front to back.

    The constructor reads the header and descriptor (and, for monolithicSparse, the grain
    tables), so `virtual_size`, `create_type` and `ordered` are known before `extents()`.
    streamOptimized grains must come in ascending LBA order, as every exporter writes them;
    a grain out of order or repeated raises `FormatError`. Each compressed grain is checked by
    zlib's own checksum and must inflate to exactly one grain (the last may stop at the disk end).

    Example::

        reader = VmdkReader(open("disk.vmdk", "rb"), source="disk.vmdk")
        print(reader.create_type, reader.virtual_size)
        for offset, data in reader.extents():
            ...
    """

    def __init__(self, stream: Readable, *, length: int | None = None, source: str | None = None) -> None:
        self.source = source
        self.length = length
        self._in = Cursor(stream, "VMDK", source)
        self._used = False
        head = self._in.read(SECTOR, "the header")
        if head.startswith(b"# Disk DescriptorFile"):
            raise FormatError(
                "a VMDK descriptor file that refers to separate extent files; only single-file "
                "(monolithicSparse or streamOptimized) VMDKs can be read",
                code="vmdk-descriptor",
                file=source,
                offset=0,
            )
        self.header = VmdkHeader.parse(head, offset=0, file=source)
        self.virtual_size = self.header.virtual_size
        self.descriptor: dict[str, str] = {}
        if self.header.descriptor_offset and self.header.descriptor_size:
            self._in.skip_to(self.header.descriptor_offset * SECTOR, "the descriptor")
            raw = self._in.read(self.header.descriptor_size * SECTOR, "the descriptor")
            text = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            self.descriptor, _ = parse_descriptor(text)
        self.create_type = self.descriptor.get("createType", "")
        self.streaming = bool(self.header.flags & FLAG_MARKERS and self.header.flags & FLAG_COMPRESSED)
        if self.descriptor.get("parentCID", "ffffffff").lower() != "ffffffff":
            raise FormatError(
                "a VMDK with a parent (a delta link) cannot be read on its own",
                code="vmdk-parent",
                file=source,
                offset=0,
            )
        self.ordered = True
        self._grains: array[int] | list[int] | None = None  # monolithicSparse: grain -> sector
        self._order: list[int] | None = None  # monolithicSparse stored out of order: packed keys
        if not self.streaming:
            self._read_tables()

    def _error(self, message: str, offset: int | None, code: str = "vmdk-grain") -> FormatError:
        return FormatError(message, code=code, file=self.source, offset=offset)

    # -- monolithicSparse ----------------------------------------------------------------------

    def _read_tables(self) -> None:
        header = self.header
        if header.gd_offset == GD_AT_END or not header.gd_offset:
            raise self._error("no grain directory and no grain markers", 0, "vmdk-header")
        grains = -(-header.capacity // header.grain_size)
        if grains > MAX_GRAIN_ENTRIES:
            raise self._error(
                f"{grains} grains are over the limit for a sparse VMDK stream", 0, "vmdk-header"
            )
        gt_count = -(-grains // header.gtes_per_gt)
        gt_bytes = header.gtes_per_gt * 4
        self._in.skip_to(header.gd_offset * SECTOR, "the grain directory")
        directory = struct.unpack(f"<{gt_count}I", self._in.read(gt_count * 4, "the grain directory"))
        table = array("I", bytes(4 * gt_count * header.gtes_per_gt))
        for gt_sector, gt_index in sorted((s, i) for i, s in enumerate(directory) if s):
            self._in.skip_to(gt_sector * SECTOR, f"grain table {gt_index}")
            entries = array("I", self._in.read(gt_bytes, f"grain table {gt_index}"))
            if entries.itemsize != 4:  # pragma: no cover - every supported platform has 4-byte I
                raise UsageError("unsupported platform")
            if sys.byteorder == "big":  # pragma: no cover - grain tables are little-endian
                entries.byteswap()
            start = gt_index * header.gtes_per_gt
            table[start : start + header.gtes_per_gt] = entries
        del table[grains:]
        metadata_end = self._in.position
        last = -1
        ordered = True
        for grain, sector in enumerate(table):
            if sector > 1:
                if sector * SECTOR < metadata_end:
                    raise self._error(
                        f"grain {grain} at sector {sector} overlaps the metadata", sector * SECTOR
                    )
                if sector <= last:
                    ordered = False
                last = sector
        self._grains = table
        if not ordered:
            allocated = [(sector << 32) | grain for grain, sector in enumerate(table) if sector > 1]
            if len(allocated) > MAX_UNORDERED_GRAINS:
                raise self._error(
                    "grains are stored far out of disk order; read this VMDK as a file with qemu-img first",
                    0,
                    "vmdk-layout",
                )
            allocated.sort()
            self._order = allocated
            self.ordered = False

    def _sparse_order(self) -> Iterator[tuple[int, int]]:
        """(grain index, sector) of every stored grain in file order."""
        if self._order is not None:
            for key in self._order:
                yield key & 0xFFFFFFFF, key >> 32
            return
        assert self._grains is not None
        for grain, sector in enumerate(self._grains):
            if sector > 1:
                yield grain, sector

    def _sparse_extents(self) -> Iterator[Extent]:
        header = self.header
        grain_bytes = header.grain_bytes
        compressed = bool(header.flags & FLAG_COMPRESSED)
        buf = bytearray(grain_bytes)
        view = memoryview(buf)
        previous_end = 0
        for grain, sector in self._sparse_order():
            at = sector * SECTOR
            if at < previous_end:
                raise self._error(f"grain {grain} overlaps the grain before it", at)
            self._in.skip_to(at, f"grain {grain}")
            offset = grain * grain_bytes
            length = min(grain_bytes, self.virtual_size - offset)
            if compressed:
                size = struct.unpack("<I", self._in.read(4, f"grain {grain}"))[0]
                data = self._inflate(self._in.read(size, f"grain {grain}"), length, at)
                previous_end = self._in.position
                if not is_zero(data):
                    yield offset, data
                continue
            self._in.read_into(view, f"grain {grain}")
            previous_end = self._in.position
            if not is_zero(view[:length]):
                yield offset, view[:length]

    # -- streamOptimized -----------------------------------------------------------------------

    def _inflate(self, data: bytes | memoryview, length: int, at: int) -> memoryview:
        grain_bytes = self.header.grain_bytes
        try:
            inflater = zlib.decompressobj()
            out = inflater.decompress(data, grain_bytes)
            if (
                not inflater.eof
                and inflater.unconsumed_tail
                and inflater.decompress(inflater.unconsumed_tail, 1)
            ):
                raise self._error("compressed grain inflates to more than one grain", at)
        except zlib.error as exc:
            raise self._error(f"corrupt compressed grain: {exc}", at) from exc
        if not inflater.eof or not is_zero(inflater.unused_data):
            raise self._error("compressed grain is cut short or followed by garbage", at)
        if len(out) < length:
            raise self._error(f"grain inflates to {len(out)} bytes, not {length}", at)
        return memoryview(out)[:length]

    def _stream_extents(self) -> Iterator[Extent]:
        header = self.header
        grain_bytes = header.grain_bytes
        max_compressed = grain_bytes + grain_bytes // 64 + 1024  # deflate's worst case and then some
        buf = bytearray(-(-(12 + max_compressed) // SECTOR) * SECTOR)
        view = memoryview(buf)
        self._in.skip_to(
            max(header.overhead, header.descriptor_offset + header.descriptor_size) * SECTOR,
            "the first grain",
        )
        gt_sectors = -(-header.gtes_per_gt * 4 // SECTOR)
        gd_sectors = -(-(-(-header.capacity // header.grain_size) // header.gtes_per_gt) * 4 // SECTOR)
        max_metadata = max(gt_sectors, gd_sectors, 1)  # the largest metadata block a marker announces
        next_lba = 0
        while True:
            at = self._in.position
            self._in.read_into(view[:SECTOR], "a marker (the end-of-stream marker is missing)")
            lba, size = struct.unpack_from("<QI", buf)
            if size == 0:
                kind = struct.unpack_from("<I", buf, 12)[0]
                if kind == MARKER_EOS:
                    if lba:
                        raise self._error("end-of-stream marker with a sector count", at, "vmdk-marker")
                    return
                if kind not in (MARKER_GT, MARKER_GD, MARKER_FOOTER) or lba > max_metadata:
                    raise self._error(f"unknown marker type {kind} ({lba} sectors)", at, "vmdk-marker")
                if kind == MARKER_FOOTER:
                    if lba < 1:
                        raise self._error("footer marker without its footer sector", at, "vmdk-marker")
                    footer = VmdkHeader.parse(
                        self._in.read(SECTOR, "the footer"), offset=at + SECTOR, file=self.source
                    )
                    if (footer.capacity, footer.grain_size) != (header.capacity, header.grain_size):
                        raise self._error("the footer disagrees with the header", at, "vmdk-header")
                    lba -= 1
                self._in.skip_to(self._in.position + lba * SECTOR, "the end of a metadata block")
                continue
            if size > max_compressed:
                raise self._error(f"compressed grain of {size} bytes is over the limit", at)
            if lba % header.grain_size or lba >= header.capacity:
                raise self._error(f"grain at LBA {lba} is not grain-aligned inside the disk", at)
            if lba < next_lba:
                raise self._error(
                    f"grain at LBA {lba} comes after LBA {next_lba - header.grain_size}: grains out of "
                    "order or repeated are not a stream this reader accepts",
                    at,
                )
            next_lba = lba + header.grain_size
            total = -(-(12 + size) // SECTOR) * SECTOR
            if total > SECTOR:
                self._in.read_into(view[SECTOR:total], f"the grain at LBA {lba}")
            offset = lba * SECTOR
            data = self._inflate(view[12 : 12 + size], min(grain_bytes, self.virtual_size - offset), at)
            if not is_zero(data):
                yield offset, data

    def extents(self) -> Iterator[Extent]:
        """The disk's non-zero grains, in file order."""
        if self._used:
            raise UsageError("a VmdkReader can be read only once")
        self._used = True
        return self._stream_extents() if self.streaming else self._sparse_extents()

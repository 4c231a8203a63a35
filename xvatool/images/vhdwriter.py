"""Writing dynamic and differencing VHDs, in the layout the host's vhd-tool writes (see `vhd`).

The BAT comes first, so the blocks present are declared up front; the output's length is then
known before the first byte, which lets an OVA or an HTTP upload announce it.
"""

from __future__ import annotations

import struct
import time
import uuid as uuid_module
from collections.abc import Iterable, Iterator

from xvatool.errors import UsageError
from xvatool.images.extents import Extent
from xvatool.images.vhd import (
    BAT_OFFSET,
    BLOCK_SIZE,
    DISK_DIFFERENCING,
    DISK_DYNAMIC,
    HEADER_OFFSET,
    LOCATOR_OFFSET,
    MAX_VHD_SIZE,
    SECTOR,
    VHD_EPOCH,
    ParentLocator,
    VhdFooter,
    VhdHeader,
    VhdParent,
    bitmap_bytes,
)
from xvatool.xva.disk import is_zero

__all__ = ["VhdWriter"]


class VhdWriter:
    """Writes a dynamic (or, with `parent`, differencing) VHD as a stream of pieces.

    The blocks present must be known before any data, because the BAT comes first: pass their
    indexes (`RawFileImage.allocated_blocks(BLOCK_SIZE)` for a sparse file; the changed blocks
    for a delta). `length` is then the exact size of the output, known before writing it.
    Extents must be ordered and lie in declared blocks. A dynamic block gets a full bitmap and
    its missing bytes are zeros, as vhd-tool writes; a differencing block marks only the sectors
    the extents cover (they must be 512-byte aligned), so the rest still reads from the parent.

    Example::

        image = RawFileImage("disk.img")
        writer = VhdWriter(image.virtual_size, image.allocated_blocks(BLOCK_SIZE))
        for piece in writer.pieces(image.extents()):
            out.write(piece)
    """

    def __init__(
        self,
        virtual_size: int,
        blocks: Iterable[int],
        *,
        parent: VhdParent | None = None,
        unique_id: bytes | None = None,
        timestamp: int | None = None,
    ) -> None:
        if virtual_size <= 0 or virtual_size % SECTOR or virtual_size > MAX_VHD_SIZE:
            raise UsageError(
                f"a VHD holds a positive multiple of 512 bytes up to 2040 GiB, not {virtual_size}"
            )
        self.virtual_size = virtual_size
        entries = -(-virtual_size // BLOCK_SIZE)
        self.blocks = sorted(set(blocks))
        if self.blocks and not 0 <= self.blocks[0] <= self.blocks[-1] < entries:
            raise UsageError(f"block index out of range 0..{entries - 1}")
        self.parent = parent
        stamp = int(time.time()) - VHD_EPOCH if timestamp is None else timestamp
        disk_type = DISK_DIFFERENCING if parent is not None else DISK_DYNAMIC
        self.footer = VhdFooter(
            disk_type, virtual_size, unique_id or uuid_module.uuid4().bytes, stamp, HEADER_OFFSET
        )
        bat_bytes = -(-entries * 4 // SECTOR) * SECTOR
        self._bat = bytearray(b"\xff" * bat_bytes)
        first = (BAT_OFFSET + bat_bytes) // SECTOR
        step = (bitmap_bytes(BLOCK_SIZE) + BLOCK_SIZE) // SECTOR
        for n, index in enumerate(self.blocks):
            struct.pack_into(">I", self._bat, 4 * index, first + n * step)
        self._locator = bytes(SECTOR)
        locators: tuple[ParentLocator, ...] = ()
        if parent is not None:
            text = (parent.locator or f"file://./{parent.name}").encode("utf-8")
            if len(text) > SECTOR:
                raise UsageError("parent locator longer than 512 bytes")
            self._locator = text + bytes(SECTOR - len(text))
            locators = (ParentLocator(b"MacX", 1, len(text), LOCATOR_OFFSET),)
        self.header = VhdHeader(
            BAT_OFFSET,
            entries,
            BLOCK_SIZE,
            parent.uuid if parent else bytes(16),
            parent.timestamp if parent else 0,
            parent.name if parent else "",
            locators,
        )
        self.length = BAT_OFFSET + bat_bytes + len(self.blocks) * step * SECTOR + SECTOR

    def pieces(self, extents: Iterable[Extent]) -> Iterator[bytes | memoryview]:
        """The whole VHD; memoryview pieces are valid until the next piece is requested."""
        footer = self.footer.pack()
        yield footer
        yield self.header.pack()
        yield self._locator
        yield bytes(self._bat)
        full_bitmap = b"\xff" * bitmap_bytes(BLOCK_SIZE)
        zero_block = bytes(BLOCK_SIZE)
        buf = bytearray(BLOCK_SIZE)
        view = memoryview(buf)
        bitmap = bytearray(bitmap_bytes(BLOCK_SIZE))
        pending = iter(self.blocks)
        declared = set(self.blocks)
        current: int | None = None
        diff = self.parent is not None

        def emit_until(index: int | None) -> Iterator[bytes | memoryview]:
            for block in pending:
                if block == index:
                    return
                yield full_bitmap if not diff else bytes(len(full_bitmap))
                yield zero_block
            if index is not None:
                raise UsageError(
                    f"extent in block {index}, which was not declared present or is out of order"
                )

        low = 0
        for offset, data in extents:
            if offset < low or offset + len(data) > self.virtual_size:
                raise UsageError(f"extent at {offset} is out of order or past the end of the disk")
            if diff and (offset % SECTOR or len(data) % SECTOR):
                raise UsageError("differencing VHD extents must be whole 512-byte sectors")
            low = offset + len(data)
            pos = 0
            while pos < len(data):
                index, start = divmod(offset + pos, BLOCK_SIZE)
                n = min(BLOCK_SIZE - start, len(data) - pos)
                if index != current and index not in declared and not diff and is_zero(data[pos : pos + n]):
                    pos += n  # zeros in an absent block of a dynamic disk read as zeros anyway
                    continue
                if index != current:
                    if current is not None:
                        yield full_bitmap if not diff else bytes(bitmap)
                        yield view
                    yield from emit_until(index)
                    current = index
                    view[:] = zero_block
                    bitmap[:] = bytes(len(bitmap))
                view[start : start + n] = data[pos : pos + n]
                if diff:
                    _set_bits(bitmap, start // SECTOR, (start + n) // SECTOR)
                pos += n
        if current is not None:
            yield full_bitmap if not diff else bytes(bitmap)
            yield view
        yield from emit_until(None)
        yield footer


def _set_bits(bitmap: bytearray, first: int, end: int) -> None:
    """Set bits `first` .. `end - 1`, most significant bit first."""
    while first < end and first % 8:
        bitmap[first // 8] |= 0x80 >> (first % 8)
        first += 1
    whole = (end - first) // 8
    if whole:
        bitmap[first // 8 : first // 8 + whole] = b"\xff" * whole
        first += whole * 8
    while first < end:
        bitmap[first // 8] |= 0x80 >> (first % 8)
        first += 1

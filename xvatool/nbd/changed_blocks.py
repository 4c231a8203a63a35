"""Changed-block bitmaps as `VDI.list_changed_blocks` returns them, and what a backup reads from one.

The host's format (docs/incremental.md §1.4): standard base64, with padding, of
``ceil(ceil(virtual_size / 64 KiB) / 8)`` bytes. Bit *i* covers the 64 KiB block at byte
``i * 65536``; bits are numbered MSB first (block *i* is byte ``i >> 3``, mask ``0x80 >> (i & 7)``),
which SM produces by byte-reversing tapdisk's little-endian words. Bits past the end of the disk
are zero in what hosts send; this module ignores them either way.

A backup turns a bitmap into READs (`ranges`) or into the 1 MiB repository chunks to refresh
(`chunks`); the simulated host builds bitmaps with `mark` as it writes. Example::

    changed = ChangedBlocks.decode(session.xenapi.VDI.list_changed_blocks(base, snap), size)
    for offset, length in changed.ranges(granularity=CHUNK_SIZE):
        ...
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Iterator

from xvatool.errors import CbtBitmapError
from xvatool.nbd.protocol import SECTOR_SIZE, split_range
from xvatool.xva.disk import CHUNK_SIZE

__all__ = [
    "CBT_BLOCK_SIZE",
    "DEFAULT_MAX_RANGE",
    "ChangedBlocks",
    "bitmap_length",
]

CBT_BLOCK_SIZE = 64 << 10
"""Bytes covered by one bit (tapdisk's tracking granularity)."""
DEFAULT_MAX_RANGE = 2 << 20
"""Longest range `ranges` yields by default: the 2 MiB clients read per request (incremental.md §2.3)."""

_RUN = re.compile(rb"\xff+|[^\x00]")
"""A run of full bytes, or one partial byte: zero bytes are skipped at C speed."""


def _bit_runs(value: int) -> tuple[tuple[int, int], ...]:
    """Runs of set bits in one byte as (first, end) bit numbers, bit 0 being the MSB."""
    runs: list[tuple[int, int]] = []
    start = None
    for bit in range(9):
        on = bit < 8 and bool(value & (0x80 >> bit))
        if on and start is None:
            start = bit
        elif not on and start is not None:
            runs.append((start, bit))
            start = None
    return tuple(runs)


_BYTE_RUNS = tuple(_bit_runs(v) for v in range(256))


def bitmap_length(size: int) -> int:
    """Bytes of bitmap the host sends for a disk of `size` bytes."""
    blocks = -(-size // CBT_BLOCK_SIZE)
    return -(-blocks // 8)


class ChangedBlocks:
    """The 64 KiB blocks of a `size`-byte disk that may have changed between two snapshots.

    A set bit means "may have changed": hosts flag rewrites of identical data too. Mutable
    (`mark`, ``|=``), so not hashable.
    """

    __slots__ = ("_bits", "size")

    def __init__(self, size: int, bits: bytes | bytearray | None = None) -> None:
        if size < 0:
            raise ValueError(f"negative disk size {size}")
        expected = bitmap_length(size)
        if bits is not None and len(bits) != expected:
            raise CbtBitmapError(
                f"changed-block bitmap of {len(bits)} bytes for a disk of {size} bytes; "
                f"the host sends {expected} (one bit per 64 KiB)"
            )
        self.size = size
        self._bits = bytearray(expected) if bits is None else bytearray(bits)
        spare = len(self._bits) * 8 - self.block_count
        if spare:
            self._bits[-1] &= (0xFF << spare) & 0xFF

    # -- the host's encoding ----------------------------------------------------------------------

    @classmethod
    def decode(cls, text: str | bytes, size: int) -> ChangedBlocks:
        """Read a `VDI.list_changed_blocks` result for a disk of `size` bytes (the `vdi_to` size).

        A bitmap that is not base64 or whose length does not fit `size` is a `CbtBitmapError`:
        blocks it does not describe could have changed, so it cannot be trusted.
        """
        compact = b"".join(text.encode("ascii", "replace").split() if isinstance(text, str) else text.split())
        try:
            raw = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CbtBitmapError(f"changed-block bitmap is not valid base64: {exc}") from exc
        return cls(size, raw)

    def encode(self) -> str:
        """The base64 text a host returns for this bitmap."""
        return base64.b64encode(self._bits).decode("ascii")

    @property
    def bits(self) -> bytes:
        """The raw bitmap (MSB first)."""
        return bytes(self._bits)

    # -- building -----------------------------------------------------------------------------------

    @classmethod
    def from_blocks(cls, size: int, blocks: Iterable[int]) -> ChangedBlocks:
        """A bitmap with the given block numbers set."""
        changed = cls(size)
        for block in blocks:
            changed._set(block, block + 1)
        return changed

    def mark(self, offset: int, length: int) -> None:
        """Flag every block a write of `length` bytes at `offset` touches, as tapdisk does."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"write of {length} bytes at {offset} is outside a disk of {self.size} bytes")
        if length:
            self._set(offset // CBT_BLOCK_SIZE, (offset + length - 1) // CBT_BLOCK_SIZE + 1)

    def _set(self, first: int, end: int) -> None:
        """Set blocks [first, end): whole bytes by slice, the ragged edges bit by bit."""
        if not 0 <= first < end <= self.block_count:
            raise ValueError(f"blocks {first}..{end} are outside a disk of {self.block_count} blocks")
        while first < end and first & 7:
            self._bits[first >> 3] |= 0x80 >> (first & 7)
            first += 1
        whole = (end - first) >> 3
        self._bits[first >> 3 : (first >> 3) + whole] = b"\xff" * whole
        first += whole << 3
        while first < end:
            self._bits[first >> 3] |= 0x80 >> (first & 7)
            first += 1

    def __or__(self, other: ChangedBlocks) -> ChangedBlocks:
        """Blocks changed in either; a smaller bitmap is zero-extended (the disk grew), as SM does."""
        result = ChangedBlocks(max(self.size, other.size))
        result |= self
        result |= other
        return result

    def __ior__(self, other: ChangedBlocks) -> ChangedBlocks:
        if other.size > self.size:
            raise ValueError(f"cannot fold a {other.size}-byte disk's bitmap into a {self.size}-byte one")
        n = len(other._bits)
        merged = int.from_bytes(self._bits[:n], "big") | int.from_bytes(other._bits, "big")
        self._bits[:n] = merged.to_bytes(n, "big")
        return self

    # -- reading ------------------------------------------------------------------------------------

    @property
    def block_count(self) -> int:
        """64 KiB blocks in the disk (the last one may be partial)."""
        return -(-self.size // CBT_BLOCK_SIZE)

    def count(self) -> int:
        """Blocks flagged."""
        return int.from_bytes(self._bits, "big").bit_count()

    def __contains__(self, block: object) -> bool:
        if not isinstance(block, int) or not 0 <= block < self.block_count:
            return False
        return bool(self._bits[block >> 3] & (0x80 >> (block & 7)))

    def __bool__(self) -> bool:
        return any(self._bits)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChangedBlocks):
            return NotImplemented
        return self.size == other.size and self._bits == other._bits

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ChangedBlocks(size={self.size}, changed={self.count()} of {self.block_count} blocks)"

    def runs(self) -> Iterator[tuple[int, int]]:
        """Maximal runs of flagged blocks as (first, end) block numbers, in order."""
        open_first = open_end = -1
        for match in _RUN.finditer(self._bits):
            base = match.start() * 8
            value = self._bits[match.start()]
            pieces = ((0, (match.end() - match.start()) * 8),) if value == 0xFF else _BYTE_RUNS[value]
            for first, end in pieces:
                if base + first == open_end:
                    open_end = base + end
                    continue
                if open_end >= 0:
                    yield open_first, open_end
                open_first, open_end = base + first, base + end
        if open_end >= 0:
            yield open_first, open_end

    def blocks(self) -> Iterator[int]:
        """Flagged block numbers, in order."""
        for first, end in self.runs():
            yield from range(first, end)

    def ranges(
        self, *, granularity: int = CBT_BLOCK_SIZE, max_length: int = DEFAULT_MAX_RANGE
    ) -> Iterator[tuple[int, int]]:
        """Byte ranges ``(offset, length)`` to read, in order, covering every flagged block.

        Each flagged block is widened to whole units of `granularity` bytes (64 KiB: exactly the
        blocks; 1 MiB: whole repository chunks); touching or overlapping units merge, and the
        result is cut at multiples of `max_length` and clamped to the disk. Offsets and lengths
        are multiples of 512 (an end of disk that is not a whole sector aside: xapi's are).
        """
        if granularity <= 0 or granularity % SECTOR_SIZE:
            raise ValueError(f"granularity must be a positive multiple of {SECTOR_SIZE}")
        if max_length <= 0 or max_length % SECTOR_SIZE:
            raise ValueError(f"max_length must be a positive multiple of {SECTOR_SIZE}")
        start = end = -1
        for first, stop in self.runs():
            lo = first * CBT_BLOCK_SIZE // granularity * granularity
            hi = min(-(-stop * CBT_BLOCK_SIZE // granularity) * granularity, self.size)
            if lo <= end:
                end = max(end, hi)
                continue
            if end >= 0:
                yield from split_range(start, end, max_length)
            start, end = lo, hi
        if end >= 0:
            yield from split_range(start, end, max_length)

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[int]:
        """Indices of the `chunk_size` chunks (default 1 MiB) holding at least one flagged block."""
        for offset, _length in self.ranges(granularity=chunk_size, max_length=chunk_size):
            yield offset // chunk_size

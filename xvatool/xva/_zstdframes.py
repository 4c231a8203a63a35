"""Where a zstd stream's frames end, from their headers alone: detects a cut-short stream.

libzstd's streaming reader ends quietly when its input stops inside a frame (python-zstandard
returns EOF), so a truncated `.xva` would read as a short tar. `FrameTracker` follows the frame
layout of RFC 8878 §3.1 (frame header, block headers, optional checksum; skippable frames) over the
compressed bytes as they are read, skipping block contents, so the cost is a few operations per
block (≤ 128 KiB of output each).
"""

from __future__ import annotations

from xvatool._types import Readable

__all__ = ["FrameTracker", "TrackedSource"]

_ZSTD_FRAME_MAGIC = 0xFD2FB528  # RFC 8878 §3.1.1, little-endian
_SKIPPABLE_MIN, _SKIPPABLE_MAX = 0x184D2A50, 0x184D2A5F  # RFC 8878 §3.1.2
_DICT_ID_BYTES = (0, 1, 2, 4)  # by Dictionary_ID_Flag (RFC 8878 §3.1.1.1.1)
_RLE_BLOCK = 1  # Block_Type 1 stores one byte whatever its Block_Size (RFC 8878 §3.1.1.2)


class FrameTracker:
    """Follows frame boundaries over a zstd byte stream fed in order with `feed`."""

    def __init__(self) -> None:
        self._state = "magic"
        self._need = 4  # header bytes the current state waits for
        self._buf = bytearray()
        self._skip = 0  # content bytes to pass over
        self._checksum = False
        self._lost = False  # not zstd framing: the decompressor reports that itself

    @property
    def at_boundary(self) -> bool:
        """True between frames (or if the layout was not understood): a clean place to end."""
        return self._lost or (self._state == "magic" and not self._buf and not self._skip)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Account for the next compressed bytes."""
        view = memoryview(data).cast("B")
        pos, end = 0, len(view)
        while pos < end and not self._lost:
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                continue
            take = min(self._need - len(self._buf), end - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == self._need:
                header = bytes(self._buf)
                self._buf.clear()
                self._step(header)

    def _expect(self, state: str, need: int) -> None:
        self._state, self._need = state, need

    def _step(self, header: bytes) -> None:
        value = int.from_bytes(header, "little")
        if self._state == "magic":
            if value == _ZSTD_FRAME_MAGIC:
                self._expect("descriptor", 1)
            elif _SKIPPABLE_MIN <= value <= _SKIPPABLE_MAX:
                self._expect("skippable-size", 4)
            else:
                self._lost = True
        elif self._state == "skippable-size":
            self._skip = value
            self._expect("magic", 4)
        elif self._state == "descriptor":  # Frame_Header_Descriptor (RFC 8878 §3.1.1.1.1)
            fcs_flag, single_segment = value >> 6, (value >> 5) & 1
            self._checksum = bool((value >> 2) & 1)
            fcs_bytes = (single_segment, 2, 4, 8)[fcs_flag]
            rest = (1 - single_segment) + _DICT_ID_BYTES[value & 3] + fcs_bytes
            self._expect("header-rest", rest) if rest else self._expect("block", 3)
        elif self._state == "header-rest":
            self._expect("block", 3)
        elif self._state == "block":  # Block_Header: Last_Block, Block_Type, Block_Size
            block_type, size = (value >> 1) & 3, value >> 3
            self._skip = 1 if block_type == _RLE_BLOCK else size
            if not value & 1:
                self._expect("block", 3)
            elif self._checksum:
                self._expect("checksum", 4)
            else:
                self._expect("magic", 4)
        else:  # checksum
            self._expect("magic", 4)


class TrackedSource:
    """A compressed input that feeds a `FrameTracker` with every byte it hands out."""

    def __init__(self, inner: Readable, tracker: FrameTracker) -> None:
        self._inner = inner
        self.tracker = tracker

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.tracker.feed(data)
        return data

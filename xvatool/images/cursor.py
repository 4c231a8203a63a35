"""A forward-only cursor over an image stream: exact reads, skips ahead, the position for errors.

Image readers parse structures at offsets they learn as they go (a BAT, a grain marker); a
`Cursor` reads them strictly in order and turns a short stream into `TruncatedError` and an
offset behind the position (a layout that would need seeking) into `FormatError`, both naming
the file and the offset.
"""

from __future__ import annotations

from xvatool._types import Readable
from xvatool.errors import FormatError, TruncatedError
from xvatool.images.raw import read_fully

__all__ = ["SKIP_BUFFER_SIZE", "Cursor"]

SKIP_BUFFER_SIZE = 1 << 20


class Cursor:
    """`stream` read front to back; `kind` ("VHD", "VMDK") and `source` go into error messages."""

    def __init__(self, stream: Readable, kind: str, source: str | None) -> None:
        self.stream = stream
        self.kind = kind
        self.source = source
        self.position = 0
        self._scratch = bytearray(SKIP_BUFFER_SIZE)

    def read_into(self, view: memoryview, what: str) -> None:
        got = read_fully(self.stream, view)
        if got != len(view):
            raise TruncatedError(
                f"{self.kind} ends inside {what}", file=self.source, offset=self.position + got
            )
        self.position += got

    def read(self, count: int, what: str) -> bytes:
        buf = bytearray(count)
        self.read_into(memoryview(buf), what)
        return bytes(buf)

    def skip_to(self, offset: int, what: str) -> None:
        if offset < self.position:
            raise FormatError(
                f"{what} at {offset} lies behind data already read; this {self.kind} cannot be streamed",
                code=f"{self.kind.lower()}-layout",
                file=self.source,
                offset=offset,
            )
        view = memoryview(self._scratch)
        while self.position < offset:
            self.read_into(view[: min(len(view), offset - self.position)], f"the gap before {what}")

    def drain_tail(self, size: int) -> tuple[bytes, int]:
        """Read to the end; return the last `size` bytes and the offset where they start."""
        tail = b""
        view = memoryview(self._scratch)
        while n := read_fully(self.stream, view):
            tail = (tail + bytes(view[:n]))[-size:]
            self.position += n
            if n < len(view):
                break
        return tail, self.position - len(tail)

"""Byte-stream helpers shared by the format layer and the host client.

`TeeReader` is verify-while-copying (style.md 7): a parser reads through it while the bytes go to
a file and a whole-stream hash, so the copy holds exactly what was verified. Exports tee the
host's body into the output; imports tee the archive into its SHA-256. `LocalStream` wraps a
local file so its read errors become `LocalIOError` naming the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from xvatool._types import Readable, Writable
from xvatool.errors import LocalIOError
from xvatool.xva.checksum import Hasher

__all__ = ["READ_BUFFER_SIZE", "TAIL_SIZE", "LocalStream", "TeeReader", "open_local"]

READ_BUFFER_SIZE = 1 << 20
"""Bytes read at a time when draining or when `read()` is called without a size."""
TAIL_SIZE = 4096
"""Bytes of a download kept by `TeeReader.tail`."""


class TeeReader:
    """A Readable that copies what is read into `sink` and `hasher`: verify-while-copying.

    The parser reads through the tee, so the copy contains exactly the bytes that were verified
    (style.md 7). `progress` gets the byte count of every read.
    """

    def __init__(
        self,
        stream: Readable,
        sink: Writable | None = None,
        *,
        hasher: Hasher | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._stream = stream
        self._readinto = getattr(stream, "readinto", None)
        self._sink = sink
        self._hasher = hasher
        self._progress = progress
        self.count = 0
        self.tail = b""
        """The last `TAIL_SIZE` bytes read, to recognise an inline error page after a failure."""

    def readinto(self, buf: bytearray | memoryview) -> int:
        view = memoryview(buf)
        if self._readinto is not None:
            n = int(self._readinto(view))
        else:
            data = self._stream.read(len(view))
            n = len(data)
            view[:n] = data
        if n:
            got = view[:n]
            if self._sink is not None:
                self._sink.write(got)
            if self._hasher is not None:
                self._hasher.update(got)
            self.count += n
            self.tail = (self.tail + bytes(got[-TAIL_SIZE:]))[-TAIL_SIZE:]
            if self._progress is not None:
                self._progress(n)
        return n

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(size if size >= 0 else READ_BUFFER_SIZE)
        return bytes(buf[: self.readinto(buf)])

    def drain(self) -> None:
        """Read to the end of the stream, so the copy holds everything the host sent."""
        buf = bytearray(READ_BUFFER_SIZE)
        while self.readinto(buf):
            pass


class LocalStream:
    """A local file or stdin whose read errors become `LocalIOError` naming it."""

    def __init__(self, stream: IO[bytes], name: str) -> None:
        self._stream = stream
        self._name = name

    def readinto(self, buf: bytearray | memoryview) -> int:
        try:
            return self._stream.readinto(buf) or 0  # type: ignore[attr-defined]
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=self._name) from exc

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=self._name) from exc


def open_local(path: Path, mode: str) -> Any:
    """`path.open(mode)`, with an OSError turned into `LocalIOError` naming the path."""
    try:
        return path.open(mode)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc

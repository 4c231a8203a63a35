"""Byte-stream helpers shared by the format layer and the host client.

Every stream inside xvatool is a `Readable` (`_types`): data moves with `readinto` into reused
buffers. `as_readable` adapts, once, at the public entry points, an object that only has `read`.
`TeeReader` is verify-while-copying: a parser reads through it while the bytes go to
a file and a whole-stream hash, so the copy holds exactly what was verified. Exports tee the
host's body into the output; imports tee the archive into its SHA-256. `LocalStream` wraps a
local file so its read errors become `LocalIOError` naming the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

from xvatool._types import Hasher, Readable, SupportsRead, Writable
from xvatool.errors import LocalIOError

__all__ = [
    "READ_BUFFER_SIZE",
    "TAIL_SIZE",
    "LocalStream",
    "ReadAdapter",
    "TeeReader",
    "as_readable",
    "open_local",
    "read_via_readinto",
]

READ_BUFFER_SIZE = 1 << 20
"""Bytes read at a time when draining or when `read()` is called without a size."""
TAIL_SIZE = 4096
"""Bytes of a download kept by `TeeReader.tail`."""


def read_via_readinto(stream: Readable, size: int) -> bytes:
    """`read(size)` in terms of `readinto`: up to `size` bytes, or all that is left if negative."""
    if size >= 0:
        buf = bytearray(size)
        return bytes(buf[: stream.readinto(buf)])
    pieces = []
    while piece := read_via_readinto(stream, READ_BUFFER_SIZE):
        pieces.append(piece)
    return b"".join(pieces)


class ReadAdapter:
    """A `Readable` over an object that only has `read(n)` (a generator adapter, a socket file)."""

    def __init__(self, stream: SupportsRead) -> None:
        self._stream = stream

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self._stream.read(len(buffer))
        n = len(data)
        memoryview(buffer)[:n] = data
        return n

    def read(self, size: int = -1) -> bytes:
        return self._stream.read(size)


def as_readable(stream: Readable | SupportsRead) -> Readable:
    """`stream` itself if it has `readinto`, else a `ReadAdapter` around its `read`."""
    if callable(getattr(stream, "readinto", None)):
        return stream  # type: ignore[return-value]
    return ReadAdapter(stream)


class TeeReader:
    """A Readable that copies what is read into `sink` and `hasher`: verify-while-copying.

    The parser reads through the tee, so the copy contains exactly the bytes that were verified.
    `progress` gets the byte count of every read.
    """

    def __init__(
        self,
        stream: Readable | SupportsRead,
        sink: Writable | None = None,
        *,
        hasher: Hasher | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._stream = as_readable(stream)
        self._sink = sink
        self._hasher = hasher
        self._progress = progress
        self.count = 0
        self.tail = b""
        """The last `TAIL_SIZE` bytes read, to recognise an inline error page after a failure."""

    def readinto(self, buf: bytearray | memoryview) -> int:
        view = memoryview(buf)
        n = self._stream.readinto(view)
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
        return read_via_readinto(self, size)

    def drain(self) -> None:
        """Read to the end of the stream, so the copy holds everything the host sent."""
        buf = bytearray(READ_BUFFER_SIZE)
        while self.readinto(buf):
            pass


class LocalStream:
    """A local file or stdin whose read errors become `LocalIOError` naming it."""

    def __init__(self, stream: IO[bytes] | BinaryIO, name: str) -> None:
        self._stream: Any = stream  # a buffered or raw binary file: both have readinto
        self._name = name

    def readinto(self, buf: bytearray | memoryview) -> int:
        try:
            n: int = self._stream.readinto(buf)
            return n
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=self._name) from exc

    def read(self, size: int = -1) -> bytes:
        try:
            data: bytes = self._stream.read(size)
            return data
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=self._name) from exc

    def peek(self, size: int) -> bytes:
        """Up to `size` next bytes without consuming them; fewer, or none, if the file cannot peek.

        A buffered file peeks; a `BytesIO` standing in for stdin does not (callers then wrap).
        """
        peek = getattr(self._stream, "peek", None)
        if peek is None:
            return b""
        try:
            data: bytes = peek(size)[:size]
            return data
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=self._name) from exc


def open_local(path: Path, mode: str) -> Any:
    """`path.open(mode)`, with an OSError turned into `LocalIOError` naming the path."""
    try:
        return path.open(mode)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc

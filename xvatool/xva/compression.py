"""Whole-stream compression: sniffing by content, streaming decompression and compression.

Hosts compress the entire tar stream with gzip or zstd (xva-format.md §4); file names say nothing
(Citrix ships gzip files named `.xva`), so the kind is decided from the first bytes only:
`28 B5 2F FD` is zstd, `1F 8B` is gzip, anything else is read as a plain tar whose first member must
be `ova.xml`.
"""

from __future__ import annotations

import gzip
import os
import zlib
from types import TracebackType
from typing import BinaryIO, Self, cast

import zstandard

from xvatool._types import Compression, Readable, Writable
from xvatool.errors import FormatError, TruncatedError
from xvatool.xva._zstdframes import FrameTracker, TrackedSource

__all__ = [
    "COMPRESSIONS",
    "GZIP_MAGIC",
    "MAX_ZSTD_WINDOW",
    "ZSTD_JOB_SIZE",
    "ZSTD_MAGIC",
    "CompressingWriter",
    "PeekableStream",
    "open_decompressed",
    "sniff",
]

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
COMPRESSIONS: tuple[Compression, ...] = ("none", "gzip", "zstd")
MAX_ZSTD_WINDOW = 1 << 26
"""Largest zstd window we accept, so a hostile frame cannot make us allocate without bound."""
ZSTD_JOB_SIZE = 2 << 20
"""Bytes per zstd worker job. libzstd's default at level 3 kept ~110 MiB in flight with two
workers; 2 MiB jobs keep it near 25 MiB and compress as fast (measured on this machine kind)."""
DEFAULT_LEVELS: dict[Compression, int] = {"gzip": 6, "zstd": 3}
"""The host pipes through `gzip` and `zstd` with no options: levels 6 and 3."""
_SNIFF_SIZE = 512


def sniff(head: bytes) -> Compression:
    """Compression of a stream, from its first bytes (at least 4 for a reliable answer)."""
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    return "none"


class PeekableStream:
    """Wraps a stream so its first bytes can be looked at and then read again."""

    def __init__(self, stream: Readable) -> None:
        self._stream = stream
        self._readinto = getattr(stream, "readinto", None)
        self._head = b""
        self._head_pos = 0

    def peek(self, size: int) -> bytes:
        """Up to `size` first bytes of the stream, without consuming them."""
        while len(self._head) < size:
            data = self._stream.read(size - len(self._head))
            if not data:
                break
            self._head += data
        return self._head[:size]

    def readinto(self, buf: bytearray | memoryview) -> int:
        view = memoryview(buf)
        if self._head_pos < len(self._head):
            n = min(len(view), len(self._head) - self._head_pos)
            view[:n] = self._head[self._head_pos : self._head_pos + n]
            self._head_pos += n
            return n
        if self._readinto is not None:
            return int(self._readinto(view) or 0)
        data = self._stream.read(len(view))
        view[: len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if size < 0:
            chunks = []
            while chunk := self.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        buf = bytearray(size)
        return bytes(buf[: self.readinto(buf)])


class _Decompressed:
    """A decompressing stream that turns codec errors into `FormatError`s."""

    def __init__(self, inner: Readable, compression: Compression, frames: FrameTracker | None = None) -> None:
        self._inner = inner
        self._readinto = getattr(inner, "readinto", None)
        self._compression = compression
        self._frames = frames

    def readinto(self, buf: bytearray | memoryview) -> int:
        try:
            if self._readinto is not None:
                n = int(self._readinto(buf) or 0)
            else:
                data = self._inner.read(len(buf))
                memoryview(buf)[: len(data)] = data
                n = len(data)
            if n == 0 and len(buf) and self._frames is not None and not self._frames.at_boundary:
                raise EOFError("the input ends inside a zstd frame")
            return n
        except EOFError as exc:
            raise TruncatedError(f"{self._compression} stream ends early: {exc}", code="truncated") from exc
        except (gzip.BadGzipFile, zlib.error, zstandard.ZstdError) as exc:
            raise FormatError(f"corrupt {self._compression} data: {exc}", code="compression") from exc

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(size if size >= 0 else 1 << 20)
        return bytes(buf[: self.readinto(buf)])


def open_decompressed(stream: Readable) -> tuple[Compression, Readable]:
    """Sniff `stream` and return its compression with a stream of the decompressed tar.

    Example::

        kind, tar_stream = open_decompressed(open("vm.xva", "rb"))
    """
    peek = getattr(stream, "peek", None)
    head = peek(_SNIFF_SIZE) if peek is not None else b""
    if len(head) >= len(ZSTD_MAGIC) and sniff(head) == "none":
        # A buffered file or stdin looked ahead without consuming: read it directly, one Python
        # layer less on the hot path.
        return "none", stream
    peekable = PeekableStream(stream)
    kind = sniff(peekable.peek(_SNIFF_SIZE))
    if kind == "none":
        return kind, peekable
    inner: Readable
    if kind == "zstd":
        # libzstd's reader ends quietly on a cut frame: the tracker tells a truncation apart.
        frames = FrameTracker()
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_ZSTD_WINDOW)
        inner = dctx.stream_reader(
            cast(BinaryIO, TrackedSource(peekable, frames)),
            read_size=1 << 20,
            read_across_frames=True,
            closefd=False,
        )
        return kind, _Decompressed(inner, kind, frames)
    # GzipFile reads multi-member streams from non-seekable input without seeking.
    inner = gzip.GzipFile(fileobj=cast(BinaryIO, peekable), mode="rb")
    return kind, _Decompressed(inner, kind)


class CompressingWriter:
    """A writable that compresses into `sink` (left open) with the host's defaults.

    zstd uses every core (libzstd worker threads); gzip is single-threaded, as on the host.

    Example::

        with open("vm.xva", "wb") as f, CompressingWriter(f, "zstd") as out:
            for piece in writer:
                out.write(piece)
    """

    def __init__(self, sink: Writable, compression: Compression, *, level: int | None = None) -> None:
        self.compression = compression
        self._sink = sink
        self._writer: Writable
        self._closer: gzip.GzipFile | zstandard.ZstdCompressionWriter | None
        if compression == "zstd":
            params = zstandard.ZstdCompressionParameters.from_level(
                level if level is not None else DEFAULT_LEVELS["zstd"],
                threads=-1 if (os.cpu_count() or 1) > 1 else 0,
                job_size=ZSTD_JOB_SIZE,
                write_checksum=True,  # as the zstd CLI does: corruption is caught at frame end
            )
            cctx = zstandard.ZstdCompressor(compression_params=params)
            zw = cctx.stream_writer(cast(BinaryIO, sink), closefd=False)
            self._writer = self._closer = zw
        elif compression == "gzip":
            gz = gzip.GzipFile(
                fileobj=cast(BinaryIO, sink),
                mode="wb",
                compresslevel=level if level is not None else DEFAULT_LEVELS["gzip"],
                mtime=0,
            )
            self._writer = self._closer = gz
        elif compression == "none":
            self._writer = sink
            self._closer = None
        else:
            raise ValueError(f"unknown compression {compression!r}")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._writer.write(data)
        return len(data)

    def close(self) -> None:
        """Flush the compressor's end of stream into the sink; the sink stays open."""
        if self._closer is not None:
            self._closer.close()
            self._closer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

"""Whole-stream compression: sniffing by content, streaming decompression and compression.

Hosts compress the entire tar stream with gzip or zstd (docs/xva-format.md §2); file names say nothing
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

from xvatool._streams import as_readable, read_via_readinto
from xvatool._types import Compression, Readable, SupportsRead, Writable
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
    "is_stream_error",
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
        if self._head_pos < len(self._head):
            view = memoryview(buf)
            n = min(len(view), len(self._head) - self._head_pos)
            view[:n] = self._head[self._head_pos : self._head_pos + n]
            self._head_pos += n
            return n
        return self._stream.readinto(buf)

    def read(self, size: int = -1) -> bytes:
        return read_via_readinto(self, size)


_CODEC_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError)


def is_stream_error(exc: FormatError) -> bool:
    """True if `exc` comes from the decompressor, not from the tar inside the compressed stream.

    That is: the compressed data is corrupt, cut short or fails its own checksum.
    """
    return isinstance(exc.__cause__, _CODEC_ERRORS)


def _is_checksum_failure(exc: Exception) -> bool:
    """True if a gzip CRC32/ISIZE trailer or a zstd content checksum disagrees with the data."""
    text = str(exc)
    return text.startswith(("CRC check failed", "Incorrect length")) or "checksum" in text


class _Decompressed:
    """A decompressing stream that turns codec errors into `FormatError`s.

    A trailer that disagrees with the data (gzip CRC32 or ISIZE, zstd content checksum) is
    ``compression-checksum``: ova.xml has no checksum of its own, so this is what catches a
    flipped bit in it. The trailer is only checked when the stream is read to its end.
    """

    def __init__(self, inner: Readable, compression: Compression, frames: FrameTracker | None = None) -> None:
        self._inner = inner
        self._compression = compression
        self._frames = frames

    def readinto(self, buf: bytearray | memoryview) -> int:
        try:
            n = self._inner.readinto(buf)
            if n == 0 and len(buf) and self._frames is not None and not self._frames.at_boundary:
                raise EOFError("the input ends inside a zstd frame")
            return n
        except EOFError as exc:
            raise TruncatedError(f"{self._compression} stream ends early: {exc}", code="truncated") from exc
        except _CODEC_ERRORS[1:] as exc:
            if _is_checksum_failure(exc):
                raise FormatError(
                    f"{self._compression} checksum does not match the data: {exc}",
                    code="compression-checksum",
                ) from exc
            raise FormatError(f"corrupt {self._compression} data: {exc}", code="compression") from exc

    def read(self, size: int = -1) -> bytes:
        return read_via_readinto(self, size)


def open_decompressed(stream: Readable | SupportsRead) -> tuple[Compression, Readable]:
    """Sniff `stream` and return its compression with a stream of the decompressed tar.

    Example::

        kind, tar_stream = open_decompressed(open("vm.xva", "rb"))
    """
    stream = as_readable(stream)
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

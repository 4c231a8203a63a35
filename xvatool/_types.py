"""Type aliases shared across layers."""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ["ChecksumKind", "Compression", "Readable", "Writable"]

ChecksumKind = Literal["sha1", "xxhash"]
"""`.checksum` members hold lower-case SHA-1, `.xxhash` members upper-case XXH64 (seed 0)."""

Compression = Literal["none", "gzip", "zstd"]
"""Compression of the whole XVA stream; there is no per-member compression."""


class Readable(Protocol):
    """Anything with `read(n)`: a file, a pipe, a decompressor, an HTTP body adapter."""

    def read(self, size: int = -1, /) -> bytes: ...


class Writable(Protocol):
    """Anything with `write(b)`: a file, a compressor, a pipe."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...

"""Type aliases and protocols shared across layers."""

from __future__ import annotations

from typing import Literal, Protocol

__all__ = ["ChecksumKind", "Compression", "Hasher", "Readable", "SupportsRead", "Writable"]

ChecksumKind = Literal["sha1", "xxhash"]
"""`.checksum` members hold lower-case SHA-1, `.xxhash` members upper-case XXH64 (seed 0)."""

Compression = Literal["none", "gzip", "zstd"]
"""Compression of the whole XVA stream; there is no per-member compression."""


class SupportsRead(Protocol):
    """Anything with `read(n)`; `xvatool._streams.as_readable` turns it into a `Readable`."""

    def read(self, size: int = -1, /) -> bytes: ...


class Readable(Protocol):
    """A byte stream read into caller-owned buffers: a file, a pipe, a decompressor, an HTTP body.

    `readinto` is the one way data moves: 1 MiB chunks land in reused buffers with no
    copy per read. It returns 0 only at the end of the stream. Public entry points accept a
    `SupportsRead` too and adapt it once with `xvatool._streams.as_readable`.
    """

    def readinto(self, buffer: bytearray | memoryview, /) -> int: ...

    def read(self, size: int = -1, /) -> bytes: ...


class Writable(Protocol):
    """Anything with `write(b)`: a file, a compressor, a pipe."""

    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...


class Hasher(Protocol):
    """The part of hashlib's / xxhash's interface we use."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def hexdigest(self) -> str: ...

"""Writing the OVA tar: ustar members, each written once, front to back.

A tar header holds the member's size, but a compressed VMDK's size is known only once it has been
written. When the output is seekable (a local file, the usual case) the member's header is written
with size 0, the data streamed behind it, and then only those 512 header bytes are rewritten with
the real size: no temporary space, one pass over the data, as VirtualBox writes its OVAs. When the
output cannot seek (a pipe), each member is spooled to a temporary file first (its compressed
size in temporary space, for standard output only). Sizes from 8 GiB up go into the ustar
size field in base-256, which GNU tar, bsdtar, Python, VirtualBox and ovftool all read.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO

from xvatool.errors import LocalIOError, UsageError
from xvatool.ovf.manifest import MultiHasher

__all__ = ["END_OF_ARCHIVE", "MemberWriter", "OvaTarWriter", "ustar_header"]

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
Piece = bytes | bytearray | memoryview


def _number(value: int, width: int) -> bytes:
    if value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    out = bytearray(width)
    out[0] = 0x80
    for i in range(width - 1, 0, -1):
        out[i] = value & 0xFF
        value >>= 8
    if value:
        raise UsageError("tar member too large")
    return bytes(out)


def ustar_header(name: str, size: int, *, mtime: int = 0, mode: int = 0o644) -> bytes:
    """A POSIX ustar header for a regular file (base-256 size from 8 GiB up)."""
    encoded = name.encode("utf-8")
    if not encoded or len(encoded) > 100:
        raise UsageError(f"member name {name!r} does not fit a ustar header")
    header = bytearray(BLOCK)
    header[0 : len(encoded)] = encoded
    header[100:108] = _number(mode, 8)
    header[108:116] = _number(0, 8)
    header[116:124] = _number(0, 8)
    header[124:136] = _number(size, 12)
    header[136:148] = _number(mtime, 12)
    header[148:156] = b" " * 8
    header[156:157] = b"0"
    header[257:263] = b"ustar\0"
    header[263:265] = b"00"
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


class MemberWriter:
    """Tracks one member being written: its size and digests (the manifest's)."""

    def __init__(self, name: str, algorithms: Iterable[str]) -> None:
        self.name = name
        self.size = 0
        self.hasher = MultiHasher(algorithms)  # type: ignore[arg-type]

    def add(self, piece: Piece) -> None:
        self.size += len(piece) if not isinstance(piece, memoryview) else piece.nbytes
        self.hasher.update(piece)


class OvaTarWriter:
    """Writes ustar members into `out` in order; `finish()` writes the end-of-archive marker.

    `add_bytes` for small members (descriptor, manifest), `add_pieces` for a stream of unknown size:
    header patched in place on a seekable `out`, else spooled in `spool_dir`. Each returns the
    member's `MemberWriter` (name, size, digests).
    """

    def __init__(
        self,
        out: IO[bytes],
        *,
        algorithms: Iterable[str] = ("sha256",),
        mtime: int = 0,
        spool_dir: str | os.PathLike[str] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.out = out
        self.algorithms = tuple(algorithms)
        self.mtime = mtime
        self.spool_dir = spool_dir
        self._progress = progress
        try:
            self.seekable = out.seekable()
        except (AttributeError, OSError):
            self.seekable = False
        self.bytes_written = 0

    def _write(self, data: Piece) -> None:
        try:
            self.out.write(data)
        except OSError as exc:
            raise LocalIOError(
                f"cannot write: {exc.strerror or exc}", path=getattr(self.out, "name", None)
            ) from exc
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        self.bytes_written += n

    def add_bytes(self, name: str, data: bytes) -> MemberWriter:
        member = MemberWriter(name, self.algorithms)
        member.add(data)
        self._write(ustar_header(name, len(data), mtime=self.mtime))
        self._write(data)
        self._write(bytes(-len(data) % BLOCK))
        return member

    def add_pieces(self, name: str, pieces: Iterable[Piece]) -> MemberWriter:
        if self.seekable:
            return self._add_patched(name, pieces)
        return self._add_spooled(name, pieces)

    def _add_patched(self, name: str, pieces: Iterable[Piece]) -> MemberWriter:
        member = MemberWriter(name, self.algorithms)
        start = self.out.tell()
        self._write(ustar_header(name, 0, mtime=self.mtime))
        for piece in pieces:
            member.add(piece)
            self._write(piece)
            if self._progress is not None:
                self._progress(len(piece))
        self._write(bytes(-member.size % BLOCK))
        end = self.out.tell()
        try:
            self.out.seek(start)
            self.out.write(ustar_header(name, member.size, mtime=self.mtime))
            self.out.seek(end)
        except OSError as exc:
            raise LocalIOError(
                f"cannot write: {exc.strerror or exc}", path=getattr(self.out, "name", None)
            ) from exc
        return member

    def _add_spooled(self, name: str, pieces: Iterable[Piece]) -> MemberWriter:
        member = MemberWriter(name, self.algorithms)
        with tempfile.TemporaryFile(dir=self.spool_dir, prefix=".xvatool-spool.") as spool:
            for piece in pieces:
                member.add(piece)
                spool.write(piece)
                if self._progress is not None:
                    self._progress(len(piece))
            spool.seek(0)
            self._write(ustar_header(name, member.size, mtime=self.mtime))
            for block in _read_blocks(spool):
                self._write(block)
        self._write(bytes(-member.size % BLOCK))
        return member

    def finish(self) -> None:
        self._write(END_OF_ARCHIVE)


def _read_blocks(f: IO[bytes]) -> Iterator[bytes]:
    while block := f.read(1 << 20):
        yield block

"""One pass over an archive that finds each disk's non-zero extents and digests them by segment.

A parallel import (docs/host-protocol.md §4.12, §5) sends every disk as `PUT /import_raw_vdi` requests
of one segment each, carrying only the non-zero extents. `index_archive` reads the archive once
through `XvaReader.chunks()`, so every chunk is verified on the way, and records for every
non-zero chunk where its bytes can be read again: in the archive itself for a plain tar (the data
of a member starts one V7 header after its header offset), or in a spool of the extents for a
compressed archive, which cannot be read at an offset. Each segment gets an XXH64 digest over
its extents' offsets and data; `segment_extents` reads a segment back and re-hashes it, so data
that changed since the pass is refused before the host sees the segment complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from xvatool._streams import LocalStream, TeeReader, open_local
from xvatool.errors import FormatError, LocalIOError
from xvatool.xva.disk import is_zero
from xvatool.xva.ovaxml import DiskInfo, Metadata
from xvatool.xva.reader import XvaReader
from xvatool.xva.tarstream import BLOCK_SIZE

__all__ = ["SEGMENT_SIZE", "ArchiveIndex", "DiskPlan", "index_archive", "segment_extents"]

SEGMENT_SIZE = 32 << 20
"""Bytes of disk range per `PUT /import_raw_vdi` in parallel mode: the unit of resume
(host-protocol.md §5)."""
_OFFSET = struct.Struct("<Q")


@dataclass
class _Segment:
    start: int  # index of the first extent
    stop: int  # one past the last extent
    hasher: Any = None
    digest: str = ""


@dataclass
class DiskPlan:
    """The non-zero extents of one disk and their segments.

    Extent i holds `lengths[i]` bytes for disk offset `offsets[i]`, found at byte `positions[i]`
    of the index's data file. Arrays keep a 1 TiB disk's index at ~20 MiB.
    """

    disk: DiskInfo
    segment_size: int
    offsets: array[int] = field(default_factory=lambda: array("Q"))
    positions: array[int] = field(default_factory=lambda: array("Q"))
    lengths: array[int] = field(default_factory=lambda: array("Q"))
    segments: dict[int, _Segment] = field(default_factory=dict)

    def add(self, offset: int, position: int, data: memoryview) -> None:
        """Record one non-zero extent (in ascending disk offset order) and hash it into its segment."""
        index = offset // self.segment_size
        seg = self.segments.get(index)
        if seg is None:
            seg = self.segments[index] = _Segment(len(self.offsets), len(self.offsets), xxhash.xxh64())
        seg.stop += 1
        seg.hasher.update(_OFFSET.pack(offset))
        seg.hasher.update(data)
        self.offsets.append(offset)
        self.positions.append(position)
        self.lengths.append(len(data))

    def finish(self) -> None:
        for seg in self.segments.values():
            if seg.hasher is not None:
                seg.digest = seg.hasher.hexdigest().upper()
                seg.hasher = None

    @property
    def data_bytes(self) -> int:
        return sum(self.lengths)


@dataclass
class ArchiveIndex:
    """What one pass over an archive learnt: digest, metadata, and where each disk's data is."""

    path: Path
    sha256: str
    metadata: Metadata
    data_path: Path
    disks: list[DiskPlan]
    spooled: bool
    """True when `data_path` is a spool of the extents (compressed archive), to delete afterwards."""


def index_archive(
    path: Path,
    *,
    segment_size: int = SEGMENT_SIZE,
    spool_path: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> ArchiveIndex:
    """Read the archive once: SHA-256 of the file, every chunk verified, extents indexed.

    For a plain tar, extents point into the archive itself (the data of a member starts one V7
    header after its header offset; the segment digests catch any other layout at send time).
    A compressed archive cannot be read at an offset, so its non-zero extents are copied to
    `spool_path` (default `ARCHIVE.xvatool-extents`) as they stream by.
    """
    hasher = hashlib.sha256()
    spool_path = spool_path or path.with_name(path.name + ".xvatool-extents")
    with open_local(path, "rb") as fh, contextlib.ExitStack() as stack:
        tee = TeeReader(LocalStream(fh, str(path)), hasher=hasher, progress=progress)
        reader = XvaReader(tee, source=str(path))
        spooled = reader.compression != "none"
        spool = stack.enter_context(open_local(spool_path, "wb")) if spooled else None
        plans = {disk.id: DiskPlan(disk, segment_size) for disk in reader.metadata.disks}
        for chunk in reader.chunks():
            if not len(chunk.data) or is_zero(chunk.data):
                continue
            if spool is not None:
                position = spool.tell()
                spool.write(chunk.data)
            else:
                position = chunk.archive_offset + BLOCK_SIZE
            plans[chunk.disk.id].add(chunk.offset, position, chunk.data)
        tee.drain()
    for plan in plans.values():
        plan.finish()
    return ArchiveIndex(
        path=path,
        sha256=hasher.hexdigest(),
        metadata=reader.metadata,
        data_path=spool_path if spooled else path,
        disks=list(plans.values()),
        spooled=spooled,
    )


def segment_extents(
    index: ArchiveIndex, plan: DiskPlan, seg_index: int, fh: Any
) -> Iterator[tuple[int, memoryview]]:
    """The extents of one segment read back from the data file, re-hashed against the index.

    Raises `FormatError` before the last extent if the bytes differ from the first pass (the
    archive changed, or a member had an unexpected header layout), so the chunked stream never
    gets its terminator and the host never sees the segment as complete.
    """
    seg = plan.segments[seg_index]
    hasher = xxhash.xxh64()
    buf = bytearray(max((plan.lengths[i] for i in range(seg.start, seg.stop)), default=0))
    for i in range(seg.start, seg.stop):
        offset, length = plan.offsets[i], plan.lengths[i]
        view = memoryview(buf)[:length]
        try:
            got = os.preadv(fh.fileno(), [view], plan.positions[i])
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=str(index.data_path)) from exc
        if got != length:
            raise FormatError(
                "archive is shorter than at indexing", file=str(index.path), offset=plan.positions[i]
            )
        hasher.update(_OFFSET.pack(offset))
        hasher.update(view)
        if i == seg.stop - 1 and hasher.hexdigest().upper() != seg.digest:
            raise FormatError(
                f"data of disk {plan.disk.id} segment {seg_index} changed since it was verified",
                code="archive-changed",
                file=str(index.path),
            )
        yield offset, view

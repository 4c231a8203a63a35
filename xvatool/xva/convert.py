"""Whole-archive conversions: create an XVA from raw images, repack one XVA into another.

Both write through `xvatool._files.atomic_output`: a fresh temporary name in OUT's folder, renamed
to OUT only once the archive is complete and flushed, so an interrupted run never
leaves something that looks like a finished archive and a link planted there is never followed.

Repack is a stream from IN to OUT: it reads with the verifying reader and re-emits every chunk
member with its own name and counter and the very same bytes, so a repacked archive rebuilds to
exactly the same disks on the host (docs/xva-format.md §5.4), keep-alive chunks and all. Only what was
asked changes: the compression, the checksum kind, the declared host version, the VM name or the
network names.

Example::

    create_archive(Path("vm.xva"), name="web", disks=[Path("root.img")], compression="zstd")
    repack_archive("vm.xva", Path("vm-sha1.xva"), checksum="sha1", host_version=(1, 1))
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvatool._files import atomic_output
from xvatool._streams import as_readable, read_via_readinto
from xvatool._types import ChecksumKind, Compression, Readable, SupportsRead, Writable
from xvatool.errors import LocalIOError, UsageError, location_context
from xvatool.xva.disk import BlockSource, RawFileSource
from xvatool.xva.ovaxml import SECTOR_SIZE, Metadata
from xvatool.xva.reader import XvaReader
from xvatool.xva.template import DiskSpec, build_vm_metadata
from xvatool.xva.writer import (
    ChunkItem,
    Piece,
    ProgressCallback,
    WriteStats,
    archive_pieces,
    write_pieces,
    write_xva,
)

__all__ = [
    "CreateResult",
    "CreatedDisk",
    "RepackResult",
    "create_archive",
    "edit_metadata",
    "repack_archive",
    "repack_pieces",
    "repack_stream",
]


@dataclass(frozen=True)
class CreatedDisk:
    """One raw image as it went into the archive."""

    path: Path
    id: str
    userdevice: str
    file_size: int
    virtual_size: int
    """`file_size` rounded up to a multiple of 512; the difference was written as zeros."""


@dataclass(frozen=True)
class CreateResult:
    """What `create_archive` wrote."""

    path: Path
    vm_uuid: str
    disks: list[CreatedDisk]
    stats: WriteStats
    checksum: ChecksumKind
    compression: Compression
    notes: list[str] = field(default_factory=list)
    """Things the user should know, e.g. an image size padded up to a multiple of 512."""

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "vm_uuid": self.vm_uuid,
            "disks": [{**dataclasses.asdict(d), "path": str(d.path)} for d in self.disks],
            "checksum": self.checksum,
            "compression": self.compression,
            "notes": self.notes,
            "stats": dataclasses.asdict(self.stats),
        }


def create_archive(
    out_path: Path,
    *,
    name: str,
    disks: Sequence[Path],
    vcpus: int = 1,
    memory: int = 1 << 30,
    networks: Sequence[str] = (),
    checksum: ChecksumKind = "xxhash",
    compression: Compression = "none",
    progress: ProgressCallback | None = None,
) -> CreateResult:
    """Build an importable XVA for a halted VM from raw disk images (userdevice 0, 1, … in order).

    An image whose size is not a multiple of 512 bytes is padded up with zeros, because the
    host's importer needs whole sectors (xva-format.md §5.4); `CreateResult.notes` says so. Holes in sparse
    images are never read; all-zero chunks are left out of the archive (xva-format.md §5.2).

    Example::

        result = create_archive(Path("vm.xva"), name="web", disks=[Path("root.img")],
                                memory=2 << 30, networks=["Pool-wide network"])
        print(result.stats.output_bytes)
    """
    if not disks:
        raise UsageError("an archive needs at least one disk")
    if any(out_path.resolve() == path.resolve() for path in disks):
        raise UsageError(f"{out_path} is also a disk image; the archive would replace it")
    sizes: list[int] = []
    notes: list[str] = []
    for path in disks:
        if not path.is_file():
            raise LocalIOError("not a regular file" if path.exists() else "no such file", path=str(path))
        size = path.stat().st_size
        if size == 0:
            raise UsageError(f"{path}: the disk image is empty")
        sizes.append(size)
        if size % SECTOR_SIZE:
            padded = size + (-size % SECTOR_SIZE)
            notes.append(f"{path}: {size} bytes is not a multiple of 512; padded with zeros to {padded}")
    specs = [
        DiskSpec(virtual_size=size + (-size % SECTOR_SIZE), name_label=path.name)
        for path, size in zip(disks, sizes, strict=True)
    ]
    metadata = build_vm_metadata(name=name, disks=specs, vcpus=vcpus, memory=memory, networks=networks)
    by_device = {disk.userdevice: disk for disk in metadata.disks}
    created: list[CreatedDisk] = []
    sources: dict[str, BlockSource] = {}
    for index, (path, size) in enumerate(zip(disks, sizes, strict=True)):
        info = by_device[str(index)]
        created.append(CreatedDisk(path, info.id, str(index), size, info.virtual_size))
        sources[info.id] = RawFileSource(path)
    with atomic_output(out_path) as out:
        stats = write_xva(
            out, metadata, sources, checksum=checksum, compression=compression, progress=progress
        )
    return CreateResult(
        path=out_path,
        vm_uuid=metadata.vm.uuid,
        disks=created,
        stats=stats,
        checksum=checksum,
        compression=compression,
        notes=notes,
    )


# -- repack ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepackResult:
    """What `repack_stream` / `repack_archive` wrote."""

    path: Path | None
    """OUT, or None when writing to a stream."""
    compression: Compression
    checksum_kinds: frozenset[ChecksumKind]
    """Checksum kinds present in the output."""
    changes: list[str]
    """What differs from IN, in words (`compression gzip -> zstd`, `VM name 'a' -> 'b'`, …)."""
    stats: WriteStats

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path) if self.path else None,
            "compression": self.compression,
            "checksum_kinds": sorted(self.checksum_kinds),
            "changes": self.changes,
            "stats": dataclasses.asdict(self.stats),
        }


def edit_metadata(
    metadata: Metadata,
    *,
    host_version: tuple[int, int] | None = None,
    rename: str | None = None,
    network_map: Mapping[str, str] | None = None,
) -> tuple[Metadata, list[str]]:
    """Apply the metadata edits repack and migrate offer; return the new document and what changed."""
    changes: list[str] = []
    if host_version is not None and tuple(host_version) != metadata.xapi_version:
        old = ".".join(map(str, metadata.xapi_version))
        metadata = metadata.with_version(*host_version)
        changes.append(f"xapi version {old} -> {host_version[0]}.{host_version[1]}")
    if rename is not None and rename != metadata.vm.name_label:
        changes.append(f"VM name {metadata.vm.name_label!r} -> {rename!r}")
        metadata = metadata.renamed(rename)
    if network_map:
        metadata = metadata.with_networks_mapped(network_map)
        changes.extend(f"network {old!r} -> {new!r}" for old, new in network_map.items() if old != new)
    return metadata, changes


def repack_pieces(
    reader: XvaReader,
    metadata: Metadata,
    *,
    checksum: ChecksumKind | None = None,
    stats: WriteStats | None = None,
) -> Iterator[Piece]:
    """The uncompressed tar of `reader`'s archive with `metadata` as its ova.xml.

    Every chunk member keeps its name (so its counter) and its bytes; its checksum member is
    `checksum` if given, else the kind it had. Chunks are verified by the reader as they pass.
    This is the iterator form migrate uses to rewrite an export on the fly.
    """
    stats = stats if stats is not None else WriteStats()
    items = _repack_items(reader, checksum, stats)
    # ova.xml keeps its timestamp (xva-format.md §3.2: the export time since v24.13); chunk
    # members get mtime 0.
    mtime = reader.ova_xml_member.mtime if reader.ova_xml_member is not None else 0
    yield from archive_pieces(metadata.to_bytes(), items, ova_mtime=mtime, stats=stats)


def _repack_items(reader: XvaReader, checksum: ChecksumKind | None, stats: WriteStats) -> Iterator[ChunkItem]:
    """One ChunkItem per data member of IN, in order, with its own name and bytes.

    The reader yields every data member, zero-length keep-alives included (xva-format.md §5.2), so the host
    rebuilds OUT exactly as IN: same members, same counters, same `first_len` (xva-format.md §5.4).
    """
    disk_id: str | None = None
    for chunk in reader.chunks():
        if chunk.disk.id != disk_id:
            disk_id = chunk.disk.id
            stats.disks += 1
            stats.disk_bytes += chunk.disk.virtual_size
        yield ChunkItem(chunk.member, chunk.data, checksum or chunk.checksum_kind, len(chunk.data))


def repack_stream(
    in_stream: Readable | SupportsRead,
    out: Writable,
    *,
    compression: Compression | None = None,
    checksum: ChecksumKind | None = None,
    host_version: tuple[int, int] | None = None,
    rename: str | None = None,
    network_map: Mapping[str, str] | None = None,
    source: str | None = None,
    progress: ProgressCallback | None = None,
) -> RepackResult:
    """Read an XVA from `in_stream` and write the repacked one to `out` (left open).

    `compression` and `checksum` default to keeping what IN has (per chunk for checksums).
    `progress`, if given, is called with the number of input bytes consumed as they are read.

    Example::

        with open("in.xva", "rb") as src, open("out.xva", "wb") as dst:
            repack_stream(src, dst, checksum="sha1", host_version=(1, 1))
    """
    with location_context(file=source):
        reader = XvaReader(_Input(in_stream, source, progress), source=source)
        metadata, changes = edit_metadata(
            reader.metadata, host_version=host_version, rename=rename, network_map=network_map
        )
        target: Compression = compression or reader.compression
        if target != reader.compression:
            changes.insert(0, f"compression {reader.compression} -> {target}")
        stats = WriteStats()
        pieces = repack_pieces(reader, metadata, checksum=checksum, stats=stats)
        stats = write_pieces(out, pieces, stats, compression=target)
    before = set(reader.checksum_kinds)
    after = frozenset({checksum} if checksum and before else before)
    if after != before:
        changes.append(f"checksums {', '.join(sorted(before))} -> {', '.join(sorted(after))}")
    return RepackResult(None, target, after, changes, stats)


def repack_archive(
    in_stream_or_path: Readable | SupportsRead | str | Path,
    out_path: str | Path,
    *,
    compression: Compression | None = None,
    checksum: ChecksumKind | None = None,
    host_version: tuple[int, int] | None = None,
    rename: str | None = None,
    network_map: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
) -> RepackResult:
    """Repack IN (a path, "-" for stdin, or a readable) into OUT (a path, or "-" for stdout).

    OUT is written as `OUT.part` and renamed only when complete; on any error it is removed and
    an existing OUT is left alone.

    Example::

        repack_archive("vm.xva", "vm.xva.gz", compression="gzip", rename="vm (copy)")
    """
    options: dict[str, Any] = dict(
        compression=compression,
        checksum=checksum,
        host_version=host_version,
        rename=rename,
        network_map=network_map,
        progress=progress,
    )
    with contextlib.ExitStack() as stack:
        if isinstance(in_stream_or_path, str | Path):
            name = str(in_stream_or_path)
            if name == "-":
                in_stream: Readable | SupportsRead = sys.stdin.buffer
            else:
                try:
                    in_stream = stack.enter_context(open(name, "rb"))
                except OSError as exc:
                    raise LocalIOError(exc.strerror or str(exc), path=name) from exc
        else:
            name, in_stream = getattr(in_stream_or_path, "name", None) or "<stream>", in_stream_or_path
        if str(out_path) == "-":
            if sys.stdout.isatty():
                raise UsageError("refusing to write an archive to a terminal; redirect stdout")
            result = repack_stream(in_stream, sys.stdout.buffer, source=name, **options)
            sys.stdout.buffer.flush()
            return result
        path = Path(out_path)
        with atomic_output(path) as out:
            result = repack_stream(in_stream, out, source=name, **options)
        return dataclasses.replace(result, path=path)
    raise AssertionError("unreachable")


class _Input:
    """The input stream, reporting progress and turning read errors into `LocalIOError`."""

    def __init__(
        self, stream: Readable | SupportsRead, name: str | None, progress: ProgressCallback | None
    ) -> None:
        self._stream = as_readable(stream)
        self._name = name
        self._progress = progress

    def readinto(self, buf: bytearray | memoryview) -> int:
        try:
            n = self._stream.readinto(buf)
        except OSError as exc:
            raise LocalIOError(f"cannot read: {exc.strerror or exc}", path=self._name) from exc
        if self._progress is not None:
            self._progress(n)
        return n

    def read(self, size: int = -1) -> bytes:
        return read_via_readinto(self, size)

"""Whole-archive checks (`verify`) and a quick look at what an archive holds (`inspect`).

`validate_archive` reads an archive once, end to end, and reports *every* problem instead of
stopping at the first: tar structure, ova.xml parsing, the importer rules of
`Metadata.check()` (docs/xva-format.md §4.3–§4.7), chunk naming, order and counters, missing first or
last chunks, truncation and checksum mismatches, each with its member and tar offset. A fatal problem
(truncation, garbage) ends the scan and is recorded; only local I/O errors raise.

`inspect_archive` reads only as far as it must: ova.xml, then the first chunk's checksum member to
learn the checksum kind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xvatool._types import Compression, Readable, SupportsRead
from xvatool.errors import FormatError
from xvatool.xva.opening import open_archive
from xvatool.xva.ovaxml import DiskInfo, NetworkInfo, Value, VmInfo
from xvatool.xva.problems import SEVERITY, Problem
from xvatool.xva.reader import Chunk, XvaReader

__all__ = [
    "ArchiveInfo",
    "DiskReport",
    "ProgressCallback",
    "ProgressTracker",
    "Report",
    "inspect_archive",
    "validate_archive",
]

ProgressCallback = Callable[[int], None]
"""Called with the number of disk bytes just covered; feeds `tqdm.update`."""


@dataclass
class DiskReport:
    """What the scan found for one data-carrying disk."""

    id: str
    uuid: str
    virtual_size: int
    chunks: int = 0
    """Data members read for this disk (zero-length keep-alive chunks included)."""
    data_bytes: int = 0
    """Bytes inside those data members."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uuid": self.uuid,
            "virtual_size": self.virtual_size,
            "chunks": self.chunks,
            "data_bytes": self.data_bytes,
        }


@dataclass
class Report:
    """The outcome of `validate_archive`: `valid` is false iff a problem has error severity."""

    source: str | None
    compression: Compression | None
    checksum: str | None
    """"sha1", "xxhash", "mixed" or None (no checksum member seen)."""
    disks: list[DiskReport] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    omitted: dict[str, int] = field(default_factory=dict)
    """Per code, problems found but not listed (`problems.MAX_PROBLEMS_PER_CODE` are listed)."""

    @property
    def valid(self) -> bool:
        return not self.errors and not any(SEVERITY[code] == "error" for code in self.omitted)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def to_json(self) -> dict[str, Any]:
        """The `verify --json` document."""
        return {
            "source": self.source,
            "valid": self.valid,
            "compression": self.compression,
            "checksum": self.checksum,
            "disks": [d.to_json() for d in self.disks],
            "problems": [
                {
                    "code": p.code,
                    "member": p.member,
                    "offset": p.offset,
                    "message": p.message,
                    "severity": p.severity,
                }
                for p in self.problems
            ],
            "omitted": dict(sorted(self.omitted.items())),
        }


def _checksum_summary(reader: XvaReader) -> str | None:
    kinds = reader.checksum_kinds
    if len(kinds) > 1:
        return "mixed"
    return next(iter(kinds), None)


def _scan(reader: XvaReader, progress: ProgressCallback | None) -> list[DiskReport]:
    disks = {d.id: DiskReport(d.id, d.vdi_uuid, d.virtual_size) for d in reader.disks}
    tracker = ProgressTracker(reader.disks, progress)
    for chunk in reader.chunks():
        entry = disks[chunk.disk.id]
        entry.chunks += 1
        entry.data_bytes += len(chunk.data)
        tracker.advance(chunk)
    return list(disks.values())


class ProgressTracker:
    """Turns chunk positions into `progress(n)` calls counting disk bytes, gaps included."""

    def __init__(self, disks: list[DiskInfo], progress: ProgressCallback | None) -> None:
        self._progress = progress
        self._base: dict[str, int] = {}
        total = 0
        for disk in disks:
            self._base[disk.id] = total
            total += disk.virtual_size
        self._covered = 0

    def advance(self, chunk: Chunk) -> None:
        if self._progress is None:
            return
        done = self._base[chunk.disk.id] + chunk.offset + len(chunk.data)
        if done > self._covered:
            self._progress(done - self._covered)
            self._covered = done


def validate_archive(
    archive: Readable | SupportsRead | str | os.PathLike[str],
    *,
    source: str | None = None,
    progress: ProgressCallback | None = None,
) -> Report:
    """Check an archive completely and report every problem found.

    `archive` is a path (``"-"`` for stdin) or an open binary stream; `source` names a stream in
    messages. Raises only `LocalIOError` (the file cannot be read); everything wrong with the
    archive is in the report.

    Example::

        report = validate_archive("vm.xva")
        if not report.valid:
            for problem in report.problems:
                print(problem)
    """
    problems: list[Problem] = []
    with open_archive(archive, source=source, problems=problems) as reader:
        disks = _scan(reader, progress)
        # Later chunk problems may be found while earlier digests are still computing: sort by
        # place in the archive (stable, so ova.xml rules stay in check() order).
        problems.sort(key=lambda p: -1 if p.offset is None else p.offset)
        summary = _checksum_summary(reader)
        return Report(reader.source, reader.compression, summary, disks, problems, dict(reader.omitted))


@dataclass
class ArchiveInfo:
    """What `inspect` shows: the VM, its disks and networks, the version record and encodings."""

    source: str | None
    compression: Compression
    checksum: str | None
    vm: VmInfo
    disks: list[DiskInfo]
    networks: list[NetworkInfo]
    version: dict[str, Value]

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "compression": self.compression,
            "checksum": self.checksum,
            "vm": vars(self.vm),
            "disks": [vars(d) for d in self.disks],
            "networks": [vars(n) for n in self.networks],
            "version": {k: _plain(v) for k, v in self.version.items()},
        }


def _plain(value: Value) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def inspect_archive(
    archive: Readable | SupportsRead | str | os.PathLike[str], *, source: str | None = None
) -> ArchiveInfo:
    """Describe an archive from its ova.xml and first checksum member, without reading it all.

    Raises `FormatError` (`MetadataError` for a bad ova.xml) when that much cannot be read.

    Example::

        info = inspect_archive("vm.xva")
        print(info.vm.name_label, [d.virtual_size for d in info.disks])
    """
    with open_archive(archive, source=source, verify=False) as reader:
        metadata = reader.metadata
        checksum: str | None = None
        with contextlib.closing(reader.chunks()) as chunks:
            try:
                first = next(chunks, None)
            except FormatError:  # a broken first chunk is for `verify` to report
                first = None
            checksum = first.checksum_kind if first is not None else None
        return ArchiveInfo(
            source=reader.source,
            compression=reader.compression,
            checksum=checksum,
            vm=metadata.vm,
            disks=metadata.disks,
            networks=metadata.networks,
            version=dict(metadata.version),
        )

"""The disk plan of an archive: its ova.xml member read, parsed, checked, and turned into disks.

ova.xml must be the first member (docs/xva-format.md §2.2). It is handed to the parser as it streams by
(never held whole), within the budgets of `ovaxml`; the importer's rules (`Metadata.check`) are
reported like any other problem; the data-carrying disks (xva-format.md §4.7) are the plan
`XvaReader.chunks()` follows, and their VDI uuids must be safe, distinct file names because
`extract` writes ``<vdi uuid>.raw``. What no reader can work around is raised; the rest goes to
the `ProblemLog`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xvatool._types import Compression
from xvatool.errors import FormatError, MetadataError
from xvatool.xva.ovaxml import MAX_OVA_XML_SIZE, DiskInfo, Metadata
from xvatool.xva.problems import ProblemLog, format_error
from xvatool.xva.tarstream import TarMember, TarReader

__all__ = ["OVA_XML_NAME", "OVA_XML_PIECE_SIZE", "Plan", "read_plan"]

OVA_XML_NAME = "ova.xml"
OVA_XML_PIECE_SIZE = 1 << 20
"""Bytes of ova.xml handed to the parser at a time; the document is never held whole."""
_SAFE_UUID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")
"""A VDI uuid usable as a file name (extract writes ``<uuid>.raw``): never a dot, slash or dash first."""
_UNPLANNABLE = frozenset({"bad-id", "virtual-size-range"})
"""ova.xml problems that leave no disk plan: the scan checks members and digests only."""


@dataclass
class Plan:
    """What ova.xml gave: the member, the document (or why not) and the disks to expect.

    `disks` is None when there is no usable plan; a reader in problems mode then checks members
    and digests only.
    """

    member: TarMember
    metadata: Metadata | None
    error: MetadataError | None
    disks: list[DiskInfo] | None


def read_plan(tar: TarReader, log: ProblemLog, compression: Compression) -> Plan:
    """Read ova.xml, the first member of `tar`, and judge it; fatal problems raise `FormatError`."""
    member = _first_member(tar, compression)
    if member.extensions:
        log.problem(
            "ova-xml-extension-header",
            f"{'/'.join(member.extensions)} extension header in front of ova.xml: "
            "hosts before xapi v24.2 cannot import this (xva-format.md §3.3)",
            member=member.name,
            offset=member.header_offset,
        )
    if member.size > MAX_OVA_XML_SIZE:  # fatal: skipping it would be unbounded work
        raise format_error(
            "ova-xml-too-large",
            f"ova.xml is {member.size} bytes, over the {MAX_OVA_XML_SIZE}-byte limit",
            member=OVA_XML_NAME,
            offset=member.header_offset,
        )
    try:
        metadata = Metadata.from_pieces(iter(lambda: tar.read(OVA_XML_PIECE_SIZE), b""))
    except MetadataError as exc:
        return _unusable(exc, member, log)
    found = set()
    for code, message in metadata.check():
        found.add(code)
        log.problem(code, message, member=OVA_XML_NAME, offset=member.header_offset)
    try:
        disks = metadata.disks
    except MetadataError as exc:
        return _unusable(exc, member, log)
    _check_uuids(disks, member, log)
    return Plan(member, metadata, None, None if found & _UNPLANNABLE else disks)


def _first_member(tar: TarReader, compression: Compression) -> TarMember:
    try:
        member = tar.next_member()
    except FormatError as exc:
        if exc.code == "tar-header" and exc.offset == 0 and compression == "none":
            raise format_error(
                "not-an-archive",
                "not an XVA archive: no gzip or zstd magic and no tar header at the start",
                offset=0,
            ) from exc
        raise
    if member is None:
        raise format_error("empty-archive", "the archive is empty: it holds no tar member", offset=0)
    if member.name != OVA_XML_NAME or member.kind != "file":
        raise format_error(
            "ova-xml-not-first",
            f"the first member is {member.name!r}, not ova.xml; the host rejects this (xva-format.md §2.2)",
            member=member.name,
            offset=member.header_offset,
        )
    return member


def _unusable(exc: MetadataError, member: TarMember, log: ProblemLog) -> Plan:
    """ova.xml cannot be used (not even its disks): judge the error; in problems mode, no plan."""
    exc.member = exc.member or OVA_XML_NAME
    exc.offset = member.header_offset if exc.offset is None else exc.offset
    log.report(exc)
    return Plan(member, None, exc, None)


def _check_uuids(disks: list[DiskInfo], member: TarMember, log: ProblemLog) -> None:
    """Disk images are written as ``<vdi uuid>.raw``: every uuid must be a safe, distinct name."""
    seen: set[str] = set()
    for disk in disks:
        if not _SAFE_UUID.fullmatch(disk.vdi_uuid):
            log.problem(
                "unsafe-uuid",
                f"VDI {disk.id} has uuid {disk.vdi_uuid[:80]!r}, which is not a uuid-like name",
                member=OVA_XML_NAME,
                offset=member.header_offset,
            )
        elif disk.vdi_uuid in seen:
            log.problem(
                "duplicate-uuid",
                f"VDI {disk.id} shares uuid {disk.vdi_uuid} with another data disk",
                member=OVA_XML_NAME,
                offset=member.header_offset,
            )
        seen.add(disk.vdi_uuid)

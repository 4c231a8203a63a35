"""What the reader reports: `Problem`s with stable codes, and placed `Chunk`s.

`XvaReader` with ``problems=None`` raises the first real error as a `FormatError` (deviations it can work
around, such as directory entries, are tolerated silently). With a list, every problem is appended
as a `Problem` and the scan goes on as far as it can; a fatal one (truncation, garbage) ends it, and
nothing is raised but local I/O errors. Problem codes (stable; ``verify --json`` reports them):

========================== ======== ============================================================
code                       severity meaning
========================== ======== ============================================================
empty-archive              error    no tar member at all
not-an-archive             error    neither gzip, zstd nor a tar header at the start
ova-xml-not-first          error    the first member is not ``ova.xml`` (§4.2)
ova-xml-too-large          error    ova.xml over `MAX_OVA_XML_SIZE`
ova-xml-extension-header   warning  a pax/GNU header in front of ova.xml: hosts before v24.2 fail
directory-entry            error    a directory member (``Ref:4/``); the host fails on it (§1.3)
unknown-member             error    a member that is no chunk of the disk being read (in a single-disk
                                    ``vdi/`` stream, §3.5, also any member after the disk)
orphan-checksum            error    a checksum member that does not follow its data member
bad-chunk-name             error    ``<id>/`` followed by something other than 8 digits (§3.1)
counter-not-increasing     error    a counter not greater than the previous one, as strings
missing-first-chunk        error    a disk's first chunk is not counter 0 (§3.2)
global-first-len           warning  a gap in a disk whose first chunk length differs from the
                                    archive's first chunk length: xapi fills it with the latter
chunk-not-aligned          error    a data member length not a multiple of 512: since 2019 the
                                    host reads the checksum header before the padding (§3.4)
chunk-too-large            error    a data member over `MAX_CHUNK_MEMBER_SIZE`
data-past-virtual-size     error    a chunk (or its gap) reaches past the disk's `virtual_size`
chunk-out-of-order         error    a chunk of a disk that was already complete
missing-last-chunk         error    a disk's chunks stop before `virtual_size` is covered
missing-checksum           error    a data member not followed by its checksum member
unsupported-checksum       error    a checksum suffix other than ``.checksum``/``.xxhash``
checksum-member-too-large  error    a checksum member over `MAX_CHECKSUM_MEMBER_SIZE`
checksum-mismatch          error    the digest differs from the data's
checksum-format            error    the digest matches only ignoring case/whitespace; the host
                                    compares exactly, so this fails an import
trailing-member            warning  members after the last disk (the host never reads them)
trailing-data              warning  unreadable bytes after the last disk
missing-end-of-archive     warning  no two zero blocks at the end (§1.4); a ``vdi/`` stream without
                                    them raises ``truncated``
========================== ======== ============================================================

Plus the tar layer's codes (``truncated``, ``tar-header``, ``unsafe-name``, ``tar-link``,
``tar-device``, ``tar-type``, ``compression``) and ova.xml's (`MetadataError` codes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xvatool._types import ChecksumKind
from xvatool.errors import FormatError
from xvatool.xva.ovaxml import DiskInfo

__all__ = ["Chunk", "Problem", "Severity"]

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an archive: a stable `code`, where it is and how bad it is.

    `offset` is a byte offset in the uncompressed tar stream (a member's header for member
    problems). ``severity="warning"`` marks what does not stop a host's import.
    """

    code: str
    message: str
    member: str | None = None
    offset: int | None = None
    severity: Severity = "error"

    @classmethod
    def from_error(cls, exc: FormatError, severity: Severity = "error") -> Problem:
        return cls(exc.code, exc.message, exc.member, exc.offset, severity)

    def __str__(self) -> str:
        where = []
        if self.member:
            where.append(f"member {self.member}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        prefix = f"{', '.join(where)}: " if where else ""
        return f"{self.severity}: {self.code}: {prefix}{self.message}"


@dataclass(slots=True)
class Chunk:
    """One data member, placed: `data` belongs at byte `offset` of `disk`.

    `data` is a view into a reused buffer, valid until the next event is requested; copy it to
    keep it. `archive_offset` is the offset of the member's header in the uncompressed tar.
    """

    disk: DiskInfo
    offset: int
    data: memoryview
    member: str
    counter: int
    archive_offset: int
    checksum_kind: ChecksumKind

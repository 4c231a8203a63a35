"""The streaming XVA reader: ova.xml first, then every disk's chunks, placed by the host's rule.

`XvaReader` reads any stream (file, pipe, HTTP body) strictly sequentially (style.md 6): it sniffs the
compression (xva-format.md §4.2), requires `ova.xml` as the first member, parses it, and then
`chunks()` yields the data members disk by disk in byte-wise id order, each placed where xapi's
importer would write it (§3.4):

- a chunk belongs to a disk when its name is ``<id>/<8 digits>``, matched on ``id + "/"``, so
  ``Ref:1`` never claims ``Ref:10/…``;
- counters must rise strictly, compared as strings, starting from ``"-1"``;
- offsets are cumulative: a counter gap of k stands for k × `first_len` zero bytes, where
  `first_len` is the length of the first data member *of the whole archive*, as in xapi (one variable
  for the import, not per disk; a corner case where this differs from per-disk is reported as
  ``global-first-len``); a zero-length keep-alive chunk uses up a counter but no bytes;
- a disk is done once its `virtual_size` is covered (the last chunk may be partial);
- each data member is followed immediately by ``<data name>.checksum`` (SHA-1) or ``.xxhash``
  (XXH64), compared as exact strings (§3.3).

Hashing runs off the main thread (hashlib and xxhash release the GIL): chunk N is handed to a worker
while the main thread reads the next members into another of a few preallocated 1 MiB buffers, so
memory stays flat. Results are checked in archive order, at most `HASH_LAG` chunks behind, and always
before any later error is raised, so the first error reported is the earliest in the archive.

With ``problems=None`` the first real error raises a `FormatError`; with a list, every problem is
appended as a `Problem` and the scan goes on as far as it can. The problem codes are listed in
`xvatool.xva.problems`.

Example::

    with open_archive("vm.xva") as reader:
        print(reader.metadata.vm.name_label)
        for chunk in reader.chunks():
            sink.write_at(chunk.offset, chunk.data)
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import NoReturn

from xvatool._types import ChecksumKind, Compression, Readable
from xvatool.errors import (
    ChecksumError,
    FormatError,
    MetadataError,
    StreamStateError,
    TruncatedError,
    location_context,
)
from xvatool.xva.checksum import kind_of_suffix, split_checksum_name
from xvatool.xva.compression import open_decompressed
from xvatool.xva.digests import DigestPipeline
from xvatool.xva.opening import open_archive
from xvatool.xva.ovaxml import MAX_OVA_XML_SIZE, MAX_VIRTUAL_SIZE, DiskInfo, Metadata
from xvatool.xva.problems import Chunk, Problem, Severity
from xvatool.xva.tarstream import BLOCK_SIZE, TarMember, TarReader

__all__ = [
    "MAX_CHECKSUM_MEMBER_SIZE",
    "MAX_CHUNK_MEMBER_SIZE",
    "Chunk",
    "Problem",
    "Severity",
    "XvaReader",
    "open_archive",
    "read_disk_stream",
]

MAX_CHUNK_MEMBER_SIZE = 64 << 20
"""Bytes. Data members are 1 MiB from every known writer; larger ones are refused to bound memory."""
MAX_CHECKSUM_MEMBER_SIZE = 1024
"""Bytes. A digest is 40 or 16 characters; anything this large is not one."""
OVA_XML_NAME = "ova.xml"
_COUNTER = re.compile(r"[0-9]{8}")  # §3.1: "%08d"; not \d, which also matches non-ASCII digits
_EMPTY = memoryview(b"")


def _split_data_name(name: str) -> tuple[str, str] | None:
    """``Ref:2/00000007`` → (``Ref:2``, ``00000007``); None for names without a directory."""
    prefix, slash, counter = name.rpartition("/")
    return (prefix, counter) if slash and prefix else None


def _data_member_problem(member: TarMember, counter: str) -> tuple[str, str] | None:
    """What is wrong with a data member's name or size by itself, if anything (§3.1)."""
    if not _COUNTER.fullmatch(counter):
        return "bad-chunk-name", f"chunk counter {counter!r} is not 8 decimal digits (§3.1)"
    if member.size > MAX_CHUNK_MEMBER_SIZE:
        return (
            "chunk-too-large",
            f"data member of {member.size} bytes is over the {MAX_CHUNK_MEMBER_SIZE}-byte limit",
        )
    return None


class XvaReader:
    """Reads an XVA stream: `metadata` at once, then `chunks()`.

    `stream` is anything with ``read(n)``; it is read sequentially and never closed here. `source`
    names it in error messages. ``verify=False`` skips hashing (the checksum members are still
    required and parsed). See the module docstring for `problems`.

    Example::

        reader = XvaReader(sys.stdin.buffer, source="-")
        for chunk in reader.chunks():
            ...
    """

    def __init__(
        self,
        stream: Readable,
        *,
        source: str | None = None,
        verify: bool = True,
        problems: list[Problem] | None = None,
        _disk: DiskInfo | None = None,
    ) -> None:
        self.source = source
        self.verify = verify
        self.problems = problems
        self.compression: Compression = "none"
        self.checksum_kinds: set[ChecksumKind] = set()
        """Checksum kinds seen so far ("sha1" for `.checksum`, "xxhash" for `.xxhash`)."""
        self.ova_xml_member: TarMember | None = None
        self._metadata: Metadata | None = None
        self._metadata_error: MetadataError | None = None
        self._disks: list[DiskInfo] | None = None
        self._tar: TarReader | None = None
        self._fatal = False
        self._started = False
        self._lookahead: TarMember | None = None
        self._have_lookahead = False
        self._digests: DigestPipeline | None = None
        self._disk_stream = _disk is not None
        """A single-disk `vdi/` stream (§3.5): no ova.xml, nothing may follow the disk."""
        try:
            with location_context(file=source):
                if _disk is not None:
                    _check_disk(_disk)
                    self._disks, self._tar = [_disk], TarReader(stream)
                else:
                    self.compression, tar_stream = open_decompressed(stream)
                    self._tar = TarReader(tar_stream)
                    self._read_ova_xml(self._tar)
        except FormatError as exc:
            if problems is None:
                raise
            self._fatal = True
            problems.append(Problem.from_error(exc))

    @classmethod
    def for_disk_stream(
        cls,
        stream: Readable,
        *,
        size: int,
        disk_id: str = "vdi",
        source: str | None = None,
        verify: bool = True,
        problems: list[Problem] | None = None,
    ) -> XvaReader:
        """A reader of one disk's tar stream as `/export_raw_vdi?format=tar` sends it (§3.5).

        Only ``<disk_id>/%08d`` chunks, their checksum members and the end marker; `size` comes from
        the caller. `chunks()` applies the archive rules, and any other member or a missing end
        marker is an error.
        """
        disk = DiskInfo(disk_id, "", disk_id, size, None, False, None, None, "")
        return cls(stream, source=source, verify=verify, problems=problems, _disk=disk)

    # -- metadata ------------------------------------------------------------------------------

    @property
    def metadata(self) -> Metadata:
        """The parsed ova.xml; raises its `MetadataError` if it could not be parsed."""
        if self._metadata is None:
            if self._metadata_error is not None:
                raise self._metadata_error
            raise StreamStateError("the archive has no readable ova.xml")
        return self._metadata

    @property
    def has_metadata(self) -> bool:
        return self._metadata is not None

    @property
    def disks(self) -> list[DiskInfo]:
        """The data-carrying disks in archive order (§2.7); empty if ova.xml was unreadable."""
        return list(self._disks or [])

    @property
    def tar_end_seen(self) -> bool:
        """True once the end-of-archive marker (two zero blocks) was read."""
        return self._tar is not None and self._tar.end_seen

    def _read_ova_xml(self, tar: TarReader) -> None:
        try:
            member = tar.next_member()
        except FormatError as exc:
            if exc.code == "tar-header" and exc.offset == 0 and self.compression == "none":
                raise FormatError(
                    "not an XVA archive: no gzip or zstd magic and no tar header at the start",
                    code="not-an-archive",
                    offset=0,
                ) from exc
            raise
        if member is None:
            raise FormatError("the archive is empty: it holds no tar member", code="empty-archive", offset=0)
        if member.name != OVA_XML_NAME or member.kind != "file":
            raise FormatError(
                f"the first member is {member.name!r}, not ova.xml; the host rejects this (§4.2)",
                code="ova-xml-not-first",
                member=member.name,
                offset=member.header_offset,
            )
        self.ova_xml_member = member
        if member.extensions:
            self._problem(
                "ova-xml-extension-header",
                f"{'/'.join(member.extensions)} extension header in front of ova.xml: "
                "hosts before xapi v24.2 cannot import this (§1.3)",
                at=member,
                severity="warning",
                raise_strict=False,
            )
        try:
            if member.size > MAX_OVA_XML_SIZE:
                raise MetadataError(
                    f"ova.xml is {member.size} bytes, over the {MAX_OVA_XML_SIZE}-byte limit",
                    code="ova-xml-too-large",
                )
            self._metadata = Metadata.from_bytes(tar.read_member(MAX_OVA_XML_SIZE))
            self._disks = self._metadata.disks
            for disk in self._disks:
                _check_disk(disk)
        except MetadataError as exc:
            if exc.member is None:
                exc.member = OVA_XML_NAME
            if exc.offset is None:
                exc.offset = member.header_offset
            self._metadata, self._disks = None, None
            if self.problems is None:
                raise
            self._metadata_error = exc
            self.problems.append(Problem.from_error(exc))

    # -- problems ------------------------------------------------------------------------------

    def _problem(
        self,
        code: str,
        message: str,
        *,
        at: TarMember | None = None,
        member: str | None = None,
        offset: int | None = None,
        severity: Severity = "error",
        raise_strict: bool = True,
    ) -> None:
        """Record a problem, or in strict mode raise it (`raise_strict`) or let it pass.

        `at` gives the member and offset of a member problem in one go.
        """
        if at is not None:
            member, offset = at.name, at.header_offset
        if self.problems is not None:
            self.problems.append(Problem(code, message, member, offset, severity))
        elif raise_strict:
            raise FormatError(message, code=code, member=member, offset=offset)

    # -- members -------------------------------------------------------------------------------

    def _peek(self) -> TarMember | None:
        """The next file member, without taking it; directory entries are noted and passed over."""
        if not self._have_lookahead:
            assert self._tar is not None
            while True:
                member = self._tar.next_member()
                if member is None or member.kind != "dir":
                    break
                self._problem(
                    "directory-entry",
                    f"directory entry {member.name + '/'!r}: the host's importer fails on it (§1.3)",
                    member=member.name + "/",
                    offset=member.header_offset,
                    raise_strict=False,
                )
            self._lookahead, self._have_lookahead = member, True
        return self._lookahead

    def _take(self) -> TarMember:
        member = self._peek()
        assert member is not None
        self._have_lookahead = False
        return member

    def _skip_chunk(self) -> None:
        """Take the current data member and, if it follows, its checksum member, unread."""
        name = self._take().name
        following = self._peek()
        if following is not None and following.name.startswith(name + "."):
            self._take()

    # -- chunk data ----------------------------------------------------------------------------

    def _on_mismatch(self, exc: ChecksumError) -> None:
        if self.problems is None:
            raise exc
        self.problems.append(Problem.from_error(exc))

    def _read_chunk(self, member: TarMember) -> tuple[memoryview, ChecksumKind] | None:
        """Read a data member and its checksum member and schedule the verification.

        Returns the data and checksum kind, or None (problems mode) when there is no usable
        checksum member; the member following is then left for the caller.
        """
        assert self._tar is not None and self._digests is not None
        digests = self._digests
        self._take()
        buffer: bytearray | None = None
        view = _EMPTY
        if member.size:
            buffer = digests.acquire(member.size)
            view = memoryview(buffer)[: member.size]
            self._tar.readinto(view)
        following = self._peek()
        if following is None and not self._tar.end_seen:
            raise TruncatedError(
                "the archive ends before this chunk's checksum member",
                member=member.name,
                offset=self._tar.position,
            )
        if following is None or not following.name.startswith(member.name + "."):
            digests.release(buffer)
            found = f"next is {following.name!r}" if following is not None else "the archive ends"
            self._problem(
                "missing-checksum",
                f"not followed by its checksum member ({member.name}.checksum or .xxhash); {found}",
                at=member,
            )
            return None
        self._take()
        kind = kind_of_suffix(following.name[len(member.name) :])
        if kind is None or following.size > MAX_CHECKSUM_MEMBER_SIZE:
            digests.release(buffer)
            if kind is None:
                code, message = (
                    "unsupported-checksum",
                    "unknown checksum suffix; the host knows .checksum, .xxhash",
                )
            else:
                code, message = "checksum-member-too-large", f"checksum member of {following.size} bytes"
            self._problem(code, message, at=following)
            return None
        expected = self._tar.read(following.size)
        self.checksum_kinds.add(kind)
        digests.submit(member.name, member.header_offset, view, buffer, kind, expected)
        return view, kind

    # -- chunks --------------------------------------------------------------------------------

    def chunks(self) -> Generator[Chunk, None, None]:
        """Yield every data member of every disk, placed by the host's rule (module docstring).

        Can be iterated once. In strict mode the generator raises `FormatError` (`ChecksumError`
        for a bad digest) at the first error; all digests of the chunks yielded so far are checked
        before it finishes, so a consumer that ran to the end has verified data.
        """
        if self._started:
            raise StreamStateError("XvaReader.chunks() can only be iterated once")
        self._started = True
        if self._fatal or self._tar is None:
            return
        digests = DigestPipeline(verify=self.verify, on_mismatch=self._on_mismatch, source=self.source)
        self._digests = digests
        with digests, location_context(file=self.source):
            try:
                if self._disks is None:
                    self._scan_unplanned()
                else:
                    yield from self._scan_disks(self._disks)
                digests.settle_all()
                self._scan_trailer()
            except FormatError as exc:
                if not isinstance(exc, ChecksumError):
                    digests.settle_all()  # earlier chunks first: their mismatch wins
                if self.problems is None:
                    raise
                self._fatal = True
                self.problems.append(Problem.from_error(exc))

    def _scan_disks(self, disks: list[DiskInfo]) -> Generator[Chunk, None, None]:
        index_of = {disk.id: i for i, disk in enumerate(disks)}
        first_len: int | None = None  # xapi's one variable for the whole import (§3.4)
        for i, disk in enumerate(disks):
            offset, last = 0, "-1"
            own_first_len: int | None = None
            warned_first_len = False
            while offset < disk.virtual_size:
                member = self._peek()
                if member is None:
                    self._disk_incomplete(disk, offset)
                split = _split_data_name(member.name)
                if split_checksum_name(member.name) is not None or split is None or split[0] not in index_of:
                    self._stray(member, f" while reading disk {disk.id} (the host fails on it)")
                    continue
                prefix, counter = split
                if index_of[prefix] > i:
                    self._problem(
                        "missing-last-chunk",
                        f"disk {disk.id} stops at byte {offset} of {disk.virtual_size}: "
                        f"its last chunk is missing and disk {prefix} begins",
                        at=member,
                    )
                    break
                problem = self._chunk_name_problem(disks, index_of[prefix], i, counter, last)
                problem = problem or _data_member_problem(member, counter)
                if problem is not None:
                    self._problem(*problem, at=member)
                    self._skip_chunk()
                    continue
                if first_len is None:
                    first_len = member.size
                if own_first_len is None:
                    own_first_len = member.size
                    if counter != "0" * 8:
                        self._problem(
                            "missing-first-chunk",
                            f"the first chunk of disk {disk.id} has counter {counter}; writers must "
                            "always write counter 0 (§3.2)",
                            at=member,
                            raise_strict=False,
                        )
                gap = int(counter) - int(last) - 1
                if gap > 0 and own_first_len != first_len and not warned_first_len:
                    warned_first_len = True
                    self._problem(
                        "global-first-len",
                        f"counter gap filled with {first_len}-byte blocks (the archive's first chunk), "
                        f"not this disk's {own_first_len} bytes, as xapi does (§3.4)",
                        at=member,
                        severity="warning",
                        raise_strict=False,
                    )
                start = offset + gap * first_len
                self._placement_problems(member, disk, start)
                got = self._read_chunk(member)
                offset, last = start + member.size, counter
                if got is not None:
                    view, kind = got
                    inside = max(0, min(len(view), disk.virtual_size - start))
                    yield Chunk(
                        disk, start, view[:inside], member.name, int(counter), member.header_offset, kind
                    )

    @staticmethod
    def _chunk_name_problem(
        disks: list[DiskInfo], owner: int, current: int, counter: str, last: str
    ) -> tuple[str, str] | None:
        if owner < current:
            return "chunk-out-of-order", f"chunk of disk {disks[owner].id}, which was already complete"
        if not _COUNTER.fullmatch(counter):
            return None  # `_data_member_problem` names it
        if counter <= last:
            return "counter-not-increasing", f"counter {counter} does not follow {last} (§3.4)"
        return None

    def _stray(self, member: TarMember, where: str = "") -> None:
        """Take and note a member that is no chunk of the disk being read."""
        self._take()
        if split_checksum_name(member.name) is not None:
            code, message = "orphan-checksum", "checksum member without its data member right before it"
        else:
            code, message = "unknown-member", "unexpected member" + where
        self._problem(code, message, at=member, raise_strict=self._disk_stream)

    def _check_aligned(self, member: TarMember) -> None:
        if member.size % BLOCK_SIZE:
            self._problem(
                "chunk-not-aligned",
                f"data member of {member.size} bytes, not a multiple of 512: the host reads the "
                "checksum header inside the padding and fails (§3.4)",
                at=member,
                raise_strict=False,
            )

    def _placement_problems(self, member: TarMember, disk: DiskInfo, start: int) -> None:
        self._check_aligned(member)
        if start + member.size > disk.virtual_size:
            self._problem(
                "data-past-virtual-size",
                f"chunk covers bytes {start}..{start + member.size} of disk {disk.id}, "
                f"whose virtual_size is {disk.virtual_size}",
                at=member,
            )

    def _disk_incomplete(self, disk: DiskInfo, offset: int) -> NoReturn:
        assert self._tar is not None
        message = f"archive ends at byte {offset} of disk {disk.id} (virtual_size {disk.virtual_size})"
        if self._tar.end_seen:
            raise FormatError(
                message + ": its last chunk is missing", code="missing-last-chunk", offset=self._tar.position
            )
        raise TruncatedError(message + " without an end-of-archive marker", offset=self._tar.position)

    def _scan_unplanned(self) -> None:
        """Without usable metadata: still check every member's structure and digest."""
        while (member := self._peek()) is not None:
            split = _split_data_name(member.name)
            problem = _data_member_problem(member, split[1]) if split is not None else None
            if split_checksum_name(member.name) is not None or split is None:
                self._stray(member)
            elif problem is not None:
                self._problem(*problem, at=member)
                self._skip_chunk()
            else:
                self._check_aligned(member)
                self._read_chunk(member)

    def _scan_trailer(self) -> None:
        """After the last disk the host stops reading (§1.4): note what follows, never fail on it."""
        if self._disks is None:
            if self.problems is not None and self._tar is not None and not self._tar.end_seen:
                self._note_no_end()
            return
        if self._disk_stream:
            self._end_of_disk_stream()
            return
        try:
            first = self._peek()
            count = 0
            while self._peek() is not None:
                self._take()
                count += 1
        except FormatError as exc:
            self._problem(
                "trailing-data",
                f"unreadable data after the last disk is ignored: {exc.message}",
                member=None,
                offset=exc.offset,
                severity="warning",
                raise_strict=False,
            )
            return
        if first is not None:
            self._problem(
                "trailing-member",
                f"{count} member(s) after the last disk; the host never reads them (§1.4)",
                member=first.name,
                offset=first.header_offset,
                severity="warning",
                raise_strict=False,
            )
        self._note_no_end()

    def _note_no_end(self) -> None:
        assert self._tar is not None
        if not self._tar.end_seen:
            self._problem(
                "missing-end-of-archive",
                "the archive does not end with two zero blocks (§1.4)",
                member=None,
                offset=self._tar.position,
                severity="warning",
                raise_strict=False,
            )

    def _end_of_disk_stream(self) -> None:
        """A `vdi/` stream is the disk and its end marker, nothing else (§3.5, §1.4)."""
        assert self._tar is not None
        member = self._peek()
        if member is not None:
            self._problem("unknown-member", "member after the end of the disk stream", at=member)
        elif not self._tar.end_seen:
            raise TruncatedError(
                "the disk stream ends without the end-of-archive marker (§1.4)", offset=self._tar.position
            )


def read_disk_stream(
    stream: Readable, *, size: int, source: str, disk_id: str = "vdi", verify: bool = True
) -> int:
    """Read and verify one disk's tar stream (§3.5, `XvaReader.for_disk_stream`); return its size.

    Every chunk is placed and its digest checked before this returns; the first error raises
    `FormatError` (`ChecksumError`, `TruncatedError`) naming `source` and the member.
    """
    reader = XvaReader.for_disk_stream(stream, size=size, disk_id=disk_id, source=source, verify=verify)
    for _chunk in reader.chunks():
        pass
    return size


def _check_disk(disk: DiskInfo) -> None:
    """Refuse disk records the chunk logic cannot follow safely (§2.4, §3.1)."""
    if not disk.id or "/" in disk.id:
        raise MetadataError(f"VDI id {disk.id!r} cannot name a tar directory", code="bad-id")
    if not 0 <= disk.virtual_size <= MAX_VIRTUAL_SIZE:
        raise MetadataError(
            f"VDI {disk.id} has an absurd virtual_size {disk.virtual_size}", code="virtual-size-range"
        )

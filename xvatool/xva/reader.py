"""The streaming XVA reader: ova.xml first, then every disk's chunks, placed by the host's rule.

`XvaReader` reads any stream (file, pipe, HTTP body) strictly sequentially, never seeking: it sniffs the
compression (docs/xva-format.md §2.3), requires `ova.xml` as the first member, parses it within its
budgets and applies the importer's rules to it, and then `chunks()` yields the data members disk by
disk in byte-wise id order, each placed where xapi's importer would write it (xva-format.md §5.4):

- a chunk belongs to a disk when its name is ``<id>/<8 digits>``, matched on ``id + "/"``, so
  ``Ref:1`` never claims ``Ref:10/…``;
- counters must rise strictly, compared as strings, starting from ``"-1"``;
- offsets are cumulative: a counter gap of k stands for k × `first_len` zero bytes, where
  `first_len` is the length of the first data member *of the whole archive*, as in xapi (one variable
  for the import, not per disk; a corner case where this differs from per-disk is reported as
  ``global-first-len``); a zero-length keep-alive chunk uses up a counter but no bytes;
- a disk is done once its `virtual_size` is covered (the last chunk may be partial);
- each data member is followed immediately by ``<data name>.checksum`` (SHA-1) or ``.xxhash``
  (XXH64), compared as exact strings (xva-format.md §5.3).

After the last disk the host stops reading (xva-format.md §3.4). We read on, but only `TRAILING_DATA_BUDGET`
bytes: trailing members and data are noted, and a compressed stream is read to its end so that its
own checksum (gzip CRC32 and ISIZE, zstd content checksum) is checked: that is the only checksum
ova.xml has.

Hashing runs off the main thread (`digests`), at most `HASH_LAG` chunks behind, and every digest is
checked before any later error is raised, so the first error reported is the earliest in the
archive.

Every problem goes through one `ProblemLog` and is judged by its code alone (`problems.SEVERITY`,
docs/problems.md): with ``problems=None`` the first error raises its `FormatError`; with a list,
every problem is appended and the scan goes on as far as it can. A fatal problem (truncation,
garbage, a budget exceeded) ends the scan in both modes. The verdict is the same either way.

Example::

    with open_archive("vm.xva") as reader:
        print(reader.metadata.vm.name_label)
        for chunk in reader.chunks():
            sink.write_at(chunk.offset, chunk.data)
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import NoReturn

from xvatool._types import ChecksumKind, Compression, Readable, SupportsRead
from xvatool.errors import ChecksumError, FormatError, MetadataError, StreamStateError, location_context
from xvatool.xva.checksum import kind_of_suffix, split_checksum_name
from xvatool.xva.compression import is_stream_error, open_decompressed
from xvatool.xva.digests import HASH_LAG, DigestPipeline
from xvatool.xva.ovaxml import MAX_VIRTUAL_SIZE, DiskInfo, Metadata
from xvatool.xva.plan import read_plan
from xvatool.xva.problems import Problem, ProblemLog, Severity, format_error
from xvatool.xva.tarstream import BLOCK_SIZE, TarMember, TarReader

__all__ = [
    "MAX_CHECKSUM_MEMBER_SIZE",
    "MAX_CHUNK_MEMBER_SIZE",
    "TRAILING_DATA_BUDGET",
    "Chunk",
    "Problem",
    "Severity",
    "XvaReader",
    "read_disk_stream",
]

MAX_CHUNK_MEMBER_SIZE = 64 << 20
"""Bytes. Data members are 1 MiB from every known writer. A larger data member ends the scan at
once, and so does any other member this large that would have to be skipped unread."""
MAX_CHECKSUM_MEMBER_SIZE = 1024
"""Bytes. A digest is 40 or 16 characters; anything this large is not one."""
TRAILING_DATA_BUDGET = 16 << 20
"""Bytes of the (decompressed) tar stream read after the end of the last disk: trailing members,
the end marker and anything after it. More is the ``trailing-data-too-large`` error."""
_COUNTER = re.compile(r"[0-9]{8}")  # xva-format.md §5.1: "%08d"; not \d, which also matches non-ASCII digits
_EMPTY = memoryview(b"")


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


def _split_data_name(name: str) -> tuple[str, str] | None:
    """``Ref:2/00000007`` → (``Ref:2``, ``00000007``); None for names without a directory."""
    prefix, slash, counter = name.rpartition("/")
    return (prefix, counter) if slash and prefix else None


class XvaReader:
    """Reads an XVA stream: `metadata` at once, then `chunks()`.

    `stream` is anything with ``readinto(buf)`` or ``read(n)``; it is read sequentially and never
    closed here. `source` names it in error messages. ``verify=False`` skips hashing (the checksum
    members are still required and parsed). See the module docstring for `problems`; `omitted`
    counts, per code, the problems left out of that list (`problems.MAX_PROBLEMS_PER_CODE`).
    `hash_lag` bounds the chunks hashed behind the one yielded (1 MiB each): readers running side
    by side, one per disk, pass 1 so that their buffers do not multiply.

    Example::

        reader = XvaReader(sys.stdin.buffer, source="-")
        for chunk in reader.chunks():
            ...
    """

    def __init__(
        self,
        stream: Readable | SupportsRead,
        *,
        source: str | None = None,
        verify: bool = True,
        problems: list[Problem] | None = None,
        hash_lag: int = HASH_LAG,
        _disk: DiskInfo | None = None,
    ) -> None:
        self.source = source
        self.verify = verify
        self._hash_lag = hash_lag
        self._log = ProblemLog(strict=problems is None, problems=problems if problems is not None else [])
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
        """A single-disk `vdi/` stream (xva-format.md §6): no ova.xml, nothing may follow the disk."""
        try:
            with location_context(file=source):
                if _disk is not None:
                    if not 0 <= _disk.virtual_size <= MAX_VIRTUAL_SIZE:
                        raise format_error("virtual-size-range", f"absurd disk size {_disk.virtual_size}")
                    self._disks, self._tar = [_disk], TarReader(stream)
                else:
                    self.compression, tar_stream = open_decompressed(stream)
                    self._tar = TarReader(tar_stream)
                    plan = read_plan(self._tar, self._log, self.compression)
                    self.ova_xml_member, self._metadata = plan.member, plan.metadata
                    self._metadata_error, self._disks = plan.error, plan.disks
        except FormatError as exc:
            self._end_scan(exc)

    @classmethod
    def for_disk_stream(
        cls,
        stream: Readable | SupportsRead,
        *,
        size: int,
        disk_id: str = "vdi",
        source: str | None = None,
        verify: bool = True,
        problems: list[Problem] | None = None,
        hash_lag: int = HASH_LAG,
    ) -> XvaReader:
        """A reader of one disk's tar stream as `/export_raw_vdi?format=tar` sends it (xva-format.md §6).

        Only ``<disk_id>/%08d`` chunks, their checksum members and the end marker; `size` comes from
        the caller. `chunks()` applies the archive rules, and any other member or a missing end
        marker is an error.
        """
        disk = DiskInfo(disk_id, "", disk_id, size, None, False, None, None, "")
        return cls(stream, source=source, verify=verify, problems=problems, hash_lag=hash_lag, _disk=disk)

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
        """The data-carrying disks in archive order (xva-format.md §4.7); empty if ova.xml was unreadable."""
        return list(self._disks or [])

    @property
    def problems(self) -> list[Problem]:
        """Every problem found so far (in strict mode: the warnings)."""
        return self._log.problems

    @property
    def omitted(self) -> dict[str, int]:
        """Per code, problems found beyond `problems.MAX_PROBLEMS_PER_CODE` and not listed."""
        return self._log.omitted

    @property
    def tar_end_seen(self) -> bool:
        """True once the end-of-archive marker (two zero blocks) was read."""
        return self._tar is not None and self._tar.end_seen

    # -- problems ------------------------------------------------------------------------------

    def _problem(
        self,
        code: str,
        message: str,
        *,
        at: TarMember | None = None,
        member: str | None = None,
        offset: int | None = None,
    ) -> None:
        """Judge a problem by its code (`ProblemLog.report`): an error raises in strict mode.

        `at` gives the member and offset of a member problem in one go.
        """
        if at is not None:
            member, offset = at.name, at.header_offset
        self._log.problem(code, message, member=member, offset=offset)

    def _end_scan(self, exc: FormatError) -> None:
        """A fatal problem: raise it (strict) or list it; either way nothing more is read."""
        self._fatal = True
        if self._log.strict:
            raise exc
        self._log.add(Problem.from_error(exc))

    # -- members -------------------------------------------------------------------------------

    def _peek(self) -> TarMember | None:
        """The next file member, without taking it; directory entries are reported and passed over."""
        if not self._have_lookahead:
            assert self._tar is not None
            while True:
                member = self._tar.next_member()
                if member is None or member.kind != "dir":
                    break
                self._problem(
                    "directory-entry",
                    f"directory entry {member.name + '/'!r}: "
                    "the host's importer fails on it (xva-format.md §3.3)",
                    member=member.name + "/",
                    offset=member.header_offset,
                )
            self._lookahead, self._have_lookahead = member, True
        return self._lookahead

    def _take(self) -> TarMember:
        member = self._peek()
        assert member is not None
        self._have_lookahead = False
        return member

    def _take_unread(self) -> TarMember:
        """Take a member whose data will be skipped; a huge one ends the scan instead of being read."""
        member = self._take()
        self._check_size(member, "member-too-large", "member where a chunk or checksum belongs")
        return member

    def _skip_chunk(self) -> None:
        """Take the current data member and, if it follows, its checksum member, unread."""
        name = self._take_unread().name
        following = self._peek()
        if following is not None and following.name.startswith(name + "."):
            self._take_unread()

    def _stray(self, member: TarMember, where: str = "") -> None:
        """Take and report a member that is no chunk of the disk being read."""
        self._take_unread()
        if split_checksum_name(member.name) is not None:
            code, message = "orphan-checksum", "checksum member without its data member right before it"
        else:
            code, message = "unknown-member", "unexpected member" + where
        self._problem(code, message, at=member)

    # -- chunk data ----------------------------------------------------------------------------

    def _on_mismatch(self, exc: ChecksumError) -> None:
        self._log.report(exc)

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
            raise format_error(
                "truncated",
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
        kind = kind_of_suffix(following.name[len(member.name) :])
        if kind is None or following.size > MAX_CHECKSUM_MEMBER_SIZE:
            self._take_unread()
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
        self._take()
        expected = self._tar.read(following.size)
        self.checksum_kinds.add(kind)
        digests.submit(member.name, member.header_offset, view, buffer, kind, expected)
        return view, kind

    # -- chunks --------------------------------------------------------------------------------

    def chunks(self) -> Generator[Chunk, None, None]:
        """Yield every data member of every disk, placed by the host's rule (module docstring).

        Can be iterated once. In strict mode the generator raises `FormatError` (`ChecksumError`
        for a bad digest) at the first error; all digests of the chunks yielded so far, the rest
        of the archive (within `TRAILING_DATA_BUDGET`) and the compressed stream's own checksum
        are checked before it finishes, so a consumer that ran to the end has verified data.
        """
        if self._started:
            raise StreamStateError("XvaReader.chunks() can only be iterated once")
        self._started = True
        if self._fatal or self._tar is None:
            return
        digests = DigestPipeline(
            verify=self.verify, on_mismatch=self._on_mismatch, source=self.source, lag=self._hash_lag
        )
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
                self._end_scan(exc)

    def _scan_disks(self, disks: list[DiskInfo]) -> Iterator[Chunk]:
        # The common case (a chunk of the current disk, next counter, aligned, inside the disk) is
        # tested inline: this loop runs once per MiB of disk. Anything else takes the slow path.
        index_of = {disk.id: i for i, disk in enumerate(disks)}
        first_len: int | None = None  # xapi's one variable for the whole import (xva-format.md §5.4)
        for i, disk in enumerate(disks):
            offset, last, last_number = 0, "-1", -1
            size = disk.virtual_size
            own_first_len: int | None = None
            warned_first_len = False
            while offset < size:
                member = self._peek()
                if member is None:
                    self._disk_incomplete(disk, offset)
                name = member.name
                prefix, slash, counter = name.rpartition("/")
                owner = index_of.get(prefix) if slash else None
                if owner is None or ("." in counter and split_checksum_name(name) is not None):
                    self._stray(member, f" while reading disk {disk.id} (the host fails on it)")
                    continue
                if owner > i:
                    self._problem(
                        "missing-last-chunk",
                        f"disk {disk.id} stops at byte {offset} of {size}: "
                        f"its last chunk is missing and disk {prefix} begins",
                        at=member,
                    )
                    break
                if member.size > MAX_CHUNK_MEMBER_SIZE:
                    self._check_size(member)
                if owner != i or counter <= last or not _COUNTER.fullmatch(counter):
                    problem = self._chunk_name_problem(disks, owner, i, counter, last)
                    if problem is not None:
                        self._problem(*problem, at=member)
                        self._skip_chunk()
                        continue
                if own_first_len is None:
                    own_first_len = member.size
                    if first_len is None:
                        first_len = member.size
                    if counter != "00000000":
                        self._problem(
                            "missing-first-chunk",
                            f"the first chunk of disk {disk.id} has counter {counter}; writers must "
                            "always write counter 0 (xva-format.md §5.2)",
                            at=member,
                        )
                assert first_len is not None
                number = int(counter)
                gap = number - last_number - 1
                if gap and own_first_len != first_len and not warned_first_len:
                    warned_first_len = True
                    self._problem(
                        "global-first-len",
                        f"counter gap filled with {first_len}-byte blocks (the archive's first chunk), "
                        f"not this disk's {own_first_len} bytes, as xapi does (xva-format.md §5.4)",
                        at=member,
                    )
                start = offset + gap * first_len
                if member.size % BLOCK_SIZE or start + member.size > size:
                    self._placement_problems(member, disk, start)
                got = self._read_chunk(member)
                offset, last, last_number = start + member.size, counter, number
                if got is not None:
                    view, kind = got
                    if start + len(view) > size:
                        view = view[: max(0, size - start)]
                    yield Chunk(disk, start, view, name, number, member.header_offset, kind)

    @staticmethod
    def _chunk_name_problem(
        disks: list[DiskInfo], owner: int, current: int, counter: str, last: str
    ) -> tuple[str, str] | None:
        if owner < current:
            return "chunk-out-of-order", f"chunk of disk {disks[owner].id}, which was already complete"
        if not _COUNTER.fullmatch(counter):
            return "bad-chunk-name", f"chunk counter {counter!r} is not 8 decimal digits (xva-format.md §5.1)"
        if counter <= last:
            return "counter-not-increasing", f"counter {counter} does not follow {last} (xva-format.md §5.4)"
        return None

    @staticmethod
    def _check_size(member: TarMember, code: str = "chunk-too-large", what: str = "data member") -> None:
        """An oversized member ends the scan at once: reading or skipping it is unbounded work."""
        if member.size > MAX_CHUNK_MEMBER_SIZE:
            raise format_error(
                code,
                f"{what} of {member.size} bytes is over the {MAX_CHUNK_MEMBER_SIZE}-byte limit; not read",
                member=member.name,
                offset=member.header_offset,
            )

    def _check_aligned(self, member: TarMember) -> None:
        if member.size % BLOCK_SIZE:
            self._problem(
                "chunk-not-aligned",
                f"data member of {member.size} bytes, not a multiple of 512: the host reads the "
                "checksum header inside the padding and fails (xva-format.md §5.4)",
                at=member,
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
            raise format_error(
                "missing-last-chunk", message + ": its last chunk is missing", offset=self._tar.position
            )
        raise format_error(
            "truncated", message + " without an end-of-archive marker", offset=self._tar.position
        )

    def _scan_unplanned(self) -> None:
        """Without usable metadata: still check every member's structure and digest."""
        while (member := self._peek()) is not None:
            split = _split_data_name(member.name)
            if split_checksum_name(member.name) is not None or split is None:
                self._stray(member)
                continue
            self._check_size(member)
            if not _COUNTER.fullmatch(split[1]):
                self._problem("bad-chunk-name",
                              f"chunk counter {split[1]!r} is not 8 decimal digits (xva-format.md §5.1)",
                              at=member)  # fmt: skip
                self._skip_chunk()
            else:
                self._check_aligned(member)
                self._read_chunk(member)

    # -- after the last disk -------------------------------------------------------------------

    def _scan_trailer(self) -> None:
        """After the last disk the host stops reading (xva-format.md §3.4); we read on within a budget.

        Trailing members, unreadable trailing data and non-zero bytes after the end marker are
        warnings (zeros are tar record padding). Then the stream is read to its end, so that a
        decompressor checks its trailer; more than `TRAILING_DATA_BUDGET` bytes after the last
        disk is an error.
        """
        assert self._tar is not None
        tar = self._tar
        if self._disk_stream:
            self._end_of_disk_stream()
            return
        start = tar.position
        readable = self._trailing_members(start) if self._disks is not None else True
        if readable and not tar.end_seen:
            self._problem(
                "missing-end-of-archive",
                "the archive does not end with two zero blocks (xva-format.md §3.4)",
                offset=tar.position,
            )  # fmt: skip
        used = tar.position - start
        extra, nonzero = tar.read_raw(TRAILING_DATA_BUDGET - used)
        if used + extra > TRAILING_DATA_BUDGET:
            self._trailing_too_large(start)
        if nonzero and readable:
            self._problem(
                "trailing-data",
                f"{extra} bytes after the end of the archive; the host never reads them (xva-format.md §3.4)",
                offset=tar.position - extra,
            )

    def _trailing_members(self, start: int) -> bool:
        """Take the members after the last disk, unread; report them (and unreadable data) once.

        Whatever they are (directory entries included), the host never reads them: together
        they are one ``trailing-member`` warning. Returns False if the trailer could not be read
        as tar members (``trailing-data``).
        """
        assert self._tar is not None
        first: TarMember | None = self._lookahead if self._have_lookahead else None
        self._have_lookahead = False
        count = int(first is not None)
        error: FormatError | None = None
        try:
            while (member := self._tar.next_member()) is not None:
                if member.data_offset + member.size - start > TRAILING_DATA_BUDGET:
                    self._trailing_too_large(start)
                first = first or member
                count += 1
        except FormatError as exc:
            if is_stream_error(exc) or exc.code == "trailing-data-too-large":
                raise  # the compressed stream itself is bad, or the budget is spent
            error = exc
        if first is not None:
            self._problem(
                "trailing-member",
                f"{count} member(s) after the last disk; the host never reads them (xva-format.md §3.4)",
                member=first.name,
                offset=first.header_offset,
            )
        if error is None:
            return True
        self._problem(
            "trailing-data", f"unreadable data after the last disk is ignored: {error.message}",
            offset=error.offset,
        )  # fmt: skip
        return False

    def _trailing_too_large(self, start: int) -> NoReturn:
        raise format_error(
            "trailing-data-too-large",
            f"more than {TRAILING_DATA_BUDGET} bytes after the last disk; not read further",
            offset=start,
        )

    def _end_of_disk_stream(self) -> None:
        """A `vdi/` stream is the disk and its end marker, nothing else (xva-format.md §6, §3.4)."""
        assert self._tar is not None
        member = self._peek()
        if member is not None:
            self._problem("unknown-member", "member after the end of the disk stream", at=member)
        elif not self._tar.end_seen:
            raise format_error(
                "truncated", "the disk stream ends without the end-of-archive marker (xva-format.md §6)",
                offset=self._tar.position,
            )  # fmt: skip


def read_disk_stream(
    stream: Readable | SupportsRead, *, size: int, source: str, disk_id: str = "vdi", verify: bool = True
) -> int:
    """Read and verify one disk's tar stream (xva-format.md §6, `XvaReader.for_disk_stream`); return its size.

    Every chunk is placed and its digest checked before this returns; the first error raises
    `FormatError` (`ChecksumError`, `TruncatedError`) naming `source` and the member.
    """
    reader = XvaReader.for_disk_stream(stream, size=size, disk_id=disk_id, source=source, verify=verify)
    for _chunk in reader.chunks():
        pass
    return size

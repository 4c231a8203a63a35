"""A parallel export's spools: what it keeps between runs, and how they become one archive.

A parallel export fetches every disk as its own verified `vdi/` tar stream (docs/xva-format.md §6)
into ``OUT.part.d/<vdi uuid>.tar`` (beside OUT: the same file system, so the assembly never
copies across devices) and journals each finished disk in the state folder
(`xapi.journal.export_journal_path`), so that ``--resume`` fetches only the rest. `PartialExport`
names both once, so that the refusal of a second run, the "kept" message after a failure,
``--discard`` and the cleanup of a failed backup agree on what the state is.

The archive is the host's ova.xml followed by each spool with its members renamed `vdi/N` →
`<disk id>/N` (byte-wise id order, xva-format.md §4.7) and the end marker. Assembly by copy writes the new
headers and has the kernel copy the data (`os.copy_file_range`), so the disks' bytes are never
read back into Python or hashed again; the output is byte for byte what
`xva.assemble.assemble_xva` writes. A compressed archive, or one whose digest is wanted, goes
through `assemble_xva` instead: those bytes must pass through the process anyway.

Example::

    partial = PartialExport(Path("web-01.xva"))
    if partial.exists():
        print(partial.describe())     # "web-01.xva.part.d/ (1 of 2 disks done) and the journal …"
        partial.remove()
    with AtomicFile(out) as output:
        written = assemble_by_copy(output, ova_xml, [(disk.id, spools / spool_name(disk))])
"""

from __future__ import annotations

import errno
import os
import re
import tarfile
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NoReturn

import xxhash

from xvatool._files import AtomicFile, remove_quietly, remove_tree
from xvatool._human import plural
from xvatool._streams import LocalStream, open_local
from xvatool.errors import FormatError, Interrupted, LocalIOError, XvatoolError
from xvatool.ops.manifest import DiskDigester
from xvatool.xapi.journal import Journal, StatePath, export_journal_path
from xvatool.xva.assemble import VDI_TAR_PREFIX, ova_xml_members
from xvatool.xva.ovaxml import DiskInfo, Metadata
from xvatool.xva.reader import XvaReader
from xvatool.xva.tarstream import BLOCK_SIZE, END_OF_ARCHIVE, padding, v7_header

__all__ = [
    "SPOOL_SUFFIX",
    "DiskDigests",
    "PartialExport",
    "assemble_by_copy",
    "disks_key",
    "spool_digest",
    "spool_name",
]

READ_SIZE = 1 << 20
_UNSUPPORTED = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF})

SPOOL_SUFFIX = ".part.d"
"""``OUT.part.d/``: the per-disk spools of a parallel export."""


class PartialExport:
    """What an interrupted or failed parallel export of OUT leaves: its journal and ``OUT.part.d/``.

    Both are named here once, so that the refusal, the "kept" message, ``--discard`` and the
    backup's cleanup agree on what the state is.
    """

    def __init__(self, out: Path, state_dir: StatePath = None) -> None:
        self.out = out
        self.journal = export_journal_path(out, state=state_dir)
        self.spool_dir = out.with_name(out.name + SPOOL_SUFFIX)

    def exists(self) -> bool:
        return self.journal.exists() or self.spool_dir.exists()

    def describe(self) -> str:
        """``vm.xva.part.d/ (1 of 2 disks) and its journal``, for messages."""
        spools = len(list(self.spool_dir.glob("*.tar"))) if self.spool_dir.is_dir() else 0
        done = sum(1 for record in self._records() if record.get("done"))
        total = len(self._records())
        parts = []
        if self.spool_dir.exists():
            count = f" ({done} of {plural(total, 'disk')} done)" if total else f" ({plural(spools, 'disk')})"
            parts.append(f"{self.spool_dir.name}/{count}")
        if self.journal.exists():
            parts.append(f"the journal {self.journal}")
        return " and ".join(parts) or "nothing"

    def _records(self) -> list[dict[str, object]]:
        try:
            return list(Journal.load(self.journal).to_json()["disks"].values())
        except XvatoolError:
            return []

    def kept_message(self) -> str:
        return f"kept {self.describe()}; continue with --resume, or remove it with --discard"

    def remove(self) -> None:
        remove_tree(self.spool_dir)
        remove_quietly(self.journal)

    def fail(self, exc: BaseException, *, discard: bool) -> NoReturn:
        """Say what a failed parallel export left (or remove it with `discard`), then re-raise.

        Ctrl-C always keeps the state and becomes `Interrupted` saying so; an export that kept
        nothing re-raises as it was.
        """
        if not self.exists():
            raise exc
        if discard and not isinstance(exc, KeyboardInterrupt | Interrupted):
            self.remove()
            note = "removed the partial state (--discard)"
        else:
            note = self.kept_message()
        if isinstance(exc, KeyboardInterrupt | Interrupted):
            raise Interrupted(f"interrupted; {note}") from exc
        if isinstance(exc, XvatoolError):
            exc.message += f"; {note}"
        raise exc


def spool_name(disk: DiskInfo) -> str:
    """A file name for a disk's spool: its VDI uuid, with anything but letters, digits, - replaced.

    Not the disk id: `Ref:n` ids are made up afresh by every metadata export
    (xva-format.md §4.4).
    """
    return re.sub(r"[^A-Za-z0-9-]", "_", disk.vdi_uuid) + ".tar"


def disks_key(metadata: Metadata) -> str:
    """The disks of a metadata document as a journal key field: `vdi-uuid:size,…`, sorted.

    Journal records are keyed by VDI uuid too: the `Ref:n` ids change from one metadata export
    to the next, the VDIs do not.
    """
    return ",".join(sorted(f"{d.vdi_uuid}:{d.virtual_size}" for d in metadata.disks))


def spool_digest(spool: Path) -> str:
    """XXH3-128 of a spool file, to re-check a journal's claim before reusing it."""
    hasher = xxhash.xxh3_128()
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    with open_local(spool, "rb") as fh:
        stream = LocalStream(fh, str(spool))
        while n := stream.readinto(buf):
            hasher.update(view[:n])
    return str(hasher.hexdigest())


class DiskDigests:
    """The manifest digests of a parallel export's disks: from the download, or from a reused spool."""

    def __init__(self, spool_dir: Path) -> None:
        self._spool_dir = spool_dir
        self._sha256: dict[str, str] = {}
        self.kinds: set[str] = set()
        self._lock = threading.Lock()  # guards both: disks finish in their own threads

    def add(self, disk: DiskInfo, sha256: str, kinds: Iterable[str]) -> None:
        with self._lock:
            self._sha256[disk.vdi_uuid] = sha256
            self.kinds.update(kinds)

    def of(self, disk: DiskInfo) -> str:
        """A disk's digest; a spool reused from an earlier run is read (and verified) once for it."""
        if disk.vdi_uuid not in self._sha256:
            spool = self._spool_dir / spool_name(disk)
            digester = DiskDigester()
            with open_local(spool, "rb") as fh:
                stream = LocalStream(fh, str(spool))
                reader = XvaReader.for_disk_stream(stream, size=disk.virtual_size, source=str(spool))
                for chunk in reader.chunks():
                    digester.feed(disk.id, chunk.offset, chunk.data)
            self.add(disk, digester.digest(disk.id, disk.virtual_size), reader.checksum_kinds)
        return self._sha256[disk.vdi_uuid]


def assemble_by_copy(output: AtomicFile, ova_xml: bytes, spools: Sequence[tuple[str, Path]]) -> int:
    """Write the uncompressed XVA of `ova_xml` and the verified `vdi/` spools; the bytes written.

    `spools` pairs each disk id with its spool, in the order the importer reads disks. Headers are
    parsed with the standard library (`tarfile`); the spools were verified while they downloaded,
    so anything but `vdi/` members ending in the end marker is refused as a `FormatError`.
    """
    out = output.fileno()
    written = _write(out, b"".join(bytes(piece) for piece in ova_xml_members(ova_xml)), output.path)
    for disk_id, spool in spools:
        try:
            src = os.open(spool, os.O_RDONLY)
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=str(spool)) from exc
        try:
            written += _copy_members(src, out, disk_id, spool, output.path)
        finally:
            os.close(src)
    return written + _write(out, END_OF_ARCHIVE, output.path)


def _copy_members(src: int, out: int, disk_id: str, spool: Path, out_path: Path) -> int:
    """One spool's members, renamed `<disk_id>/N`, into `out`; the bytes written."""
    written = 0
    offset = 0
    while True:
        block = os.pread(src, BLOCK_SIZE, offset)
        if len(block) < BLOCK_SIZE:
            raise FormatError("spool ends without the tar end marker", file=str(spool), offset=offset)
        if not any(block):
            return written
        try:
            member = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except tarfile.HeaderError as exc:
            raise FormatError(f"bad tar header in spool: {exc}", file=str(spool), offset=offset) from exc
        if not member.isreg() or not member.name.startswith(VDI_TAR_PREFIX):
            raise FormatError(f"unexpected member {member.name!r} in spool", file=str(spool), offset=offset)
        name = disk_id + "/" + member.name[len(VDI_TAR_PREFIX) :]
        written += _write(out, v7_header(name, member.size), out_path)
        _copy(src, out, offset + BLOCK_SIZE, member.size, spool, out_path)
        written += member.size + _write(out, padding(member.size), out_path)
        offset += BLOCK_SIZE + member.size + len(padding(member.size))


def _write(fd: int, data: bytes, path: Path) -> int:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise LocalIOError(f"cannot write: {exc.strerror}", path=str(path)) from exc
    return len(data)


def _copy(src: int, out: int, offset: int, count: int, spool: Path, out_path: Path) -> None:
    """`count` bytes at `offset` of `src` to the end of `out`: in the kernel where it can."""
    try:
        while count:
            n = os.copy_file_range(src, out, count, offset)
            if n == 0:
                raise FormatError("spool is shorter than its headers say", file=str(spool), offset=offset)
            offset += n
            count -= n
        return
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise LocalIOError(f"cannot copy: {exc.strerror}", path=str(out_path)) from exc
    while count:  # file systems (or kernels) without copy_file_range: through a buffer
        data = os.pread(src, min(count, READ_SIZE), offset)
        if not data:
            raise FormatError("spool is shorter than its headers say", file=str(spool), offset=offset)
        _write(out, data, out_path)
        offset += len(data)
        count -= len(data)

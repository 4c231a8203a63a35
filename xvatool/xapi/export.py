"""Exporting a whole VM to an XVA file: one verified stream, or one stream per disk in parallel.

`stream` mode is one `GET /export` (xapi-protocol.md §3.1). The body is teed into `OUT.part`
while the format reader parses it, so every chunk checksum is verified in the same pass; a
corrupt chunk fails the export and no OUT appears. With compression the host compresses the
whole stream (`use_compression`); the reader verifies the decompressed stream while the
compressed bytes are written.

`parallel` mode asks `GET /export_metadata` (export_snapshots=false, §3.2) for the host's ova.xml
and fetches every disk at once with `GET /export_raw_vdi?format=tar` (§3.5). Each `vdi/` tar
stream (xva-format.md §3.5) is verified chunk by chunk as it arrives and spooled to
`OUT.part.d/<disk>.tar`; when all disks are there they are assembled into a standard XVA: ova.xml,
then every disk's members renamed `vdi/N` → `Ref:x/N`, in byte-wise id order (§3.4). The host
offers no ranges (§4), so resuming is per disk: the journal `OUT.xvatool-journal.json` marks a
disk (by VDI uuid) done with the SHA-256 of its spool, and `--resume` re-hashes the spools and
fetches only the rest.

This module also holds the tee that verifies while copying, which imports use too.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from xvatool._types import Compression, Readable, Writable
from xvatool.errors import (
    ChecksumError,
    FormatError,
    Interrupted,
    LocalIOError,
    ResumeError,
    TransferError,
    TruncatedError,
    UsageError,
    location_context,
)
from xvatool.xapi.journal import (
    DEFAULT_RETRIES,
    Journal,
    ProgressBars,
    ProgressFactory,
    export_journal_path,
    run_parallel,
    with_retries,
)
from xvatool.xapi.vms import SnapshotPolicy, VmRef, export_source, find_vm
from xvatool.xva.checksum import Hasher, hexdigest, split_checksum_name
from xvatool.xva.disk import CHUNK_SIZE
from xvatool.xva.tarstream import END_OF_ARCHIVE, TarReader, padding, v7_header

if TYPE_CHECKING:
    from xvatool.xapi.session import Session
    from xvatool.xva.ovaxml import DiskInfo, Metadata

__all__ = [
    "ExportResult",
    "ExportedDisk",
    "TeeReader",
    "TransferMode",
    "assemble_xva",
    "export_stream",
    "export_vm",
    "read_ova_xml_tar",
    "receive_vdi_tar",
]

_log = logging.getLogger(__name__)

TransferMode = Literal["stream", "parallel"]
MAX_OVA_XML_SIZE = 64 << 20
"""Bytes; the same cap the format reader applies."""
VDI_TAR_PREFIX = "vdi/"
"""Member names of a `/export_raw_vdi?format=tar` stream: `vdi/%08d` (xva-format.md §3.5)."""
_COUNTER = re.compile(r"\d{8}")
SPOOL_BUFFER_SIZE = CHUNK_SIZE
TAIL_SIZE = 4096
"""Bytes of a download kept by `TeeReader.tail`."""


# -- shared: the tee that verifies while copying -----------------------------------------------------------


class TeeReader:
    """A Readable that copies what is read into `sink` and `hasher`: verify-while-copying.

    The parser reads through the tee, so the copy contains exactly the bytes that were verified
    (style.md 7). `progress` gets the byte count of every read.
    """

    def __init__(
        self,
        stream: Readable,
        sink: Writable | None = None,
        *,
        hasher: Hasher | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._stream = stream
        self._readinto = getattr(stream, "readinto", None)
        self._sink = sink
        self._hasher = hasher
        self._progress = progress
        self.count = 0
        self.tail = b""
        """The last `TAIL_SIZE` bytes read, to recognise an inline error page after a failure."""

    def readinto(self, buf: bytearray | memoryview) -> int:
        view = memoryview(buf)
        if self._readinto is not None:
            n = int(self._readinto(view))
        else:
            data = self._stream.read(len(view))
            n = len(data)
            view[:n] = data
        if n:
            got = view[:n]
            if self._sink is not None:
                self._sink.write(got)
            if self._hasher is not None:
                self._hasher.update(got)
            self.count += n
            self.tail = (self.tail + bytes(got[-TAIL_SIZE:]))[-TAIL_SIZE:]
            if self._progress is not None:
                self._progress(n)
        return n

    def read(self, size: int = -1) -> bytes:
        buf = bytearray(size if size >= 0 else SPOOL_BUFFER_SIZE)
        return bytes(buf[: self.readinto(buf)])

    def drain(self) -> None:
        """Read to the end of the stream, so the copy holds everything the host sent."""
        buf = bytearray(SPOOL_BUFFER_SIZE)
        while self.readinto(buf):
            pass


# -- pure: the vdi/ tar stream and assembling an XVA ------------------------------------------


def receive_vdi_tar(stream: Readable, *, size: int, source: str) -> int:
    """Verify one `vdi/` tar stream (xva-format.md §3.5) as it is read; return the disk bytes covered.

    Checks: names `vdi/%08d` with strictly increasing counters, each data member followed by its
    checksum member whose digest matches, offsets following the host's reconstruction rule (§3.4)
    covering exactly `size` bytes, and the end-of-archive marker. Raises `ChecksumError`,
    `TruncatedError` or `FormatError` naming `source` and the member.
    """
    reader = TarReader(stream)
    buf = bytearray(CHUNK_SIZE)
    offset = 0
    first_len: int | None = None
    last = -1
    with location_context(file=source):
        while (member := reader.next_member()) is not None:
            name = member.name
            counter_text = name[len(VDI_TAR_PREFIX) :]
            if not name.startswith(VDI_TAR_PREFIX) or not _COUNTER.fullmatch(counter_text):
                raise FormatError(
                    f"unexpected member in a vdi tar stream (want {VDI_TAR_PREFIX}NNNNNNNN)",
                    code="vdi-tar-name",
                    member=name,
                    offset=member.header_offset,
                )
            counter = int(counter_text)
            if counter <= last:
                raise FormatError("chunk counter does not increase", code="chunk-order", member=name)
            if member.size > CHUNK_SIZE:
                raise FormatError(
                    f"chunk of {member.size} bytes exceeds 1 MiB", code="chunk-size", member=name
                )
            if first_len is None:
                first_len = member.size
            gap = counter - last - 1
            view = memoryview(buf)[: member.size]
            reader.readinto(view)
            check = reader.next_member()
            split = split_checksum_name(check.name) if check is not None else None
            if check is None or split is None or split[0] != name:
                raise FormatError(
                    "data member is not followed by its checksum member",
                    code="missing-checksum",
                    member=name,
                    offset=member.header_offset,
                )
            expected = reader.read_member(128).decode("ascii", "replace")
            got = hexdigest(split[1], view)
            if expected != got:
                raise ChecksumError(check.name, expected, got, offset=member.data_offset, file=source)
            offset += gap * first_len + member.size
            last = counter
        if not reader.end_seen:
            raise TruncatedError(
                "vdi tar stream ends without the end-of-archive marker", offset=reader.position
            )
        if offset < size:
            raise TruncatedError(f"vdi tar stream covers {offset} of {size} bytes", offset=reader.position)
    return offset


def read_ova_xml_tar(stream: Readable, *, source: str) -> bytes:
    """The ova.xml bytes of a metadata-only tar (`/export_metadata`, §3.2)."""
    reader = TarReader(stream)
    with location_context(file=source):
        member = reader.next_member()
        if member is None or member.name != "ova.xml":
            raise FormatError("metadata export does not start with ova.xml", code="no-ova-xml")
        return reader.read_member(MAX_OVA_XML_SIZE)


def _renamed_members(spool: Path, disk_id: str) -> Iterator[bytes | memoryview]:
    """The members of a verified `vdi/` spool, renamed `<disk_id>/N` in the host's V7 dialect."""
    buf = bytearray(SPOOL_BUFFER_SIZE)
    with spool.open("rb") as fh:
        reader = TarReader(fh)
        for member in reader:
            yield v7_header(disk_id + "/" + member.name[len(VDI_TAR_PREFIX) :], member.size)
            while n := reader.readinto(buf):
                yield memoryview(buf)[:n]
            pad = padding(member.size)
            if pad:
                yield pad


def assemble_xva(
    out: Writable, ova_xml: bytes, spools: Sequence[tuple[str, Path]], *, compression: Compression = "none"
) -> int:
    """Write a standard XVA from the host's ova.xml and verified per-disk `vdi/` spools.

    `spools` pairs each disk id with its spool and must already be in the order the importer
    reads disks (byte-wise id order, xva-format.md §3.4). Returns the bytes written to `out`.
    """
    from xvatool.xva.writer import WriteStats, write_pieces

    def pieces() -> Iterator[bytes | memoryview]:
        yield v7_header("ova.xml", len(ova_xml))
        yield ova_xml
        yield padding(len(ova_xml))
        for disk_id, spool in spools:
            yield from _renamed_members(spool, disk_id)
        yield END_OF_ARCHIVE

    return write_pieces(out, pieces(), WriteStats(), compression=compression).output_bytes


# -- export to a file -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedDisk:
    """One disk of a parallel export: id in the archive, source VDI, spool digest."""

    id: str
    vdi_uuid: str
    virtual_size: int
    sha256: str


@dataclass(frozen=True)
class ExportResult:
    """What `export_vm` wrote."""

    path: Path
    vm_uuid: str
    mode: TransferMode
    compression: Compression
    bytes_written: int
    snapshot_used: bool
    disks: list[ExportedDisk] = field(default_factory=list)
    resumed_disks: int = 0

    def to_json(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "vm": {"uuid": self.vm_uuid},
            "mode": self.mode,
            "compression": self.compression,
            "bytes": self.bytes_written,
            "snapshot": self.snapshot_used,
            "disks": [d.__dict__ for d in self.disks],
            "resumed_disks": self.resumed_disks,
        }


def _check_options(mode: str, compression: str, snapshot: str, retries: int) -> None:
    if mode not in ("stream", "parallel"):
        raise UsageError(f"unknown mode {mode!r} (stream or parallel)")
    if compression not in ("none", "gzip", "zstd"):
        raise UsageError(f"unknown compression {compression!r} (none, gzip or zstd)")
    if snapshot not in ("auto", "never"):
        raise UsageError(f"unknown snapshot policy {snapshot!r} (auto or never)")
    if retries < 0:
        raise UsageError("--retries must be 0 or more")


def export_vm(
    session: Session,
    vm: str,
    out_path: str | os.PathLike[str],
    *,
    mode: TransferMode = "stream",
    compression: Compression = "none",
    snapshot: SnapshotPolicy = "auto",
    retries: int = DEFAULT_RETRIES,
    resume: bool = False,
    progress: ProgressFactory | None = None,
) -> ExportResult:
    """Export VM `vm` (uuid or unique name) to the XVA file `out_path`, verified.

    The file appears only when complete and verified. A running VM is exported through a
    snapshot destroyed afterwards. Example::

        with connect(url, "root", password) as host:
            export_vm(host, "web-01", "web-01.xva", mode="parallel", compression="zstd")
    """
    _check_options(mode, compression, snapshot, retries)
    out = Path(out_path)
    journal_path = export_journal_path(out)
    if out.exists():
        raise UsageError(f"{out} exists; remove it or choose another name")
    if journal_path.exists() and not resume:
        raise UsageError(f"{journal_path} exists from an interrupted export; use --resume or remove it")
    if journal_path.exists() and mode == "stream":
        raise ResumeError(
            "journal is from a parallel export; resume with --mode parallel", journal=str(journal_path)
        )
    found = find_vm(session, vm)
    with export_source(session, found, snapshot=snapshot) as source:
        if mode == "stream":
            written = _export_stream_file(session, source, out, compression, retries, progress)
            return ExportResult(out, found.uuid, mode, compression, written, source.ref != found.ref)
        disks, written, resumed = _export_parallel_file(
            session, source, out, compression=compression, retries=retries, resume=resume, progress=progress,
            snapshotted=source.ref != found.ref,
        )  # fmt: skip
        return ExportResult(
            out, found.uuid, mode, compression, written, source.ref != found.ref, disks, resumed
        )


def _export_params(source: VmRef, compression: Compression) -> dict[str, str]:
    params = {"uuid": source.uuid}
    if compression != "none":
        # `true`/`gzip` → gzip, `zstd` → zstd; older hosts silently send plain tar (§3.1).
        params["use_compression"] = compression
    return params


@contextmanager
def _host_export(session: Session, source: VmRef, compression: Compression) -> Iterator[Readable]:
    """One `GET /export` with its own task; the task's outcome is checked when the body is done."""
    from xvatool.xapi.tasks import create_task, destroy_task, wait_task
    from xvatool.xapi.transfer import open_download

    task = create_task(session, f"xvatool export {source.uuid}")
    try:
        with open_download(session, "/export", _export_params(source, compression), task=task) as body:
            yield body
        wait_task(session, task)
    finally:
        destroy_task(session, task)


def _verify_xva_stream(tee: TeeReader, *, source: str) -> None:
    """Parse an XVA stream to its end, verifying every chunk, then read what follows the tar."""
    from xvatool.xva.reader import XvaReader

    with _transport_errors(tee):
        reader = XvaReader(tee, source=source)
        for _chunk in reader.chunks():
            pass
        tee.drain()


def _export_stream_file(
    session: Session,
    source: VmRef,
    out: Path,
    compression: Compression,
    retries: int,
    progress: ProgressFactory | None,
) -> int:
    """Stream mode: `GET /export` teed into `OUT.part` while the reader verifies it."""
    from xvatool.xva.convert import atomic_output

    bars = ProgressBars(progress)
    update = bars.new("total", None)

    def attempt() -> int:
        with atomic_output(out) as fh, _host_export(session, source, compression) as body:
            tee = TeeReader(body, _FileSink(fh, out), progress=update)
            _verify_xva_stream(tee, source=f"{session.url}/export")
            return tee.count

    try:
        return with_retries(attempt, retries=retries, what=f"export of {source.uuid}")
    finally:
        bars.close()


class _FileSink:
    """Writes to a file, turning OSError into LocalIOError naming the path."""

    def __init__(self, fh: IO[bytes], path: Path) -> None:
        self._fh = fh
        self._path = path

    def write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            raise LocalIOError(f"cannot write: {exc.strerror}", path=str(self._path)) from exc


@contextmanager
def export_stream(
    session: Session,
    vm: str,
    *,
    compression: Compression = "none",
    snapshot: SnapshotPolicy = "auto",
) -> Iterator[Readable]:
    """The host's XVA of `vm` as a Readable, for piping elsewhere (e.g. straight into an import).

    The stream is not verified here: the consumer reads it through its own `XvaReader` (a tee
    costs nothing extra). A snapshot taken for a running VM lives until the block exits. Not
    retried: a live stream cannot be replayed. Example::

        with export_stream(src, "web-01") as body:
            import_stream(dst, lambda: iter(lambda: body.read(1 << 20), b""), None)
    """
    found = find_vm(session, vm)
    with (
        export_source(session, found, snapshot=snapshot) as source,
        _host_export(session, source, compression) as body,
    ):
        yield body


def _export_parallel_file(
    session: Session,
    source: VmRef,
    out: Path,
    *,
    compression: Compression,
    retries: int,
    resume: bool,
    progress: ProgressFactory | None,
    snapshotted: bool = False,
) -> tuple[list[ExportedDisk], int, int]:
    """Parallel mode: metadata, every disk at once into spools, then assembly into OUT.

    Returns (disks, bytes written, disks reused from a previous run).
    """
    from xvatool.xva.convert import atomic_output
    from xvatool.xva.ovaxml import Metadata

    journal_path = export_journal_path(out)
    spool_dir = out.with_name(out.name + ".part.d")
    ova_xml = with_retries(
        lambda: _fetch_metadata(session, source), retries=retries, what=f"metadata of {source.uuid}"
    )
    with location_context(file=f"{session.url}/export_metadata"):
        ova_xml = without_snapshot_identity(ova_xml)
        metadata = Metadata.from_bytes(ova_xml)
    disks = metadata.disks
    key = {"host": session.url, "vm": source.uuid, "mode": "parallel", "disks": disks_key(metadata)}
    if resume and journal_path.exists():
        try:
            journal = Journal.open_for_resume(journal_path, kind="export", key=key)
        except ResumeError as exc:
            if snapshotted:
                exc.message += (
                    "; note: a running VM is exported from a new snapshot each time, so its disks "
                    "cannot be resumed (the journal of a halted VM can)"
                )
            raise
    else:
        journal = Journal.create(journal_path, kind="export", key=key)
    try:
        spool_dir.mkdir(exist_ok=True)
    except OSError as exc:
        raise LocalIOError(f"cannot create spool folder: {exc.strerror}", path=str(spool_dir)) from exc
    digests: dict[str, str] = {}
    todo: list[DiskInfo] = []
    for disk in disks:
        record = journal.disk(disk.vdi_uuid)
        spool = spool_dir / spool_name(disk)
        if record is not None and record.done and record.digest and spool.is_file():
            if file_sha256(spool) == record.digest:  # re-check what the journal claims
                digests[disk.vdi_uuid] = record.digest
                continue
            _log.warning(
                "spool of VDI %s does not match its journal digest; fetching it again", disk.vdi_uuid
            )
        journal.set_disk(disk.vdi_uuid, size=disk.virtual_size)
        journal.reset_disk(disk.vdi_uuid)
        todo.append(disk)
    bars = ProgressBars(progress)
    total = bars.new("total", None)
    stop = threading.Event()
    jobs = [
        _disk_fetcher(
            session,
            disk,
            spool_dir / spool_name(disk),
            journal,
            retries,
            _stoppable(bars.new(disk.id, None, also=total), stop),
        )
        for disk in todo
    ]
    try:
        for disk, digest in zip(todo, run_parallel(jobs, stop=stop), strict=True):
            digests[disk.vdi_uuid] = digest
    finally:
        bars.close()
    spools = [(d.id, spool_dir / spool_name(d)) for d in disks]
    with atomic_output(out) as fh:
        written = assemble_xva(_FileSink(fh, out), ova_xml, spools, compression=compression)
    journal.remove()
    remove_tree(spool_dir)
    exported = [ExportedDisk(d.id, d.vdi_uuid, d.virtual_size, digests[d.vdi_uuid]) for d in disks]
    return exported, written, len(disks) - len(todo)


def without_snapshot_identity(ova_xml: bytes) -> bytes:
    """The metadata of a snapshot made into that of a plain halted VM, as `/export` does (§3.1).

    `/export_metadata` of our temporary snapshot keeps `is_a_snapshot`, and an archive whose only
    VM is a snapshot has no VM to import. `/export` blanks the snapshot fields and forces the
    power state to Halted; this does the same. Any other document is returned unchanged.
    """
    from xvatool.xva.ovaxml import DateTime, Metadata

    metadata = Metadata.from_bytes(ova_xml)
    vms = metadata.of_class("VM")
    if len(vms) != 1 or vms[0].snapshot.get("is_a_snapshot") is not True:
        return ova_xml
    plain = Metadata(copy.deepcopy(metadata.version), copy.deepcopy(metadata.objects))
    record = plain.of_class("VM")[0].snapshot
    record["is_a_snapshot"] = False
    record["snapshot_of"] = "OpaqueRef:NULL"
    record["snapshot_time"] = DateTime("19700101T00:00:00Z")
    record["power_state"] = "Halted"
    return plain.to_bytes()


def _stoppable(update: Callable[[int], None], stop: threading.Event) -> Callable[[int], None]:
    """A progress callback that aborts its download once `stop` is set (Ctrl-C in the main thread)."""

    def checked(n: int) -> None:
        if stop.is_set():
            raise Interrupted("interrupted; the journal was kept for --resume")
        update(n)

    return checked


def _fetch_metadata(session: Session, source: VmRef) -> bytes:
    from xvatool.xapi.tasks import managed_task, wait_task
    from xvatool.xapi.transfer import open_download

    params = {"uuid": source.uuid, "export_snapshots": "false"}  # §3.2: snapshots otherwise included
    with managed_task(session, f"xvatool export_metadata {source.uuid}") as task:
        with open_download(session, "/export_metadata", params, task=task) as body:
            tee = TeeReader(body)
            with _transport_errors(tee):
                ova_xml = read_ova_xml_tar(tee, source=f"{session.url}/export_metadata")
                tee.drain()
        wait_task(session, task)
    return ova_xml


def _disk_fetcher(
    session: Session,
    disk: DiskInfo,
    spool: Path,
    journal: Journal,
    retries: int,
    update: Callable[[int], None],
) -> Callable[[], str]:
    """A job fetching one disk into its spool, verified, retried; journals it done."""
    from xvatool.xapi.tasks import managed_task, wait_task
    from xvatool.xapi.transfer import open_download

    params = {"vdi": disk.vdi_uuid, "format": "tar"}
    where = f"{session.url}/export_raw_vdi?vdi={disk.vdi_uuid}"
    part = spool.with_name(spool.name + ".part")

    def attempt() -> str:
        hasher = hashlib.sha256()
        with managed_task(session, f"xvatool export_raw_vdi {disk.vdi_uuid}") as task:
            try:
                fh = part.open("wb")
            except OSError as exc:
                raise LocalIOError(f"cannot create spool: {exc.strerror}", path=str(part)) from exc
            with fh, open_download(session, "/export_raw_vdi", params, task=task) as body:
                tee = TeeReader(body, _FileSink(fh, part), hasher=hasher, progress=update)
                with _transport_errors(tee):
                    receive_vdi_tar(tee, size=disk.virtual_size, source=where)
                    tee.drain()
                fh.flush()
                os.fsync(fh.fileno())
            wait_task(session, task)
        os.replace(part, spool)
        digest = hasher.hexdigest()
        journal.mark_disk_done(disk.vdi_uuid, digest)
        return digest

    return lambda: with_retries(attempt, retries=retries, what=f"disk {disk.id} ({disk.vdi_uuid})")


INLINE_ERROR_MARK = b"HTTP/1."
"""A failure after the 200 is written into the body as a whole HTTP response (§3.0, §5 item 1)."""


@contextmanager
def _transport_errors(tee: TeeReader) -> Iterator[None]:
    """Map what a broken download looks like to the format layer into a retryable TransferError.

    A cut connection ends the stream early (`TruncatedError`); an inline `HTTP/1.1 500` after the
    200 turns up as garbage where a tar header should be. A checksum mismatch stays a
    `ChecksumError`: the host sent bad data, and that is reported, not retried.
    """
    try:
        yield
    except ChecksumError:
        raise
    except TruncatedError as exc:
        raise TransferError(f"download ended early: {exc}") from exc
    except FormatError as exc:
        if INLINE_ERROR_MARK in tee.tail:
            raise TransferError(f"host reported an error inside the stream: {exc}") from exc
        raise


def spool_name(disk: DiskInfo) -> str:
    """A file name for a disk's spool: its VDI uuid, with anything but letters, digits, - replaced.

    Not the disk id: `Ref:n` ids are made up afresh by every metadata export (§3.7).
    """
    return re.sub(r"[^A-Za-z0-9-]", "_", disk.vdi_uuid) + ".tar"


def disks_key(metadata: Metadata) -> str:
    """The disks of a metadata document as a journal key field: `vdi-uuid:size,…`, sorted.

    Journal records are keyed by VDI uuid too: the `Ref:n` ids change from one metadata export
    to the next, the VDIs do not.
    """
    return ",".join(sorted(f"{d.vdi_uuid}:{d.virtual_size}" for d in metadata.disks))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    buf = bytearray(SPOOL_BUFFER_SIZE)
    with path.open("rb") as fh:
        while n := fh.readinto(buf):
            h.update(memoryview(buf)[:n])
    return h.hexdigest()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

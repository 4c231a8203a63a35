"""Exporting a whole VM to an XVA file: one verified stream, or one stream per disk in parallel.

`stream` mode is one `GET /export` (xapi-protocol.md §3.1). The body is teed into `OUT.part`
while the format reader parses it, so every chunk checksum is verified in the same pass; a
corrupt chunk fails the export and no OUT appears. With compression the host compresses the
whole stream (`use_compression`); the reader verifies the decompressed stream while the
compressed bytes are written.

`parallel` mode asks `GET /export_metadata` (export_snapshots=false, §3.2) for the host's ova.xml
and fetches every disk at once with `GET /export_raw_vdi?format=tar` (§3.5). Each `vdi/` tar
stream (xva-format.md §3.5) is verified chunk by chunk as it arrives and spooled to
`OUT.part.d/<disk>.tar` (`xva.reader.read_disk_stream`); when all disks are there they are
assembled into a standard XVA (`xva.assemble`). The host offers no ranges (§4), so resuming is
per disk: the journal `OUT.xvatool-journal.json` marks a disk (by VDI uuid) done with the SHA-256
of its spool, and `--resume` re-hashes the spools and fetches only the rest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal

from xvatool._streams import TeeReader
from xvatool._types import Compression, Readable
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
from xvatool.xva.disk import CHUNK_SIZE

if TYPE_CHECKING:
    from xvatool.xapi.session import Session
    from xvatool.xva.ovaxml import DiskInfo, Metadata

__all__ = [
    "ExportResult",
    "ExportedDisk",
    "TeeReader",
    "TransferMode",
    "export_stream",
    "export_vm",
    "fetch_metadata",
    "transport_errors",
]

_log = logging.getLogger(__name__)

TransferMode = Literal["stream", "parallel"]
SPOOL_BUFFER_SIZE = CHUNK_SIZE


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
    from xvatool.xapi.tasks import create_task, destroy_task, task_reason, wait_task
    from xvatool.xapi.transfer import open_download

    task = create_task(session, f"xvatool export {source.uuid}")
    try:
        with (
            task_reason(session, task),
            open_download(session, "/export", _export_params(source, compression), task=task) as body,
        ):
            yield body
        wait_task(session, task)
    finally:
        destroy_task(session, task)


def _verify_xva_stream(tee: TeeReader, *, source: str) -> None:
    """Parse an XVA stream to its end, verifying every chunk, then read what follows the tar."""
    from xvatool.xva.reader import XvaReader

    with transport_errors(tee):
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
    from xvatool._files import atomic_output

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
    from xvatool._files import atomic_output
    from xvatool.xva.assemble import assemble_xva
    from xvatool.xva.ovaxml import Metadata

    journal_path = export_journal_path(out)
    spool_dir = out.with_name(out.name + ".part.d")
    ova_xml = with_retries(
        lambda: fetch_metadata(session, source), retries=retries, what=f"metadata of {source.uuid}"
    )
    with location_context(file=f"{session.url}/export_metadata"):
        parsed = Metadata.from_bytes(ova_xml)
        metadata = parsed.without_snapshot_identity()
        if metadata is not parsed:
            ova_xml = metadata.to_bytes()
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


def _stoppable(update: Callable[[int], None], stop: threading.Event) -> Callable[[int], None]:
    """A progress callback that aborts its download once `stop` is set (Ctrl-C in the main thread)."""

    def checked(n: int) -> None:
        if stop.is_set():
            raise Interrupted("interrupted; the journal was kept for --resume")
        update(n)

    return checked


def fetch_metadata(session: Session, source: VmRef) -> bytes:
    """The ova.xml of `source` from `GET /export_metadata` (§3.2), without its snapshots.

    Public because a parallel export and a parallel migrate both start from it: the disks are
    fetched one by one, and the document says which. Not retried here: callers wrap it in
    `with_retries`. A lasting task failure raises its `XapiError` (`task_reason`).
    """
    from xvatool.xapi.tasks import managed_task, task_reason, wait_task
    from xvatool.xapi.transfer import open_download
    from xvatool.xva.assemble import read_ova_xml_tar

    params = {"uuid": source.uuid, "export_snapshots": "false"}  # §3.2: snapshots otherwise included
    with managed_task(session, f"xvatool export_metadata {source.uuid}") as task:
        with (
            task_reason(session, task),
            open_download(session, "/export_metadata", params, task=task) as body,
        ):
            tee = TeeReader(body)
            with transport_errors(tee):
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
    from xvatool.xapi.tasks import managed_task, task_reason, wait_task
    from xvatool.xapi.transfer import open_download
    from xvatool.xva.reader import read_disk_stream

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
            with (
                fh,
                task_reason(session, task),
                open_download(session, "/export_raw_vdi", params, task=task) as body,
            ):
                tee = TeeReader(body, _FileSink(fh, part), hasher=hasher, progress=update)
                with transport_errors(tee):
                    read_disk_stream(tee, size=disk.virtual_size, source=where)
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
def transport_errors(tee: TeeReader) -> Iterator[None]:
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

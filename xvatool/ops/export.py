"""Exporting a whole VM to an XVA file: one verified stream, or one stream per disk in parallel.

`stream` mode is one `GET /export` (xapi-protocol.md §3.1). The body is teed into the output's
temporary file while the format reader parses it, so every chunk checksum is verified in the same
pass; a corrupt chunk fails the export and no OUT appears. With compression the host compresses
the whole stream (`use_compression`); the reader verifies the decompressed stream while the
compressed bytes are written.

`parallel` mode asks `GET /export_metadata` (export_snapshots=false, §3.2) for the host's ova.xml
and fetches every disk at once with `GET /export_raw_vdi?format=tar` (§3.5). Each `vdi/` tar
stream (xva-format.md §3.5) is verified chunk by chunk as it arrives and spooled to
`OUT.part.d/<disk>.tar`; when all disks are there they are assembled into a standard XVA
(`ops.spools.assemble_by_copy`: new member headers, the data copied by the kernel). The host
offers no ranges (§4), so resuming is per disk: the journal `OUT.xvatool-journal.json` marks a
disk (by VDI uuid) done with the XXH3-128 of its spool, and `--resume` re-hashes the spools and
fetches only the rest.

Example::

    with connect(url, "root", password) as host:
        export_vm(host, "web-01", "web-01.xva", mode="parallel", compression="zstd")
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

import xxhash

from xvatool._files import AtomicFile, atomic_output, remove_tree
from xvatool._progress import Progress, ProgressGroup
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool._streams import TeeReader
from xvatool._types import Compression, Readable
from xvatool.errors import (
    ChecksumError,
    FormatError,
    LocalIOError,
    ResumeError,
    TransferError,
    TruncatedError,
    UsageError,
    location_context,
)
from xvatool.ops.manifest import ArchiveDigest, DiskDigester, InFlightDigest, archive_digest
from xvatool.ops.parallel import run_parallel, stop_check
from xvatool.ops.spools import DiskDigests, assemble_by_copy, spool_digest, spool_name
from xvatool.xapi.journal import Journal, export_journal_path
from xvatool.xapi.session import Session
from xvatool.xapi.tasks import managed_task, task_reason, wait_task
from xvatool.xapi.transfer import open_download
from xvatool.xapi.vmdata import open_export, open_metadata_export
from xvatool.xapi.vms import SnapshotPolicy, VmRef, export_source, find_vm
from xvatool.xva.assemble import assemble_xva, read_ova_xml_tar
from xvatool.xva.checksum import Hasher
from xvatool.xva.ovaxml import DiskInfo, Metadata
from xvatool.xva.reader import XvaReader

__all__ = [
    "ExportResult",
    "ExportedDisk",
    "TransferMode",
    "export_stream",
    "export_vm",
    "fetch_metadata",
    "transport_errors",
]

_log = logging.getLogger(__name__)

TransferMode = Literal["stream", "parallel"]
SPOOL_READ_SIZE = 1 << 20


# -- export to a file -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedDisk:
    """One disk of a parallel export: id in the archive, source VDI, and the XXH3-128 digest of
    its `vdi/` stream as spooled (what the journal re-checks on `--resume`).
    """

    id: str
    vdi_uuid: str
    virtual_size: int
    spool_digest: str


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
    digest: ArchiveDigest | None = None
    """The archive's SHA-256 and each disk's, computed in flight (`export_vm(digest=True)`)."""

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


def _check_options(mode: str, compression: str, snapshot: str) -> None:
    if mode not in ("stream", "parallel"):
        raise UsageError(f"unknown mode {mode!r} (stream or parallel)")
    if compression not in ("none", "gzip", "zstd"):
        raise UsageError(f"unknown compression {compression!r} (none, gzip or zstd)")
    if snapshot not in ("auto", "never"):
        raise UsageError(f"unknown snapshot policy {snapshot!r} (auto or never)")


def export_vm(
    session: Session,
    vm: str,
    out_path: str | os.PathLike[str],
    *,
    mode: TransferMode = "stream",
    compression: Compression = "none",
    snapshot: SnapshotPolicy = "auto",
    retry: RetryPolicy = DEFAULT_RETRY,
    resume: bool = False,
    digest: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export VM `vm` (uuid or unique name) to the XVA file `out_path`, verified.

    The file appears only when complete and verified. A running VM is exported through a
    snapshot destroyed afterwards. Transient failures are retried as `retry` allows, each
    attempt resuming what the previous ones completed. `digest` also computes, while the bytes
    stream, the SHA-256 of the archive and of each disk (`ExportResult.digest`, what a backup
    manifest records), so the file is never read again for them. Example::

        with connect(url, "root", password) as host:
            export_vm(host, "web-01", "web-01.xva", mode="parallel", compression="zstd")
    """
    _check_options(mode, compression, snapshot)
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
    with export_source(session, found, snapshot=snapshot, retry=retry) as source:
        snapshotted = source.ref != found.ref
        if mode == "stream":
            job = _Job(session, source, out, compression, retry, progress)
            written, digests = _export_stream_file(job, digest)
            return ExportResult(out, found.uuid, mode, compression, written, snapshotted, digest=digests)
        parallel = _ParallelExport(_Job(session, source, out, compression, retry, progress), snapshotted)
        disks, written, resumed, digests = parallel.run(resume=resume, digest=digest)
        return ExportResult(out, found.uuid, mode, compression, written, snapshotted, disks, resumed, digests)


@dataclass(frozen=True)
class _Job:
    """What one export is: from where, to where, how."""

    session: Session
    source: VmRef
    out: Path
    compression: Compression
    retry: RetryPolicy
    progress: Progress | None


def _export_stream_file(job: _Job, digest: bool) -> tuple[int, ArchiveDigest | None]:
    """Stream mode: `GET /export` teed into the output's temporary file while the reader verifies it."""
    session, source, out, compression = job.session, job.source, job.out, job.compression
    bars = ProgressGroup(job.progress)
    total = bars.new("total", None)

    def attempt() -> tuple[int, ArchiveDigest | None]:
        with (
            atomic_output(out, overwrite=False) as fh,
            open_export(session, source.uuid, compression=compression) as body,
            InFlightDigest() if digest else contextlib.nullcontext() as digests,
        ):
            tee = TeeReader(body, _FileSink(fh, out), hasher=digests, progress=total.update)
            with transport_errors(tee):
                reader = XvaReader(tee, source=f"{session.url}/export")
                for chunk in reader.chunks():
                    if digests is not None:
                        digests.chunk(chunk)
                tee.drain()  # what follows the tar, so the copy holds everything the host sent
            if digests is None:
                return tee.count, None
            return tee.count, digests.result(tee.count, reader.compression, reader.metadata)

    try:
        return job.retry.run(attempt, what=f"export of {source.uuid}")
    finally:
        bars.close()


class _FileSink:
    """Writes to a file (hashing what it writes, if asked), turning OSError into LocalIOError."""

    def __init__(self, fh: IO[bytes], path: Path, *, hasher: Hasher | None = None) -> None:
        self._fh = fh
        self._path = path
        self._hasher = hasher

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._hasher is not None:
            self._hasher.update(data)
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
        open_export(session, source.uuid, compression=compression) as body,
    ):
        yield body


class _ParallelExport:
    """Parallel mode: metadata, every disk at once into spools, then assembly into OUT."""

    def __init__(self, job: _Job, snapshotted: bool) -> None:
        self.session = job.session
        self.source = job.source
        self.out = job.out
        self.compression: Compression = job.compression
        self.retry = job.retry
        self.progress = job.progress
        self.snapshotted = snapshotted
        self.journal_path = export_journal_path(job.out)
        self.spool_dir = job.out.with_name(job.out.name + ".part.d")

    def run(self, *, resume: bool, digest: bool) -> tuple[list[ExportedDisk], int, int, ArchiveDigest | None]:
        """Returns (disks, bytes written, disks reused from a previous run, digests if asked)."""
        source = self.source
        ova_xml = self.retry.run(
            lambda: fetch_metadata(self.session, source), what=f"metadata of {source.uuid}"
        )
        with location_context(file=f"{self.session.url}/export_metadata"):
            parsed = Metadata.from_bytes(ova_xml)
            metadata = parsed.without_snapshot_identity()
            if metadata is not parsed:
                ova_xml = metadata.to_bytes()
        disks = metadata.disks
        journal = self._journal(metadata, resume)
        self._make_spool_dir()
        spool_digests: dict[str, str] = {}
        todo: list[DiskInfo] = []
        for disk in disks:
            record = journal.disk(disk.vdi_uuid)
            spool = self.spool_dir / spool_name(disk)
            if record is not None and record.done and record.digest and spool.is_file():
                if spool_digest(spool) == record.digest:  # re-check what the journal claims
                    spool_digests[disk.vdi_uuid] = record.digest
                    continue
                _log.warning(
                    "spool of VDI %s does not match its journal digest; fetching it again", disk.vdi_uuid
                )
            todo.append(disk)
        journal.reset_disks({disk.vdi_uuid: disk.virtual_size for disk in todo})
        disk_digests = DiskDigests(self.spool_dir) if digest else None
        bars = ProgressGroup(self.progress)
        total = bars.new("total", None)
        stop = threading.Event()
        jobs = [
            self._disk_fetcher(
                disk, journal, stop_check(bars.new(disk.id, None, also=total).update, stop), disk_digests
            )
            for disk in todo
        ]
        try:
            for disk, fetched in zip(todo, run_parallel(jobs, stop=stop), strict=True):
                spool_digests[disk.vdi_uuid] = fetched
        finally:
            bars.close()
        spools = [(d.id, self.spool_dir / spool_name(d)) for d in disks]
        archive_hash = hashlib.sha256() if digest else None
        with AtomicFile(self.out, overwrite=False) as output:
            if self.compression == "none" and archive_hash is None:
                written = assemble_by_copy(output, ova_xml, spools)  # the data stays in the kernel
            else:  # the bytes pass through here anyway: to be compressed, or hashed
                sink = _FileSink(output.file, self.out, hasher=archive_hash)
                written = assemble_xva(sink, ova_xml, spools, compression=self.compression)
        digests = None
        if disk_digests is not None and archive_hash is not None:
            by_id = {d.id: disk_digests.of(d) for d in disks}
            digests = archive_digest(
                archive_hash.hexdigest(), written, self.compression, metadata, by_id, disk_digests.kinds
            )
        journal.remove()
        remove_tree(self.spool_dir)
        exported = [ExportedDisk(d.id, d.vdi_uuid, d.virtual_size, spool_digests[d.vdi_uuid]) for d in disks]
        return exported, written, len(disks) - len(todo), digests

    def _journal(self, metadata: Metadata, resume: bool) -> Journal:
        key = {
            "host": self.session.url,
            "vm": self.source.uuid,
            "mode": "parallel",
            "disks": disks_key(metadata),
        }
        if not (resume and self.journal_path.exists()):
            return Journal.create(self.journal_path, kind="export", key=key)
        try:
            return Journal.open_for_resume(self.journal_path, kind="export", key=key)
        except ResumeError as exc:
            if self.snapshotted:
                exc.message += (
                    "; note: a running VM is exported from a new snapshot each time, so its disks "
                    "cannot be resumed (the journal of a halted VM can)"
                )
            raise

    def _make_spool_dir(self) -> None:
        """`OUT.part.d`, a real folder: a link planted at that name is refused, never followed."""
        try:
            self.spool_dir.mkdir(mode=0o700)
        except FileExistsError:
            if self.spool_dir.is_symlink() or not self.spool_dir.is_dir():
                raise LocalIOError("exists and is not a folder", path=str(self.spool_dir)) from None
        except OSError as exc:
            raise LocalIOError(
                f"cannot create spool folder: {exc.strerror}", path=str(self.spool_dir)
            ) from exc

    def _disk_fetcher(
        self,
        disk: DiskInfo,
        journal: Journal,
        update: Callable[[int], None],
        disk_digests: DiskDigests | None,
    ) -> Callable[[], str]:
        """A job fetching one disk into its spool, verified, retried; journals it done."""
        session = self.session
        params = {"vdi": disk.vdi_uuid, "format": "tar"}
        where = f"{session.url}/export_raw_vdi?vdi={disk.vdi_uuid}"
        spool = self.spool_dir / spool_name(disk)

        def attempt() -> str:
            hasher = xxhash.xxh3_128()
            digester = DiskDigester() if disk_digests is not None else None
            with (
                managed_task(session, f"xvatool export_raw_vdi {disk.vdi_uuid}") as task,
                AtomicFile(spool, durable=False) as output,  # re-hashed before any reuse
            ):
                with (
                    task_reason(session, task),
                    open_download(session, "/export_raw_vdi", params, task=task) as body,
                ):
                    tee = TeeReader(body, _FileSink(output.file, spool), hasher=hasher, progress=update)
                    with transport_errors(tee):
                        reader = XvaReader.for_disk_stream(tee, size=disk.virtual_size, source=where)
                        for chunk in reader.chunks():
                            if digester is not None:  # on this disk's thread: disks hash in parallel
                                digester.feed(disk.id, chunk.offset, chunk.data)
                        tee.drain()
                wait_task(session, task)
                output.commit()
            if digester is not None and disk_digests is not None:
                disk_digests.add(disk, digester.digest(disk.id, disk.virtual_size), reader.checksum_kinds)
            digest = hasher.hexdigest()
            journal.mark_disk_done(disk.vdi_uuid, digest)
            return digest

        return lambda: self.retry.run(attempt, what=f"disk {disk.id} ({disk.vdi_uuid})")


def fetch_metadata(session: Session, source: VmRef) -> bytes:
    """The ova.xml of `source` from `GET /export_metadata` (§3.2), without its snapshots.

    Public because a parallel export and a parallel migrate both start from it: the disks are
    fetched one by one, and the document says which. Not retried here: callers run it under
    their `RetryPolicy`. A lasting task failure raises its `XapiError` (`task_reason`).
    """
    with open_metadata_export(session, source.uuid) as body:
        tee = TeeReader(body)
        with transport_errors(tee):
            ova_xml = read_ova_xml_tar(tee, source=f"{session.url}/export_metadata")
            tee.drain()
    return ova_xml


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


def disks_key(metadata: Metadata) -> str:
    """The disks of a metadata document as a journal key field: `vdi-uuid:size,…`, sorted.

    Journal records are keyed by VDI uuid too: the `Ref:n` ids change from one metadata export
    to the next, the VDIs do not.
    """
    return ",".join(sorted(f"{d.vdi_uuid}:{d.virtual_size}" for d in metadata.disks))

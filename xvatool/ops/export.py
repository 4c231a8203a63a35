"""Exporting a whole VM to an XVA file: one verified stream, or one stream per disk in parallel.

`stream` mode is one `GET /export` (docs/host-protocol.md §4.6). The body is teed into the output's
temporary file while the format reader parses it, so every chunk checksum is verified in the same
pass; a corrupt chunk fails the export and no OUT appears. With compression the host compresses
the whole stream (`use_compression`); the reader verifies the decompressed stream while the
compressed bytes are written.

`parallel` mode asks `GET /export_metadata` (host-protocol.md §4.7) for the host's ova.xml and
fetches every disk at once with `GET /export_raw_vdi?format=tar` (host-protocol.md §4.10). Each
`vdi/` tar stream (docs/xva-format.md §6) is verified chunk by chunk as it arrives and spooled to
`OUT.part.d/<disk>.tar`; when all disks are there they are assembled into a standard XVA
(`ops.spools.assemble_by_copy`: new member headers, the data copied by the kernel). The host offers
no ranges (host-protocol.md §5), so resuming is per disk: the journal (in the state folder) marks a
disk (by VDI uuid) done with the XXH3-128 of its spool, and `--resume` re-hashes the spools and
fetches only the rest.

`export_vm(digest=True)` also computes, while the bytes stream, the SHA-256 of the archive and
of each disk (what a backup manifest records), so the file is never read again for them.

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

from xvatool._files import AtomicFile, remove_tree
from xvatool._human import NOTE
from xvatool._progress import Progress, ProgressGroup
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool._streams import TeeReader
from xvatool._types import Compression, Hasher, Readable, Writable
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
from xvatool.ops.documents import disk_doc, vm_doc
from xvatool.ops.identity import Identity, snapshot_identity, with_identity
from xvatool.ops.manifest import ArchiveDigest, DiskDigester, InFlightDigest, archive_digest
from xvatool.ops.parallel import run_parallel, stop_check
from xvatool.ops.progress import disk_label, tapped, total_size, tracked
from xvatool.ops.spools import (
    DiskDigests,
    PartialExport,
    assemble_by_copy,
    disks_key,
    spool_digest,
    spool_name,
)
from xvatool.xapi.journal import Journal, StatePath
from xvatool.xapi.session import Session
from xvatool.xapi.tasks import managed_task, task_reason, wait_task
from xvatool.xapi.transfer import open_download
from xvatool.xapi.vmdata import open_export, open_metadata_export
from xvatool.xapi.vms import SnapshotPolicy, VmRef, export_source, find_vm
from xvatool.xva.assemble import assemble_xva, read_ova_xml_tar
from xvatool.xva.convert import repack_pieces
from xvatool.xva.ovaxml import DiskInfo, Metadata
from xvatool.xva.reader import XvaReader
from xvatool.xva.writer import WriteStats, write_pieces

__all__ = [
    "ExportResult",
    "ExportedDisk",
    "TransferMode",
    "export_stream",
    "export_to_stream",
    "export_vm",
    "fetch_metadata",
    "transport_errors",
]

_log = logging.getLogger(__name__)

TransferMode = Literal["stream", "parallel"]


# -- export to a file -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedDisk:
    """One disk of an exported VM: where it sits in the VM, its VDI, its size."""

    id: str
    vdi_uuid: str
    name_label: str
    userdevice: str | None
    virtual_size: int

    @classmethod
    def of(cls, disk: DiskInfo) -> ExportedDisk:
        return cls(disk.id, disk.vdi_uuid, disk.name_label, disk.userdevice, disk.virtual_size)


@dataclass(frozen=True)
class ExportResult:
    """What `export_vm` wrote. `path` is None when the archive went to a stream (``-o -``)."""

    path: Path | None
    vm_uuid: str
    vm_name: str
    mode: TransferMode
    compression: Compression
    bytes_written: int
    snapshot_uuid: str | None
    """The temporary snapshot a running VM was exported through (destroyed since), else None."""
    disks: list[ExportedDisk] = field(default_factory=list)
    resumed_disks: int = 0
    digest: ArchiveDigest | None = None
    """The archive's SHA-256 and each disk's, computed in flight (`export_vm(digest=True)`)."""

    @property
    def snapshot_used(self) -> bool:
        return self.snapshot_uuid is not None

    def to_json(self) -> dict[str, object]:
        """The `export --json` document (docs/json.md)."""
        return {
            "path": str(self.path) if self.path is not None else None,
            "size_bytes": self.bytes_written,
            "vm": vm_doc(self.vm_uuid, self.vm_name),
            "mode": self.mode,
            "compression": self.compression,
            "vm_snapshot": {"uuid": self.snapshot_uuid} if self.snapshot_uuid else None,
            "disks": [disk_doc(d) for d in self.disks],
            "resumed_disk_count": self.resumed_disks,
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
    discard: bool = False,
    overwrite: bool = False,
    state_dir: StatePath = None,
    digest: bool = False,
    through: VmRef | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Export VM `vm` (uuid or unique name) to the XVA file `out_path`, verified.

    The file appears only when complete and verified; an existing one is refused unless
    `overwrite`. A running VM is exported through a snapshot destroyed afterwards, and the
    archive describes the VM (its uuid and disks' uuids), not the snapshot (`ops.identity`).
    Transient failures are retried as `retry` allows, each attempt resuming what the previous
    ones completed. A failed parallel export keeps its spools and journal (in `state_dir`) for
    `resume` and says so; `discard` removes them (before starting, or after a failure). `digest`
    also computes the SHA-256 of the archive and of each disk while the bytes stream
    (`ExportResult.digest`), so the file is never read again for them. `through` is a snapshot
    of `vm` the caller took (an appliance's members are snapshotted together): it is exported
    instead, and the archive still describes `vm`. Example::

        with connect(url, "root", password) as host:
            export_vm(host, "web-01", "web-01.xva", mode="parallel", compression="zstd")
    """
    _check_options(mode, compression, snapshot)
    out = Path(out_path)
    partial = PartialExport(out, state_dir)
    if out.exists() and not overwrite:
        raise LocalIOError("already exists (use --force to replace it)", path=str(out))
    if partial.exists():
        if discard:
            _log.info("%s: removing %s (--discard)", out, partial.describe())
            partial.remove()
        elif not resume:
            raise UsageError(
                f"{out}: an interrupted export left {partial.describe()}; continue it with --resume, "
                "or start over with --discard"
            )
        elif mode == "stream":
            raise ResumeError(
                "the state is from a parallel export; resume with --mode parallel",
                journal=str(partial.journal),
            )
    elif resume:
        _log.warning(
            "%s: nothing to resume (no journal of an earlier export); starting from the beginning", out
        )
    found = find_vm(session, vm)
    sources = (
        export_source(session, found, snapshot=snapshot, retry=retry, state=state_dir)
        if through is None
        else None
    )
    with sources or contextlib.nullcontext(through) as source:
        assert source is not None
        identity = snapshot_identity(session, found, source) if source.ref != found.ref else None
        snapshot_uuid = source.uuid if identity is not None else None
        if identity is not None and through is None:
            _log.log(NOTE, "%s is %s: exporting it through a temporary snapshot", found.name_label,
                     found.power_state.lower())  # fmt: skip
        if mode == "stream":
            options = _StreamOptions(compression, overwrite, identity, digest)
            written, disks, digests = _export_stream_file(
                session, source, found.name_label, out, options, retry, progress
            )
            return ExportResult(out, found.uuid, found.name_label, mode, compression, written, snapshot_uuid,
                                disks, digest=digests)  # fmt: skip
        job = _ParallelExport(session, source, found.name_label, partial, compression, retry, progress,
                              identity=identity, overwrite=overwrite)  # fmt: skip
        try:
            disks, written, resumed, digests = job.run(resume=resume, digest=digest)
        except BaseException as exc:
            partial.fail(exc, discard=discard)
        return ExportResult(out, found.uuid, found.name_label, mode, compression, written, snapshot_uuid,
                            disks, resumed, digests)  # fmt: skip


def export_to_stream(
    session: Session,
    vm: str,
    out: Writable,
    *,
    compression: Compression = "none",
    snapshot: SnapshotPolicy = "auto",
    progress: Progress | None = None,
) -> ExportResult:
    """Export `vm` as one verified XVA stream into `out` (``export -o -``); not retried.

    Every chunk is verified as it passes; a bad one stops the stream, so what the reader got is
    a truncated archive that no importer takes for whole. A running VM's archive describes the
    VM, as `export_vm` does.
    """
    _check_options("stream", compression, snapshot)
    found = find_vm(session, vm)
    with export_source(session, found, snapshot=snapshot) as source:
        identity = snapshot_identity(session, found, source) if source.ref != found.ref else None
        options = _StreamOptions(compression, False, identity, False)
        bars = ProgressGroup(progress)
        try:
            written, disks, _digests = _copy_export(session, source, found.name_label, out, options, bars)
        finally:
            bars.close()
    snapshot_uuid = source.uuid if identity is not None else None
    return ExportResult(
        None, found.uuid, found.name_label, "stream", compression, written, snapshot_uuid, disks
    )


@dataclass(frozen=True)
class _StreamOptions:
    compression: Compression
    overwrite: bool
    identity: Identity | None
    digest: bool


def _export_stream_file(
    session: Session,
    source: VmRef,
    vm_name: str,
    out: Path,
    options: _StreamOptions,
    retry: RetryPolicy,
    progress: Progress | None,
) -> tuple[int, list[ExportedDisk], ArchiveDigest | None]:
    """Stream mode: `GET /export` verified into the output's temporary file; (bytes, disks, digests)."""

    def attempt() -> tuple[int, list[ExportedDisk], ArchiveDigest | None]:
        bars = ProgressGroup(progress)
        try:
            with AtomicFile(out, overwrite=options.overwrite) as output:
                written, disks, digests = _copy_export(
                    session, source, vm_name, _FileSink(output.file, out), options, bars
                )
                output.commit()
            return written, disks, digests
        finally:
            bars.close()

    return retry.run(attempt, what=f"export of {vm_name}")


def _copy_export(
    session: Session,
    source: VmRef,
    vm_name: str,
    sink: Writable,
    options: _StreamOptions,
    bars: ProgressGroup,
) -> tuple[int, list[ExportedDisk], ArchiveDigest | None]:
    """One `GET /export` into `sink`, every chunk verified; a snapshot's identity rewritten.

    The host's bytes are copied as they are unless the VM was exported through a snapshot: then
    the reader's chunks are re-emitted behind a rewritten ova.xml (`repack_pieces`), in the
    compression the host was asked for. With `options.digest` the bytes written and the disks'
    chunks are hashed on their own threads as they pass (`InFlightDigest`). Returns (bytes
    written, disks, digests or None).
    """
    with (
        InFlightDigest() if options.digest else contextlib.nullcontext() as digests,
        open_export(session, source.uuid, compression=options.compression) as body,
    ):
        raw = options.identity is None
        counter = _CountingSink(sink, hasher=digests)
        tee = TeeReader(body, counter if raw else None)
        with transport_errors(tee):
            reader = XvaReader(tee, source=f"{session.url}/export")
            metadata = reader.metadata
            bar = bars.new(vm_name, total_size(metadata.disks))
            watched = tracked(reader, bar.update)
            if options.identity is None:
                for chunk in watched.chunks():
                    if digests is not None:
                        digests.chunk(chunk)
            else:
                chunks = tapped(watched, digests.chunk) if digests is not None else watched
                pieces = repack_pieces(chunks, with_identity(metadata, options.identity))
                write_pieces(counter, pieces, WriteStats(), compression=options.compression)
            tee.drain()
        described = _described(metadata, options.identity)
        result = None
        if digests is not None:
            result = digests.result(counter.count, reader.compression, described)
    return counter.count, [ExportedDisk.of(d) for d in described.disks], result


def _described(metadata: Metadata, identity: Identity | None) -> Metadata:
    return metadata if identity is None else with_identity(metadata, identity)


class _CountingSink:
    """Counts (and hashes, if asked) the bytes passed on to `sink`: the archive as written."""

    def __init__(self, sink: Writable, *, hasher: Hasher | None = None) -> None:
        self._sink = sink
        self._hasher = hasher
        self.count = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._sink.write(data)
        if self._hasher is not None:
            self._hasher.update(data)
        n = memoryview(data).nbytes
        self.count += n
        return n


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

    def __init__(
        self,
        session: Session,
        source: VmRef,
        vm_name: str,
        partial: PartialExport,
        compression: Compression,
        retry: RetryPolicy,
        progress: Progress | None,
        *,
        identity: Identity | None,
        overwrite: bool,
    ) -> None:
        self.session = session
        self.source = source
        self.vm_name = vm_name
        self.out = partial.out
        self.compression: Compression = compression
        self.retry = retry
        self.progress = progress
        self.identity = identity
        self.overwrite = overwrite
        self.journal_path = partial.journal
        self.spool_dir = partial.spool_dir

    def run(self, *, resume: bool, digest: bool) -> tuple[list[ExportedDisk], int, int, ArchiveDigest | None]:
        """Returns (disks, bytes written, disks reused from a previous run, digests if asked)."""
        source = self.source
        ova_xml = self.retry.run(
            lambda: fetch_metadata(self.session, source), what=f"metadata of {self.vm_name}"
        )
        with location_context(file=f"{self.session.url}/export_metadata"):
            metadata = Metadata.from_bytes(ova_xml).without_snapshot_identity()
        disks = metadata.disks
        journal = self._journal(metadata, resume)
        self._make_spool_dir()
        todo: list[DiskInfo] = []
        for disk in disks:
            record = journal.disk(disk.vdi_uuid)
            spool = self.spool_dir / spool_name(disk)
            if record is not None and record.done and record.digest and spool.is_file():
                if spool_digest(spool) == record.digest:  # re-check what the journal claims
                    continue
                _log.warning(
                    "spool of VDI %s does not match its journal digest; fetching it again", disk.vdi_uuid
                )
            todo.append(disk)
        journal.reset_disks({disk.vdi_uuid: disk.virtual_size for disk in todo})
        disk_digests = DiskDigests(self.spool_dir) if digest else None
        bars = ProgressGroup(self.progress)
        total = bars.new(f"{self.vm_name} total", total_size(disks))
        total.update(total_size([d for d in disks if d not in todo]))
        stop = threading.Event()
        jobs = [
            self._disk_fetcher(
                disk, journal, stop_check(bars.new(disk_label(self.vm_name, disk), disk.virtual_size,
                                                   also=total).update, stop), disk_digests
            )
            for disk in todo
        ]  # fmt: skip
        try:
            run_parallel(jobs, stop=stop)
        finally:
            bars.close()
        described = _described(metadata, self.identity)
        spools = [(d.id, self.spool_dir / spool_name(d)) for d in disks]
        archive_hash = hashlib.sha256() if digest else None
        with AtomicFile(self.out, overwrite=self.overwrite) as output:
            if self.compression == "none" and archive_hash is None:
                written = assemble_by_copy(
                    output, described.to_bytes(), spools
                )  # the data stays in the kernel
            else:  # the bytes pass through here anyway: to be compressed, or hashed
                sink = _FileSink(output.file, self.out, hasher=archive_hash)
                written = assemble_xva(sink, described.to_bytes(), spools, compression=self.compression)
            output.commit()
        digests = None
        if disk_digests is not None and archive_hash is not None:
            by_id = {d.id: disk_digests.of(d) for d in disks}
            digests = archive_digest(
                archive_hash.hexdigest(), written, self.compression, described, by_id, disk_digests.kinds
            )
        journal.remove()
        remove_tree(self.spool_dir)
        exported = [ExportedDisk.of(d) for d in described.disks]
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
            if self.identity is not None:
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
        covered = [0]  # disk bytes reported so far: a retry reports only what is new

        def report(n: int) -> None:
            covered[0] += n
            update(n)

        def attempt() -> str:
            hasher = xxhash.xxh3_128()
            digester = DiskDigester() if disk_digests is not None else None
            done = [0]

            def advance(n: int) -> None:  # this attempt's coverage, past what was already reported
                done[0] += n
                if done[0] > covered[0]:
                    report(done[0] - covered[0])

            with (
                managed_task(session, f"xvatool export_raw_vdi {disk.vdi_uuid}") as task,
                AtomicFile(spool, durable=False) as output,  # re-hashed before any reuse
            ):
                with (
                    task_reason(session, task),
                    open_download(session, "/export_raw_vdi", params, task=task) as body,
                ):
                    tee = TeeReader(body, _FileSink(output.file, self.out), hasher=hasher)  # the user's file
                    with transport_errors(tee):
                        reader = XvaReader.for_disk_stream(
                            tee, size=disk.virtual_size, source=where, hash_lag=1
                        )
                        for chunk in tracked(reader, advance).chunks():
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

        return lambda: self.retry.run(attempt, what=f"{disk_label(self.vm_name, disk)}")


def fetch_metadata(session: Session, source: VmRef) -> bytes:
    """The ova.xml of `source` from `GET /export_metadata` (host-protocol.md §4.7), without its snapshots.

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
"""A failure after the 200 is written into the body as a whole HTTP response (host-protocol.md §4.4)."""


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

"""Backups of VMs into a repository, and restores from it (`backup --repo`, `restore --repo`).

Backup: for each selected VM, in its own thread with its own session, the host's export stream
(a running VM is exported through a temporary snapshot, destroyed afterwards) is read by the
format reader, which verifies every chunk's checksum, and stored chunk by chunk (`repo.ingest`):
only chunks the repository does not hold yet are written, so the second night of an unchanged VM
stores almost nothing. A VM's snapshot is committed only after its whole export verified. A
failing VM does not stop the others. `--shard K/N` keeps a stable share of the selection (by a
hash of the VM uuid), so N workers on N machines split a pool without talking to each other.

Restore: the snapshot is streamed as a standard XVA straight into ``PUT /import`` (mode
"stream"), or each disk is sent as a chunked ``/import_raw_vdi`` of its non-zero chunks into a
new VDI (fetched from the repository by several threads), followed by ``/import_metadata``
(mode "parallel", the host's per-disk path). Every chunk is authenticated
and checked against its id as it is read.

Example::

    repo = open_repository("s3://backups/xen", passphrase=secret)
    report = backup_to_repository(factory, Selection(tags=("nightly",)), repo, jobs=2)
    with connect(url, "root", password) as host:
        restore_from_repository(host, repo, "latest:web-01", sr="Local storage")
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from xvatool._progress import Progress
from xvatool._types import Compression
from xvatool.errors import UsageError, XvatoolError
from xvatool.ops.report import BatchReport, VmResult
from xvatool.repo.ingest import WriterRun, ingest_reader
from xvatool.repo.objects import ZERO_ID
from xvatool.repo.reading import SnapshotDiskSource, snapshot_metadata
from xvatool.repo.repository import Repository
from xvatool.repo.snapshot import Snapshot
from xvatool.xva.disk import CHUNK_SIZE

if TYPE_CHECKING:
    from xvatool.ops.backup import Selection
    from xvatool.xapi.session import Session
    from xvatool.xapi.vms import VmRef

__all__ = [
    "RepoBackupReport",
    "RepoRestoreResult",
    "VmRepoResult",
    "backup_to_repository",
    "parse_shard",
    "restore_from_repository",
    "shard_of",
]

log = logging.getLogger(__name__)

RestoreMode = Literal["stream", "parallel"]


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/3"`` → (2, 3): the second of three shares; `UsageError` for anything else."""
    k, slash, n = text.partition("/")
    try:
        share, count = int(k), int(n)
    except ValueError:
        share = count = 0
    if not slash or count < 1 or not 1 <= share <= count:
        raise UsageError(f"--shard {text!r} is not K/N with 1 <= K <= N")
    return share, count


def shard_of(vm_uuid: str, count: int) -> int:
    """The share (1..count) a VM belongs to: stable across runs, machines and pool changes."""
    digest = hashlib.sha256(vm_uuid.lower().encode()).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


@dataclass
class VmRepoResult(VmResult):
    """One VM's outcome: its new snapshot and what it cost, or the one-line error."""

    snapshot: str | None = None
    logical_bytes: int = 0
    data_bytes: int = 0
    new_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        """One item of the `backup --repo --json` document (docs/json.md)."""
        return {
            **super().to_json(),
            "snapshot": {"id": self.snapshot} if self.snapshot else None,
            "logical_bytes": self.logical_bytes,
            "data_bytes": self.data_bytes,
            "new_bytes": self.new_bytes,
        }


@dataclass
class RepoBackupReport(BatchReport[VmRepoResult]):
    """Every selected VM's result, and where they went."""

    repository: str = ""
    shard: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"repository": self.repository, "shard": self.shard, **super().to_json()}


def _source_url(session: Session) -> str:
    parts = urlsplit(session.url)  # never any user:password@
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class _RepoBackupJob:
    def __init__(
        self,
        session_factory: Callable[[], Session],
        run: WriterRun,
        compression: Compression,
        progress: Progress | None,
    ) -> None:
        self.session_factory = session_factory
        self.run = run
        self.compression: Compression = compression
        self.progress = progress
        self.cancelled = threading.Event()

    def one(self, vm: VmRef) -> VmRepoResult:
        from xvatool.ops.export import export_stream
        from xvatool.xva.reader import XvaReader

        result = VmRepoResult(vm.uuid, vm.name_label)
        started = time.monotonic()
        bar = None
        try:
            if self.cancelled.is_set():
                raise UsageError("cancelled")
            moment = dt.datetime.now(dt.UTC)
            with (
                self.session_factory() as session,
                export_stream(session, vm.uuid, compression=self.compression, snapshot="auto") as body,
            ):
                reader = XvaReader(body, source=f"export of {vm.name_label}")
                metadata = reader.metadata
                if self.progress is not None:
                    bar = self.progress(vm.name_label, sum(d.virtual_size for d in metadata.disks))
                writer = self.run.snapshot(
                    metadata,
                    vm_uuid=vm.uuid,
                    vm_name=vm.name_label,
                    time=moment,
                    source={"host": _source_url(session)},
                )
                snapshot = ingest_reader(writer, reader, progress=bar.update if bar else None)
            result.status = "ok"
            result.snapshot = snapshot.id
            result.logical_bytes = snapshot.logical_bytes
            result.data_bytes = snapshot.data_bytes
            result.new_bytes = snapshot.new_bytes
        except XvatoolError as exc:
            result.fail(exc)
            log.info("backup of %s into the repository failed: %s", vm.name_label, exc)
        finally:
            if bar is not None:
                bar.close()
            result.duration_s = time.monotonic() - started
        return result


def backup_to_repository(
    session_factory: Callable[[], Session],
    selection: Selection,
    repo: Repository,
    *,
    jobs: int = 1,
    shard: tuple[int, int] | None = None,
    compression: Compression = "none",
    progress: Progress | None = None,
) -> RepoBackupReport:
    """Back up the selected VMs into `repo`, `jobs` at a time; never raises for one VM's failure.

    `shard` (K, N) keeps the VMs whose `shard_of` is K. `compression` is the host-side
    compression of the export stream (saves network; the repository compresses each chunk
    anyway). Raises `UsageError` for a bad selection before anything is exported.
    """
    from xvatool.ops.backup import missing_results, resolve_selection

    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    with session_factory() as session:
        vms, missing = resolve_selection(session, selection)
    report = RepoBackupReport(
        missing_results(missing, VmRepoResult),
        repository=repo.location,
        shard=f"{shard[0]}/{shard[1]}" if shard else None,
    )
    if shard is not None:
        vms = [vm for vm in vms if shard_of(vm.uuid, shard[1]) == shard[0]]
        if not vms:
            return report
    with WriterRun(repo) as run:
        job = _RepoBackupJob(session_factory, run, compression, progress)
        if jobs == 1 or len(vms) == 1:
            report.results += [job.one(vm) for vm in vms]
            return report
        with ThreadPoolExecutor(max_workers=min(jobs, len(vms)), thread_name_prefix="repo-backup") as pool:
            futures = [pool.submit(job.one, vm) for vm in vms]
            try:
                report.results += [future.result() for future in futures]
            except BaseException:
                job.cancelled.set()
                for future in futures:
                    future.cancel()
                raise
    return report


@dataclass(frozen=True)
class RepoRestoreResult:
    vm_uuid: str
    vm_ref: str
    snapshot: Snapshot
    mode: RestoreMode

    def to_json(self) -> dict[str, Any]:
        return {
            "vm_uuid": self.vm_uuid,
            "snapshot": self.snapshot.id,
            "source_vm_uuid": self.snapshot.vm_uuid,
            "source_vm_name": self.snapshot.vm_name,
            "time": self.snapshot.to_json()["time"],
            "mode": self.mode,
        }


def _chunk_lengths(repo: Repository, source: SnapshotDiskSource) -> Iterator[int]:
    """The lengths of the chunks a disk's upload sends (its non-zero ones), from its index."""
    size = source.size
    for index, oid in enumerate(repo.disk_chunk_ids(source.disk)):
        if oid != ZERO_ID:
            yield min(CHUNK_SIZE, size - index * CHUNK_SIZE)


def restore_from_repository(
    session: Session,
    repo: Repository,
    snapshot: str,
    *,
    sr: str | None = None,
    restore_identity: bool = False,
    mode: RestoreMode = "stream",
    progress: Progress | None = None,
) -> RepoRestoreResult:
    """Restore a snapshot (id prefix or ``latest:VM``) as a new VM into SR `sr` (default SR)."""
    from xvatool.ops.import_ import create_disk_vdi, import_stream
    from xvatool.xapi.tasks import managed_task, task_reason, wait_task
    from xvatool.xapi.transfer import chunked_frames, chunked_length, upload
    from xvatool.xapi.vmdata import import_metadata
    from xvatool.xapi.vms import find_sr
    from xvatool.xva.assemble import ova_xml_tar
    from xvatool.xva.writer import XvaWriter

    if mode not in ("stream", "parallel"):
        raise UsageError(f"unknown mode {mode!r} (stream or parallel)")
    found = repo.find_snapshot(snapshot)
    metadata = snapshot_metadata(repo, found)
    sources = {disk.id: SnapshotDiskSource(repo, disk) for disk in found.disks}
    sr_ref, sr_uuid = find_sr(session, sr)
    bar = progress(found.vm_name, found.logical_bytes) if progress is not None else None

    def update(n: int) -> None:
        if bar is not None:
            bar.update(n)

    try:
        if mode == "stream":
            writer = XvaWriter(metadata, sources, progress=update)
            result = import_stream(session, lambda: iter(writer), None, sr=sr_uuid, restore=restore_identity)
            return RepoRestoreResult(result.vm_uuid, result.vm_ref, found, mode)
        vdi_map: dict[str, str] = {}
        for disk in metadata.disks:
            source = sources[disk.id]
            _ref, vdi_uuid = create_disk_vdi(session, sr_ref, disk)
            vdi_map[disk.vdi_uuid] = vdi_uuid
            length = chunked_length(_chunk_lengths(repo, source))

            def body(source: SnapshotDiskSource = source) -> Iterator[bytes | memoryview]:
                def extents() -> Iterator[tuple[int, memoryview]]:
                    for offset, data in source.blocks():
                        update(len(data))
                        yield offset, data

                return chunked_frames(extents())

            with managed_task(session, f"xvatool restore {vdi_uuid}") as task:
                with task_reason(session, task):
                    upload(
                        session,
                        "/import_raw_vdi",
                        {"vdi": vdi_uuid, "format": "raw", "chunked": "true"},
                        body,
                        length=length,
                        task=task,
                    )
                wait_task(session, task)
        vm_ref, vm_uuid = import_metadata(
            session, ova_xml_tar(metadata.to_bytes()), vdi_map, restore=restore_identity
        )
        return RepoRestoreResult(vm_uuid, vm_ref, found, mode)
    finally:
        if bar is not None:
            bar.close()

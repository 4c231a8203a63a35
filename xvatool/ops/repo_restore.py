"""Restoring a repository snapshot as a new VM on a host (`restore --repo`).

Mode "stream": the snapshot is written as a standard XVA straight into one ``PUT /import``.

Mode "parallel" (the host's per-disk path, docs/host-protocol.md §4.9): one empty VDI per disk, then
every disk at once, each in its own thread, as one chunked ``PUT /import_raw_vdi`` of its non-zero
chunks, then ``PUT /import_metadata`` mapping the snapshot's VDIs to the new ones. Memory stays
bounded whatever the number of disks: at most `DISKS_AT_ONCE` disks upload at a time, and the
repository's readers (`Storage.parallelism`) are shared out between them, so the buffers of the
chunks in flight add up to about ``2 × parallelism × READ_AHEAD`` MiB. Re-sending a disk is
idempotent (host-protocol.md §4.12): a failed upload is retried whole under the caller's
`RetryPolicy`. On failure the VDIs created so far are destroyed (nothing is lost: the repository is
the source).

Every chunk is authenticated and checked against its id as it is read, in both modes.

Example::

    with connect(url, "root", password) as host:
        restore_from_repository(host, repo, "latest:web-01", sr="Local storage", mode="parallel")
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from xvatool._progress import Progress, ProgressBar, ProgressGroup
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool.errors import Interrupted, UsageError, XapiError
from xvatool.ops.import_ import create_disk_vdi, import_stream
from xvatool.ops.parallel import run_parallel
from xvatool.ops.progress import disk_label
from xvatool.repo.objects import ZERO_ID
from xvatool.repo.reading import SnapshotDiskSource, snapshot_metadata
from xvatool.repo.repository import Repository
from xvatool.repo.snapshot import Snapshot, SnapshotDisk
from xvatool.xapi.session import Session
from xvatool.xapi.tasks import managed_task, task_reason, wait_task
from xvatool.xapi.transfer import chunked_frames, chunked_length, upload
from xvatool.xapi.vmdata import import_metadata
from xvatool.xapi.vms import destroy_vdi, find_sr
from xvatool.xva.assemble import ova_xml_tar
from xvatool.xva.disk import CHUNK_SIZE
from xvatool.xva.ovaxml import DiskInfo
from xvatool.xva.writer import XvaWriter

__all__ = ["DISKS_AT_ONCE", "RepoRestoreResult", "RestoreMode", "restore_from_repository"]

log = logging.getLogger(__name__)

RestoreMode = Literal["stream", "parallel"]
DISKS_AT_ONCE = 8
"""Disks uploading at the same time in parallel mode; the others wait for a free place."""


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


def _upload_lengths(repo: Repository, disk: SnapshotDisk) -> Iterator[int]:
    """The lengths of the chunks a disk's upload sends (its non-zero ones), from its index."""
    for index, oid in enumerate(repo.disk_chunk_ids(disk)):
        if oid != ZERO_ID:
            yield min(CHUNK_SIZE, disk.virtual_size - index * CHUNK_SIZE)


class _ParallelRestore:
    """Every disk of one snapshot into new VDIs at once, then the VM from its metadata."""

    def __init__(
        self, session: Session, repo: Repository, snapshot: Snapshot, retry: RetryPolicy, bars: ProgressGroup
    ) -> None:
        self.session = session
        self.repo = repo
        self.snapshot = snapshot
        self.retry = retry
        self.bars = bars
        self.stop = threading.Event()
        self.places = threading.BoundedSemaphore(DISKS_AT_ONCE)
        self.created: list[str] = []

    def run(self, sr_ref: str, restore_identity: bool) -> tuple[str, str]:
        metadata = snapshot_metadata(self.repo, self.snapshot)
        records = {disk.id: disk for disk in self.snapshot.disks}
        disks = list(metadata.disks)
        readers = max(1, self.repo.storage.parallelism // max(1, min(len(disks), DISKS_AT_ONCE)))
        total = self.bars.new(f"{self.snapshot.vm_name} total", sum(records[d.id].data_bytes for d in disks))
        try:
            targets = []
            for disk in disks:
                ref, uuid = create_disk_vdi(self.session, sr_ref, disk)
                self.created.append(ref)
                targets.append(uuid)
            jobs = [
                self._job(disk, records[disk.id], target, readers, total)
                for disk, target in zip(disks, targets, strict=True)
            ]
            run_parallel(jobs, stop=self.stop)
            vdi_map = {disk.vdi_uuid: target for disk, target in zip(disks, targets, strict=True)}
            return import_metadata(
                self.session, ova_xml_tar(metadata.to_bytes()), vdi_map, restore=restore_identity
            )
        except BaseException:
            self.stop.set()
            self._discard()
            raise

    def _job(
        self, disk: DiskInfo, record: SnapshotDisk, target: str, readers: int, total: ProgressBar
    ) -> Callable[[], None]:
        bar = self.bars.new(disk_label(self.snapshot.vm_name, disk), record.data_bytes, also=total)
        source = SnapshotDiskSource(self.repo, record, workers=readers)

        def send() -> None:
            length = chunked_length(_upload_lengths(self.repo, record))

            def body() -> Iterator[bytes | memoryview]:
                def extents() -> Iterator[tuple[int, memoryview]]:
                    for offset, data in source.blocks():
                        if self.stop.is_set():
                            raise Interrupted("restore interrupted")
                        bar.update(len(data))
                        yield offset, data

                return chunked_frames(extents())

            params = {"vdi": target, "format": "raw", "chunked": "true"}
            with managed_task(self.session, f"xvatool restore {target}") as task:
                with task_reason(self.session, task):
                    upload(self.session, "/import_raw_vdi", params, body, length=length, task=task)
                wait_task(self.session, task)

        def job() -> None:
            with self.places:
                if self.stop.is_set():
                    raise Interrupted("restore interrupted")
                self.retry.run(send, what=f"restore of disk {record.vdi_uuid} into VDI {target}")

        return job

    def _discard(self) -> None:
        for ref in self.created:
            try:
                destroy_vdi(self.session, ref)
            except XapiError as exc:
                log.warning("cannot destroy VDI %s left by the failed restore: %s", ref, exc)


def restore_from_repository(
    session: Session,
    repo: Repository,
    snapshot: str,
    *,
    sr: str | None = None,
    restore_identity: bool = False,
    mode: RestoreMode = "stream",
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
) -> RepoRestoreResult:
    """Restore a snapshot (id prefix or ``latest:VM``) as a new VM into SR `sr` (default SR).

    `retry` applies to each disk's upload in parallel mode (a stream import is not retried:
    the host would have to start the VM over).
    """
    if mode not in ("stream", "parallel"):
        raise UsageError(f"unknown mode {mode!r} (stream or parallel)")
    found = repo.find_snapshot(snapshot)
    sr_ref, sr_uuid = find_sr(session, sr)
    bars = ProgressGroup(progress)
    try:
        if mode == "stream":
            metadata = snapshot_metadata(repo, found)
            sources = {disk.id: SnapshotDiskSource(repo, disk) for disk in found.disks}
            bar = bars.new(found.vm_name, found.logical_bytes)
            writer = XvaWriter(metadata, sources, progress=bar.update)
            result = import_stream(session, lambda: iter(writer), None, sr=sr_uuid, restore=restore_identity)
            return RepoRestoreResult(result.vm_uuid, result.vm_ref, found, mode)
        vm_ref, vm_uuid = _ParallelRestore(session, repo, found, retry, bars).run(sr_ref, restore_identity)
        return RepoRestoreResult(vm_uuid, vm_ref, found, mode)
    finally:
        bars.close()

"""Backups of VMs into a repository (`backup --repo`); restores are in `ops.repo_restore`.

Backup: for each selected VM, in its own thread with its own session, the host's export stream
(a running VM is exported through a temporary snapshot, destroyed afterwards) is read by the
format reader, which verifies every chunk's checksum, and stored chunk by chunk (`repo.ingest`):
only chunks the repository does not hold yet are written, so the second night of an unchanged VM
stores almost nothing. A VM's snapshot is committed only after its whole export verified. A
failing VM does not stop the others. `--shard K/N` keeps a stable share of the selection (by a
hash of the VM uuid), so N workers on N machines split a pool without talking to each other.

Example::

    repo = open_repository("s3://backups/xen", passphrase=secret)
    report = backup_to_repository(factory, Selection(tags=("nightly",)), repo, jobs=2)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from xvatool._progress import Progress
from xvatool._types import Compression
from xvatool.errors import UsageError, XvatoolError
from xvatool.ops.backup import Selection, select_vms
from xvatool.ops.export import export_stream
from xvatool.repo.ingest import WriterRun, ingest_reader
from xvatool.repo.repository import Repository
from xvatool.xapi.session import Session
from xvatool.xapi.vms import VmRef
from xvatool.xva.reader import XvaReader

__all__ = [
    "RepoBackupReport",
    "VmRepoResult",
    "backup_to_repository",
    "parse_shard",
    "shard_of",
]

log = logging.getLogger(__name__)


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
class VmRepoResult:
    """One VM's outcome: its new snapshot and what it cost, or the one-line error."""

    vm_uuid: str
    vm_name: str
    status: Literal["ok", "failed"] = "failed"
    snapshot: str | None = None
    logical_bytes: int = 0
    data_bytes: int = 0
    new_bytes: int = 0
    duration_s: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "vm_uuid": self.vm_uuid,
            "vm_name": self.vm_name,
            "status": self.status,
            "snapshot": self.snapshot,
            "logical_bytes": self.logical_bytes,
            "data_bytes": self.data_bytes,
            "new_bytes": self.new_bytes,
            "duration_s": round(self.duration_s, 3),
            "error": self.error,
        }


@dataclass
class RepoBackupReport:
    repository: str
    results: list[VmRepoResult] = field(default_factory=list)
    shard: str | None = None

    @property
    def failed(self) -> list[VmRepoResult]:
        return [r for r in self.results if r.status != "ok"]

    @property
    def exit_code(self) -> int:
        """0 when every VM succeeded, 3 when some failed, 1 when all failed."""
        if not self.failed:
            return 0
        return 1 if len(self.failed) == len(self.results) else 3

    def to_json(self) -> dict[str, Any]:
        return {
            "repository": self.repository,
            "shard": self.shard,
            "ok": len(self.results) - len(self.failed),
            "failed": len(self.failed),
            "results": [r.to_json() for r in self.results],
        }


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
            result.error = str(exc)
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
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    with session_factory() as session:
        vms = select_vms(session, selection)
    report = RepoBackupReport(repo.location, shard=f"{shard[0]}/{shard[1]}" if shard else None)
    if shard is not None:
        vms = [vm for vm in vms if shard_of(vm.uuid, shard[1]) == shard[0]]
        if not vms:
            return report
    with WriterRun(repo) as run:
        job = _RepoBackupJob(session_factory, run, compression, progress)
        if jobs == 1 or len(vms) == 1:
            report.results = [job.one(vm) for vm in vms]
            return report
        with ThreadPoolExecutor(max_workers=min(jobs, len(vms)), thread_name_prefix="repo-backup") as pool:
            futures = [pool.submit(job.one, vm) for vm in vms]
            try:
                report.results = [future.result() for future in futures]
            except BaseException:
                job.cancelled.set()
                for future in futures:
                    future.cancel()
                raise
    return report

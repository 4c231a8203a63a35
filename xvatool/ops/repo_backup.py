"""Backups of VMs into a repository (`backup --repo`); restores are in `ops.repo_restore`.

Backup: for each selected VM, in its own thread with its own session, a host snapshot is taken
and each disk is read the cheapest exact way (`ops.incremental`): only the chunks changed since
the VM's previous repository snapshot, by changed block tracking over NBD or by a ``base=`` VHD
delta, else the whole disk as the host's checksummed tar stream. Chunks are stored one by one
(`repo.ingest`), only those the repository lacks are written, and the chunks not read are the
previous snapshot's, so every snapshot is complete by itself. A VM's snapshot is committed only
after every disk was read and verified. A failing VM does not stop the others. `--shard K/N`
keeps a stable share of the selection (by a hash of the VM uuid), so N workers on N machines
split a pool without talking to each other. The VMs run in `parallel.run_batch`: Ctrl-C stops
every job at its next progress update; each destroys its host snapshot and commits nothing.

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
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from xvatool._progress import Progress
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool.errors import UsageError, XvatoolError
from xvatool.ops.backup import Selection, missing_results, resolve_selection
from xvatool.ops.incremental import (
    DEFAULT_NBD_CONNECTIONS,
    DiskReport,
    IncrementalOptions,
    KeepOnHost,
    backup_vm,
)
from xvatool.ops.parallel import run_batch, stopping
from xvatool.ops.report import BatchReport, VmResult
from xvatool.repo.ingest import WriterRun
from xvatool.repo.repository import Repository
from xvatool.xapi.session import Session
from xvatool.xapi.vms import VmRef

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
class VmRepoResult(VmResult):
    """One VM's outcome: its new snapshot and what it cost, or the one-line error."""

    snapshot: str | None = None
    logical_bytes: int = 0
    data_bytes: int = 0
    new_bytes: int = 0
    bytes_read: int = 0
    """Bytes that came from the host (NBD reads, VHD deltas, tar streams)."""
    disks: list[DiskReport] = field(default_factory=list)
    kept: KeepOnHost | None = None
    """What stayed on the host of this backup's snapshot."""
    host_snapshot: str | None = None
    """The uuid of the host snapshot the disks were read from."""

    @property
    def methods(self) -> str:
        """Each disk's way of reading, in userdevice order: ``cbt``, ``vhd-diff``, ``full``."""
        return ",".join(d.method for d in self.disks)

    def to_json(self) -> dict[str, Any]:
        """One item of the `backup --repo --json` document (docs/json.md)."""
        host_snapshot = None
        if self.host_snapshot:
            host_snapshot = {"uuid": self.host_snapshot, "kept_on_host": _KEPT[self.kept or "delete"]}
        return {
            **super().to_json(),
            "snapshot": {"id": self.snapshot} if self.snapshot else None,
            "logical_bytes": self.logical_bytes,
            "data_bytes": self.data_bytes,
            "new_bytes": self.new_bytes,
            "read_bytes": self.bytes_read,
            "vm_snapshot": host_snapshot,
            "disks": [d.to_json() for d in self.disks],
        }


_KEPT: dict[KeepOnHost, str] = {"keep": "snapshot", "metadata": "metadata", "delete": "nothing"}
"""`--snapshots` choice → what the document says stayed on the host (``kept_on_host``)."""


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
    """The per-VM steps; one instance shared by the worker threads (it holds no per-VM state)."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        run: WriterRun,
        options: IncrementalOptions,
        progress: Progress,
    ) -> None:
        self.session_factory = session_factory
        self.run = run
        self.options = options
        self.progress = progress

    def one(self, vm: VmRef) -> VmRepoResult:
        result = VmRepoResult(vm.uuid, vm.name_label)
        started = time.monotonic()
        try:
            moment = dt.datetime.now(dt.UTC)
            with self.session_factory() as session:
                done = backup_vm(
                    session,
                    vm,
                    self.run,
                    self.options,
                    time=moment,
                    host_url=_source_url(session),
                    progress=self.progress,
                )
            snapshot = done.snapshot
            result.status = "ok"
            result.snapshot = snapshot.id
            result.logical_bytes = snapshot.logical_bytes
            result.data_bytes = snapshot.data_bytes
            result.new_bytes = snapshot.new_bytes
            result.bytes_read = done.bytes_read
            result.disks = done.disks
            result.kept = done.kept
            result.host_snapshot = done.host_snapshot
        except XvatoolError as exc:
            result.fail(exc)
            log.info("backup of %s into the repository failed: %s", vm.name_label, exc)
        finally:
            result.duration_s = time.monotonic() - started
        return result


def backup_to_repository(
    session_factory: Callable[[], Session],
    selection: Selection,
    repo: Repository,
    *,
    jobs: int = 1,
    shard: tuple[int, int] | None = None,
    cbt: bool = False,
    snapshots: KeepOnHost | None = None,
    nbd_connections: int = DEFAULT_NBD_CONNECTIONS,
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
) -> RepoBackupReport:
    """Back up the selected VMs into `repo`, `jobs` at a time; never raises for one VM's failure.

    Each disk is read incrementally where the host allows (`ops.incremental`): `cbt` switches
    changed block tracking on for the VMs' disks first, `snapshots` says what stays on the host
    (keep, metadata, delete; default metadata with CBT, else delete), `nbd_connections` per disk.
    `shard` (K, N) keeps the VMs whose `shard_of` is K. Raises `UsageError` for a bad selection
    or option before anything is read. Ctrl-C stops every job within one buffer (`run_batch`):
    each destroys its host snapshot and commits nothing, then `KeyboardInterrupt` is raised.
    """
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    options = IncrementalOptions(cbt=cbt, snapshots=snapshots, nbd_connections=nbd_connections, retry=retry)
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
    stop = threading.Event()
    with WriterRun(repo) as run:
        job = _RepoBackupJob(session_factory, run, options, stopping(progress, stop))
        report.results += run_batch(vms, job.one, jobs=jobs, stop=stop)
    return report

"""`backup`: export several VMs at once into verified, manifest-committed archives with retention.

For each selected VM, in its own thread with its own session (sessions are not thread-safe):
export it (the export layer snapshots a running VM and destroys the snapshot afterwards,
xapi-protocol.md §5 item 12) into ``DEST/<name>-<uuid8>/<stamp>.xva``, verifying every chunk and
computing the archive's sha256 and each disk's while the bytes stream (`export_vm(digest=True)`:
the archive is never read again), write the manifest last and atomically, then apply retention
in that VM's folder. A failing VM is recorded in the report and does not stop the others; its
partial files are removed.

Layout::

    DEST/web-01-6f1c4d3e/20261127T051500Z.xva
    DEST/web-01-6f1c4d3e/20261127T051500Z.manifest.json
    DEST/web-01-6f1c4d3e/.lock        flock'ed while a backup of this VM runs

Example::

    factory = lambda: connect(url, "root", password, fingerprint=fp)
    report = backup(factory, Selection(tags=("nightly",)), Path("/backups"), jobs=2, keep=7)
    for item in report.results:
        print(item.vm_name, item.status, item.archive)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import importlib.metadata
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from xvatool._files import remove_tree
from xvatool._progress import Progress, labelled
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool._types import Compression
from xvatool.errors import LocalIOError, UsageError, XvatoolError
from xvatool.ops.export import export_vm
from xvatool.ops.manifest import ARCHIVE_SUFFIX, Manifest, manifest_path_for, write_manifest
from xvatool.ops.retention import apply_retention, incomplete_files
from xvatool.xapi.session import Session
from xvatool.xapi.vms import VmRef, find_vm
from xvatool.xva.compression import COMPRESSIONS

__all__ = [
    "BackupReport",
    "ExportMode",
    "Selection",
    "SessionFactory",
    "VmBackupResult",
    "backup",
    "backup_archive",
    "folder_lock",
    "sanitize_name",
    "select_vms",
    "utc_stamp",
]

_log = logging.getLogger(__name__)

SessionFactory = Callable[[], "Session"]
"""Opens a new logged-in session (a context manager that logs out); called once per thread."""
ExportMode = Literal["stream", "parallel"]

MAX_DIR_NAME = 64
"""Characters of the sanitized VM name kept in the folder name (the uuid prefix follows)."""
UUID_PREFIX = 8
"""Characters of the VM uuid in the folder name: enough to tell same-named VMs apart."""
LOCK_NAME = ".lock"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Selection:
    """Which VMs to back up: names or uuids, `all_vms`, and/or tags (the union of all three)."""

    vms: tuple[str, ...] = ()
    all_vms: bool = False
    tags: tuple[str, ...] = ()


@dataclass
class VmBackupResult:
    """The outcome for one VM; `error` is the one-line message when `status` is "failed"."""

    vm_uuid: str
    vm_name: str
    status: Literal["ok", "failed"] = "failed"
    archive: Path | None = None
    manifest: Path | None = None
    archive_size: int = 0
    disk_size: int = 0
    """Sum of the disks' virtual sizes."""
    duration_s: float = 0.0
    error: str | None = None
    removed: list[Path] = field(default_factory=list)
    """Older backups removed by retention, and incomplete leftovers cleaned."""

    def to_json(self) -> dict[str, Any]:
        """The result as JSON-friendly values (paths as strings)."""
        return {
            "vm_uuid": self.vm_uuid,
            "vm_name": self.vm_name,
            "status": self.status,
            "archive": str(self.archive) if self.archive else None,
            "manifest": str(self.manifest) if self.manifest else None,
            "archive_size": self.archive_size,
            "disk_size": self.disk_size,
            "duration_s": round(self.duration_s, 3),
            "error": self.error,
            "removed": [str(p) for p in self.removed],
        }


@dataclass
class BackupReport:
    """Every selected VM's result, in selection order."""

    dest: Path
    results: list[VmBackupResult]

    @property
    def failed(self) -> list[VmBackupResult]:
        """Results whose status is "failed"."""
        return [r for r in self.results if r.status != "ok"]

    @property
    def exit_code(self) -> int:
        """0 when every VM succeeded, 3 when some failed, 1 when all failed (design.md §6)."""
        if not self.failed:
            return 0
        return 1 if len(self.failed) == len(self.results) else 3

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON document."""
        return {
            "dest": str(self.dest),
            "ok": len(self.results) - len(self.failed),
            "failed": len(self.failed),
            "results": [r.to_json() for r in self.results],
        }


def sanitize_name(name: str) -> str:
    """A VM name made safe for one path component: ``"web 01/prod"`` → ``"web_01_prod"``."""
    safe = _UNSAFE.sub("_", name).strip("._-")[:MAX_DIR_NAME].rstrip("._-")
    return safe or "vm"


def utc_stamp(moment: dt.datetime) -> str:
    """A UTC time as a file-name-safe stamp, e.g. ``20261127T051500Z``."""
    return moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _iso(moment: dt.datetime) -> str:
    # Fixed width, so that manifests sort by time as text.
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _selectable(rec: Mapping[str, Any]) -> bool:
    """`--all` and `--tag` never pick templates, snapshots or the control domain."""
    return not (rec.get("is_a_template") or rec.get("is_a_snapshot") or rec.get("is_control_domain"))


def select_vms(session: Session, selection: Selection) -> list[VmRef]:
    """The VMs a selection names, each once, in a stable order (named first, then by name).

    A name or uuid that matches nothing (or a name that matches several VMs) is a `UsageError`,
    raised before any backup starts; so is a selection that picks no VM at all.
    """
    chosen: dict[str, VmRef] = {}
    for name in selection.vms:
        vm = find_vm(session, name)
        chosen.setdefault(vm.uuid, vm)
    if selection.all_vms or selection.tags:
        records: dict[str, dict[str, Any]] = session.call("VM.get_all_records")
        wanted = set(selection.tags)
        picked = [
            VmRef(ref=ref, uuid=str(rec.get("uuid", "")), name_label=str(rec.get("name_label", "")),
                  power_state=str(rec.get("power_state", "")))
            for ref, rec in records.items()
            if _selectable(rec) and (selection.all_vms or wanted & set(rec.get("tags") or ()))
        ]  # fmt: skip
        for vm in sorted(picked, key=lambda v: (v.name_label, v.uuid)):
            chosen.setdefault(vm.uuid, vm)
    if not chosen:
        what = f"tag {', '.join(selection.tags)}" if selection.tags else "the selection"
        raise UsageError(f"no VM matches {what}")
    return list(chosen.values())


def backup(
    session_factory: SessionFactory,
    selection: Selection,
    dest: str | os.PathLike[str],
    *,
    jobs: int = 1,
    keep: int | None = None,
    compression: Compression = "none",
    mode: ExportMode = "stream",
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
) -> BackupReport:
    """Back up the selected VMs into `dest`, `jobs` at a time; never raises for one VM's failure.

    Raises `UsageError` for a bad selection or options, before anything is exported. The report
    says which VMs failed and why; `BackupReport.exit_code` maps it to 0 / 3 / 1.

    Example::

        report = backup(factory, Selection(vms=("web-01",)), Path("/backups"), keep=3)
    """
    if jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    if keep is not None and keep < 1:
        raise UsageError(f"--keep must be at least 1, not {keep}")
    if compression not in COMPRESSIONS:
        raise UsageError(f"unknown compression {compression!r} (none, gzip or zstd)")
    if mode not in ("stream", "parallel"):
        raise UsageError(f"unknown mode {mode!r} (stream or parallel)")
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(dest)) from exc
    with session_factory() as session:
        vms = select_vms(session, selection)
    job = _BackupJob(session_factory, dest, keep=keep, compression=compression, mode=mode, retry=retry,
                     progress=progress)  # fmt: skip
    if jobs == 1 or len(vms) == 1:
        results = [job.run(vm) for vm in vms]
    else:
        with ThreadPoolExecutor(max_workers=min(jobs, len(vms)), thread_name_prefix="backup") as pool:
            futures = [pool.submit(job.run, vm) for vm in vms]
            try:
                results = [future.result() for future in futures]
            except BaseException:
                job.cancelled.set()
                for future in futures:
                    future.cancel()
                raise
    return BackupReport(dest, results)


class _BackupJob:
    """The per-VM steps; one instance shared by the worker threads (it holds no per-VM state)."""

    def __init__(
        self,
        session_factory: SessionFactory,
        dest: Path,
        *,
        keep: int | None,
        compression: Compression,
        mode: ExportMode,
        retry: RetryPolicy,
        progress: Progress | None,
    ) -> None:
        self.session_factory = session_factory
        self.dest = dest
        self.keep = keep
        self.compression: Compression = compression
        self.mode: ExportMode = mode
        self.retry = retry
        self.progress = progress
        self.cancelled = threading.Event()
        self._stamp_lock = threading.Lock()

    def run(self, vm: VmRef) -> VmBackupResult:
        result = VmBackupResult(vm.uuid, vm.name_label)
        started = time.monotonic()
        folder = self.dest / f"{sanitize_name(vm.name_label)}-{vm.uuid[:UUID_PREFIX]}"
        try:
            if self.cancelled.is_set():
                raise UsageError("cancelled")
            with folder_lock(folder):
                self._backup_one(vm, folder, result)
                result.removed = _retention(folder, self.keep)
            result.status = "ok"
        except XvatoolError as exc:
            result.error = str(exc)
            _log.info("backup of %s failed: %s", vm.name_label, exc)
        finally:
            result.duration_s = time.monotonic() - started
        return result

    def _backup_one(self, vm: VmRef, folder: Path, result: VmBackupResult) -> None:
        started_at = dt.datetime.now(dt.UTC)
        archive = self._archive_path(folder, started_at)
        committed = False
        try:
            with self.session_factory() as session:
                manifest = backup_archive(
                    session, vm, archive, started_at=started_at, mode=self.mode, compression=self.compression,
                    retry=self.retry, progress=labelled(self.progress, vm.name_label),
                )  # fmt: skip
            committed = True
        finally:
            if not committed:
                # Nothing without a manifest may look like a backup; retention would clean it
                # anyway, but a failed VM should leave its folder as it found it.
                for leftover in (archive, *incomplete_files(archive)):
                    remove_tree(leftover)
        result.archive = archive
        result.manifest = manifest_path_for(archive)
        result.archive_size = manifest.archive_size
        result.disk_size = sum(d.virtual_size for d in manifest.disks)

    def _archive_path(self, folder: Path, moment: dt.datetime) -> Path:
        """`<stamp>.xva`, or `<stamp>-2.xva`… when a backup of the same second exists."""
        stamp = utc_stamp(moment)
        with self._stamp_lock:
            for n in range(1, 1000):
                name = stamp if n == 1 else f"{stamp}-{n}"
                archive = folder / f"{name}{ARCHIVE_SUFFIX}"
                if not any(p.exists() for p in (archive, manifest_path_for(archive))):
                    return archive
        raise LocalIOError("too many backups with the same time stamp", path=str(folder))


def backup_archive(
    session: Session,
    vm: VmRef,
    archive: Path,
    *,
    started_at: dt.datetime,
    export_from: VmRef | None = None,
    mode: ExportMode = "stream",
    compression: Compression = "none",
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Manifest:
    """Export `vm` into `archive`, verify the file, and write its manifest beside it (the commit).

    `export_from` is what is exported when it is not `vm` itself: a snapshot the caller took
    (an appliance's members are snapshotted together). Partial files are the caller's to clean.
    """
    source = _source_info(session)
    exported = export_vm(
        session, (export_from or vm).uuid, archive, mode=mode, compression=compression, snapshot="auto",
        retry=retry, digest=True, progress=progress,
    )  # fmt: skip
    digest = exported.digest
    assert digest is not None  # asked for: hashed in flight, the archive is never read again
    manifest = Manifest(
        archive=archive.name,
        archive_size=digest.size,
        archive_sha256=digest.sha256,
        compression=digest.compression,
        checksum_kind=digest.checksum_kind,
        vm_uuid=vm.uuid,
        vm_name=vm.name_label,
        source=source,
        disks=digest.disks,
        started_at=_iso(started_at),
        finished_at=_iso(dt.datetime.now(dt.UTC)),
        tool_version=importlib.metadata.version("xvatool"),
        snapshot=exported.snapshot_used or (export_from is not None and export_from.uuid != vm.uuid),
        extra={"archive_vm_uuid": digest.vm_uuid, "mode": mode, **(extra or {})},
    )
    write_manifest(manifest_path_for(archive), manifest)
    return manifest


def _source_info(session: Session) -> dict[str, str]:
    """Where the backup came from: the host URL (no credentials ever) and the pool."""
    parts = urlsplit(session.url)  # defensively drop any user:password@ from the URL
    url = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    info = {"url": url, "pool_uuid": "", "pool_name": "", "host_name": ""}
    pools: dict[str, dict[str, Any]] = session.call("pool.get_all_records")
    for pool in pools.values():
        info["pool_uuid"] = str(pool.get("uuid", ""))
        info["pool_name"] = str(pool.get("name_label", ""))
        master = pool.get("master")
        if isinstance(master, str) and master.startswith("OpaqueRef:") and master != "OpaqueRef:NULL":
            info["host_name"] = str(session.call("host.get_name_label", master))
        break
    return info


def _retention(folder: Path, keep: int | None) -> list[Path]:
    result = apply_retention(folder, keep=keep)
    return [*result.removed, *result.cleaned]


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Create the VM's folder and hold its lock: two runs must not back up one VM at once.

    Retention deletes `.part` files; with the lock held, none can belong to a live export.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(folder)) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise UsageError(f"{folder}: another backup of this VM (or appliance) is running") from exc
        yield
    finally:
        os.close(fd)

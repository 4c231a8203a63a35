"""`backup`: export several VMs at once into verified, manifest-committed archives with retention.

For each selected VM, in its own thread with its own session (sessions are not thread-safe):
export it (the export layer snapshots a running VM and destroys the snapshot afterwards,
host-protocol.md §7.1; the archive still describes the VM, `ops.identity`) into
``DEST/<name>-<uuid8>/<stamp>.xva``, verifying every chunk and computing the archive's sha256 and
each disk's while the bytes stream (`export_vm(digest=True)`: the archive is never read again),
write the manifest last and atomically, then apply retention in that VM's folder (only
xvatool's own files go). A failing VM, or a named VM the host does not have, is a failed result
in the report (`ops.report`) and does not stop the others; a failed VM's partial files are
removed. Ctrl-C stops every job at its next progress update (`parallel.run_batch`), each
cleaning up as it would alone. Options and `DEST` are checked before anything is exported, and
`DEST` is created only when there is something to back up.

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
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from xvatool._files import remove_tree
from xvatool._progress import Progress
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool._types import Compression
from xvatool.errors import LocalIOError, UsageError, XvatoolError
from xvatool.ops.documents import file_doc
from xvatool.ops.export import export_vm
from xvatool.ops.manifest import ARCHIVE_SUFFIX, Manifest, manifest_path_for, write_manifest
from xvatool.ops.parallel import run_batch, stopping
from xvatool.ops.report import BatchReport, VmResult
from xvatool.ops.retention import BackupEntry, apply_retention, incomplete_files
from xvatool.ops.spools import PartialExport
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
    "resolve_selection",
    "sanitize_name",
    "select_vms",
    "utc_stamp",
    "vm_folder",
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
    """Which VMs to back up: names or uuids, or `all_vms`, and/or tags (the union).

    `all_vms` with named VMs is refused (`UsageError`): one of the two is a mistake.
    """

    vms: tuple[str, ...] = ()
    all_vms: bool = False
    tags: tuple[str, ...] = ()

    def check(self) -> None:
        """`UsageError` for an empty or contradictory selection."""
        if not (self.vms or self.all_vms or self.tags):
            raise UsageError("choose VMs with --vm, --all or --tag")
        if self.all_vms and (self.vms or self.tags):
            raise UsageError("--all already selects every VM; drop --vm and --tag, or --all")


@dataclass
class VmBackupResult(VmResult):
    """The outcome for one VM: the backup written, and what retention pruned and cleaned."""

    archive: Path | None = None
    manifest: Path | None = None
    archive_size: int = 0
    archive_sha256: str | None = None
    disk_size: int = 0
    """Sum of the disks' virtual sizes."""
    snapshot_uuid: str | None = None
    """The temporary snapshot a running VM was exported through (destroyed since)."""
    pruned: list[BackupEntry] = field(default_factory=list)
    """Older complete backups retention removed."""
    cleaned: list[Path] = field(default_factory=list)
    """Leftovers of interrupted runs retention removed."""

    def to_json(self) -> dict[str, Any]:
        """One item of the `backup --json` document (docs/json.md)."""
        archive = (
            file_doc(self.archive, self.archive_size, sha256=self.archive_sha256) if self.archive else None
        )
        return {
            **super().to_json(),
            "archive": archive,
            "manifest": file_doc(self.manifest) if self.manifest else None,
            "virtual_size": self.disk_size,
            "vm_snapshot": {"uuid": self.snapshot_uuid} if self.snapshot_uuid else None,
            "pruned": [
                file_doc(e.archive, e.manifest.archive_size, time=e.manifest.started_at) for e in self.pruned
            ],
            "cleaned": [file_doc(p) for p in self.cleaned],
        }


@dataclass
class BackupReport(BatchReport[VmBackupResult]):
    """Every selected VM's result (VMs not found first, then in selection order)."""

    dest: Path = Path()

    def to_json(self) -> dict[str, Any]:
        """The `backup --json` document."""
        return {"dest": str(self.dest), **super().to_json()}


def sanitize_name(name: str) -> str:
    """A VM name made safe for one path component: ``"web 01/prod"`` → ``"web_01_prod"``."""
    safe = _UNSAFE.sub("_", name).strip("._-")[:MAX_DIR_NAME].rstrip("._-")
    return safe or "vm"


def vm_folder(dest: str | os.PathLike[str], vm_uuid: str, vm_name: str) -> Path:
    """``DEST/<name>-<uuid8>``: where a VM's backups go."""
    return Path(dest) / f"{sanitize_name(vm_name)}-{vm_uuid[:UUID_PREFIX]}"


def utc_stamp(moment: dt.datetime) -> str:
    """A UTC time as a file-name-safe stamp, e.g. ``20261127T051500Z``."""
    return moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _iso(moment: dt.datetime) -> str:
    # Fixed width, so that manifests sort by time as text.
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _selectable(rec: Mapping[str, Any]) -> bool:
    """`--all` and `--tag` never pick templates, snapshots or the control domain."""
    return not (rec.get("is_a_template") or rec.get("is_a_snapshot") or rec.get("is_control_domain"))


def resolve_selection(
    session: Session, selection: Selection
) -> tuple[list[VmRef], list[tuple[str, UsageError]]]:
    """The VMs a selection names, each once, in a stable order (named first, then by name), and
    the names that match no VM (or several) with the reason.

    A name that matches nothing is not fatal: the batch reports it as a failed VM and backs up
    the others, so one renamed VM never stops the nightly job. A selection that picks no VM
    and names none (a tag nobody carries) is a `UsageError`.
    """
    selection.check()
    chosen: dict[str, VmRef] = {}
    missing: list[tuple[str, UsageError]] = []
    for name in selection.vms:
        try:
            vm = find_vm(session, name)
        except UsageError as exc:
            missing.append((name, exc))
            continue
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
    if not chosen and not missing:
        what = f"tag {', '.join(selection.tags)}" if selection.tags else "the selection"
        raise UsageError(f"no VM matches {what}")
    return list(chosen.values()), missing


def select_vms(session: Session, selection: Selection) -> list[VmRef]:
    """The VMs a selection names (`resolve_selection`); a name matching no VM is a `UsageError`."""
    vms, missing = resolve_selection(session, selection)
    if missing:
        raise missing[0][1]
    return vms


def missing_results(missing: list[tuple[str, UsageError]], make: Callable[[str, str], VmResult]) -> list[Any]:
    """Failed results for the names a selection could not find (`make(uuid, name)` builds one)."""
    results = []
    for name, exc in missing:
        result = make("", name)
        result.fail(exc)
        results.append(result)
    return results


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
    state_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> BackupReport:
    """Back up the selected VMs into `dest`, `jobs` at a time; never raises for one VM's failure.

    Raises `UsageError` for bad options or a selection that picks nothing, and `LocalIOError`
    when `dest` cannot be created or written, before anything is exported (and before `dest`
    is created). A VM that is not found, or whose backup fails, is a failed result; the others
    go on. `BackupReport.exit_code` maps the report to 0 / 3 / 1. Ctrl-C stops every job within
    one buffer; each removes what it had half-written and destroys its snapshot. Example::

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
    selection.check()
    dest = Path(dest)
    with session_factory() as session:
        vms, missing = resolve_selection(session, selection)
    report = BackupReport(missing_results(missing, VmBackupResult), dest=dest)
    if not vms:
        return report
    _writable_folder(dest)
    stop = threading.Event()
    job = _BackupJob(session_factory, dest, keep=keep, compression=compression, mode=mode, retry=retry,
                     state_dir=state_dir, progress=stopping(progress, stop))  # fmt: skip
    report.results += run_batch(vms, job.run, jobs=jobs, stop=stop)
    return report


def _writable_folder(dest: Path) -> None:
    """Create `dest` if needed and prove it writable, so a read-only target fails as one line."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=dest, prefix=".xvatool-probe-"):
            pass
    except OSError as exc:
        raise LocalIOError(f"cannot write backups here: {exc.strerror or exc}", path=str(dest)) from exc


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
        state_dir: str | os.PathLike[str] | None,
        progress: Progress,
    ) -> None:
        self.session_factory = session_factory
        self.dest = dest
        self.keep = keep
        self.compression: Compression = compression
        self.mode: ExportMode = mode
        self.retry = retry
        self.state_dir = state_dir
        self.progress = progress
        self._stamp_lock = threading.Lock()

    def run(self, vm: VmRef) -> VmBackupResult:
        result = VmBackupResult(vm.uuid, vm.name_label)
        started = time.monotonic()
        folder = vm_folder(self.dest, vm.uuid, vm.name_label)
        try:
            with folder_lock(folder):
                self._backup_one(vm, folder, result)
                retention = apply_retention(folder, keep=self.keep)
            result.pruned, result.cleaned = retention.removed, retention.cleaned
            result.status = "ok"
        except XvatoolError as exc:
            result.fail(exc)
            _log.info("backup of %s failed: %s", vm.name_label, result.error)
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
                    retry=self.retry, state_dir=self.state_dir, progress=self.progress,
                )  # fmt: skip
            committed = True
        finally:
            if not committed:
                # Nothing without a manifest may look like a backup; a failed VM leaves its
                # folder as it found it (spools and their journal included).
                PartialExport(archive, self.state_dir).remove()
                for leftover in (archive, *incomplete_files(archive)):
                    remove_tree(leftover)
        result.archive = archive
        result.manifest = manifest_path_for(archive)
        result.archive_size = manifest.archive_size
        result.archive_sha256 = manifest.archive_sha256
        result.snapshot_uuid = manifest.snapshot_uuid
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
    state_dir: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Manifest:
    """Export `vm` into `archive`, verify the file, and write its manifest beside it (the commit).

    `export_from` is what is exported when it is not `vm` itself: a snapshot the caller took
    (an appliance's members are snapshotted together); the archive and the manifest still
    describe `vm` (`export_vm(through=…)`). Partial files are the caller's to clean.
    """
    source = _source_info(session)
    exported = export_vm(
        session, vm.uuid, archive, mode=mode, compression=compression, snapshot="auto", retry=retry,
        state_dir=state_dir, digest=True, through=export_from, progress=progress,
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
        snapshot=exported.snapshot_used,
        snapshot_uuid=exported.snapshot_uuid,
        extra={"mode": mode, **(extra or {})},
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

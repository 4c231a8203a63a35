"""Incremental backups of one VM into a repository: a host snapshot, each disk read the cheapest way
that is still exact, and what stays on the host afterwards (docs/incremental.md §4).

1. With ``cbt=True``, `VDI.enable_cbt` on the VM's disks; a disk the host cannot track (licence,
   SR driver) is noted and read another way.
2. `VM.snapshot`. Its `/export_metadata` becomes the repository snapshot's ova.xml, describing the
   VM itself (`ops.identity`: the VM's uuid, name and disks' uuids), as a plain halted VM; the
   manifest's source keeps the host snapshot's uuid and each disk's host snapshot VDI.
3. Each disk is matched, by userdevice, with the disk of the VM's previous repository snapshot,
   whose manifest recorded the host snapshot VDI it came from (`source.host_vdi`):

   - ``cbt``: that snapshot still exists, is a snapshot of the same VDI, both carry change logs
     and the size is unchanged: `VDI.list_changed_blocks` says which chunks to read over NBD;
   - ``vhd-diff``: it still holds its data and the size is unchanged: ``export_raw_vdi`` with
     ``base=`` sends the blocks that differ;
   - ``full``: otherwise (no previous backup, the snapshot gone or metadata only, a resize, a
     revert, CBT switched off), with a one-line notice where a chain broke.

   A way that fails half-way hands over to the next at the chunk where it stopped. Chunks a way
   does not read are the parent's, by id: every repository snapshot is complete by itself.
4. The snapshot is committed. Then the new host snapshot is kept (``keep``), reduced to its change
   logs (``metadata``: `VDI.data_destroy`, retried while dom0 still holds NBD's VBDs), or
   destroyed (``delete``), and the previous one the repository recorded is destroyed. A backup
   that fails destroys its own host snapshot and leaves the previous one for the next night.

Only snapshots this tool made are ever destroyed: they carry ``other_config`` keys
``xvatool-backup-of`` (the VM's uuid) and ``xvatool-backup-repo`` (the repository's id), and must be
named by the VM's latest repository snapshot, or be left over: a run killed before it could clean
up (``kill -9``, a lost host connection) leaves its host snapshot behind, and the next successful
backup of the VM into the same repository destroys those older than `ORPHAN_AGE` (younger ones
may belong to a run still going).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from xvatool._human import NOTE
from xvatool._progress import Progress
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool.errors import (
    CbtBitmapError,
    FormatError,
    NbdError,
    TransferError,
    UsageError,
    XapiError,
    XvatoolError,
)
from xvatool.ops.disk_reads import ChunkSample, DiskFeed, read_changed_over_nbd, read_full, read_vhd_delta
from xvatool.ops.documents import disk_doc
from xvatool.ops.export import fetch_metadata
from xvatool.ops.identity import snapshot_identity, with_identity
from xvatool.ops.progress import disk_label
from xvatool.repo.ingest import SnapshotWriter, WriterRun
from xvatool.repo.snapshot import Snapshot, SnapshotDisk
from xvatool.xapi.cbt import data_destroy, enable_cbt, list_changed_blocks, nbd_mode, nbd_targets
from xvatool.xapi.session import Session
from xvatool.xapi.vms import VmRef, destroy_vdi, destroy_vm_with_disks, is_null_ref
from xvatool.xva.ovaxml import DateTime, DiskInfo, Metadata

__all__ = [
    "DEFAULT_NBD_CONNECTIONS",
    "MARKER_KEY",
    "ORPHAN_AGE",
    "REPO_KEY",
    "DiskReport",
    "HostVdi",
    "IncrementalOptions",
    "KeepOnHost",
    "Method",
    "VmIncremental",
    "backup_vm",
]

log = logging.getLogger(__name__)

KeepOnHost = Literal["keep", "metadata", "delete"]
Method = Literal["cbt", "vhd-diff", "full"]
DEFAULT_NBD_CONNECTIONS = 4
MARKER_KEY = "xvatool-backup-of"
"""`other_config` key on the host snapshots (VM and VDIs) a backup made: the source VM's uuid."""
REPO_KEY = "xvatool-backup-repo"
"""`other_config` key beside `MARKER_KEY`: the id of the repository the backup went to."""
ORPHAN_AGE = dt.timedelta(hours=12)
"""How old a left-over host snapshot must be before a later backup destroys it: older than any
backup run, younger than the next night's."""
_FALLBACK_ERRORS = (NbdError, CbtBitmapError, XapiError, TransferError, FormatError)
"""What makes a way of reading give up and hand over; anything else fails the VM's backup."""


@dataclass(frozen=True)
class IncrementalOptions:
    """`cbt`: switch CBT on first; `snapshots`: what stays on the host (None: ``metadata`` when the
    VM's disks are tracked, else ``delete``); `nbd_connections` per disk; `retry` for transfers.
    """

    cbt: bool = False
    snapshots: KeepOnHost | None = None
    nbd_connections: int = DEFAULT_NBD_CONNECTIONS
    retry: RetryPolicy = DEFAULT_RETRY

    def __post_init__(self) -> None:
        if self.snapshots not in (None, "keep", "metadata", "delete"):
            raise UsageError(f"--snapshots must be keep, metadata or delete, not {self.snapshots!r}")
        if self.nbd_connections < 1:
            raise UsageError("--nbd-connections must be at least 1")


@dataclass
class DiskReport:
    """How one disk was read: the ways used, the bytes that came from the host, what broke.

    `vdi_uuid` and `name` are the VM's disk; `snapshot_vdi_uuid` the host snapshot's copy of
    it, which was read (and may be kept on the host, `KeepOnHost`).
    """

    userdevice: str
    vdi_uuid: str
    methods: list[Method] = field(default_factory=list)
    bytes_read: int = 0
    notices: list[str] = field(default_factory=list)
    name: str = ""
    virtual_size: int = 0
    snapshot_vdi_uuid: str = ""

    @property
    def name_label(self) -> str:
        return self.name

    @property
    def method(self) -> str:
        """``cbt``, ``vhd-diff`` or ``full``; joined with ``+`` when one way took over from another."""
        return "+".join(self.methods) or "full"

    def to_json(self) -> dict[str, Any]:
        """One disk of a `backup --repo --json` item (docs/json.md)."""
        return disk_doc(self, method=self.method, read_bytes=self.bytes_read, notes=list(self.notices))


@dataclass
class VmIncremental:
    """One VM's incremental backup: the repository snapshot, each disk's report, what was kept."""

    snapshot: Snapshot
    disks: list[DiskReport]
    kept: KeepOnHost
    host_snapshot: str = ""
    """The uuid of the host snapshot the disks were read from (destroyed unless `kept`)."""

    @property
    def bytes_read(self) -> int:
        return sum(d.bytes_read for d in self.disks)


@dataclass(frozen=True)
class HostVdi:
    """The fields of a VDI record that decide how a disk can be read."""

    ref: str
    uuid: str
    size: int
    type: str
    cbt_enabled: bool
    is_a_snapshot: bool
    snapshot_of: str
    marker: str

    @classmethod
    def from_record(cls, ref: str, record: dict[str, Any]) -> HostVdi:
        return cls(
            ref=ref,
            uuid=str(record["uuid"]),
            size=int(record["virtual_size"]),
            type=str(record.get("type", "user")),
            cbt_enabled=bool(record.get("cbt_enabled", False)),
            is_a_snapshot=bool(record.get("is_a_snapshot", False)),
            snapshot_of=str(record.get("snapshot_of", "")),
            marker=str((record.get("other_config") or {}).get(MARKER_KEY, "")),
        )

    @classmethod
    def find(cls, session: Session, uuid: str) -> HostVdi | None:
        """The VDI with this uuid, or None when the host no longer has it."""
        try:
            ref = str(session.call("VDI.get_by_uuid", uuid))
            return cls.from_record(ref, session.call("VDI.get_record", ref))
        except XapiError as exc:
            if exc.code in ("UUID_INVALID", "HANDLE_INVALID"):
                return None
            raise


def _disk_vdis(session: Session, vm_ref: str) -> list[str]:
    refs = []
    for vbd in session.call("VM.get_VBDs", vm_ref):
        record = session.call("VBD.get_record", vbd)
        if record.get("type") == "Disk" and not is_null_ref(record.get("VDI")):
            refs.append(str(record["VDI"]))
    return refs


def _enable_cbt(session: Session, vm: VmRef) -> list[str]:
    """CBT on for every disk of the VM; the notices for those the host cannot track."""
    notices = []
    for vdi in _disk_vdis(session, vm.ref):
        reason = enable_cbt(session, vdi)
        if reason is not None:
            uuid = session.call("VDI.get_uuid", vdi)
            notices.append(f"{vm.name_label}: CBT cannot be enabled on VDI {uuid}: {reason}")
    return notices


def _take_snapshot(session: Session, vm: VmRef) -> tuple[str, str]:
    """`VM.snapshot`, made importable as a VM (not a template); its (ref, uuid)."""
    ref = str(session.call("VM.snapshot", vm.ref, f"{vm.name_label} (xvatool backup)"))
    try:
        session.call("VM.set_is_a_template", ref, False)
    except XapiError as exc:
        log.debug("cannot clear is_a_template on the snapshot: %s", exc)
    return ref, str(session.call("VM.get_uuid", ref))


def _tag(session: Session, vm: VmRef, snap_ref: str, repo_id: str) -> None:
    """Mark the snapshot and its disks as ours, after the metadata was taken (it stays clean).

    A snapshot inherits `other_config` from its source, which may carry an old mark (a VM
    restored from a kept snapshot), so the keys are removed before they are set.
    """
    for cls, ref in [("VM", snap_ref), *(("VDI", vdi) for vdi in _disk_vdis(session, snap_ref))]:
        for key, value in ((MARKER_KEY, vm.uuid), (REPO_KEY, repo_id)):
            session.call(f"{cls}.remove_from_other_config", ref, key)
            session.call(f"{cls}.add_to_other_config", ref, key, value)


def _metadata(session: Session, snap_ref: str, snap_uuid: str, vm: VmRef) -> Metadata:
    source = VmRef(snap_ref, snap_uuid, vm.name_label, "Halted")
    return (
        Metadata.from_bytes(fetch_metadata(session, source))
        .without_snapshot_identity()
        .renamed(vm.name_label)
    )


def _parent_disk(parent: Snapshot | None, disk: DiskInfo) -> SnapshotDisk | None:
    if parent is None or disk.userdevice is None:
        return None
    return next((d for d in parent.disks if d.userdevice == disk.userdevice), None)


def _plan(
    session: Session, vdi: HostVdi, parent: SnapshotDisk | None
) -> tuple[list[Method], HostVdi | None, str]:
    """The ways this disk may be read, in order; the base snapshot; why the chain broke ("" if not)."""
    recorded = str((parent.source if parent is not None else {}).get("host_vdi") or "")
    if not recorded:
        return ["full"], None, ""
    base = HostVdi.find(session, recorded)
    if base is None or not base.is_a_snapshot:
        return ["full"], None, f"the previous snapshot {recorded[:8]} is gone from the host"
    if base.size != vdi.size:
        return ["full"], None, f"the disk was resized ({base.size} -> {vdi.size} bytes)"
    methods: list[Method] = []
    broken = ""
    if base.snapshot_of != vdi.snapshot_of:
        broken = "the disk is not the one backed up before (VM reverted or disk replaced)"
    elif not vdi.cbt_enabled:
        broken = "CBT is off for this disk" if base.cbt_enabled else ""
    elif base.cbt_enabled:
        methods.append("cbt")
    if base.type != "cbt_metadata":
        methods.append("vhd-diff")
    elif not methods:
        broken = broken or "CBT cannot be used"
        broken += "; the previous snapshot holds metadata only"
    methods.append("full")
    return methods, base, broken


class _DiskJob:
    """Reads one disk of the new host snapshot into its repository disk writer."""

    def __init__(
        self,
        session: Session,
        writer: SnapshotWriter,
        options: IncrementalOptions,
        *,
        allow_plain: bool,
    ) -> None:
        self.session = session
        self.writer = writer
        self.options = options
        self.allow_plain = allow_plain

    def run(
        self, disk: DiskInfo, vdi: HostVdi, vm_name: str, progress: Callable[[int], object] | None
    ) -> DiskReport:
        """Read `vdi` (the host snapshot's copy of `disk`) into the snapshot's disk `disk`."""
        parent = _parent_disk(self.writer.parent, disk)
        methods, base, broken = _plan(self.session, vdi, parent)
        if self.writer.parent is not None and self.writer.parent.source.get("snapshots") == "delete":
            broken = ""  # nothing was kept on the host last time: a full read is the plan, not a fallback
        report = DiskReport(str(disk.userdevice or ""), disk.vdi_uuid, name=disk.name_label,
                            virtual_size=disk.virtual_size, snapshot_vdi_uuid=vdi.uuid)  # fmt: skip
        writer = self.writer.disk(disk)
        repo = self.writer.repo
        feed = DiskFeed(
            writer, repo.disk_chunk_ids(parent) if parent is not None else None, progress=progress
        )
        sample = ChunkSample()
        if broken:  # the plan: worth a note, not a warning
            self._notice(report, vm_name, f"{broken}; reading it with {methods[0]}", level=NOTE)
        for n, method in enumerate(methods):
            started_at = feed.next
            try:
                self._read(method, feed, vdi, base, sample)
            except _FALLBACK_ERRORS as exc:
                if method == "full":
                    raise
                self._notice(report, vm_name, f"{method} failed ({exc}); continuing with {methods[n + 1]}")
                if feed.next > started_at:
                    report.methods.append(method)
                continue
            report.methods.append(method)
            break
        report.bytes_read = feed.moved + self._verify(sample, vdi)
        writer.record.source.update(
            method=report.method,
            host_vdi=vdi.uuid,
            cbt=vdi.cbt_enabled,
            bytes_read=report.bytes_read,
            base_vdi=base.uuid if base is not None and report.method != "full" else None,
        )
        return report

    def _notice(self, report: DiskReport, vm_name: str, text: str, *, level: int = logging.WARNING) -> None:
        log.log(level, "%s disk %s: %s", vm_name, report.userdevice, text)
        report.notices.append(text)

    def _read(
        self, method: Method, feed: DiskFeed, vdi: HostVdi, base: HostVdi | None, sample: ChunkSample
    ) -> None:
        options, session = self.options, self.session
        if method == "full":
            read_full(session, feed, vdi_uuid=vdi.uuid, retry=options.retry)
            return
        assert base is not None
        if method == "vhd-diff":
            read_vhd_delta(
                session,
                self.writer.repo,
                feed,
                vdi_uuid=vdi.uuid,
                base_uuid=base.uuid,
                retry=options.retry,
                sample=sample,
            )
            return
        changed = list_changed_blocks(session, base.ref, vdi.ref, vdi.size)
        targets = nbd_targets(session, vdi.ref)
        if not targets:
            raise TransferError(
                "the host offers no NBD address (no network has the purpose nbd)", retryable=False
            )
        read_changed_over_nbd(
            feed,
            changed,
            targets,
            connections=options.nbd_connections,
            allow_plain=self.allow_plain,
            retry=options.retry,
            sample=sample,
        )

    def _verify(self, sample: ChunkSample, vdi: HostVdi) -> int:
        """Read the sample again over NBD; a host without NBD leaves the VHD data unsampled."""
        if not sample.digests:
            return 0
        try:
            targets = nbd_targets(self.session, vdi.ref)
            if not targets:
                log.info("VDI %s: no NBD address to read a sample again; VHD data taken as sent", vdi.uuid)
                return 0
            return sample.verify(
                targets, vdi=vdi.uuid, allow_plain=self.allow_plain, retry=self.options.retry
            )
        except (NbdError, XapiError) as exc:
            log.warning("VDI %s: could not read the sample again (%s); data taken as sent", vdi.uuid, exc)
            return 0


def backup_vm(
    session: Session,
    vm: VmRef,
    run: WriterRun,
    options: IncrementalOptions,
    *,
    time: dt.datetime,
    host_url: str,
    progress: Progress | None = None,
) -> VmIncremental:
    """Back up one VM into the run's repository, incrementally where the host allows (module doc).

    `progress` gets one bar per disk, ``web-01 disk 0``, counting the disk bytes decided out of
    the disk's size. Whatever fails or interrupts (a bar may raise `Interrupted`), the host
    snapshot is destroyed and nothing is committed.
    """
    notices = _enable_cbt(session, vm) if options.cbt else []
    for line in notices:
        log.warning("%s", line)
    snap_ref, snap_uuid = _take_snapshot(session, vm)
    vdis: list[HostVdi] = []
    try:
        identity = snapshot_identity(session, vm, VmRef(snap_ref, snap_uuid, vm.name_label, "Halted"))
        metadata = with_identity(_metadata(session, snap_ref, snap_uuid, vm), identity)
        _tag(session, vm, snap_ref, run.repo.config.id)
        by_uuid = {}
        for ref in _disk_vdis(session, snap_ref):
            found = HostVdi.from_record(ref, session.call("VDI.get_record", ref))
            by_uuid[identity.vdis.get(found.uuid, found.uuid)] = found  # by the VM's disk uuid
        vdis = list(by_uuid.values())
        kept: KeepOnHost = options.snapshots or ("metadata" if any(v.cbt_enabled for v in vdis) else "delete")
        writer = run.snapshot(
            metadata,
            vm_uuid=vm.uuid,
            vm_name=vm.name_label,
            time=time,
            source={"host": host_url, "host_snapshot": snap_uuid, "snapshots": kept},
        )
        job = _DiskJob(session, writer, options, allow_plain=nbd_mode(session) == "plain")
        reports = []
        for disk in metadata.disks:
            bar = progress(disk_label(vm.name_label, disk), disk.virtual_size) if progress else None
            try:
                reports.append(
                    job.run(disk, by_uuid[disk.vdi_uuid], vm.name_label, bar.update if bar else None)
                )
            finally:
                if bar is not None:
                    bar.close()
        snapshot = writer.commit()
    except BaseException:
        destroy_vm_with_disks(session, snap_ref, retry=options.retry)
        raise
    if notices:
        for report in reports:
            report.notices[:0] = notices
    _keep_on_host(session, snap_ref, vdis, kept, options.retry)
    _forget_previous(session, vm, writer.parent, options.retry)
    keep = {snap_uuid, *(v.uuid for v in vdis)} if kept != "delete" else set()
    _sweep_left_over(session, vm, run.repo.config.id, keep, time - ORPHAN_AGE, options.retry)
    return VmIncremental(snapshot, reports, kept, snap_uuid)


def _keep_on_host(
    session: Session, snap_ref: str, vdis: list[HostVdi], kept: KeepOnHost, retry: RetryPolicy
) -> None:
    """After the commit: what of the new host snapshot stays (never raises: the backup is done)."""
    if kept == "keep":
        return
    if kept == "delete":
        destroy_vm_with_disks(session, snap_ref, retry=retry)
        return
    try:
        session.call("VM.destroy", snap_ref)  # the VDIs stay; their VBDs go
    except XvatoolError as exc:
        log.warning("could not destroy snapshot VM %s: %s", snap_ref, exc)
    for vdi in vdis:
        try:
            if vdi.cbt_enabled:
                data_destroy(session, vdi.ref, retry=retry)
            else:
                destroy_vdi(session, vdi.ref, retry=retry)  # untracked: its metadata would serve nothing
        except XvatoolError as exc:
            log.warning("could not reduce snapshot VDI %s to CBT metadata: %s", vdi.uuid, exc)


def _sweep_left_over(
    session: Session, vm: VmRef, repo_id: str, keep: set[str], before: dt.datetime, retry: RetryPolicy
) -> None:
    """Destroy the host snapshots of `vm` that earlier, interrupted runs into this repository left
    (marked by both keys, taken before `before`, not in `keep`); log, never raise.
    """

    def left_over(record: dict[str, Any]) -> bool:
        config = record.get("other_config") or {}
        if not record.get("is_a_snapshot") or str(record.get("uuid")) in keep:
            return False
        if config.get(MARKER_KEY) != vm.uuid or config.get(REPO_KEY) != repo_id:
            return False
        try:
            taken = DateTime(str(record.get("snapshot_time"))).moment()
        except ValueError:
            return False  # what cannot be dated is never destroyed
        return taken < before

    try:
        for ref in session.call("VM.get_snapshots", vm.ref):
            record = session.call("VM.get_record", ref)
            if left_over(record):
                log.log(NOTE, "%s: destroying host snapshot %s, left by a backup interrupted at %s",
                        vm.name_label, record["uuid"], record["snapshot_time"])  # fmt: skip
                destroy_vm_with_disks(session, str(ref), retry=retry)
        for disk in _disk_vdis(session, vm.ref):
            for ref in session.call("VDI.get_snapshots", disk):
                record = session.call("VDI.get_record", ref)
                if left_over(record):
                    log.log(NOTE, "%s: destroying host snapshot VDI %s, left by a backup interrupted at %s",
                            vm.name_label, record["uuid"], record["snapshot_time"])  # fmt: skip
                    destroy_vdi(session, str(ref), retry=retry)
    except XvatoolError as exc:
        log.warning(
            "%s: could not look for host snapshots left by interrupted backups: %s", vm.name_label, exc
        )


def _forget_previous(session: Session, vm: VmRef, parent: Snapshot | None, retry: RetryPolicy) -> None:
    """Destroy the host snapshot the previous repository snapshot recorded: it is no base any more."""
    if parent is None:
        return
    previous = str(parent.source.get("host_snapshot") or "")
    if previous:
        try:
            ref = str(session.call("VM.get_by_uuid", previous))
            record = session.call("VM.get_record", ref)
            if record.get("is_a_snapshot") and (record.get("other_config") or {}).get(MARKER_KEY) == vm.uuid:
                session.call("VM.destroy", ref)
        except XvatoolError as exc:
            log.debug("previous snapshot VM %s not destroyed: %s", previous, exc)
    for disk in parent.disks:
        uuid = str(disk.source.get("host_vdi") or "")
        found = HostVdi.find(session, uuid) if uuid else None
        if found is not None and found.is_a_snapshot and found.marker == vm.uuid:
            destroy_vdi(session, found.ref, retry=retry)

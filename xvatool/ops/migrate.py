"""`migrate`: export a VM from one pool straight into an import on another, with no temporary file.

The pipe::

    GET /export (source) ─▶ XvaReader (verifies every chunk) ─▶ repack_pieces (new ova.xml) ─▶
        PUT /import (target, no Content-Length, half-close at the end; host-protocol.md §4.8)

Only ova.xml changes on the way: its version header is lowered to the target's xapi version when the
source is newer (a host refuses an XVA newer than itself, `IMPORT_INCOMPATIBLE_VERSION`,
xva-format.md §4.3), and networks are renamed by `network_map` so that VIFs land on the chosen
target networks (the importer matches networks by name first, xva-format.md §7.6). Chunk members
pass unchanged.

The reader checks all digests before the tar's end-of-archive blocks are produced, so a corrupt
chunk always stops the body before the tar is complete; the target then sees a truncated import,
fails it and destroys what it created (host-protocol.md §4.8, no `force`). As a second line, any VM
that appeared on the target during the migration with the migrated VM's name is destroyed with its
disks.

The source VM is left as it was: a running VM is exported through a temporary snapshot destroyed
afterwards (host-protocol.md §7.1; a note says so), unless `shutdown_source` asks to shut it down cleanly
first.

Before a byte moves, every ``--map-network OLD=NEW`` is checked: OLD must be a network of one of
the VM's VIFs and NEW a network of the target (by name, as the importer matches them first; a
missing NEW would let the importer fall back to the old bridge and land the VIF on the wrong
network). Unmapped networks the target lacks are warned about. After the copy the result says
on which target network each VIF ended up. The new VM is marked (``other_config``
``xvatool-migrated-from``), so that migrating the same VM again warns before making a second
copy.

`mode="parallel"` moves every disk at once, still with no temporary file::

    GET /export_metadata (ova.xml, host-protocol.md §4.7) ─▶ edited as above
    per disk, in threads: GET /export_raw_vdi?format=tar (host-protocol.md §4.10) ─▶ XvaReader (verifies) ─▶
        non-zero chunks as chunked frames ─▶ PUT /import_raw_vdi?chunked=true (host-protocol.md §4.12) into a
        VDI.create'd VDI, with no Content-Length: the host reads to the 12-byte terminator
    PUT /import_metadata with vdi:<source uuid>=<target uuid> (host-protocol.md §4.9)

A source error stops a disk's body before its terminator, so the host fails that upload; the
VDIs created are destroyed on any failure, with any VM the metadata import left.

Example::

    with connect(src_url, "root", pw1) as src, connect(dst_url, "root", pw2) as dst:
        result = migrate(src, dst, "web-01", network_map={"Pool-wide network": "LAN"})
        print(result.vm_uuid)
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from xvatool._human import NOTE
from xvatool._progress import Progress, ProgressBar, ProgressGroup
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool._streams import TeeReader
from xvatool.errors import Interrupted, UsageError, XvatoolError, location_context
from xvatool.ops.documents import vm_doc
from xvatool.ops.export import TransferMode, fetch_metadata
from xvatool.ops.import_ import create_disk_vdi
from xvatool.ops.live_import import import_live
from xvatool.ops.parallel import run_parallel
from xvatool.ops.progress import disk_label, total_size
from xvatool.ops.vdi_stream import HostDisk, upload_extents
from xvatool.xapi.session import Session
from xvatool.xapi.vmdata import import_metadata, open_export
from xvatool.xapi.vms import VmRef, destroy_vdi, destroy_vm_with_disks, export_source, find_sr, find_vm
from xvatool.xva.assemble import ova_xml_tar
from xvatool.xva.convert import edit_metadata
from xvatool.xva.ovaxml import DiskInfo, Metadata
from xvatool.xva.reader import XvaReader

__all__ = ["MIGRATED_FROM", "MigrateResult", "VifPlacement", "host_xapi_version", "migrate"]

_log = logging.getLogger(__name__)

LEFTOVER_WAIT_S = 10.0
"""Seconds to watch the target for a failed import's VM after the failure (its cleanup is async)."""
LEFTOVER_POLL_S = 0.25
MIGRATED_FROM = "xvatool-migrated-from"
"""`other_config` key on a migrated VM: the source VM's uuid, so a second copy is noticed."""
_VERSION = re.compile(r"^(\d+)\.(\d+)")


@dataclass(frozen=True)
class VifPlacement:
    """Where one VIF ended up: its device, MAC, and the target network (and the source's)."""

    device: str
    mac: str
    network_uuid: str
    network_name: str
    source_network: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "mac": self.mac,
            "network": {"uuid": self.network_uuid, "name": self.network_name},
            "source_network": {"name": self.source_network} if self.source_network is not None else None,
        }


@dataclass(frozen=True)
class MigrateResult:
    """The VM created on the target, what was rewritten on the way, and where its VIFs are."""

    vm_uuid: str
    vm_ref: str
    source_vm_uuid: str
    vm_name: str
    bytes_transferred: int
    changes: list[str] = field(default_factory=list)
    source_shut_down: bool = False
    mode: TransferMode = "stream"
    vifs: list[VifPlacement] = field(default_factory=list)
    snapshot_uuid: str | None = None
    """The temporary snapshot a running source VM was copied through (destroyed since)."""

    def to_json(self) -> dict[str, Any]:
        """The `migrate --json` document (docs/json.md)."""
        return {
            "vm": vm_doc(self.vm_uuid, self.vm_name),
            "source_vm": vm_doc(self.source_vm_uuid, self.vm_name),
            "mode": self.mode,
            "transferred_bytes": self.bytes_transferred,
            "changes": self.changes,
            "vifs": [v.to_json() for v in self.vifs],
            "vm_snapshot": {"uuid": self.snapshot_uuid} if self.snapshot_uuid else None,
            "source_shut_down": self.source_shut_down,
        }


def host_xapi_version(session: Session) -> tuple[int, int] | None:
    """The pool master's xapi version (``software_version["xapi"]``, e.g. "24.19"), if it says."""
    pools: dict[str, dict[str, Any]] = session.call("pool.get_all_records")
    for pool in pools.values():
        software: dict[str, Any] = session.call("host.get_software_version", pool["master"])
        match = _VERSION.match(str(software.get("xapi", "")))
        if match:
            return int(match.group(1)), int(match.group(2))
    return None


def migrate(
    source: Session,
    target: Session,
    vm: str,
    *,
    sr: str | None = None,
    network_map: Mapping[str, str] | None = None,
    shutdown_source: bool = False,
    mode: TransferMode = "stream",
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
) -> MigrateResult:
    """Copy VM `vm` (uuid or unique name on `source`) to `target`, verified in flight.

    `sr` is a target SR uuid or unique name (the target pool's default SR if None). `mode` is
    "stream" (one export piped into one import) or "parallel" (every disk at once, module
    docstring). `network_map` is checked against the VM and the target before anything moves
    (`UsageError`). Live streams cannot be replayed, so only the metadata fetch and cleanups use
    `retry`. Raises the first error; nothing half-made is left on the target.
    """
    if mode not in ("stream", "parallel"):
        raise UsageError(f"unknown mode {mode!r} (stream or parallel)")
    found = find_vm(source, vm)
    mapping = dict(network_map or {})
    target_networks = _networks(target)
    _check_networks(found, _vif_networks(source, found.ref), mapping, target_networks)
    _warn_if_copied_before(target, found)
    sr_ref, sr_uuid = find_sr(target, sr) if sr is not None or mode == "parallel" else ("", None)
    target_version = host_xapi_version(target)
    shut_down = False
    if shutdown_source and found.power_state == "Running":
        source.call("VM.clean_shutdown", found.ref)
        shut_down = True
        found = find_vm(source, found.uuid)  # now Halted: exported as it is, no snapshot
    before = _vm_uuids(target)
    edits = _Edits(target_version, mapping)
    parallel = _ParallelMigration(source, target, sr_ref, retry, progress) if mode == "parallel" else None
    try:
        with export_source(source, found, snapshot="auto", retry=retry) as copied:
            snapshot_uuid = copied.uuid if copied.ref != found.ref else None
            if snapshot_uuid is not None:
                _log.log(NOTE, "%s is %s: copying it through a temporary snapshot", found.name_label,
                         found.power_state.lower())  # fmt: skip
            if parallel is not None:
                vm_ref, vm_uuid = parallel.run(copied, found.name_label, edits)
                sent = parallel.bytes_read
            else:
                (vm_ref, vm_uuid), sent = _migrate_stream(source, target, copied, found.name_label, sr_uuid,
                                                          edits, retry, progress)  # fmt: skip
    except BaseException:
        _remove_leftovers(target, before, found.name_label, retry)
        if parallel is not None:
            parallel.discard()
        raise
    _mark(target, vm_ref, found.uuid)
    return MigrateResult(
        vm_uuid=vm_uuid,
        vm_ref=vm_ref,
        source_vm_uuid=found.uuid,
        vm_name=found.name_label,
        bytes_transferred=sent,
        changes=edits.changes,
        source_shut_down=shut_down,
        mode=mode,
        vifs=_placements(target, vm_ref, _inverse(mapping)),
        snapshot_uuid=snapshot_uuid,
    )


def _networks(session: Session) -> dict[str, dict[str, Any]]:
    """The host's networks by ref."""
    records: dict[str, dict[str, Any]] = session.call("network.get_all_records")
    return records


def _vif_networks(session: Session, vm_ref: str) -> dict[str, str]:
    """VIF device → the name of its network, for the VM on the source."""
    networks = _networks(session)
    found: dict[str, str] = {}
    for vif in session.call("VM.get_VIFs", vm_ref):
        record = session.call("VIF.get_record", vif)
        network = networks.get(str(record.get("network")), {})
        found[str(record.get("device", ""))] = str(network.get("name_label", ""))
    return found


def _check_networks(
    vm: VmRef, vifs: Mapping[str, str], mapping: Mapping[str, str], target: Mapping[str, dict[str, Any]]
) -> None:
    """Refuse a map naming a network the VM does not use or the target lacks; warn about the rest."""
    names = {str(rec.get("name_label", "")) for rec in target.values()}
    used = set(vifs.values())
    unused = sorted(old for old in mapping if old not in used)
    if unused:
        have = ", ".join(repr(n) for n in sorted(used)) or "none: the VM has no VIF"
        raise UsageError(
            f"--map-network: no VIF of {vm.name_label} is on network {', '.join(map(repr, unused))} "
            f"(its networks: {have})"
        )
    missing = sorted({new for new in mapping.values() if new not in names})
    if missing:
        have = ", ".join(repr(n) for n in sorted(names)) or "none"
        raise UsageError(
            f"--map-network: the target has no network named {', '.join(map(repr, missing))} "
            f"(its networks: {have})"
        )
    for device, network in sorted(vifs.items()):
        if network not in mapping and network not in names:
            _log.warning(
                "VIF %s of %s is on network %r, which the target does not have: the target will match it "
                "by bridge or create a network; choose one with --map-network %r=NAME",
                device, vm.name_label, network, network,
            )  # fmt: skip


def _warn_if_copied_before(target: Session, vm: VmRef) -> None:
    records: dict[str, dict[str, Any]] = target.call("VM.get_all_records")
    copies = [
        rec for rec in records.values() if (rec.get("other_config") or {}).get(MIGRATED_FROM) == vm.uuid
    ]
    for rec in copies:
        _log.warning(
            "the target already has %r (uuid %s), migrated from this VM before; this makes a second copy",
            rec.get("name_label"), rec.get("uuid"),
        )  # fmt: skip


def _mark(target: Session, vm_ref: str, source_uuid: str) -> None:
    """Record where the new VM came from; a failure to do so never fails the migration."""
    try:
        target.call("VM.add_to_other_config", vm_ref, MIGRATED_FROM, source_uuid)
    except XvatoolError as exc:
        _log.info("could not mark the migrated VM: %s", exc)


def _inverse(mapping: Mapping[str, str]) -> dict[str, str]:
    return {new: old for old, new in mapping.items()}


def _placements(target: Session, vm_ref: str, renamed_from: Mapping[str, str]) -> list[VifPlacement]:
    """Where each VIF of the new VM is; `renamed_from` gives a mapped network's source name."""
    networks = _networks(target)
    placements = []
    for vif in target.call("VM.get_VIFs", vm_ref):
        record = target.call("VIF.get_record", vif)
        network = networks.get(str(record.get("network")), {})
        name = str(network.get("name_label", ""))
        placements.append(
            VifPlacement(
                device=str(record.get("device", "")),
                mac=str(record.get("MAC", "")),
                network_uuid=str(network.get("uuid", "")),
                network_name=name,
                source_network=renamed_from.get(name, name),
            )
        )
    return sorted(placements, key=lambda p: (len(p.device), p.device))


class _Edits:
    """The ova.xml edits of a migration (module docstring), and what they changed."""

    def __init__(self, target_version: tuple[int, int] | None, network_map: Mapping[str, str] | None):
        self.target_version = target_version
        self.network_map = network_map
        self.changes: list[str] = []

    def apply(self, metadata: Metadata) -> Metadata:
        version = metadata.xapi_version
        newer = self.target_version is not None and version > self.target_version
        edited, self.changes = edit_metadata(
            metadata, host_version=self.target_version if newer else None, network_map=self.network_map
        )
        return edited


def _migrate_stream(
    source: Session,
    target: Session,
    copied: VmRef,
    vm_name: str,
    sr_uuid: str | None,
    edits: _Edits,
    retry: RetryPolicy,
    progress: Progress | None,
) -> tuple[tuple[str, str], int]:
    """Stream mode: `GET /export` rewritten on the fly into `PUT /import`; ((ref, uuid), bytes)."""
    with open_export(source, copied.uuid) as body:
        tee = TeeReader(body)
        reader = XvaReader(tee, source=f"{source.url}/export")
        result = import_live(target, reader, metadata=edits.apply(reader.metadata), sr=sr_uuid, retry=retry,
                             progress=progress)  # fmt: skip
        tee.drain()  # anything after the tar end, so the source's task completes cleanly
    return (result.vm_ref, result.vm_uuid), tee.count


class _ParallelMigration:
    """One parallel migration (module docstring); `discard()` undoes what it made on the target."""

    def __init__(
        self, source: Session, target: Session, sr_ref: str, retry: RetryPolicy, progress: Progress | None
    ) -> None:
        self.source = source
        self.target = target
        self.sr_ref = sr_ref
        self.retry = retry
        self.progress = progress
        self.stop = threading.Event()
        self.created: list[str] = []
        """Refs of the VDIs created on the target."""
        self.bytes_read = 0
        self._lock = threading.Lock()
        self._first_error: BaseException | None = None

    def run(self, vm: VmRef, vm_name: str, edits: _Edits) -> tuple[str, str]:
        """Metadata, every disk at once, then the metadata import; the new VM's (ref, uuid)."""
        bars = ProgressGroup(self.progress)
        try:
            ova_xml = self.retry.run(lambda: fetch_metadata(self.source, vm), what=f"metadata of {vm_name}")
            metadata = edits.apply(_parse_metadata(ova_xml, self.source.url))
            vdi_map: dict[str, str] = {}
            for disk in metadata.disks:
                ref, uuid = create_disk_vdi(self.target, self.sr_ref, disk)
                self.created.append(ref)
                vdi_map[disk.vdi_uuid] = uuid
            total = bars.new(f"{vm_name} total", total_size(metadata.disks))
            jobs = []
            for disk in metadata.disks:
                bar = bars.new(disk_label(vm_name, disk), disk.virtual_size, also=total)
                jobs.append(self._guarded(self._disk_job(disk, vdi_map[disk.vdi_uuid], bar)))
            self._run(jobs)
            return import_metadata(self.target, ova_xml_tar(metadata.to_bytes()), vdi_map)
        finally:
            self.stop.set()  # any disk still running gives up
            bars.close()

    def _run(self, jobs: list[Callable[[], int]]) -> None:
        try:
            run_parallel(jobs, stop=self.stop)
        except BaseException as exc:
            # The disks stopped because another failed report that one, not their own stop.
            first = self._first_error
            if first is not None and first is not exc and not isinstance(exc, KeyboardInterrupt):
                raise first from None
            raise

    def _guarded(self, job: Callable[[], int]) -> Callable[[], int]:
        """`job`, which on failure records the first error and stops the other disks."""

        def run() -> int:
            try:
                count = job()
            except BaseException as exc:
                with self._lock:
                    if not self.stop.is_set():
                        self._first_error = exc
                        self.stop.set()
                raise
            with self._lock:
                self.bytes_read += count
            return count

        return run

    def _disk_job(self, disk: DiskInfo, target_vdi: str, bar: ProgressBar) -> Callable[[], int]:
        """One disk: its verified tar stream from the source as chunked frames into `target_vdi`."""

        def job() -> int:
            image = HostDisk(self.source, disk.vdi_uuid, disk.virtual_size, progress=bar.update)
            with contextlib.closing(image.extents()) as extents:
                upload_extents(self.target, target_vdi, self._unless_stopped(extents))
            return image.bytes_read

        return job

    def _unless_stopped(self, extents: Iterator[tuple[int, memoryview]]) -> Iterator[tuple[int, memoryview]]:
        """The extents, until another disk fails (the target VDI already reads as zeros)."""
        for extent in extents:
            if self.stop.is_set():
                raise Interrupted("stopped: another disk failed")
            yield extent

    def discard(self) -> None:
        """Destroy the VDIs created on the target; never raises (the failure is what matters)."""
        for ref in self.created:
            destroy_vdi(self.target, ref, retry=self.retry)


def _parse_metadata(ova_xml: bytes, url: str) -> Metadata:
    """The host's ova.xml of a VM, as `/export` would describe it (a snapshot made a plain VM)."""
    with location_context(file=f"{url}/export_metadata"):
        return Metadata.from_bytes(ova_xml).without_snapshot_identity()


def _vm_uuids(session: Session) -> set[str]:
    records: dict[str, dict[str, Any]] = session.call("VM.get_all_records")
    return {str(rec.get("uuid")) for rec in records.values()}


def _remove_leftovers(target: Session, before: set[str], name: str, retry: RetryPolicy) -> None:
    """Destroy VMs named `name` that appeared on the target during a failed migration.

    The host's importer cleans up after a failed import on its own, but asynchronously; this
    watches for a short while and destroys what is still there. Never raises: the migration's
    own error is the one to report.
    """
    deadline = time.monotonic() + LEFTOVER_WAIT_S
    try:
        while True:
            records: dict[str, dict[str, Any]] = target.call("VM.get_all_records")
            leftovers = [
                ref
                for ref, rec in records.items()
                if rec.get("uuid") not in before and rec.get("name_label") == name
            ]
            if not leftovers:
                return
            # While the host's own cleanup runs the VM still carries the import operation.
            busy = any(records[ref].get("current_operations") for ref in leftovers)
            if not busy or time.monotonic() >= deadline:
                for ref in leftovers:
                    _log.warning("destroying VM %s left on the target by the failed migration", ref)
                    destroy_vm_with_disks(target, ref, retry=retry)
                return
            time.sleep(LEFTOVER_POLL_S)
    except XvatoolError as exc:
        _log.warning("could not check the target for leftovers: %s", exc)

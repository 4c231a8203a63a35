"""Exporting a VM or a whole appliance from a host as an OVF package: an `.ova` or a folder.

The pipe, per disk and one disk after the other::

    GET /export_raw_vdi?format=tar (xva-format.md §6) ─▶ XvaReader (verifies every chunk) ─▶
        VmdkWriter (streamOptimized grains) ─▶ the package (`ovf.write_package`)

The descriptor comes first in an OVA, so every VM's hardware is read before any disk moves:
`GET /export_metadata` (host-protocol.md §4.7) gives each VM's ova.xml, which becomes a
`VirtualSystem` the way `xvatool convert` maps an XVA (`ovf.xvamodel`). Running VMs are exported
through snapshots, all taken before the first byte moves (`appliance.consistent_sources`) and
destroyed afterwards. An appliance becomes a VirtualSystemCollection named after it, whose
StartupSection carries each VM's `order`, `start_delay` and `shutdown_delay` (as XenCenter writes
them), and its VMs' networks become the package's networks by name.

Memory stays flat and no temporary space is used when the output is a file: the package writer
patches each disk's tar header in place once the disk's compressed size is known (`ovf.tarball`).
The package appears only when complete: written under a temporary name, renamed at the end.

Example::

    with connect(url, "root", password) as host:
        export_package(host, "web-app.ova", appliance="web-app")
        export_package(host, "out/", vm="web-01")      # an unpacked OVF folder
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xvatool._progress import Progress, ProgressGroup
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool.errors import UsageError, location_context
from xvatool.images.extents import DiskImage
from xvatool.images.vmdkwriter import DEFAULT_LEVEL
from xvatool.ops.appliance import ApplianceMember, consistent_sources, find_appliance
from xvatool.ops.documents import disk_doc, file_doc, vm_doc
from xvatool.ops.export import ExportedDisk, fetch_metadata
from xvatool.ops.identity import snapshot_identity, with_identity
from xvatool.ops.vdi_stream import HostDisk
from xvatool.ovf.manifest import DigestAlgorithm
from xvatool.ovf.model import Envelope, StartupEntry, VirtualDisk, VirtualSystem
from xvatool.ovf.writing import Layout, PackageOptions, write_package
from xvatool.ovf.xvamodel import system_from_metadata
from xvatool.xapi.session import Session
from xvatool.xapi.vms import SnapshotPolicy, VmRef, find_vm
from xvatool.xva.ovaxml import Metadata

__all__ = ["PackageExportResult", "PackagedVm", "export_package", "package_layout"]


@dataclass(frozen=True)
class PackagedVm:
    """One VM of a package: the VM (never its temporary snapshot) and its disks as the VM has them."""

    uuid: str
    name: str
    snapshot_uuid: str | None
    """The temporary snapshot a running VM was read through (destroyed since), else None."""
    disks: list[ExportedDisk] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return vm_doc(
            self.uuid,
            self.name,
            vm_snapshot={"uuid": self.snapshot_uuid} if self.snapshot_uuid else None,
            disks=[disk_doc(d) for d in self.disks],
        )


@dataclass(frozen=True)
class PackageExportResult:
    """What `export_package` wrote."""

    path: Path
    layout: Layout
    vms: list[str]
    appliance: str | None
    disks: int
    bytes_written: int
    bytes_read: int
    snapshots: int = 0
    """Members exported through a temporary snapshot (they were running)."""
    files: list[tuple[str, int]] = field(default_factory=list)
    members: list[PackagedVm] = field(default_factory=list)
    appliance_uuid: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The `export --json` document of a package (docs/json.md, ``export_package``)."""
        appliance = {"uuid": self.appliance_uuid, "name": self.appliance} if self.appliance else None
        return {
            "path": str(self.path),
            "size_bytes": self.bytes_written,
            "layout": self.layout,
            "appliance": appliance,
            "vms": [m.to_json() for m in self.members],
            "read_bytes": self.bytes_read,
            "files": [file_doc(name, size) for name, size in self.files],
        }


def package_layout(out: str | os.PathLike[str]) -> Layout | None:
    """The package an output path asks for: `.ova` a file, `.ovf` or `DIR/` a folder; else None."""
    text = os.fspath(out)
    lower = text.lower()
    if lower.endswith(".ova"):
        return "ova"
    if lower.endswith(".ovf") or text.endswith(("/", os.sep)) or Path(text).is_dir():
        return "folder"
    return None


@dataclass
class _Plan:
    """The package being exported: its systems, disks in package order, and where each comes from."""

    systems: list[VirtualSystem] = field(default_factory=list)
    disks: list[VirtualDisk] = field(default_factory=list)
    sources: list[HostDisk] = field(default_factory=list)
    networks: dict[str, None] = field(default_factory=dict)
    vms: list[PackagedVm] = field(default_factory=list)


def export_package(
    session: Session,
    out_path: str | os.PathLike[str],
    *,
    vm: str | None = None,
    appliance: str | None = None,
    layout: Layout | None = None,
    ovf_version: str = "1.0",
    digest: DigestAlgorithm = "sha256",
    level: int = DEFAULT_LEVEL,
    overwrite: bool = False,
    snapshot: SnapshotPolicy = "auto",
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
) -> PackageExportResult:
    """Export `vm` (uuid or unique name) or every VM of `appliance` as an OVF package.

    `layout` is "ova" (one file) or "folder" (`out_path` is the folder, or the `.ovf` in it);
    by default it follows `out_path` (`package_layout`). Disks are written as streamOptimized
    VMDK with a manifest (`digest`); `ovf_version` "1.0" is read by every importer. Only the
    metadata fetch is retried: a disk stream feeds the package as it arrives.
    """
    if (vm is None) == (appliance is None):
        raise UsageError("export either a VM or an appliance (--appliance NAME), not both")
    layout = layout or package_layout(out_path)
    if layout is None:
        raise UsageError(f"{os.fspath(out_path)}: a package is named OUT.ova, OUT.ovf or DIR/")
    app_uuid = None
    if appliance is not None:
        app = find_appliance(session, appliance)
        members: Sequence[ApplianceMember] = app.members
        collection: str | None = app.name_label
        app_uuid = app.uuid
    else:
        found = find_vm(session, vm or "")
        members = [
            ApplianceMember(found.name_label, found.uuid, ref=found.ref, power_state=found.power_state)
        ]
        collection = None
    bars = ProgressGroup(progress)
    try:
        with consistent_sources(session, members, snapshot=snapshot, retry=retry) as sources:
            plan = _Plan()
            for member, source in zip(members, sources, strict=True):
                metadata = _metadata(session, source, retry)
                plan.vms.append(_described(session, member, source, metadata))
                _add_system(plan, session, member, metadata, collection is not None, bars)
            envelope = Envelope(
                "1.0",
                disks=tuple(plan.disks),
                networks=tuple(plan.networks),
                systems=tuple(plan.systems),
                collection=collection,
            )
            options = PackageOptions(ovf_version, digest, level, overwrite)
            images = _images(plan)
            written = write_package(out_path, envelope, images, layout=layout, options=options)
    finally:
        bars.close()
    return PackageExportResult(
        written.path,
        layout,
        [s.name for s in plan.systems],
        collection,
        len(plan.disks),
        written.bytes_written,
        sum(d.bytes_read for d in plan.sources),
        sum(1 for m, s in zip(members, sources, strict=True) if s.uuid != m.uuid),
        written.files,
        plan.vms,
        app_uuid,
    )


def _metadata(session: Session, source: VmRef, retry: RetryPolicy) -> Metadata:
    ova_xml = retry.run(lambda: fetch_metadata(session, source), what=f"metadata of {source.uuid}")
    with location_context(file=f"{session.url}/export_metadata?uuid={source.uuid}"):
        return Metadata.from_bytes(ova_xml).without_snapshot_identity()


def _described(session: Session, member: ApplianceMember, source: VmRef, metadata: Metadata) -> PackagedVm:
    """The member as the package holds it: a snapshot's disks under the uuids of the VM's disks."""
    if source.uuid == member.uuid:
        return PackagedVm(member.uuid, member.name_label, None, [ExportedDisk.of(d) for d in metadata.disks])
    identity = snapshot_identity(session, member.vm_ref(), source)
    disks = [ExportedDisk.of(d) for d in with_identity(metadata, identity).disks]
    return PackagedVm(member.uuid, member.name_label, source.uuid, disks)


def _add_system(
    plan: _Plan,
    session: Session,
    member: ApplianceMember,
    metadata: Metadata,
    in_collection: bool,
    bars: ProgressGroup,
) -> None:
    """Add one VM: its system (disk ids made unique in the package) and its disks' sources."""
    xva = system_from_metadata(metadata)
    by_xva = {info.id: info for info in metadata.disks}
    renamed: dict[str, str] = {}
    for xva_id, disk_id in xva.disk_of.items():
        new_id = f"vmdisk{len(plan.disks) + 1}"
        renamed[disk_id] = new_id
        info = by_xva[xva_id]
        plan.disks.append(VirtualDisk(new_id, info.virtual_size))
        label = f"{member.name_label} disk {info.userdevice or len(renamed) - 1}"
        update = bars.new(label, info.virtual_size).update
        plan.sources.append(HostDisk(session, info.vdi_uuid, info.virtual_size, progress=update))
    system = dataclasses.replace(
        xva.system,
        id=member.uuid,
        name=member.name_label,
        disks=tuple(dataclasses.replace(a, disk_id=renamed[a.disk_id]) for a in xva.system.disks),
        description=member.name_description,
        startup=StartupEntry(member.order, member.start_delay, member.shutdown_delay)
        if in_collection
        else None,
    )
    plan.systems.append(system)
    for nic in system.nics:
        plan.networks.setdefault(nic.network, None)


def _images(plan: _Plan) -> Iterator[tuple[str, DiskImage]]:
    for disk, source in zip(plan.disks, plan.sources, strict=True):
        yield disk.disk_id, source

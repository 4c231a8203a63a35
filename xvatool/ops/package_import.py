"""Importing an OVF package (an `.ova`, a folder or its `.ovf`) into a host: VMs, disks, appliance.

The package is read once, front to back (`ovf.open_package`), and nothing is spooled::

    descriptor ─▶ networks resolved (created when missing), one VDI.create per disk
    each disk file as it streams (VMDK, VHD or raw, by content) ─▶ its non-zero extents, in the
        order the file holds them ─▶ PUT /import_raw_vdi?chunked=true (host-protocol.md §4.12)
    end of the package: the manifest is checked (it may come last, as VirtualBox writes it)
    per VM: ova.xml built from its VirtualSystem (`ovf.xvamodel`) ─▶ PUT /import_metadata with
        vdi:<uuid>=<uuid> mapping its disks onto the VDIs just filled (host-protocol.md §4.9)
    a VirtualSystemCollection ─▶ VM_appliance with each VM's StartupSection order and delays

The VMs are created only once every byte of the package was read and verified, so a package
whose manifest fails at the end leaves no VM behind; and any failure (a hostile package, a host
error, Ctrl-C) removes everything the import created: the VMs, the VDIs, the appliance and the
networks (`appliance.TargetBuild`).

Networks go by name: `network_map` (OLD → NEW) puts a package network on an existing target
network; a network the host has by name is used; any other is created on the host with no PIF
(a private network, as xapi does for an XVA whose network it lacks) and reported, so the user
can re-run with `--map-network` to use an existing one instead.

Example::

    with connect(url, "root", password) as host:
        result = import_package(host, "vendor.ova", network_map={"VM Network": "LAN"})
        print([vm.uuid for vm in result.vms])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from xvatool._progress import Progress, ProgressGroup
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool.errors import FormatError, LocalIOError, UsageError
from xvatool.ops.appliance import ApplianceInfo, ApplianceMember, NetworkInfo, TargetBuild, network_docs
from xvatool.ops.documents import file_doc, vm_doc
from xvatool.ops.vdi_stream import nonzero_extents, upload_extents
from xvatool.ovf.conversion import detect_input
from xvatool.ovf.model import Envelope, Nic, VirtualDisk, VirtualSystem
from xvatool.ovf.reading import PackageReader, open_package
from xvatool.ovf.xvamodel import metadata_from_system
from xvatool.xapi.session import Session
from xvatool.xapi.vdi import create_vdi
from xvatool.xapi.vmdata import import_metadata
from xvatool.xapi.vms import find_sr
from xvatool.xva.assemble import ova_xml_tar
from xvatool.xva.template import round_virtual_size

__all__ = ["ImportedVm", "PackageImportResult", "import_package", "is_package"]


@dataclass(frozen=True)
class ImportedVm:
    """A VM the import created, with the package system it came from."""

    name: str
    uuid: str
    ref: str
    system_id: str


@dataclass(frozen=True)
class PackageImportResult:
    """What `import_package` created on the host."""

    source: str
    vms: list[ImportedVm]
    appliance: str | None = None
    """The uuid of the appliance created for a VirtualSystemCollection."""
    networks: dict[str, str] = field(default_factory=dict)
    """Package network → the host network its NICs were put on (by name)."""
    networks_created: list[str] = field(default_factory=list)
    disks: int = 0
    bytes_sent: int = 0
    verified: bool = True
    """False when the package had no manifest to check its files against."""
    notes: list[str] = field(default_factory=list)
    appliance_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The `import --json` document of a package (docs/json.md, ``import_package``)."""
        appliance = {"uuid": self.appliance, "name": self.appliance_name} if self.appliance else None
        return {
            "source": file_doc(self.source),
            "vms": [vm_doc(v.uuid, v.name, system_id=v.system_id) for v in self.vms],
            "appliance": appliance,
            "networks": network_docs(self.networks, self.networks_created),
            "disk_count": self.disks,
            "sent_bytes": self.bytes_sent,
            "verified": self.verified,
            "notes": self.notes,
        }


def is_package(path: str | os.PathLike[str]) -> bool:
    """Whether `path` holds an OVF package (an OVA, a folder, an `.ovf`), by content (`sniff`).

    False for an XVA and for anything that is neither (or cannot be read): the XVA importer
    then says what is wrong with it.
    """
    try:
        return detect_input(os.fspath(path)) != "xva"
    except (FormatError, LocalIOError):
        return False


def import_package(
    session: Session,
    package: str | os.PathLike[str],
    *,
    sr: str | None = None,
    network_map: Mapping[str, str] | None = None,
    restore: bool = False,
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
) -> PackageImportResult:
    """Create the package's VMs (and its appliance) on the host, disks uploaded as they stream.

    `sr` is an SR uuid or unique name (the pool's default SR if None). `restore` keeps the MAC
    addresses the package gives (by default the host makes new ones, as for any import). A
    live package stream cannot be replayed, so only the cleanups use `retry`. Raises the first
    error after removing everything created (module docstring).
    """
    sr_ref, _ = find_sr(session, sr)
    bars = ProgressGroup(progress)
    try:
        with open_package(package) as reader, TargetBuild(session, retry=retry) as build:
            return _Import(session, reader, build, bars).run(sr_ref, dict(network_map or {}), restore)
    finally:
        bars.close()


class _Import:
    """One package import (module docstring); its steps share the reader and the build."""

    def __init__(self, session: Session, reader: PackageReader, build: TargetBuild, bars: ProgressGroup):
        self.session = session
        self.reader = reader
        self.envelope: Envelope = reader.envelope
        self.build = build
        self.bars = bars
        self.notes: list[str] = list(reader.notes)
        self.vdi_of: dict[str, str] = {}
        """Package disk id → uuid of the VDI made for it."""
        self.label_of: dict[str, str] = {}
        """Package disk id → its progress bar's label, ``web-01 disk 0``."""
        self.sent = 0
        self.reached = 0
        """Disk bytes passed of the disk being uploaded."""

    def run(self, sr_ref: str, network_map: dict[str, str], restore: bool) -> PackageImportResult:
        systems = [self._with_named_nics(s) for s in self.envelope.systems]
        names = self._networks(systems, network_map)
        for system in systems:
            for position, attachment in enumerate(system.disks):
                self._create_vdi(sr_ref, system, attachment.disk_id, attachment.name)
                device = attachment.userdevice if attachment.userdevice is not None else position
                self.label_of[attachment.disk_id] = f"{system.name} disk {device}"
        for item in self.reader.disks():  # verified against the manifest by its end
            uuid = self.vdi_of.get(item.disk.disk_id)
            if uuid is not None:
                size = item.image.virtual_size
                bar = self.bars.new(self.label_of[item.disk.disk_id], size)
                covered = self._counted(nonzero_extents(item.image.extents()), bar.update)
                upload_extents(self.session, uuid, covered)
                bar.update(max(0, size - self.reached))
        vms = []
        for system in systems:
            nics = tuple(replace(nic, network=names[nic.network]) for nic in system.nics)
            vms.append(self._import_system(replace(system, nics=nics), restore))
        return PackageImportResult(
            self.reader.source,
            vms,
            self._appliance(systems, vms),
            names,
            [name for _, name in self.build.networks],
            len(self.vdi_of),
            self.sent,
            self.reader.verified,
            self.notes,
            self.envelope.collection,
        )

    def _networks(self, systems: list[VirtualSystem], network_map: dict[str, str]) -> dict[str, str]:
        """Package network → target network name; the missing ones are created (and noted)."""
        used = {nic.network: None for s in systems for nic in s.nics}
        unknown = sorted(set(network_map) - set(used))
        if unknown:
            raise UsageError(
                f"--map-network {unknown[0]}=…: the package has no network {unknown[0]!r} "
                f"(it has: {', '.join(used) or 'none'})"
            )
        names = self.build.networks_for([NetworkInfo(n) for n in used], network_map)
        for _, name in self.build.networks:
            self.notes.append(
                f"network {name!r} is not on the host: created it as a private network "
                f"(--map-network '{name}=NAME' puts it on an existing one)"
            )
        return names

    def _with_named_nics(self, system: VirtualSystem) -> VirtualSystem:
        kept: list[Nic] = []
        for position, nic in enumerate(system.nics):
            if nic.network:
                kept.append(nic)
            else:
                self.notes.append(f"{system.name}: network adapter {position} names no network; left out")
        return replace(system, nics=tuple(kept))

    def _create_vdi(self, sr_ref: str, system: VirtualSystem, disk_id: str, name: str) -> None:
        disk = self.envelope.disk(disk_id)
        assert disk is not None  # the envelope parser checked every attachment
        ref, uuid = create_vdi(self.session, sr_ref, name_label=name or f"{system.name} {disk_id}",
                               virtual_size=round_virtual_size(disk.capacity))  # fmt: skip
        self.build.add_vdi(ref)
        self.vdi_of[disk_id] = uuid

    def _counted(
        self, extents: Iterator[tuple[int, memoryview]], update: Callable[[int], None]
    ) -> Iterator[tuple[int, memoryview]]:
        """The extents, counted into `sent`; `update` gets the disk bytes passed (gaps included)."""
        self.reached = 0
        for offset, data in extents:
            self.sent += len(data)
            end = offset + len(data)
            if end > self.reached:
                update(end - self.reached)
                self.reached = end
            yield offset, data

    def _import_system(self, system: VirtualSystem, restore: bool) -> ImportedVm:
        disks: list[VirtualDisk] = [
            d for a in system.disks if (d := self.envelope.disk(a.disk_id)) is not None
        ]
        metadata, xva_ids = metadata_from_system(system, disks)
        uuid_of = {info.id: info.vdi_uuid for info in metadata.disks}
        vdi_map = {uuid_of[xva_ids[d.disk_id]]: self.vdi_of[d.disk_id] for d in disks}
        ref, uuid = import_metadata(self.session, ova_xml_tar(metadata.to_bytes()), vdi_map, restore=restore)
        self.build.add_vm(ref)
        if system.description:
            self.session.call("VM.set_name_description", ref, system.description)
        return ImportedVm(system.name, uuid, ref, system.id)

    def _appliance(self, systems: list[VirtualSystem], vms: list[ImportedVm]) -> str | None:
        if self.envelope.collection is None:
            return None
        members = tuple(
            ApplianceMember(vm.name, vm.uuid, *_startup(system))
            for system, vm in zip(systems, vms, strict=True)
        )
        info = ApplianceInfo(self.envelope.collection, "", members)
        _, uuid = self.build.create_appliance(info, {vm.uuid: vm.ref for vm in vms})
        return uuid


def _startup(system: VirtualSystem) -> tuple[int, int, int]:
    entry = system.startup
    return (entry.order, entry.start_delay, entry.stop_delay) if entry is not None else (0, 0, 0)

"""The XVA side of a conversion: an XVA's metadata as a `VirtualSystem`, and one built from it.

The XVA streams its disks in byte-wise id order (docs/xva-format.md §4.7) while a VM lists them by
device; the package streams them in References order. A converted XVA therefore gets its disk
ids in package order (so both streams run in step, with no temporary copy) and each VBD gets the
userdevice of the disk's place in the VM (XenCenter's ``device=N`` when the descriptor has it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from xvatool.ovf.model import DiskAttachment, Nic, VirtualDisk, VirtualSystem
from xvatool.xva.ovaxml import Metadata
from xvatool.xva.template import DiskSpec, build_vm_metadata, round_virtual_size

__all__ = ["MIN_MEMORY", "XvaSystem", "metadata_from_system", "system_from_metadata"]

MIN_MEMORY = 16 << 20
"""Bytes; the least memory a converted VM is given (descriptors that say less are raised)."""
_MAC = re.compile(r"\A[0-9a-fA-F]{2}([:-][0-9a-fA-F]{2}){5}\Z")


@dataclass(frozen=True)
class XvaSystem:
    """An XVA seen as a package: the system, its disks in XVA stream order, and the id mapping."""

    system: VirtualSystem
    disks: tuple[VirtualDisk, ...]
    disk_of: dict[str, str]
    """XVA disk id (``Ref:…``) → package disk id; XVA disks that are not VM disks are absent."""
    notes: tuple[str, ...] = ()


def _device(value: str | None) -> tuple[int, str]:
    text = value or ""
    return (int(text), text) if text.isdigit() else (1 << 30, text)


def system_from_metadata(metadata: Metadata) -> XvaSystem:
    """The VM of an XVA as a `VirtualSystem`; suspend images and other VBD-less VDIs are left out."""
    vm = metadata.vm
    notes: list[str] = []
    disks: list[VirtualDisk] = []
    disk_of: dict[str, str] = {}
    for info in metadata.disks:
        if info.userdevice is None:
            notes.append(f"VDI {info.vdi_uuid} ({info.vdi_type}) is not attached to the VM; left out")
            continue
        disk_id = f"vmdisk{len(disks) + 1}"
        disks.append(VirtualDisk(disk_id, info.virtual_size, f"file{len(disks) + 1}"))
        disk_of[info.id] = disk_id
    by_id = {info.id: info for info in metadata.disks}
    attached = sorted(disk_of, key=lambda xva_id: _device(by_id[xva_id].userdevice))
    attachments = []
    for unit, xva_id in enumerate(attached):
        info = by_id[xva_id]
        device = int(info.userdevice) if info.userdevice and info.userdevice.isdigit() else None
        attachments.append(DiskAttachment(disk_of[xva_id], "scsi", 0, unit, info.name_label, device))
    nics = tuple(Nic(net.name_label or "Pool-wide network", net.mac or None) for net in metadata.networks)
    system = VirtualSystem(
        vm.uuid or vm.name_label, vm.name_label, vm.vcpus, vm.memory, tuple(attachments), nics
    )
    return XvaSystem(system, tuple(disks), disk_of, tuple(notes))


def metadata_from_system(
    system: VirtualSystem, disks: Sequence[VirtualDisk]
) -> tuple[Metadata, dict[str, str]]:
    """XVA metadata for `system` whose disk data will stream in the order of `disks`.

    Returns the metadata and the mapping package disk id → XVA disk id. Capacities are rounded up
    to whole sectors; memory below `MIN_MEMORY` is raised to it.
    """
    specs = [DiskSpec(round_virtual_size(d.capacity), _disk_name(system, d.disk_id)) for d in disks]
    metadata = build_vm_metadata(
        name=system.name,
        disks=specs,
        vcpus=system.vcpus,
        memory=max(system.memory, MIN_MEMORY),
        networks=[nic.network or "Pool-wide network" for nic in system.nics],
    )
    xva_ids = [info.id for info in metadata.disks]  # same order as `specs` (template contract)
    mapping = {d.disk_id: xva_id for d, xva_id in zip(disks, xva_ids, strict=True)}
    device_of = _devices(system)
    vdi_to_vbd = {str(vbd.snapshot.get("VDI")): vbd for vbd in metadata.of_class("VBD")}
    for disk_id, xva_id in mapping.items():
        vbd = vdi_to_vbd[xva_id]
        device = device_of.get(disk_id, 0)
        vbd.snapshot["userdevice"] = str(device)
        vbd.snapshot["bootable"] = device == min(device_of.values(), default=0)
    for vif, nic in zip(
        sorted(metadata.of_class("VIF"), key=lambda v: int(str(v.snapshot["device"]))),
        system.nics,
        strict=True,
    ):
        if nic.mac and _MAC.match(nic.mac):
            vif.snapshot["MAC"] = nic.mac.replace("-", ":").lower()
    return metadata, mapping


def _devices(system: VirtualSystem) -> dict[str, int]:
    """Userdevice per disk: XenCenter's own numbers when every disk has one, else the position."""
    given = [a.userdevice for a in system.disks]
    if all(g is not None for g in given) and len(set(given)) == len(given):
        return {a.disk_id: int(a.userdevice or 0) for a in system.disks}
    return {a.disk_id: position for position, a in enumerate(system.disks)}


def _disk_name(system: VirtualSystem, disk_id: str) -> str:
    for attachment in system.disks:
        if attachment.disk_id == disk_id and attachment.name:
            return attachment.name
    return f"{system.name} {disk_id}"

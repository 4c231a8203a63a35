"""What is on a host: VMs with their power state and disks, for ``xvatool vm list``.

Three ``get_all_records`` calls (VM, VBD, VDI) instead of one call per object: a pool with
hundreds of VMs answers in one round trip per class (docs/host-protocol.md §6).

Example::

    for vm in list_vms(session):
        print(vm.name_label, vm.power_state, vm.total_size)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xvatool.errors import XapiError
from xvatool.xapi.session import Session

__all__ = ["DiskSummary", "VmSummary", "list_vms", "vm_disks"]

_NULL_REFS = frozenset({"", "OpaqueRef:NULL"})  # both mean "none" (host-protocol.md §2.3)


@dataclass(frozen=True)
class DiskSummary:
    """One disk of a VM: the VDI behind a non-CD VBD."""

    uuid: str
    name_label: str
    userdevice: str
    virtual_size: int

    def to_json(self) -> dict[str, Any]:
        """A disk as docs/json.md spells one."""
        return {
            "vdi_uuid": self.uuid,
            "name": self.name_label,
            "userdevice": self.userdevice,
            "virtual_size": self.virtual_size,
        }


@dataclass(frozen=True)
class VmSummary:
    """A VM as ``vm list`` shows it."""

    uuid: str
    name_label: str
    power_state: str
    disks: tuple[DiskSummary, ...]

    @property
    def total_size(self) -> int:
        """Sum of the disks' virtual sizes, in bytes."""
        return sum(d.virtual_size for d in self.disks)

    def to_json(self) -> dict[str, Any]:
        """One item of `vm list --json` (docs/json.md): ``virtual_size`` is the disks' sum."""
        return {
            "uuid": self.uuid,
            "name": self.name_label,
            "power_state": self.power_state,
            "disks": [d.to_json() for d in self.disks],
            "virtual_size": self.total_size,
        }


def _all_records(session: Session, cls: str) -> dict[str, dict[str, Any]]:
    try:
        records = session.call(f"{cls}.get_all_records")
    except XapiError as exc:
        if exc.code != "MESSAGE_METHOD_UNKNOWN":
            raise
        records = {ref: session.call(f"{cls}.get_record", ref) for ref in session.call(f"{cls}.get_all")}
    return {str(k): v for k, v in records.items() if isinstance(v, dict)}


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _device_order(disk: DiskSummary) -> tuple[int, str]:
    return (_int(disk.userdevice) if disk.userdevice.isdigit() else 1 << 30, disk.userdevice)


def _disk(vbd: dict[str, Any], vdis: dict[str, dict[str, Any]]) -> DiskSummary | None:
    """The disk behind a VBD, or None for a CD drive, an empty drive or a missing VDI."""
    if vbd.get("type") == "CD" or vbd.get("empty"):
        return None
    vdi_ref = str(vbd.get("VDI", ""))
    vdi = vdis.get(vdi_ref) if vdi_ref not in _NULL_REFS else None
    if vdi is None:
        return None
    return DiskSummary(
        uuid=str(vdi.get("uuid", "")),
        name_label=str(vdi.get("name_label", "")),
        userdevice=str(vbd.get("userdevice", "")),
        virtual_size=_int(vdi.get("virtual_size", 0)),
    )


def vm_disks(session: Session, vm_ref: str) -> list[DiskSummary]:
    """The disks of one VM, by userdevice (a few calls: for one VM, not for a listing)."""
    disks = []
    for vbd_ref in session.call("VM.get_VBDs", vm_ref):
        vbd: dict[str, Any] = session.call("VBD.get_record", vbd_ref)
        vdi_ref = str(vbd.get("VDI", ""))
        vdis = {} if vdi_ref in _NULL_REFS else {vdi_ref: session.call("VDI.get_record", vdi_ref)}
        disk = _disk(vbd, vdis)
        if disk is not None:
            disks.append(disk)
    return sorted(disks, key=_device_order)


def list_vms(session: Session) -> list[VmSummary]:
    """The VMs on the host (no templates, snapshots or dom0), sorted by name then uuid."""
    vms = _all_records(session, "VM")
    vbds = _all_records(session, "VBD")
    vdis = _all_records(session, "VDI")
    result = []
    for vm in vms.values():
        if vm.get("is_a_template") or vm.get("is_control_domain") or vm.get("is_a_snapshot"):
            continue
        found = (_disk(vbds[str(ref)], vdis) for ref in vm.get("VBDs") or [] if str(ref) in vbds)
        disks = [disk for disk in found if disk is not None]
        result.append(
            VmSummary(
                uuid=str(vm.get("uuid", "")),
                name_label=str(vm.get("name_label", "")),
                power_state=str(vm.get("power_state", "")),
                disks=tuple(sorted(disks, key=_device_order)),
            )
        )
    return sorted(result, key=lambda v: (v.name_label, v.uuid))

"""Metadata for archives we create from scratch (`create`, `convert`).

The document follows the maximum-compatibility profile of docs/xva-format.md §8.1: every required field
of xva-format.md §4.6, plus VM `parent` (without it the importer resets the memory settings) and
`has_vendor_device`; a low declared xapi version so old hosts accept it (xva-format.md §4.3); `export_vsn` 2;
null references written as ``OpaqueRef:NULL``. It is modelled on the example of xva-format.md §4.8.

Ids are ``Ref:`` plus a zero-padded counter of one width, so byte-wise id order (the order the
host streams disks in, xva-format.md §4.7) equals the order of the disks given. Ints are stored as decimal
strings, as they are in files, so a built document equals itself after a write and a read.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import uuid as uuid_module
from collections.abc import Sequence
from dataclasses import dataclass

from xvatool.errors import UsageError
from xvatool.xva.ovaxml import SECTOR_SIZE, XAPI_TIME_FORMAT, Metadata, Value, XapiObject

__all__ = ["DiskSpec", "build_vm_metadata", "round_virtual_size"]

NULL_REF = "OpaqueRef:NULL"
"""How this writer spells a null reference; the importer accepts it (xva-format.md §4.8)."""
SR_NAME = "Local storage"
DEFAULT_MTU = 1500
"""Bytes."""
_MIN_ID_WIDTH = 3
_PRODUCT_VERSION = importlib.metadata.version("xvatool")
"""The version record names the writer: xvatool's installed version (one source: pyproject.toml)."""


@dataclass(frozen=True)
class DiskSpec:
    """One disk to describe: its size in bytes, its label, and a VDI uuid (random if None)."""

    virtual_size: int
    name_label: str
    uuid: str | None = None


def round_virtual_size(size: int) -> int:
    """`size` rounded up to a multiple of 512, as `virtual_size` must be (xva-format.md §8.1)."""
    return -(-size // SECTOR_SIZE) * SECTOR_SIZE


def _new_uuid() -> str:
    return str(uuid_module.uuid4())


def _io_fields() -> dict[str, Value]:
    """Fields VBD and VIF records share (xva-format.md §4.6), in their detached state."""
    return {
        "other_config": {},
        "currently_attached": False,
        "status_code": "0",
        "status_detail": "",
        "runtime_properties": {},
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
        "qos_supported_algorithms": [],
    }


def _version(xapi_version: tuple[int, int]) -> dict[str, Value]:
    now = datetime.datetime.now(datetime.UTC)
    return {
        "hostname": "localhost",
        "date": now.strftime(XAPI_TIME_FORMAT),  # a string, as xapi writes it (xva-format.md §4.3)
        "product_version": _PRODUCT_VERSION,
        "product_brand": "xvatool",
        "build_number": _PRODUCT_VERSION,
        "xapi_major": str(xapi_version[0]),
        "xapi_minor": str(xapi_version[1]),
        "export_vsn": "2",
    }


def _vm(
    vm_uuid: str, name: str, vcpus: int, memory: int, vbds: list[str], vifs: list[str]
) -> dict[str, Value]:
    return {
        "uuid": vm_uuid,
        "name_label": name,
        "name_description": "",
        "power_state": "Halted",
        "user_version": "1",
        "is_a_template": False,
        "resident_on": NULL_REF,
        "affinity": NULL_REF,
        **dict.fromkeys(
            ("memory_static_max", "memory_dynamic_max", "memory_dynamic_min", "memory_static_min"),
            str(memory),
        ),
        "VCPUs_params": {},
        "VCPUs_max": str(vcpus),
        "VCPUs_at_startup": str(vcpus),
        "actions_after_shutdown": "destroy",
        "actions_after_reboot": "restart",
        "actions_after_crash": "restart",
        "VIFs": list[Value](vifs),
        "VBDs": list[Value](vbds),
        **dict.fromkeys(
            ("PV_bootloader", "PV_kernel", "PV_ramdisk", "PV_args", "PV_bootloader_args", "PV_legacy_args"),
            "",
        ),
        "HVM_boot_policy": "BIOS order",
        "HVM_boot_params": {"order": "cd"},
        "HVM_shadow_multiplier": 1.0,
        "platform": {"acpi": "1", "apic": "true", "pae": "true", "viridian": "true"},
        "PCI_bus": "",
        "other_config": {},
        "domid": "-1",
        "domarch": "",
        "is_control_domain": False,
        "metrics": NULL_REF,
        "guest_metrics": NULL_REF,
        "recommendations": "",
        "parent": NULL_REF,  # present, so the importer keeps the memory settings (xva-format.md §4.6)
        "has_vendor_device": False,
        "domain_type": "hvm",
    }


def build_vm_metadata(
    *,
    name: str,
    disks: Sequence[DiskSpec],
    vcpus: int = 1,
    memory: int = 1 << 30,
    networks: Sequence[str] = (),
    xapi_version: tuple[int, int] = (1, 1),
    uuid: str | None = None,
) -> Metadata:
    """A complete, importable ova.xml for one halted HVM VM with these disks and networks.

    Disks get userdevice "0", "1", … in the given order, and the first is bootable. Each network
    name becomes one VIF (device "0", "1", …) and one network record the host matches by name
    (xva-format.md §7.6). A `virtual_size` that is not a multiple of 512 is rounded up to one, because the
    host's importer needs whole sectors (xva-format.md §5.4); the disk data must then be padded with zeros.
    `memory` is in bytes. Uuids are random unless given; the host ignores them unless restoring.
    """
    if vcpus < 1 or memory < 1:
        raise UsageError(f"a VM needs at least one vCPU and some memory (got {vcpus}, {memory})")
    for disk in disks:
        if disk.virtual_size <= 0:
            raise UsageError(f"disk {disk.name_label!r}: size must be positive, not {disk.virtual_size}")
    count = 2 + 2 * len(disks) + 2 * len(networks)  # VM, SR, then a pair per disk and network
    width = max(_MIN_ID_WIDTH, len(str(count - 1)))
    ids = iter(f"Ref:{n:0{width}d}" for n in range(count))
    vm_id = next(ids)
    vbd_ids = [next(ids) for _ in disks]
    vdi_ids = [next(ids) for _ in disks]  # consecutive and equally wide: byte order = disk order
    sr_id = next(ids)
    vif_ids = [next(ids) for _ in networks]
    net_ids = [next(ids) for _ in networks]

    vbds = [
        XapiObject("VBD", vbd_id, {
            "uuid": _new_uuid(), "VM": vm_id, "VDI": vdi_id, "userdevice": str(position),
            "bootable": position == 0, "mode": "RW", "type": "Disk", "unpluggable": False,
            "storage_lock": False, "empty": False, **_io_fields(),
        })
        for position, (vbd_id, vdi_id) in enumerate(zip(vbd_ids, vdi_ids, strict=True))
    ]  # fmt: skip
    vdis = [
        XapiObject("VDI", vdi_id, {
            "uuid": disk.uuid or _new_uuid(), "name_label": disk.name_label,
            "name_description": "", "SR": sr_id, "VBDs": [vbd_id],
            "virtual_size": str(round_virtual_size(disk.virtual_size)),
            "physical_utilisation": "0", "type": "user", "sharable": False, "read_only": False,
            "other_config": {}, "storage_lock": False, "managed": True, "missing": False,
            "parent": NULL_REF, "sm_config": {},
        })
        for disk, vdi_id, vbd_id in zip(disks, vdi_ids, vbd_ids, strict=True)
    ]  # fmt: skip
    sr = XapiObject("SR", sr_id, {
        "uuid": _new_uuid(), "name_label": SR_NAME, "name_description": "",
        "VDIs": list[Value](vdi_ids), "virtual_allocation": "0", "physical_utilisation": "0",
        "physical_size": "0", "type": "ext", "content_type": "user", "shared": False,
        "other_config": {},
    })  # fmt: skip
    vifs = [
        XapiObject("VIF", vif_id, {
            "uuid": _new_uuid(), "device": str(position), "network": net_id, "VM": vm_id,
            "MAC": "", "MTU": str(DEFAULT_MTU), **_io_fields(), "locking_mode": "network_default",
        })
        for position, (vif_id, net_id) in enumerate(zip(vif_ids, net_ids, strict=True))
    ]  # fmt: skip
    nets = [
        XapiObject("network", net_id, {
            "uuid": _new_uuid(), "name_label": net_name, "name_description": "",
            "VIFs": [vif_id], "MTU": str(DEFAULT_MTU), "other_config": {}, "bridge": "",
        })
        for net_name, net_id, vif_id in zip(networks, net_ids, vif_ids, strict=True)
    ]  # fmt: skip
    vm = XapiObject("VM", vm_id, _vm(uuid or _new_uuid(), name, vcpus, memory, vbd_ids, vif_ids))
    # Objects in xapi's own emission order (xva-format.md §4.5); the importer does not care.
    return Metadata(_version(xapi_version), [vm, *vbds, *vifs, *nets, *vdis, sr])

"""Default records per class, with the field set a current host returns.

Field names, types and defaults follow `doc/data/xenapi.json` as summarised in docs/host-protocol.md §6
(what clients read) and docs/xva-format.md §4.6 (what an export must carry so a host can import it).
Each builder returns a complete record; callers pass only the fields that differ.
"""

from __future__ import annotations

from typing import Any

from xvatool.sim.values import EPOCH, NULL_REF, DateTime, Record, new_uuid, now

__all__ = [
    "API_VERSION",
    "PRODUCT",
    "XAPI_VERSION",
    "host_record",
    "network_record",
    "pbd_record",
    "pif_record",
    "pool_record",
    "session_record",
    "sr_record",
    "task_record",
    "vbd_record",
    "vdi_record",
    "vif_record",
    "vm_appliance_record",
    "vm_record",
]

XAPI_VERSION = (24, 19)
"""The xapi package version the simulator claims (`xapi_major`/`xapi_minor`, xva-format.md §4.3)."""
API_VERSION = (2, 21)
"""`host.API_version_major/minor` of XCP-ng 8.3 / XenServer 8 era hosts."""
PRODUCT: dict[str, str] = {
    "product_version": "8.3.0",
    "product_brand": "XCP-ng",
    "build_number": "sim",
    "date": "20261101T00:00:00Z",
}


def _build(defaults: Record, overrides: dict[str, Any]) -> Record:
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise KeyError(f"unknown fields {sorted(unknown)}")
    defaults.update(overrides)
    return defaults


def _named() -> Record:
    """The fields every named, user-visible class has (xenapi.json), with their defaults."""
    return {
        "uuid": new_uuid(),
        "name_label": "",
        "name_description": "",
        "allowed_operations": [],
        "current_operations": {},
        "other_config": {},
        "tags": [],
    }


def _device() -> Record:
    """The fields VBDs and VIFs share: plugging state, QoS and operations (xenapi.json)."""
    return {
        "currently_attached": False,
        "status_code": 0,
        "status_detail": "",
        "runtime_properties": {},
        "qos_algorithm_type": "",
        "qos_algorithm_params": {},
        "qos_supported_algorithms": [],
        "metrics": NULL_REF,
        "other_config": {},
        "allowed_operations": ["attach"],
        "current_operations": {},
    }


def pool_record(**fields: Any) -> Record:
    """A pool; `master` and `default_SR` are set by the seed."""
    return _build(
        {
            **_named(),
            "master": NULL_REF,
            "default_SR": NULL_REF,
            "suspend_image_SR": NULL_REF,
            "crash_dump_SR": NULL_REF,
            "ha_enabled": False,
            "tls_verification_enabled": False,
            "restrictions": {},
        },
        fields,
    )


def host_record(**fields: Any) -> Record:
    """A host (the only one, or a redirect peer)."""
    software = {
        "product_version": PRODUCT["product_version"],
        "product_brand": PRODUCT["product_brand"],
        "build_number": PRODUCT["build_number"],
        "date": PRODUCT["date"],
        "xapi": f"{XAPI_VERSION[0]}.{XAPI_VERSION[1]}",
        "hostname": "localhost",
        "platform_name": "XCP",
    }
    return _build(
        {
            **_named(),
            "hostname": "",
            "address": "127.0.0.1",
            "enabled": True,
            "PBDs": [],
            "PIFs": [],
            "resident_VMs": [],
            "API_version_major": API_VERSION[0],
            "API_version_minor": API_VERSION[1],
            "API_version_vendor": "XenSource",
            "API_version_vendor_implementation": {},
            "software_version": software,
            "control_domain": NULL_REF,
            "https_only": False,
            "capabilities": [],
            "cpu_configuration": {},
            "sched_policy": "credit",
            "supported_bootloaders": ["pygrub", "eliloader"],
            "logging": {},
            "suspend_image_sr": NULL_REF,
            "crash_dump_sr": NULL_REF,
            "metrics": NULL_REF,
            "license_params": {},
            "edition": "xcp-ng",
        },
        fields,
    )


def sr_record(**fields: Any) -> Record:
    """A storage repository; the simulator's SRs are file-backed (`type` `ext`)."""
    return _build(
        {
            **_named(),
            "type": "ext",
            "content_type": "user",
            "shared": False,
            "PBDs": [],
            "VDIs": [],
            "physical_size": 1 << 40,
            "physical_utilisation": 0,
            "virtual_allocation": 0,
            "allowed_operations": ["vdi_create", "vdi_destroy", "vdi_snapshot", "vdi_clone", "vdi_resize"],
            "sm_config": {"devserial": "sim"},
            "clustered": False,
            "is_tools_sr": False,
        },
        fields,
    )


def pbd_record(**fields: Any) -> Record:
    """The link between a host and an SR."""
    return _build(
        {
            "uuid": new_uuid(),
            "host": NULL_REF,
            "SR": NULL_REF,
            "device_config": {},
            "currently_attached": True,
            "other_config": {},
        },
        fields,
    )


def network_record(**fields: Any) -> Record:
    """A network."""
    return _build(
        {
            **_named(),
            "VIFs": [],
            "PIFs": [],
            "MTU": 1500,
            "bridge": "",
            "managed": True,
            "purpose": [],
            "blobs": {},
            "assigned_ips": {},
            "default_locking_mode": "unlocked",
        },
        fields,
    )


def pif_record(**fields: Any) -> Record:
    """A physical interface: what makes a network external (a network without one is private)."""
    return _build(
        {
            "uuid": new_uuid(),
            "device": "eth0",
            "network": NULL_REF,
            "host": NULL_REF,
            "MAC": "",
            "MTU": 1500,
            "VLAN": -1,
            "physical": True,
            "currently_attached": True,
            "management": False,
            "ip_configuration_mode": "None",
            "IP": "",
            "netmask": "",
            "gateway": "",
            "DNS": "",
            "other_config": {},
        },
        fields,
    )


def vm_appliance_record(**fields: Any) -> Record:
    """A VM appliance (vApp): a name and the VMs that start and stop together (datamodel.ml)."""
    return _build(
        {
            "uuid": new_uuid(),
            "name_label": "",
            "name_description": "",
            "allowed_operations": [],
            "current_operations": {},
            "VMs": [],
        },
        fields,
    )


def vdi_record(**fields: Any) -> Record:
    """A virtual disk; `location` is the name of its sparse file in the data directory."""
    uuid = fields.get("uuid") or new_uuid()
    return _build(
        {
            **_named(),
            "uuid": uuid,
            "SR": NULL_REF,
            "VBDs": [],
            "virtual_size": 0,
            "physical_utilisation": 0,
            "type": "user",
            "sharable": False,
            "read_only": False,
            "managed": True,
            "missing": False,
            "is_a_snapshot": False,
            "snapshot_of": NULL_REF,
            "snapshots": [],
            "snapshot_time": EPOCH,
            "sm_config": {},
            "xenstore_data": {},
            "location": uuid,
            "on_boot": "persist",
            "allow_caching": False,
            "cbt_enabled": False,
            "is_tools_iso": False,
            "allowed_operations": ["clone", "copy", "destroy", "resize", "snapshot", "update"],
            "storage_lock": False,
            "parent": NULL_REF,
            "crash_dumps": [],
            "metadata_of_pool": NULL_REF,
            "metadata_latest": False,
        },
        fields,
    )


def vm_record(**fields: Any) -> Record:
    """A VM with every field an importer requires (xva-format.md §4.6) plus those clients read."""
    memory = 1 << 30
    return _build(
        {
            **_named(),
            "power_state": "Halted",
            "user_version": 1,
            "is_a_template": False,
            "is_default_template": False,
            "is_a_snapshot": False,
            "snapshot_of": NULL_REF,
            "snapshots": [],
            "snapshot_time": EPOCH,
            "snapshot_info": {},
            "transportable_snapshot_id": "",
            "is_control_domain": False,
            "VBDs": [],
            "VIFs": [],
            "VGPUs": [],
            "VTPMs": [],
            "suspend_VDI": NULL_REF,
            "suspend_SR": NULL_REF,
            "resident_on": NULL_REF,
            "affinity": NULL_REF,
            "allowed_operations": ["export", "snapshot", "clone", "copy", "start", "destroy"],
            "blocked_operations": {},
            "memory_static_max": memory,
            "memory_dynamic_max": memory,
            "memory_dynamic_min": memory,
            "memory_static_min": memory,
            "memory_target": memory,
            "memory_overhead": 9437184,
            "VCPUs_params": {},
            "VCPUs_max": 1,
            "VCPUs_at_startup": 1,
            "actions_after_shutdown": "destroy",
            "actions_after_reboot": "restart",
            "actions_after_crash": "restart",
            "PV_bootloader": "",
            "PV_kernel": "",
            "PV_ramdisk": "",
            "PV_args": "",
            "PV_bootloader_args": "",
            "PV_legacy_args": "",
            "HVM_boot_policy": "BIOS order",
            "HVM_boot_params": {"order": "cd"},
            "HVM_shadow_multiplier": 1.0,
            "platform": {"acpi": "1", "apic": "true", "pae": "true", "viridian": "true"},
            "PCI_bus": "",
            "domid": -1,
            "domarch": "",
            "recommendations": "",
            "metrics": NULL_REF,
            "guest_metrics": NULL_REF,
            "domain_type": "hvm",
            "parent": NULL_REF,
            "children": [],
            "has_vendor_device": False,
            "version": 0,
            "generation_id": "",
            "crash_dumps": [],
            "consoles": [],
            "attached_PCIs": [],
            "blobs": {},
            "appliance": NULL_REF,
            "protection_policy": NULL_REF,
            "snapshot_schedule": NULL_REF,
            "is_vmss_snapshot": False,
            "last_booted_record": "",
            "last_boot_CPU_flags": {},
            "xenstore_data": {},
            "NVRAM": {},
            "start_delay": 0,
            "shutdown_delay": 0,
            "order": 0,
            "ha_restart_priority": "",
            "ha_always_run": False,
            "hardware_platform_version": 0,
            "bios_strings": {},
            "reference_label": "",
            "requires_reboot": False,
        },
        fields,
    )


def vbd_record(**fields: Any) -> Record:
    """A virtual block device (disk or CD drive)."""
    return _build(
        {
            "uuid": new_uuid(),
            "VM": NULL_REF,
            "VDI": NULL_REF,
            "device": "",
            "userdevice": "0",
            "bootable": False,
            "mode": "RW",
            "type": "Disk",
            "unpluggable": True,
            "storage_lock": False,
            "empty": False,
            **_device(),
        },
        fields,
    )


def vif_record(**fields: Any) -> Record:
    """A virtual network interface."""
    return _build(
        {
            "uuid": new_uuid(),
            "device": "0",
            "network": NULL_REF,
            "VM": NULL_REF,
            "MAC": "",
            "MAC_autogenerated": True,
            "MTU": 1500,
            **_device(),
            "locking_mode": "network_default",
            "ipv4_allowed": [],
            "ipv6_allowed": [],
        },
        fields,
    )


def task_record(**fields: Any) -> Record:
    """A task as `task.create` makes it (host-protocol.md §3.1; taskHelper.ml `make`)."""
    return _build(
        {
            "uuid": new_uuid(),
            "name_label": "",
            "name_description": "",
            "allowed_operations": [],
            "current_operations": {},
            "created": now(),
            "finished": EPOCH,
            "status": "pending",
            "resident_on": NULL_REF,
            "progress": 0.0,
            "type": "<none/>",
            "result": "",
            "error_info": [],
            "other_config": {},
            "subtask_of": NULL_REF,
            "subtasks": [],
            "backtrace": "()",
        },
        fields,
    )


def session_record(**fields: Any) -> Record:
    """A session (host-protocol.md §6)."""
    return _build(
        {
            "uuid": new_uuid(),
            "this_host": NULL_REF,
            "this_user": NULL_REF,
            "last_active": now(),
            "pool": False,
            "other_config": {},
            "is_local_superuser": True,
            "subject": NULL_REF,
            "validation_time": DateTime(now()),
            "auth_user_sid": "",
            "auth_user_name": "",
            "rbac_permissions": [],
            "tasks": [],
            "parent": NULL_REF,
            "originator": "",
            "client_certificate": False,
        },
        fields,
    )

"""The classes the simulated host serves: the one place to add a class.

A class is a record builder (in `records.py`) plus a `ClassSpec` here. From the spec the API
generates the messages a generated xapi server answers for every class (datamodel_utils.ml
`messages_of_obj`): `get_record`, `get_by_uuid`, `get_<field>` for every field, `get_all` and
`get_all_records` (unless the class hides its list, as `session` does), `get_by_name_label` for
classes with a name, and `set_<field>` for each writable field, with `add_to_`/`remove_from_` for
writable maps and `add_`/`remove_` for writable sets. The state stores every class listed here
(persisting those marked `persistent`), events report them, and `system.listMethods` lists all of
it, so a new class needs no other registration. Its explicit messages (constructors, actions) go
in the module that holds its class's messages (`vm_messages.py`, `vdi_messages.py`, …).

Writable fields are the datamodel's RW fields and those whose custom setter only stores the
value; fields whose setters have side effects (memory, VCPUs, power) are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from xvatool.sim.records import (
    host_record,
    network_record,
    pbd_record,
    pif_record,
    pool_record,
    session_record,
    sr_record,
    task_record,
    vbd_record,
    vdi_record,
    vif_record,
    vm_appliance_record,
    vm_record,
)
from xvatool.sim.values import Record

__all__ = ["ALL_CLASSES", "CLASSES", "PERSISTENT_CLASSES", "SPECS", "ClassSpec"]

_NAMED = frozenset({"name_label", "name_description", "other_config", "tags"})
_DEVICE = frozenset({"other_config", "qos_algorithm_type", "qos_algorithm_params"})
_VM_ACTIONS = ("destroy", "restart")
_CRASH_ACTIONS = (
    "destroy",
    "coredump_and_destroy",
    "restart",
    "coredump_and_restart",
    "preserve",
    "rename_restart",
)


@dataclass(frozen=True)
class ClassSpec:
    """One class: its record builder, which fields clients may set, and how it is listed.

    `enums` restricts a writable string field to its enumeration's values.
    """

    name: str
    template: Callable[..., Record]
    writable: frozenset[str] = frozenset()
    enums: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    listed: bool = True
    """Has `get_all` / `get_all_records` and is part of `event.from(["*"])` (not sessions)."""
    persistent: bool = True
    """Kept in `state.json`; sessions and tasks live in memory, as a restarted xapi forgets them."""
    defaults: Record = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "defaults", self.template())
        unknown = (self.writable | set(self.enums)) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name}: writable fields not in its record: {sorted(unknown)}")

    @property
    def fields(self) -> frozenset[str]:
        """Every field of the class's records."""
        return frozenset(self.defaults)

    @property
    def named(self) -> bool:
        """Classes with a `name_label` answer `get_by_name_label`."""
        return "name_label" in self.defaults


CLASSES: tuple[ClassSpec, ...] = (
    ClassSpec("pool", pool_record, _NAMED | {"default_SR", "suspend_image_SR", "crash_dump_SR"}),
    ClassSpec("host", host_record, _NAMED | {"logging", "suspend_image_sr", "crash_dump_sr"}),
    ClassSpec("SR", sr_record, _NAMED | {"sm_config", "shared"}),
    ClassSpec("PBD", pbd_record, frozenset({"other_config", "device_config"})),
    ClassSpec(
        "network",
        network_record,
        _NAMED | {"MTU", "default_locking_mode"},
        {"default_locking_mode": ("unlocked", "disabled")},
    ),
    ClassSpec(
        "VDI",
        vdi_record,
        _NAMED | {"xenstore_data", "sm_config", "sharable", "read_only", "on_boot", "allow_caching"},
        {"on_boot": ("reset", "persist")},
    ),
    ClassSpec(
        "VM",
        vm_record,
        _NAMED
        | {"user_version", "is_a_template", "is_default_template", "affinity", "VCPUs_params"}
        | {"actions_after_shutdown", "actions_after_reboot", "actions_after_crash"}
        | {"PV_bootloader", "PV_kernel", "PV_ramdisk", "PV_args", "PV_bootloader_args", "PV_legacy_args"}
        | {"HVM_boot_policy", "HVM_boot_params", "platform", "PCI_bus", "recommendations"}
        | {"xenstore_data", "blocked_operations", "suspend_SR", "hardware_platform_version"}
        | {"start_delay", "shutdown_delay", "order", "ha_restart_priority", "ha_always_run"},
        {
            "actions_after_shutdown": _VM_ACTIONS,
            "actions_after_reboot": _VM_ACTIONS,
            "actions_after_crash": _CRASH_ACTIONS,
        },
    ),
    ClassSpec(
        "VBD",
        vbd_record,
        _DEVICE | {"userdevice", "bootable", "mode", "type", "unpluggable"},
        {"mode": ("RO", "RW"), "type": ("CD", "Disk", "Floppy")},
    ),
    ClassSpec(
        "VIF",
        vif_record,
        _DEVICE | {"locking_mode", "ipv4_allowed", "ipv6_allowed"},
        {"locking_mode": ("network_default", "locked", "unlocked", "disabled")},
    ),
    ClassSpec("PIF", pif_record, frozenset({"other_config"})),
    ClassSpec("VM_appliance", vm_appliance_record, frozenset({"name_label", "name_description"})),
    ClassSpec("task", task_record, frozenset({"other_config"}), persistent=False),
    ClassSpec("session", session_record, frozenset({"other_config"}), listed=False, persistent=False),
)
SPECS: Mapping[str, ClassSpec] = {spec.name: spec for spec in CLASSES}
"""The specs by exact (case-sensitive) class name."""
PERSISTENT_CLASSES = tuple(spec.name for spec in CLASSES if spec.persistent)
ALL_CLASSES = tuple(spec.name for spec in CLASSES)

"""Creating objects from ova.xml the way xapi's importer does (import.ml), and undoing them.

Rules reproduced (docs/xva-format.md §4.3, §4.6, §7; docs/host-protocol.md §4.8, §4.9):
- `(xapi_major, xapi_minor)` newer than the host → `IMPORT_INCOMPATIBLE_VERSION`;
- a required field missing or of the wrong type → `IMPORT_ERROR [message]`; a VDI's SR, a VBD's
  VM / non-CD VDI or a VIF's network that is not in the file → `IMPORT_ERROR_FAILED_TO_FIND_OBJECT
  [id]`; unknown classes and fields are ignored;
- objects are handled in the importer's order: SR, VDI, VM, network, VBD, VIF;
- full import: every VDI in a non-ISO SR is created in the target SR with the record's
  `virtual_size`; VDIs on ISO SRs are not, and CD VBDs pointing at them come out empty;
- metadata import: VDIs are found through the `vdi:<src>=<dst>` map, then by SR + `location`,
  else `VDI_LOCATION_MISSING` (skipped with `force`);
- networks are matched by `name_label`, then `bridge`, else created;
- without `restore` the VM gets a new UUID and `mac_seed`, VIF MACs are regenerated and
  `version` is 0; with it, a Halted VM of the same UUID is replaced (newer `version` only);
- the created VMs carry `current_operations[task] = "import"` until the end (not with `force`);
- on failure everything created is destroyed, unless `force`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xvatool.errors import FormatError
from xvatool.sim.objects import ObjectOps
from xvatool.sim.records import XAPI_VERSION, network_record, vbd_record, vdi_record, vif_record, vm_record
from xvatool.sim.state import SimState
from xvatool.sim.values import NULL_REF, ApiFailure, DateTime, Record, new_uuid, random_mac
from xvatool.xva.ovaxml import WARNING_CODES, Metadata, XapiObject

__all__ = ["ImportOptions", "Importer", "check_metadata"]

_FIND_CODES = {"dangling-sr", "dangling-vm", "dangling-vdi", "dangling-network"}
# Set-of-ref fields: the importer never copies them from the file; links are rebuilt.
_REF_LISTS = {"VBDs", "VIFs", "VGPUs", "VTPMs", "snapshots", "children", "VDIs", "PBDs", "PIFs",
              "crash_dumps", "consoles", "attached_PCIs", "resident_VMs"}  # fmt: skip
_VDI_FIELDS = ("name_label", "name_description", "type", "sharable", "read_only", "other_config", "sm_config",
               "xenstore_data", "tags")  # fmt: skip
_VBD_FIELDS = ("userdevice", "bootable", "mode", "type", "unpluggable", "other_config", "qos_algorithm_type",
               "qos_algorithm_params", "device")  # fmt: skip
_NEVER_COPIED = {"uuid", "current_operations", "allowed_operations", "location", "power_state"}


def _dangling_id(metadata: Metadata) -> str | None:
    """The first reference the importer would fail to find (its `find_in_export`)."""
    checks = {"VDI": ("SR",), "VBD": ("VM", "VDI"), "VIF": ("VM", "network")}
    for obj in metadata.objects:
        for key in checks.get(obj.cls, ()):
            value = obj.snapshot.get(key)
            if obj.cls == "VBD" and key == "VDI" and str(obj.snapshot.get("type", "")).lower() == "cd":
                continue
            other_config = obj.snapshot.get("other_config")
            if (
                obj.cls == "VIF"
                and key == "network"
                and isinstance(other_config, dict)
                and "maps_to" in other_config
            ):
                continue
            if metadata.resolve(value) is None:
                return str(value)
    return None


def check_metadata(metadata: Metadata) -> None:
    """Raise the `ApiFailure` a host's importer would raise for this ova.xml, if any."""
    try:
        version = metadata.xapi_version
    except FormatError as exc:
        raise ApiFailure("IMPORT_ERROR", [exc.message]) from None
    if version > XAPI_VERSION:
        raise ApiFailure("IMPORT_INCOMPATIBLE_VERSION")
    for code, message in metadata.check():
        if code in WARNING_CODES or code in ("no-vm", "several-vms"):
            continue  # the host imports every VM object, or none
        if code == "export-vsn" and metadata.export_vsn >= 2:
            continue  # a newer export_vsn is read as 2 (xva-format.md §7.8)
        if code in _FIND_CODES:
            raise ApiFailure("IMPORT_ERROR_FAILED_TO_FIND_OBJECT", [_dangling_id(metadata) or message])
        raise ApiFailure("IMPORT_ERROR", [message])


def _coerce(template: Any, value: Any, where: str) -> Any:
    """A file value (ints are strings there) as the type of the template's field."""
    try:
        if isinstance(template, bool):
            if not isinstance(value, bool):
                raise ValueError("not a boolean")
            return value
        if isinstance(template, int):
            return int(value)
        if isinstance(template, float):
            return float(value)
        if isinstance(template, DateTime):
            return DateTime(str(value))
        if isinstance(template, str):
            return str(value)
        if isinstance(template, dict) and isinstance(value, dict):
            return copy.deepcopy(value)
        if isinstance(template, list) and isinstance(value, list):
            return copy.deepcopy(value)
    except (TypeError, ValueError):
        pass
    raise ApiFailure("IMPORT_ERROR", [f"{where}: field has the wrong type"])


def merge_record(template: Record, snapshot: dict[str, Any], where: str) -> Record:
    """The template with every known, non-reference field taken from the file's snapshot."""
    out = template
    for key, value in snapshot.items():
        if key not in out or key in _NEVER_COPIED or key in _REF_LISTS or out[key] == NULL_REF:
            continue
        out[key] = _coerce(out[key], value, f"{where} {key}")
    return out


@dataclass
class ImportOptions:
    """Flags of `/import` and `/import_metadata` (only the literal `true` sets them)."""

    sr: str = NULL_REF
    restore: bool = False
    force: bool = False
    metadata_only: bool = False
    vdi_map: dict[str, str] = field(default_factory=dict)


class Importer:
    """Creates the objects of one import and remembers how to undo them."""

    def __init__(self, state: SimState, ops: ObjectOps, task: str, options: ImportOptions) -> None:
        self.state = state
        self.ops = ops
        self.task = task
        self.options = options
        self.table: dict[str, str] = {}  # file id -> new ref
        self.vms: list[str] = []
        self.created_vdis: list[str] = []
        self._undo: list[Callable[[], None]] = []

    def create(self, metadata: Metadata) -> None:
        """Create every object, in the importer's class order."""
        handlers: list[tuple[str, Callable[[XapiObject], None]]] = [
            ("SR", self._sr), ("VDI", self._vdi), ("VM", self._vm), ("network", self._network),
            ("VBD", self._vbd), ("VIF", self._vif),
        ]  # fmt: skip
        self.metadata = metadata
        for cls, handler in handlers:
            for obj in metadata.of_class(cls):
                handler(obj)

    def cleanup(self) -> None:
        """Destroy what was created, newest first (skipped by the caller under `force`)."""
        for undo in reversed(self._undo):
            try:
                undo()
            except ApiFailure:
                pass
        self._undo.clear()

    def finish(self) -> list[str]:
        """Clear the `import` operations; the VM refs for the task result (xva-format.md §7.7)."""
        for vm in self.vms:
            if self.state.exists("VM", vm):
                self.state.mutate("VM", vm, lambda r: r["current_operations"].pop(self.task, None))
        main = [vm for vm in self.vms if not self.state.field("VM", vm, "is_a_snapshot")]
        return main or list(self.vms)

    # -- per class ------------------------------------------------------------------------------

    def _sr(self, obj: XapiObject) -> None:
        if self.options.metadata_only:
            found = self.state.find("SR", uuid=obj.snapshot.get("uuid"))
            self.table[obj.id] = found[0] if found else NULL_REF
        else:
            self.table[obj.id] = self.options.sr

    def _vdi(self, obj: XapiObject) -> None:
        snap = obj.snapshot
        sr_obj = self.metadata.resolve(snap.get("SR"))
        is_iso = sr_obj is not None and sr_obj.snapshot.get("content_type") == "iso"
        if self.options.metadata_only:
            self._find_vdi(obj, sr_obj)
            return
        if is_iso:
            return  # no ISO library to match in the simulator: the CD comes out empty
        fields = {k: snap[k] for k in _VDI_FIELDS if k in snap}
        record = merge_record(vdi_record(), fields, f"VDI {obj.id}")
        keep = {k: record[k] for k in fields}
        ref = self.ops.create_vdi(self.options.sr, int(str(snap["virtual_size"])), **keep)
        self.table[obj.id] = ref
        self.created_vdis.append(ref)
        self._undo.append(lambda: self.ops.destroy_vdi(ref))

    def _find_vdi(self, obj: XapiObject, sr_obj: XapiObject | None) -> None:
        uuid = str(obj.snapshot.get("uuid", ""))
        target = self.options.vdi_map.get(uuid)
        found = self.state.find("VDI", uuid=target) if target else []
        if not found and sr_obj is not None:
            srs = self.state.find("SR", uuid=sr_obj.snapshot.get("uuid"))
            location = obj.snapshot.get("location")
            found = [v for sr in srs for v in self.state.find("VDI", SR=sr, location=location)]
        if found:
            self.table[obj.id] = found[0]
        elif not self.options.force:
            raise ApiFailure("VDI_LOCATION_MISSING", [str(sr_obj.id if sr_obj else NULL_REF),
                                                      str(obj.snapshot.get("location", ""))])  # fmt: skip

    def _vm(self, obj: XapiObject) -> None:
        snap = obj.snapshot
        record = merge_record(vm_record(), snap, f"VM {obj.id}")
        record["power_state"] = "Halted"
        other = {k: v for k, v in record["other_config"].items() if k != "grant_api_access"}
        if not self.options.restore:
            other["mac_seed"] = new_uuid()
        other["import_task"] = self.task
        record["other_config"] = other
        if "parent" not in snap:  # exported pre-DMC: memory reset to static_max (xva-format.md §4.6)
            for key in ("memory_dynamic_min", "memory_dynamic_max", "memory_target"):
                record[key] = record["memory_static_max"]
        if self.options.restore:
            record["uuid"] = str(snap.get("uuid", record["uuid"]))
            if not self._replace_existing(record):
                return
            record["version"] = record["version"] + 1
        else:
            record["version"] = 0
        if self.options.metadata_only:
            record["snapshot_of"] = NULL_REF
        if not self.options.force:
            record["current_operations"] = {self.task: "import"}
        ref = self.state.add("VM", record)
        self.table[obj.id] = ref
        self.vms.append(ref)
        self._undo.append(lambda: self._destroy_vm(ref))
        if self.options.metadata_only and snap.get("is_a_snapshot") is True:
            source = self.metadata.resolve(snap.get("snapshot_of"))
            if source is not None and source.id in self.table:
                self._link_snapshot(ref, self.table[source.id])

    def _link_snapshot(self, snap: str, vm: str) -> None:
        self.state.update("VM", snap, snapshot_of=vm)
        self.state.mutate("VM", vm, lambda r: r["snapshots"].append(snap))

    def _replace_existing(self, record: Record) -> bool:
        existing = self.state.find("VM", uuid=record["uuid"])
        if not existing:
            return True
        old = self.state.get("VM", existing[0])
        if old["power_state"] != "Halted":
            if self.options.force:
                return False
            raise ApiFailure("VM_BAD_POWER_STATE", [existing[0], "halted", old["power_state"].lower()])
        if old["version"] >= record["version"] and not self.options.force:
            raise ApiFailure("VM_TO_IMPORT_IS_NOT_NEWER_VERSION",
                             [existing[0], old["version"], record["version"]])  # fmt: skip
        self.ops.destroy_vm(existing[0])
        return True

    def _destroy_vm(self, vm: str) -> None:
        if self.state.exists("VM", vm):
            self.state.update("VM", vm, current_operations={}, power_state="Halted")
            self.ops.destroy_vm(vm)

    def _network(self, obj: XapiObject) -> None:
        snap = obj.snapshot
        for key in ("name_label", "bridge"):
            value = snap.get(key)
            if isinstance(value, str) and value:
                found = self.state.find("network", **{key: value})
                if found:
                    self.table[obj.id] = found[0]
                    return
        record = merge_record(network_record(), snap, f"network {obj.id}")
        ref = self.state.add("network", record)
        self.table[obj.id] = ref
        self._undo.append(lambda: self.state.remove("network", ref))

    def _vbd(self, obj: XapiObject) -> None:
        snap = obj.snapshot
        vm = self.table.get(str(snap.get("VM")))
        if vm is None:
            return  # its VM was skipped (restore + force)
        is_cd = str(snap.get("type", "")).lower() == "cd"
        vdi = self.table.get(str(snap.get("VDI")), NULL_REF)
        if vdi == NULL_REF and not is_cd:
            return  # a disk whose VDI was not created is dropped (xva-format.md §7.6)
        fields = merge_record(vbd_record(), snap, f"VBD {obj.id}")
        keep = {k: fields[k] for k in _VBD_FIELDS}
        keep["empty"] = vdi == NULL_REF
        self.ops.create_vbd(vm, vdi, **keep)

    def _vif(self, obj: XapiObject) -> None:
        snap = obj.snapshot
        vm = self.table.get(str(snap.get("VM")))
        network = self.table.get(str(snap.get("network")))
        if vm is None or network is None:
            return
        fields = merge_record(vif_record(), snap, f"VIF {obj.id}")
        mac = fields["MAC"] if self.options.restore and fields["MAC"] else random_mac()
        keep = {k: fields[k] for k in ("device", "MTU", "other_config", "locking_mode")}
        self.ops.create_vif(vm, network, MAC=mac, **keep)

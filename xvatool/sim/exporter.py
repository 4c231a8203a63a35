"""Building ova.xml from the simulated database, the way xapi's exporter does (export.ml).

Reproduced host dialect (docs/xva-format.md §4.3–§4.5):
- ids are `Ref:<n>` from one counter global to the process, never reset;
- the walk registers the VM, each VIF and its network, each VBD and (unless empty) its VDI and the
  VDI's SR, then the VM's metrics, guest metrics, `resident_on` and `affinity`. The null reference
  gets an id of its own that way, so null references come out as one dangling `Ref:N`;
- in rewritten fields a reference to an object not exported becomes `OpaqueRef:NULL`; ref lists
  are filtered to exported ids; fields the exporter does not rewrite keep their raw values;
- a full export flattens snapshot identity and blanks operations (xva-format.md §4.5), so a snapshot
  exports as a template; a metadata export keeps snapshots (xva-format.md §7.7);
- objects are emitted in `make_all` order: VM, VBD, VIF, network, VDI, SR.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from xvatool.sim.records import PRODUCT, XAPI_VERSION
from xvatool.sim.state import SimState
from xvatool.sim.values import EPOCH, NULL_REF, Record
from xvatool.xva.ovaxml import Metadata, XapiObject

__all__ = ["ExportPlan", "plan_export"]

_ids = itertools.count(1)
"""xapi's `make_id` counter: global to the process, so ids keep growing across exports."""
_EMIT_ORDER = ("VM", "VBD", "VIF", "network", "VDI", "SR")


@dataclass
class ExportPlan:
    """An ova.xml document and, for each data-carrying disk id, the VDI whose file holds it."""

    metadata: Metadata
    vdi_of_disk: dict[str, str]


class _Table:
    def __init__(self) -> None:
        self.ids: dict[str, str] = {}
        self.classes: dict[str, str] = {}

    def add(self, ref: str, cls: str) -> None:
        if ref not in self.ids:
            self.ids[ref] = f"Ref:{next(_ids)}"
            self.classes[ref] = cls

    def lookup(self, ref: str) -> str:
        return self.ids.get(ref, NULL_REF)

    def only(self, refs: Iterable[str]) -> list[str]:
        return [self.ids[r] for r in refs if r in self.ids and r != NULL_REF]


def _walk(state: SimState, table: _Table, vm: str, *, snapshots: bool, excluded: set[str]) -> None:
    record = state.get("VM", vm)
    table.add(vm, "VM")
    if "vif" not in excluded:
        for vif in record["VIFs"]:
            table.add(vif, "VIF")
            table.add(state.field("VIF", vif, "network"), "network")
    if "vbd" not in excluded:
        for vbd in record["VBDs"]:
            table.add(vbd, "VBD")
            vbd_rec = state.get("VBD", vbd)
            if not vbd_rec["empty"] and vbd_rec["VDI"] != NULL_REF:
                table.add(vbd_rec["VDI"], "VDI")
                table.add(state.field("VDI", vbd_rec["VDI"], "SR"), "SR")
    for field in ("metrics", "guest_metrics"):
        table.add(record[field], "null" if record[field] == NULL_REF else field)
    for field in ("resident_on", "affinity"):
        # Host objects are not exported by the simulator; a non-null ref keeps a dangling id.
        table.add(record[field], "null" if record[field] == NULL_REF else "host")
    if snapshots:
        for snap in record["snapshots"]:
            if state.exists("VM", snap) and snap not in table.ids:
                _walk(state, table, snap, snapshots=False, excluded=excluded)


def _vm_snapshot(record: Record, table: _Table, *, full: bool, preserve: bool) -> Record:
    out = copy.deepcopy(record)
    for field in ("resident_on", "affinity", "metrics", "guest_metrics"):
        out[field] = table.lookup(record[field])
    out["VBDs"] = table.only(record["VBDs"])
    out["VIFs"] = table.only(record["VIFs"])
    out["VGPUs"], out["VTPMs"] = [], []
    out["suspend_VDI"] = table.lookup(record["suspend_VDI"]) if preserve else NULL_REF
    if not preserve:
        out["power_state"] = "Halted"
    if full:  # export.ml make_vm ~with_snapshot_metadata:false
        out.update(is_a_snapshot=False, snapshot_of=NULL_REF, snapshots=[], snapshot_time=EPOCH,
                   transportable_snapshot_id="", parent=NULL_REF)  # fmt: skip
    else:
        out["snapshot_of"] = table.lookup(record["snapshot_of"])
        out["snapshots"] = table.only(record["snapshots"])
        out["parent"] = table.lookup(record["parent"])
    out.update(current_operations={}, allowed_operations=[], crash_dumps=[], consoles=[], blobs={},
               protection_policy=NULL_REF)  # fmt: skip
    return out


def _device_snapshot(cls: str, record: Record, table: _Table, *, preserve: bool) -> Record:
    out = copy.deepcopy(record)
    if cls == "VBD":
        out["VM"], out["VDI"] = table.lookup(record["VM"]), table.lookup(record["VDI"])
    elif cls == "VIF":
        out["VM"], out["network"] = table.lookup(record["VM"]), table.lookup(record["network"])
    elif cls == "network":
        out["VIFs"], out["PIFs"] = table.only(record["VIFs"]), []
        return out
    elif cls == "VDI":
        out["SR"] = table.lookup(record["SR"])
        out["VBDs"] = table.only(record["VBDs"])
        return out
    elif cls == "SR":
        out["VDIs"], out["PBDs"] = table.only(record["VDIs"]), []
        return out
    if not preserve:
        out["currently_attached"] = False
    out.update(metrics=NULL_REF, current_operations={}, allowed_operations=[])
    return out


def _version() -> dict[str, object]:
    return {
        "hostname": "localhost",
        "date": PRODUCT["date"],
        "product_version": PRODUCT["product_version"],
        "product_brand": PRODUCT["product_brand"],
        "build_number": PRODUCT["build_number"],
        "xapi_major": XAPI_VERSION[0],
        "xapi_minor": XAPI_VERSION[1],
        "export_vsn": 2,
    }


def plan_export(
    state: SimState,
    vms: list[str],
    *,
    metadata_only: bool = False,
    preserve_power_state: bool = False,
    snapshots: bool = False,
    excluded: Iterable[str] = (),
) -> ExportPlan:
    """ova.xml for `vms` (one for `/export`, several for `/export_metadata?all=true`).

    `metadata_only` keeps snapshot identity (metadata export); otherwise the VM is flattened.
    """
    table = _Table()
    excluded_set = set(excluded)
    with state.lock:
        for vm in vms:
            _walk(state, table, vm, snapshots=snapshots, excluded=excluded_set)
        by_class: dict[str, list[XapiObject]] = {cls: [] for cls in _EMIT_ORDER}
        for ref, obj_id in table.ids.items():
            cls = table.classes[ref]
            if cls not in by_class:
                continue  # the null reference and unexported metrics only own an id
            record = state.get(cls, ref)
            if cls == "VM":
                snap = _vm_snapshot(record, table, full=not metadata_only, preserve=preserve_power_state)
            else:
                snap = _device_snapshot(cls, record, table, preserve=preserve_power_state)
            by_class[cls].append(XapiObject(cls, obj_id, snap))
    objects = [obj for cls in _EMIT_ORDER for obj in by_class[cls]]
    metadata = Metadata(_version(), objects)  # type: ignore[arg-type]
    vdi_of_disk: dict[str, str] = {}
    if not metadata_only:
        ref_of_id = {obj_id: ref for ref, obj_id in table.ids.items()}
        vdi_of_disk = {disk.id: ref_of_id[disk.id] for disk in metadata.disks}
    return ExportPlan(metadata, vdi_of_disk)

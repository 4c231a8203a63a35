"""Object lifecycle shared by the API and the data handlers: VDIs, VMs, snapshots, power state.

Each operation keeps the two sides of every link consistent (VM.VBDs ↔ VBD.VM, VDI.VBDs,
SR.VDIs, network.VIFs, VM.snapshots ↔ snapshot_of) inside one state transaction, so the state
file never records half an operation.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

from xvatool.sim.disks import copy_sparse, create_sparse
from xvatool.sim.records import vbd_record, vdi_record, vif_record
from xvatool.sim.state import SimState
from xvatool.sim.values import NULL_REF, ApiFailure, Record, new_uuid, now

__all__ = ["ObjectOps", "power_name"]

_domids = itertools.count(1)
SECTOR_SIZE = 512


def power_name(state: str) -> str:
    """Power states as error parameters: lower case (`Record_util.power_state_to_string`)."""
    return state.lower()


class ObjectOps:
    """Creation and destruction of VMs, VDIs, VBDs and VIFs against one `SimState`."""

    def __init__(self, state: SimState, host_ref: str) -> None:
        self.state = state
        self.host_ref = host_ref

    # -- VDIs -----------------------------------------------------------------------------------

    def create_vdi(self, sr: str, virtual_size: int, *, adopt_file: bool = False, **fields: Any) -> str:
        """A new empty (all-hole) VDI of `virtual_size` bytes in `sr`.

        `adopt_file=True` takes the disk file already at `fields["location"]` instead.
        """
        if virtual_size < 0:
            raise ApiFailure("FIELD_TYPE_ERROR", ["virtual_size"])
        virtual_size = -(-virtual_size // SECTOR_SIZE) * SECTOR_SIZE  # storage rounds up to sectors
        sr_record = self.state.get("SR", sr)
        if sr_record["content_type"] == "iso":
            raise ApiFailure("SR_OPERATION_NOT_SUPPORTED", [sr])
        record = vdi_record(SR=sr, virtual_size=virtual_size, **fields)
        with self.state.transaction():
            ref = self.state.add("VDI", record)
            if not adopt_file:
                create_sparse(self.state.disk_path(ref), virtual_size)
            self.state.mutate("SR", sr, lambda r: r["VDIs"].append(ref))
        return ref

    def destroy_vdi(self, vdi: str) -> None:
        """Remove a VDI, its VBDs and its disk file; refused while attached or transferring."""
        with self.state.transaction():
            record = self.state.get("VDI", vdi)
            if record["current_operations"]:
                raise ApiFailure("VDI_IN_USE", [vdi, "destroy"])
            for vbd in record["VBDs"]:
                if self.state.exists("VBD", vbd) and self.state.field("VBD", vbd, "currently_attached"):
                    raise ApiFailure("VDI_IN_USE", [vdi, "destroy"])
            for vbd in record["VBDs"]:
                self.destroy_vbd(vbd)
            path = self.state.disk_path(vdi)
            self._unlink(record["SR"], "SR", "VDIs", vdi)
            self._unlink(record["snapshot_of"], "VDI", "snapshots", vdi)
            self.state.remove("VDI", vdi)
            path.unlink(missing_ok=True)

    def vdi_operation(self, vdi: str, task: str, operation: str) -> contextlib.AbstractContextManager[None]:
        """Mark a VDI busy for a transfer (xapi attaches it to dom0 meanwhile, §3.5)."""
        return self._operation("VDI", vdi, task, operation)

    def vm_operation(self, vm: str, task: str, operation: str) -> contextlib.AbstractContextManager[None]:
        """`current_operations[task] = operation` on a VM for the duration (export, import)."""
        return self._operation("VM", vm, task, operation)

    @contextlib.contextmanager
    def _operation(self, cls: str, ref: str, task: str, operation: str) -> Iterator[None]:
        self.state.mutate(cls, ref, lambda r: r["current_operations"].__setitem__(task, operation))
        try:
            yield
        finally:
            if self.state.exists(cls, ref):
                self.state.mutate(cls, ref, lambda r: r["current_operations"].pop(task, None))

    # -- VBDs and VIFs --------------------------------------------------------------------------

    def create_vbd(self, vm: str, vdi: str, **fields: Any) -> str:
        """A VBD linking `vm` to `vdi` (`OpaqueRef:NULL` for an empty CD drive)."""
        owners = {"VM": vm} if vdi == NULL_REF else {"VM": vm, "VDI": vdi}
        return self._add_joint("VBD", vbd_record(VM=vm, VDI=vdi, **fields), owners)

    def destroy_vbd(self, vbd: str) -> None:
        """Remove a VBD and both links to it."""
        self._remove_joint("VBD", vbd, ("VM", "VDI"))

    def create_vif(self, vm: str, network: str, **fields: Any) -> str:
        """A VIF linking `vm` to `network`."""
        return self._add_joint(
            "VIF", vif_record(VM=vm, network=network, **fields), {"VM": vm, "network": network}
        )

    def destroy_vif(self, vif: str) -> None:
        """Remove a VIF and both links to it."""
        self._remove_joint("VIF", vif, ("VM", "network"))

    # A VBD or VIF joins two objects; each owner lists it in its `VBDs`/`VIFs` field, and the
    # joint names each owner in the field named after the owner's class.

    def _add_joint(self, cls: str, record: Record, owners: dict[str, str]) -> str:
        with self.state.transaction():
            ref = self.state.add(cls, record)
            for owner_cls, owner in owners.items():
                self._link(owner, owner_cls, f"{cls}s", ref)
        return ref

    def _remove_joint(self, cls: str, ref: str, owner_classes: tuple[str, str]) -> None:
        with self.state.transaction():
            if not self.state.exists(cls, ref):
                return
            record = self.state.get(cls, ref)
            for owner_cls in owner_classes:
                self._unlink(record[owner_cls], owner_cls, f"{cls}s", ref)
            self.state.remove(cls, ref)

    def _link(self, owner: str, cls: str, field: str, ref: str) -> None:
        self.state.mutate(cls, owner, lambda r: r[field].append(ref))

    def _unlink(self, owner: str, cls: str, field: str, ref: str) -> None:
        if owner != NULL_REF and self.state.exists(cls, owner):
            self.state.mutate(cls, owner, lambda r: r[field].remove(ref) if ref in r[field] else None)

    # -- VMs ------------------------------------------------------------------------------------

    def assert_power(self, vm: str, expected: tuple[str, ...]) -> Record:
        """The VM's record, or `VM_BAD_POWER_STATE [vm, expected, actual]`."""
        record = self.state.get("VM", vm)
        if record["power_state"] not in expected:
            raise ApiFailure(
                "VM_BAD_POWER_STATE", [vm, power_name(expected[0]), power_name(record["power_state"])]
            )
        return record

    def destroy_vm(self, vm: str) -> None:
        """`VM.destroy`: the VM, its VBDs and VIFs go; its VDIs stay (as on a host)."""
        with self.state.transaction():
            record = self.state.get("VM", vm)
            if record["is_control_domain"]:
                raise ApiFailure("OPERATION_NOT_ALLOWED", ["cannot destroy the control domain"])
            self.assert_power(vm, ("Halted", "Suspended"))
            for task, op in record["current_operations"].items():
                raise ApiFailure("OTHER_OPERATION_IN_PROGRESS", ["VM", vm, op, task])
            for vbd in record["VBDs"]:
                self.destroy_vbd(vbd)
            for vif in record["VIFs"]:
                self.destroy_vif(vif)
            self._unlink(record["snapshot_of"], "VM", "snapshots", vm)
            for snap in record["snapshots"]:
                if self.state.exists("VM", snap):
                    self.state.update("VM", snap, snapshot_of=NULL_REF)
            self.state.remove("VM", vm)

    def start_vm(self, vm: str) -> None:
        """Halted → Running, resident on this host, disks attached."""
        with self.state.transaction():
            record = self.assert_power(vm, ("Halted",))
            if record["is_a_template"]:
                raise ApiFailure("VM_IS_TEMPLATE", [vm, "start"])
            self.state.update("VM", vm, power_state="Running", resident_on=self.host_ref, domid=next(_domids))
            for vbd in record["VBDs"]:
                self.state.update("VBD", vbd, currently_attached=True)
            for vif in record["VIFs"]:
                self.state.update("VIF", vif, currently_attached=True)
            self.state.mutate("host", self.host_ref, lambda r: r["resident_VMs"].append(vm))

    def shutdown_vm(self, vm: str) -> None:
        """Running/Paused → Halted, disks detached."""
        with self.state.transaction():
            record = self.assert_power(vm, ("Running", "Paused"))
            self.state.update("VM", vm, power_state="Halted", resident_on=NULL_REF, domid=-1)
            for vbd in record["VBDs"]:
                self.state.update("VBD", vbd, currently_attached=False)
            for vif in record["VIFs"]:
                self.state.update("VIF", vif, currently_attached=False)
            self._unlink(self.host_ref, "host", "resident_VMs", vm)

    def snapshot_vm(self, vm: str, new_name: str) -> str:
        """`VM.snapshot`: a Halted template copy with copied disks (holes preserved).

        The disk files are copied first, without holding the state lock (the API stays
        responsive meanwhile); the records then appear in one transaction.
        """
        record = self.state.get("VM", vm)
        if record["is_control_domain"] or record["is_a_snapshot"]:
            raise ApiFailure("OPERATION_NOT_ALLOWED", ["VM cannot be snapshotted"])
        vbds = [self.state.get("VBD", vbd) for vbd in record["VBDs"]]
        copies: dict[str, str] = {}  # source VDI -> location of its copy
        try:
            for vbd in vbds:
                if vbd["type"] != "CD" and vbd["VDI"] != NULL_REF and not vbd["empty"]:
                    location = new_uuid()
                    copy_sparse(self.state.disk_path(vbd["VDI"]), self.state.disk_dir / f"{location}.img")
                    copies[vbd["VDI"]] = location
            return self._snapshot_records(vm, record, vbds, copies, new_name)
        except BaseException:
            for location in copies.values():
                (self.state.disk_dir / f"{location}.img").unlink(missing_ok=True)
            raise

    def _snapshot_records(
        self, vm: str, record: Record, vbds: list[Record], copies: dict[str, str], new_name: str
    ) -> str:
        with self.state.transaction():
            stamp = now()
            snap = dict(
                record,
                uuid=new_uuid(),
                name_label=new_name,
                power_state="Halted",
                is_a_template=True,
                is_a_snapshot=True,
                snapshot_of=vm,
                snapshot_time=stamp,
                snapshots=[],
                children=[],
                resident_on=NULL_REF,
                domid=-1,
                VBDs=[],
                VIFs=[],
                current_operations={},
                allowed_operations=["export", "clone", "copy", "destroy"],
                other_config=dict(record["other_config"]),
            )
            snap_ref = self.state.add("VM", snap)
            self.state.mutate("VM", vm, lambda r: r["snapshots"].append(snap_ref))
            for vbd in vbds:
                vdi = vbd["VDI"]
                if vdi in copies:
                    source = self.state.get("VDI", vdi)
                    same = ("name_label", "name_description", "type", "sharable", "read_only", "sm_config")
                    new_vdi = self.create_vdi(
                        source["SR"],
                        source["virtual_size"],
                        adopt_file=True,
                        location=copies[vdi],
                        is_a_snapshot=True,
                        snapshot_of=vdi,
                        snapshot_time=stamp,
                        **{k: source[k] for k in same},
                    )
                    self._link(vdi, "VDI", "snapshots", new_vdi)
                    vdi = new_vdi
                kept = ("device", "userdevice", "bootable", "mode", "type", "empty", "unpluggable")
                self.create_vbd(snap_ref, vdi, **{k: vbd[k] for k in kept})
            for vif in record["VIFs"]:
                vif_rec = self.state.get("VIF", vif)
                self.create_vif(
                    snap_ref,
                    vif_rec["network"],
                    device=vif_rec["device"],
                    MAC=vif_rec["MAC"],
                    MTU=vif_rec["MTU"],
                )
        return snap_ref

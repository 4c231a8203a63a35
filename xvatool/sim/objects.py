"""Object lifecycle shared by the API and the data handlers: VDIs, VBDs, VIFs, VMs, power state.

Each operation keeps the two sides of every link consistent (VM.VBDs ↔ VBD.VM, VDI.VBDs,
SR.VDIs, network.VIFs, VM.snapshots ↔ snapshot_of, VM.parent ↔ children) inside one state
transaction, which the state rolls back if the operation fails, so the state file never records
half an operation. Snapshots, clones and copies live in `copies.py`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

from xvatool.sim.cbt import CbtStore
from xvatool.sim.disks import backend_failure, create_sparse
from xvatool.sim.lifecycle import allowed_power_states, check_vm_operation, power_name
from xvatool.sim.records import vbd_record, vdi_record, vif_record, vm_record
from xvatool.sim.state import SimState
from xvatool.sim.values import NULL_REF, ApiFailure, Record

__all__ = ["SECTOR_SIZE", "ObjectOps"]

_domids = itertools.count(1)
SECTOR_SIZE = 512


class ObjectOps:
    """Creation and destruction of VMs, VDIs, VBDs and VIFs against one `SimState`."""

    def __init__(self, state: SimState, host_ref: str) -> None:
        self.state = state
        self.host_ref = host_ref
        self.cbt = CbtStore(state)

    # -- VDIs -----------------------------------------------------------------------------------

    def create_vdi(self, sr: str, virtual_size: int, *, adopt_file: bool = False, **fields: Any) -> str:
        """A new empty (all-hole) VDI of `virtual_size` bytes in `sr`.

        `adopt_file=True` takes the disk file already at `fields["location"]` instead. Sizes
        are rounded up to whole sectors; a negative size is `FIELD_TYPE_ERROR`, one larger than
        the SR `SR_FULL [requested, maximum]`. A failure leaves neither a record nor a file.
        """
        if virtual_size < 0:
            raise ApiFailure("FIELD_TYPE_ERROR", ["virtual_size"])
        virtual_size = -(-virtual_size // SECTOR_SIZE) * SECTOR_SIZE  # storage rounds up to sectors
        sr_record = self.state.get("SR", sr)
        if sr_record["content_type"] == "iso":
            raise ApiFailure("SR_OPERATION_NOT_SUPPORTED", [sr])
        if virtual_size > sr_record["physical_size"]:
            raise ApiFailure("SR_FULL", [virtual_size, sr_record["physical_size"]])
        record = vdi_record(SR=sr, virtual_size=virtual_size, **fields)
        with self.state.transaction():  # rolled back if the file cannot be made
            ref = self.state.add("VDI", record)
            self.state.mutate("SR", sr, lambda r: r["VDIs"].append(ref))
            if not adopt_file:
                try:
                    create_sparse(self.state.disk_path(ref), virtual_size)
                except OSError as exc:
                    raise backend_failure("create the disk", exc) from None
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
            self.cbt.drop(record["uuid"])  # its changes pass to the next snapshot in the chain

    def vdi_operation(self, vdi: str, task: str, operation: str) -> contextlib.AbstractContextManager[None]:
        """Mark a VDI busy for a transfer (xapi attaches it to dom0 meanwhile,
        host-protocol.md §4.10).
        """
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
        """A VBD linking `vm` to `vdi` (`OpaqueRef:NULL` for an empty CD drive).

        `userdevice` "autodetect" takes the lowest free number; a taken one is
        `DEVICE_ALREADY_EXISTS [userdevice]` (xapi_vbd.ml).
        """
        with self.state.transaction():
            fields["userdevice"] = self._free_device(vm, "VBD", "userdevice", fields.get("userdevice", "0"))
            owners = {"VM": vm} if vdi == NULL_REF else {"VM": vm, "VDI": vdi}
            return self._add_joint("VBD", vbd_record(VM=vm, VDI=vdi, **fields), owners)

    def destroy_vbd(self, vbd: str, *, check: bool = False) -> None:
        """Remove a VBD and both links to it; `check` refuses an attached one, as `VBD.destroy` does."""
        self._remove_joint("VBD", vbd, ("VM", "VDI"), check=check)

    def create_vif(self, vm: str, network: str, **fields: Any) -> str:
        """A VIF linking `vm` to `network`; a `device` the VM already has is `DEVICE_ALREADY_EXISTS`."""
        with self.state.transaction():
            fields["device"] = self._free_device(vm, "VIF", "device", fields.get("device", "0"))
            record = vif_record(VM=vm, network=network, **fields)
            return self._add_joint("VIF", record, {"VM": vm, "network": network})

    def destroy_vif(self, vif: str, *, check: bool = False) -> None:
        """Remove a VIF and both links to it; `check` refuses an attached one, as `VIF.destroy` does."""
        self._remove_joint("VIF", vif, ("VM", "network"), check=check)

    def _free_device(self, vm: str, cls: str, key: str, wanted: str) -> str:
        used = {str(self.state.field(cls, ref, key)) for ref in self.state.field("VM", vm, f"{cls}s")}
        if wanted == "autodetect":
            return str(next(n for n in itertools.count() if str(n) not in used))
        if wanted in used:
            raise ApiFailure("DEVICE_ALREADY_EXISTS", [wanted])
        return wanted

    # A VBD or VIF joins two objects; each owner lists it in its `VBDs`/`VIFs` field, and the
    # joint names each owner in the field named after the owner's class.

    def _add_joint(self, cls: str, record: Record, owners: dict[str, str]) -> str:
        with self.state.transaction():
            ref = self.state.add(cls, record)
            for owner_cls, owner in owners.items():
                self._link(owner, owner_cls, f"{cls}s", ref)
        return ref

    def _remove_joint(
        self, cls: str, ref: str, owner_classes: tuple[str, str], *, check: bool = False
    ) -> None:
        with self.state.transaction():
            if check:
                self.state.get(cls, ref)  # HANDLE_INVALID
            if not self.state.exists(cls, ref):
                return
            record = self.state.get(cls, ref)
            if check and record["currently_attached"]:
                owner = self.state.field("VM", record["VM"], "uuid")
                detail = f"{cls} '{record['uuid']}' still attached to '{owner}'"
                raise ApiFailure("OPERATION_NOT_ALLOWED", [detail])
            for owner_cls in owner_classes:
                self._unlink(record[owner_cls], owner_cls, f"{cls}s", ref)
            self.state.remove(cls, ref)

    def _link(self, owner: str, cls: str, field: str, ref: str) -> None:
        self.state.mutate(cls, owner, lambda r: r[field].append(ref))

    def _unlink(self, owner: str, cls: str, field: str, ref: str) -> None:
        if owner != NULL_REF and self.state.exists(cls, owner):
            self.state.mutate(cls, owner, lambda r: r[field].remove(ref) if ref in r[field] else None)

    # -- VMs ------------------------------------------------------------------------------------

    def create_vm(self, **fields: Any) -> str:
        """`VM.create`: a Halted VM with the given fields over the defaults."""
        return self.state.add("VM", vm_record(**fields))

    def assert_power(self, vm: str, expected: tuple[str, ...]) -> Record:
        """The VM's record, or `VM_BAD_POWER_STATE [vm, expected, actual]`."""
        record = self.state.get("VM", vm)
        if record["power_state"] not in expected:
            allowed = ", ".join(power_name(state) for state in expected)
            raise ApiFailure("VM_BAD_POWER_STATE", [vm, allowed, power_name(record["power_state"])])
        return record

    def assert_vm_operation(self, vm: str, op: str) -> Record:
        """The VM's record if `op` is allowed now, else the host's error (`lifecycle.py`)."""
        record = self.assert_power(vm, allowed_power_states(self.state.get("VM", vm), op))
        check_vm_operation(record, vm, op)
        return record

    def destroy_vm(self, vm: str) -> None:
        """`VM.destroy`: the VM, its VBDs and VIFs go; its VDIs stay (as on a host).

        Its children in the snapshot tree move up to its parent (xapi_vm.ml `destroy`).
        """
        with self.state.transaction():
            record = self.assert_vm_operation(vm, "destroy")
            for vbd in record["VBDs"]:
                self.destroy_vbd(vbd)
            for vif in record["VIFs"]:
                self.destroy_vif(vif)
            self._unlink(record["snapshot_of"], "VM", "snapshots", vm)
            self._unlink(record["appliance"], "VM_appliance", "VMs", vm)
            for snap in record["snapshots"]:
                if self.state.exists("VM", snap):
                    self.state.update("VM", snap, snapshot_of=NULL_REF)
            parent = record["parent"]
            self._unlink(parent, "VM", "children", vm)
            for child in record["children"]:
                if self.state.exists("VM", child):
                    self.state.update("VM", child, parent=parent)
                    if parent != NULL_REF and self.state.exists("VM", parent):
                        self._link(parent, "VM", "children", child)
            self.state.remove("VM", vm)

    def start_vm(self, vm: str) -> None:
        """Halted → Running, resident on this host, disks attached."""
        with self.state.transaction():
            record = self.assert_vm_operation(vm, "start")
            self.state.update("VM", vm, power_state="Running", resident_on=self.host_ref, domid=next(_domids))
            for vbd in record["VBDs"]:
                self.state.update("VBD", vbd, currently_attached=True)
            for vif in record["VIFs"]:
                self.state.update("VIF", vif, currently_attached=True)
            self.state.mutate("host", self.host_ref, lambda r: r["resident_VMs"].append(vm))

    def reboot_vm(self, vm: str, op: str = "clean_reboot") -> None:
        """`VM.clean_reboot` / `VM.hard_reboot`: the power state checks, then nothing changes."""
        self.assert_vm_operation(vm, op)

    def shutdown_vm(self, vm: str, op: str = "hard_shutdown") -> None:
        """`VM.clean_shutdown` (Running only) / `VM.hard_shutdown`: → Halted, disks detached."""
        with self.state.transaction():
            record = self.assert_vm_operation(vm, op)
            self.state.update("VM", vm, power_state="Halted", resident_on=NULL_REF, domid=-1)
            for vbd in record["VBDs"]:
                self.state.update("VBD", vbd, currently_attached=False)
            for vif in record["VIFs"]:
                self.state.update("VIF", vif, currently_attached=False)
            self._unlink(self.host_ref, "host", "resident_VMs", vm)

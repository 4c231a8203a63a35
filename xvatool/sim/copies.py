"""Snapshots, clones and copies of VMs and VDIs, with the host's semantics (xapi_vm_clone.ml).

One routine serves all three VM operations, parameterised by what happens to each disk:

- `VM.snapshot`: every disk gets a `VDI.snapshot` (same SR, `is_a_snapshot`, `snapshot_of` the
  disk); the new VM is a Halted template with `is_a_snapshot`, `snapshot_of` the VM, and takes
  the VM's place as its `parent`;
- `VM.clone`: every disk gets a `VDI.clone` in its own SR; the new VM is a new top-level VM
  (no parent), a template exactly when the source is one;
- `VM.copy(sr)`: every disk gets a `VDI.copy` into `sr` (into its own SR when `sr` is not a valid
  SR, as the host does for `OpaqueRef:NULL`).

CD drives keep their (shared) VDI and empty drives stay empty; VIFs are copied with new MACs
except in snapshots; the new VM gets a fresh uuid and `mac_seed`. Disks are copied sparse (holes
stay holes); a snapshot's disk shares the source's file instead, in constant time as on a host,
and the first write to either copies it (`disks.share`). Each disk file comes first and its
record after, so a failure or a cancelled task at any point leaves no new disk, record or file.
Progress and cancellation go through the calling `Async.` task when there is one.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from xvatool._files import remove_quietly
from xvatool.sim.disks import backend_failure, copy_sparse, share
from xvatool.sim.objects import ObjectOps
from xvatool.sim.records import vm_record
from xvatool.sim.tasks import TaskManager
from xvatool.sim.values import EPOCH, NULL_REF, ApiFailure, Record, new_ref, new_uuid, now, random_mac

__all__ = ["VBD_KEPT", "Copier", "DiskOp"]

_VDI_KEPT = ("name_label", "name_description", "type", "sharable", "other_config", "xenstore_data",
             "on_boot", "allow_caching", "tags")  # fmt: skip
VBD_KEPT = ("device", "userdevice", "bootable", "mode", "type", "empty", "unpluggable", "other_config",
             "qos_algorithm_type", "qos_algorithm_params")  # fmt: skip
_VM_RESET: Record = {
    "allowed_operations": [], "current_operations": {}, "is_default_template": False, "resident_on": NULL_REF,
    "suspend_VDI": NULL_REF, "domid": -1, "domarch": "", "blobs": {}, "ha_always_run": False,
    "protection_policy": NULL_REF, "snapshot_schedule": NULL_REF, "is_vmss_snapshot": False,
    "appliance": NULL_REF, "start_delay": 0, "shutdown_delay": 0, "order": 0, "suspend_SR": NULL_REF,
    "version": 0, "requires_reboot": False, "transportable_snapshot_id": "", "snapshots": [],
    "children": [], "VBDs": [], "VIFs": [], "VGPUs": [], "VTPMs": [], "crash_dumps": [], "consoles": [],
    "attached_PCIs": [], "metrics": NULL_REF, "guest_metrics": NULL_REF,
}  # fmt: skip


_SNAPSHOT_OPERATIONS = ("export", "clone", "copy", "destroy")
_VM_OPERATIONS = tuple(vm_record()["allowed_operations"])


class DiskOp(Enum):
    """What a VM operation does to each of its disks."""

    SNAPSHOT = "snapshot"
    CLONE = "clone"
    COPY = "copy"


@dataclass(frozen=True)
class _NewDisk:
    """A disk file copied ahead of its record: where it lives and what the record will say."""

    sr: str
    location: str
    size: int
    fields: Record


class Copier:
    """VM and VDI snapshots, clones and copies over one state (see the module docstring)."""

    def __init__(self, ops: ObjectOps, tasks: TaskManager) -> None:
        self.ops = ops
        self.state = ops.state
        self.tasks = tasks

    # -- VDIs -----------------------------------------------------------------------------------

    def snapshot_vdi(self, vdi: str) -> str:
        """`VDI.snapshot`: a copy in the same SR, `is_a_snapshot`, listed in the source's `snapshots`."""
        return self._single_vdi(vdi, DiskOp.SNAPSHOT, None)

    def clone_vdi(self, vdi: str) -> str:
        """`VDI.clone`: a new independent VDI with the same contents in the same SR."""
        return self._single_vdi(vdi, DiskOp.CLONE, None)

    def copy_vdi(self, vdi: str, sr: str, base: str = NULL_REF, into: str = NULL_REF) -> str:
        """`VDI.copy(vdi, sr, base_vdi, into_vdi)`: a full copy into `sr`, or into VDI `into`.

        Only full copies: a valid `base` (a differential copy) is refused.
        """
        if self.state.exists("VDI", base):
            raise ApiFailure("INTERNAL_ERROR", ["VDI.copy with a base_vdi is not supported by the simulator"])
        if not self.state.exists("VDI", into):
            self.state.get("SR", sr)  # HANDLE_INVALID
            return self._single_vdi(vdi, DiskOp.COPY, sr)
        source = _with_data(self.state.get("VDI", vdi), vdi)
        target = _with_data(self.state.get("VDI", into), into)
        if target["read_only"]:
            raise ApiFailure("VDI_READONLY", [into])
        if target["virtual_size"] < source["virtual_size"]:
            raise ApiFailure("VDI_TOO_SMALL", [into, source["virtual_size"]])
        task = self._task()
        cbt, uuid = self.ops.cbt, target["uuid"]
        with (
            self.ops.vdi_operation(vdi, task, "copy"),
            self.ops.vdi_operation(into, task, "copy"),
            cbt.tracking(uuid),
            cbt.lock_for(uuid),
        ):
            source_path, target_path = self.state.disk_path(vdi), self.state.disk_path(into)
            cbt.mark_allocated(uuid, source_path, target_path)  # every block the copy may change
            _copy_file(
                source_path,
                target_path,
                size=target["virtual_size"],
                progress=self._progress(source["virtual_size"]),
            )
        return into

    def _single_vdi(self, vdi: str, op: DiskOp, sr: str | None) -> str:
        task = self._task()
        with self.ops.vdi_operation(vdi, task, op.value), self._copied_disks() as disks:
            progress = self._progress(self.state.field("VDI", vdi, "virtual_size"))
            disks.append(self._copy_disk(vdi, op, sr, progress))
            with self.state.transaction():
                return self._disk_record(vdi, op, disks[0])

    def _copy_disk(self, vdi: str, op: DiskOp, sr: str | None, progress: Callable[[int], None]) -> _NewDisk:
        """Copy one VDI's file to a fresh location; the record is made later by `_disk_record`."""
        source = _with_data(self.state.get("VDI", vdi), vdi)
        target_sr = source["SR"] if sr is None else sr
        if self.state.field("SR", target_sr, "content_type") == "iso":
            raise ApiFailure("SR_OPERATION_NOT_SUPPORTED", [target_sr])
        fields = {k: source[k] for k in _VDI_KEPT}  # no cbt_enabled: clones and copies start untracked
        if op is DiskOp.SNAPSHOT:
            fields.update(read_only=source["read_only"], is_a_snapshot=True, snapshot_of=vdi)
            fields.update(snapshot_time=now(), uuid=new_uuid())
        elif op is DiskOp.COPY:
            fields.update(on_boot=source["on_boot"] if source["on_boot"] == "reset" else "persist")
        location = new_uuid()
        target = self.state.disk_dir / f"{location}.img"
        with self.ops.cbt.lock_for(source["uuid"]):  # no write lands between the copy and the log's handover
            if op is DiskOp.SNAPSHOT:  # constant time, as on a host: the file is shared until written
                _disk_file(share, self.state.disk_path(vdi), target)
                progress(int(source["virtual_size"]))
            else:
                _copy_file(self.state.disk_path(vdi), target, progress=progress)
            if op is DiskOp.SNAPSHOT and self.ops.cbt.rotate(source["uuid"], fields["uuid"]):
                fields["cbt_enabled"] = True
        return _NewDisk(target_sr, location, int(source["virtual_size"]), fields)

    def _disk_record(self, vdi: str, op: DiskOp, disk: _NewDisk) -> str:
        ref = self.ops.create_vdi(disk.sr, disk.size, adopt_file=True, location=disk.location, **disk.fields)
        if op is DiskOp.SNAPSHOT:
            self.state.mutate("VDI", vdi, lambda r: r["snapshots"].append(ref))
        return ref

    @contextmanager
    def _copied_disks(self) -> Iterator[list[_NewDisk]]:
        """Disk files copied so far; removed again if the operation does not complete."""
        disks: list[_NewDisk] = []
        try:
            yield disks
        except BaseException:
            for disk in disks:
                remove_quietly(self.state.disk_dir / f"{disk.location}.img")
                if "uuid" in disk.fields:  # a snapshot that never came to be: its log goes back
                    self.ops.cbt.drop(disk.fields["uuid"])
            raise

    # -- VMs ------------------------------------------------------------------------------------

    def snapshot_vm(self, vm: str, new_name: str, ignore_vdis: list[str] | tuple[str, ...] = ()) -> str:
        """`VM.snapshot(vm, new_name[, ignore_vdis])`: disks in `ignore_vdis` are left out."""
        return self._vm(vm, new_name, DiskOp.SNAPSHOT, None, set(ignore_vdis))

    def checkpoint_vm(self, vm: str, new_name: str) -> str:
        """`VM.checkpoint`: a snapshot of a running VM that comes out Suspended (without memory)."""
        return self._vm(vm, new_name, DiskOp.SNAPSHOT, None, set(), "checkpoint")

    def clone_vm(self, vm: str, new_name: str) -> str:
        """`VM.clone(vm, new_name)`."""
        return self._vm(vm, new_name, DiskOp.CLONE, None, set())

    def copy_vm(self, vm: str, new_name: str, sr: str) -> str:
        """`VM.copy(vm, new_name, sr)`: disks into `sr`, or into their own SRs if `sr` is not an SR."""
        target = sr if self.state.exists("SR", sr) else None
        if target is not None and self.state.field("SR", target, "content_type") == "iso":
            raise ApiFailure("OPERATION_NOT_ALLOWED", ["Cannot copy a VM's disks to an ISO SR"])
        return self._vm(vm, new_name, DiskOp.COPY, target, set())

    def _vm(
        self, vm: str, new_name: str, op: DiskOp, sr: str | None, ignored: set[str], action: str = ""
    ) -> str:
        action = action or op.value
        record = self.ops.assert_vm_operation(vm, action)
        vbds = [self.state.get("VBD", vbd) for vbd in record["VBDs"]]
        if op is DiskOp.SNAPSHOT:
            vbds = [vbd for vbd in vbds if vbd["VDI"] not in ignored]
        copied = [vbd for vbd in vbds if vbd["type"] != "CD" and not vbd["empty"] and vbd["VDI"] != NULL_REF]
        total = sum(int(self.state.field("VDI", vbd["VDI"], "virtual_size")) for vbd in copied)
        with self.ops.vm_operation(vm, self._task(), action), self._copied_disks() as disks:
            done = 0
            for vbd in copied:
                disks.append(self._copy_disk(vbd["VDI"], op, sr, self._progress(total, done)))
                done += disks[-1].size
            by_vdi = {vbd["VDI"]: disk for vbd, disk in zip(copied, disks, strict=True)}
            with self.state.transaction():
                new_vm = self._vm_records(vm, record, op, new_name, vbds, by_vdi)
                if action == "checkpoint":
                    self.state.update("VM", new_vm, power_state="Suspended")
                return new_vm

    def _vm_records(
        self,
        vm: str,
        record: Record,
        op: DiskOp,
        new_name: str,
        vbds: list[Record],
        disks: dict[str, _NewDisk],
    ) -> str:
        snapshot = op is DiskOp.SNAPSHOT
        new = {**record, **copy.deepcopy(_VM_RESET)}
        new.update(
            uuid=new_uuid(),
            name_label=new_name,
            power_state="Halted",
            is_a_template=snapshot or record["is_a_template"],
            is_a_snapshot=snapshot,
            snapshot_of=vm if snapshot else NULL_REF,
            snapshot_time=now() if snapshot else EPOCH,
            snapshot_info={"power-state-at-snapshot": record["power_state"],
                           "disk-snapshot-type": "crash_consistent"} if snapshot else {},
            parent=record["parent"] if snapshot else NULL_REF,
            allowed_operations=list(_SNAPSHOT_OPERATIONS if snapshot else _VM_OPERATIONS),
            other_config=_other_config(record, snapshot),
            generation_id=_fresh_generation_id(record["generation_id"]),
        )  # fmt: skip
        new_vm = new_ref()
        self.state.add("VM", new, new_vm)
        if snapshot:
            self.state.mutate("VM", vm, lambda r: r["snapshots"].append(new_vm))
            self._reparent(vm, record["parent"], new_vm)
        for vbd in vbds:
            vdi = vbd["VDI"]
            if vdi in disks:
                vdi = self._disk_record(vdi, op, disks[vdi])
            fields = {k: vbd[k] for k in VBD_KEPT}
            if fields["type"] == "Disk" and "owner" not in fields["other_config"]:
                fields["other_config"] = {**fields["other_config"], "owner": ""}
            self.ops.create_vbd(new_vm, vdi, **fields)
        for vif in record["VIFs"]:
            vif_rec = self.state.get("VIF", vif)
            mac = vif_rec["MAC"] if snapshot else random_mac()
            kept = {k: vif_rec[k] for k in ("device", "MTU", "other_config", "locking_mode")}
            self.ops.create_vif(new_vm, vif_rec["network"], MAC=mac, **kept)
        return new_vm

    def _reparent(self, vm: str, old_parent: str, snapshot: str) -> None:
        """The snapshot takes the VM's place in the snapshot tree (`parent` / `children`)."""
        if self.state.exists("VM", old_parent):
            self.state.mutate("VM", old_parent, lambda r: _swap(r["children"], vm, snapshot))
        self.state.update("VM", snapshot, children=[vm])
        self.state.update("VM", vm, parent=snapshot)

    # -- tasks ----------------------------------------------------------------------------------

    def _task(self) -> str:
        """The `Async.` task running this call, else a stand-in key for `current_operations`."""
        return self.tasks.current() or new_ref()

    def _progress(self, total: int, done_before: int = 0) -> Callable[[int], None]:
        """Reports copy progress on the running task and stops the copy if it was cancelled."""
        task = self.tasks.current()

        def report(done: int) -> None:
            if task is not None:
                self.tasks.set_progress(task, min((done_before + done) / max(total, 1), 1.0))
                self.tasks.check_cancelled(task)

        return report


def _copy_file(source: Path, target: Path, **options: Any) -> None:
    """`copy_sparse`, with a local I/O error reported as the storage backend's failure."""
    _disk_file(copy_sparse, source, target, **options)


def _disk_file(action: Callable[..., None], source: Path, target: Path, **options: Any) -> None:
    try:
        action(source, target, **options)
    except OSError as exc:
        raise backend_failure("copy the disk", exc) from None


def _with_data(record: Record, ref: str) -> Record:
    """The record of a VDI that still has its data; `cbt_metadata` ones cannot be copied."""
    if record["type"] == "cbt_metadata":
        raise ApiFailure("VDI_INCOMPATIBLE_TYPE", [ref, "cbt_metadata"])
    return record


def _swap(items: list[str], old: str, new: str) -> None:
    if old in items:
        items.remove(old)
    if new not in items:
        items.append(new)


def _other_config(record: Record, snapshot: bool) -> dict[str, Any]:
    """mac_seed renewed (not for snapshots); default_template markers dropped; base template kept."""
    dropped = ("default_template", "xensource_internal")
    other = {k: v for k, v in record["other_config"].items() if k not in dropped}
    if not snapshot:
        other["mac_seed"] = new_uuid()
    if record["is_a_template"] and "base_template_name" not in other:
        other["base_template_name"] = record["name_label"]
    return other


def _fresh_generation_id(current: str) -> str:
    """A VM clone never reuses the generation id (xapi_vm_helpers.ml `fresh_genid`)."""
    if not current:
        return ""
    return f"{secrets.randbelow(1 << 63)}:{secrets.randbelow(1 << 63)}"

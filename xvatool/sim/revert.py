"""`VM.revert(snapshot)`: the VM goes back to a snapshot's disks (xapi_vm_snapshot.ml `revert`).

SMAPIv1 storage does not implement `VDI.revert`, so xapi clones every disk of the snapshot and
destroys the VM's current disks; the VM's VBDs then point at the clones, which have new uuids and
no change log (docs/incremental.md §1.3: a reverted disk starts untracked and is unrelated to every
earlier snapshot). A running VM is hard-shut-down first, the VM's `parent` becomes the snapshot
and its power state the snapshot's (Halted: the simulator keeps no memory image). Only the disks
are reverted; the VM's other fields and VIFs stay as they are.

Errors: `REVERT_ONLY_ALLOWED_ON_SNAPSHOT` for a VM that is not a snapshot; the simulator does
not recreate a VM whose snapshot outlived it (`OPERATION_NOT_ALLOWED`).
"""

from __future__ import annotations

import contextlib

from xvatool.sim.copies import VBD_KEPT, Copier
from xvatool.sim.methods import Method
from xvatool.sim.objects import ObjectOps
from xvatool.sim.values import NULL_REF, ApiFailure, Record

__all__ = ["revert_messages"]


def _disk_vbds(ops: ObjectOps, vm: str) -> list[Record]:
    vbds = [ops.state.get("VBD", vbd) for vbd in ops.state.field("VM", vm, "VBDs")]
    return [vbd for vbd in vbds if vbd["type"] == "Disk" and not vbd["empty"] and vbd["VDI"] != NULL_REF]


def revert_messages(ops: ObjectOps, copier: Copier) -> dict[str, Method]:
    """`VM.revert` by wire name."""
    state = ops.state

    def revert(session: str, snapshot: str) -> None:
        record = state.get("VM", snapshot)
        if not record["is_a_snapshot"]:
            raise ApiFailure("REVERT_ONLY_ALLOWED_ON_SNAPSHOT")
        vm = record["snapshot_of"]
        if not state.exists("VM", vm):
            raise ApiFailure("OPERATION_NOT_ALLOWED", ["the VM of this snapshot no longer exists"])
        if state.field("VM", vm, "power_state") != "Halted":
            ops.shutdown_vm(vm, "hard_shutdown")
        clones: dict[str, str] = {}
        try:
            for vbd in _disk_vbds(ops, snapshot):
                clones[vbd["VDI"]] = copier.clone_vdi(vbd["VDI"])
            with state.transaction():
                for vbd in state.field("VM", vm, "VBDs"):
                    old = state.get("VBD", vbd)
                    ops.destroy_vbd(vbd)
                    if old["type"] == "Disk" and old["VDI"] != NULL_REF and not old["empty"]:
                        ops.destroy_vdi(old["VDI"])
                for ref in state.field("VM", snapshot, "VBDs"):
                    vbd = state.get("VBD", ref)
                    ops.create_vbd(vm, clones.get(vbd["VDI"]) or vbd["VDI"], **{k: vbd[k] for k in VBD_KEPT})
                state.update("VM", vm, parent=snapshot, power_state="Halted")
        except BaseException:
            for clone in clones.values():
                with contextlib.suppress(ApiFailure):
                    ops.destroy_vdi(clone)
            raise

    return {"VM.revert": Method.of(revert, 1, async_ok=True)}

"""VM appliances (vApps): their records, membership and the ordered start and shutdown of their VMs.

Reproduced from xapi (`xapi_vm_appliance.ml`, `xapi_vm_appliance_lifecycle.ml`, `xapi_vm.ml`):
- an operation is refused while another runs on the appliance (`OTHER_OPERATION_IN_PROGRESS
  ["VM_appliance", ref, op, task]`), on an appliance without VMs and when no VM is in a state the
  operation changes (`OPERATION_NOT_ALLOWED [reason]`);
- it acts only on the VMs not already in the state it leads to, grouped by `VM.order`: start
  runs the groups in ascending order, the shutdowns in descending order; the VMs of one group
  are handled at once and the next group waits for all of them;
- each VM's start is followed by a sleep of its `start_delay` seconds, each shutdown by its
  `shutdown_delay`, inside the VM's own operation (`Xapi_vm_helpers.start_delay`), so a group
  lasts as long as its longest delay;
- `shutdown` tries a clean shutdown of each VM and falls back to a hard one;
- VMs that did not reach the state make it `OPERATION_PARTIALLY_FAILED [operation, vm refs…]`.

`delay_scale` (seconds slept per second of delay, 1.0 as on a host) lets tests run the sequences
quickly; `log` records every power change an appliance operation made, with a monotonic time
stamp, so that the order and the delays can be observed.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from xvatool.sim.objects import ObjectOps
from xvatool.sim.records import vm_appliance_record
from xvatool.sim.tasks import TaskManager
from xvatool.sim.values import NULL_REF, ApiFailure, Record, new_ref

__all__ = ["APPLIANCE_OPERATIONS", "ApplianceOps", "PowerChange"]

APPLIANCE_OPERATIONS = ("start", "clean_shutdown", "hard_shutdown", "shutdown")
"""`vm_appliance_operation`, in the datamodel's order (also `allowed_operations`' order)."""
MAX_GROUP_THREADS = 16
"""VMs of one order group handled at once (xapi starts them all as tasks)."""
_REASONS = {
    "start": "There are no halted VMs in this appliance.",
    "clean_shutdown": "There are no running VMs in this appliance.",
    "hard_shutdown": "All VMs in this appliance are halted.",
    "shutdown": "All VMs in this appliance are halted.",
}
_NOT_ASSIGNABLE = "Control domains, templates and snapshots cannot be assigned to appliances."


@dataclass(frozen=True)
class PowerChange:
    """One VM power change made by an appliance operation; `at_s` is `time.monotonic()`."""

    at_s: float
    vm: str
    name_label: str
    power_state: str
    operation: str


def _acts_on(op: str, power_state: str) -> bool:
    """Whether `op` makes sense for a VM in `power_state` (lifecycle's `check_operation_error`)."""
    if op == "start":
        return power_state == "Halted"
    if op == "clean_shutdown":
        return power_state == "Running"
    return power_state != "Halted"


class ApplianceOps:
    """`VM_appliance` objects and their operations against one `ObjectOps`."""

    def __init__(self, ops: ObjectOps, tasks: TaskManager) -> None:
        self.ops = ops
        self.state = ops.state
        self.tasks = tasks
        self.delay_scale = 1.0
        self.log: list[PowerChange] = []  # guarded by _log_lock
        self._log_lock = threading.Lock()
        self._sleep: Callable[[float], None] = time.sleep

    # -- records --------------------------------------------------------------------------------

    def create(self, name_label: str, name_description: str) -> str:
        """`VM_appliance.create`: an appliance without VMs."""
        with self.state.transaction():
            ref = self.state.add(
                "VM_appliance", vm_appliance_record(name_label=name_label, name_description=name_description)
            )
            self.update_allowed_operations(ref)
        return ref

    def destroy(self, appliance: str) -> None:
        """`VM_appliance.destroy`: the appliance goes, its VMs stay and belong to no appliance."""
        with self.state.transaction():
            for vm in self.state.field("VM_appliance", appliance, "VMs"):
                if self.state.exists("VM", vm):
                    self.state.update("VM", vm, appliance=NULL_REF)
            self.state.remove("VM_appliance", appliance)

    def set_vm_appliance(self, vm: str, appliance: str) -> None:
        """`VM.set_appliance`: move a VM into `appliance` (`OpaqueRef:NULL`: out of any)."""
        with self.state.transaction():
            record = self.state.get("VM", vm)
            if record["is_control_domain"] or record["is_a_template"] or record["is_a_snapshot"]:
                raise ApiFailure("OPERATION_NOT_ALLOWED", [_NOT_ASSIGNABLE])
            if appliance != NULL_REF:
                self.state.get("VM_appliance", appliance)  # HANDLE_INVALID
            previous = record["appliance"]
            if previous != NULL_REF and self.state.exists("VM_appliance", previous):
                self.state.mutate("VM_appliance", previous, lambda r: r["VMs"].remove(vm))
                self.update_allowed_operations(previous)
            self.state.update("VM", vm, appliance=appliance)
            if appliance != NULL_REF:
                self.state.mutate("VM_appliance", appliance, lambda r: r["VMs"].append(vm))
                self.update_allowed_operations(appliance)

    def set_vm_number(self, vm: str, name: str, value: int) -> None:
        """`VM.set_order`, `set_start_delay`, `set_shutdown_delay`: non-negative (`INVALID_VALUE`)."""
        if value < 0:
            raise ApiFailure("INVALID_VALUE", [f"{name} must be non-negative", str(value)])
        self.state.update("VM", vm, **{name: value})

    # -- operations -----------------------------------------------------------------------------

    def check_operation(self, appliance: str, op: str) -> None:
        """Raise the host's error if `op` is not allowed on `appliance` now."""
        record = self.state.get("VM_appliance", appliance)
        current = record["current_operations"]
        if current:
            task, running = next(iter(current.items()))
            raise ApiFailure("OTHER_OPERATION_IN_PROGRESS", ["VM_appliance", appliance, running, task])
        vms = [vm for vm in record["VMs"] if self.state.exists("VM", vm)]
        if not vms:
            raise ApiFailure("OPERATION_NOT_ALLOWED", ["Appliance has no VMs."])
        if not any(_acts_on(op, self.state.field("VM", vm, "power_state")) for vm in vms):
            raise ApiFailure("OPERATION_NOT_ALLOWED", [_REASONS[op]])

    def update_allowed_operations(self, appliance: str) -> None:
        """Recompute `allowed_operations` (membership changes and appliance operations call this)."""
        allowed = []
        for op in APPLIANCE_OPERATIONS:
            try:
                self.check_operation(appliance, op)
            except ApiFailure:
                continue
            allowed.append(op)
        self.state.update("VM_appliance", appliance, allowed_operations=allowed)

    def start(self, appliance: str, paused: bool) -> None:
        """`VM_appliance.start`: the VMs' groups in ascending `order`, each VM then its `start_delay`."""
        self._perform(appliance, "start", "Paused" if paused else "Running", ascending=True, paused=paused)

    def shutdown(self, appliance: str, op: str) -> None:
        """`clean_shutdown`, `hard_shutdown` or `shutdown`: groups in descending `order`."""
        self._perform(appliance, op, "Halted", ascending=False)

    def _perform(
        self, appliance: str, op: str, required: str, *, ascending: bool, paused: bool = False
    ) -> None:
        task = self.tasks.current() or new_ref()
        with self.state.transaction():
            self.check_operation(appliance, op)
            self._set_operation(appliance, task, op)
        try:
            members = self.state.field("VM_appliance", appliance, "VMs")
            targets = [vm for vm in members if self.state.field("VM", vm, "power_state") != required]
            for group in self._groups(targets, ascending):
                if self.tasks.current() is not None:
                    self.tasks.check_cancelled(task)
                with ThreadPoolExecutor(min(len(group), MAX_GROUP_THREADS)) as pool:
                    list(pool.map(lambda vm: self._vm_operation(vm, op, paused), group))
            failed = [vm for vm in targets if self.state.field("VM", vm, "power_state") != required]
            if failed:
                raise ApiFailure("OPERATION_PARTIALLY_FAILED", [f"VM_appliance.{op}", *failed])
        finally:
            if self.state.exists("VM_appliance", appliance):
                with self.state.transaction():
                    self._set_operation(appliance, task, None)
                    self.update_allowed_operations(appliance)

    def _set_operation(self, appliance: str, task: str, op: str | None) -> None:
        def change(record: Record) -> None:
            if op is None:
                record["current_operations"].pop(task, None)
            else:
                record["current_operations"][task] = op

        self.state.mutate("VM_appliance", appliance, change)

    def _groups(self, vms: list[str], ascending: bool) -> list[list[str]]:
        """VMs grouped by `order`, groups ascending for a start and descending for a shutdown."""
        order = {vm: int(self.state.field("VM", vm, "order")) for vm in vms}
        ranked = sorted(vms, key=order.__getitem__, reverse=not ascending)
        return [list(group) for _, group in itertools.groupby(ranked, key=order.__getitem__)]

    def _vm_operation(self, vm: str, op: str, paused: bool) -> None:
        """One VM's part, as its own `Async.VM.*` task would do it; a failure is left for the check."""
        try:
            if op == "start":
                self.ops.start_vm(vm)
                if paused:
                    self.state.update("VM", vm, power_state="Paused")
                delay = "start_delay"
            elif op == "shutdown":
                try:
                    self.ops.shutdown_vm(vm, "clean_shutdown")
                except ApiFailure:
                    self.ops.shutdown_vm(vm, "hard_shutdown")
                delay = "shutdown_delay"
            else:
                self.ops.shutdown_vm(vm, op)
                delay = "shutdown_delay"
        except ApiFailure:
            return
        record = self.state.get("VM", vm)
        with self._log_lock:
            self.log.append(
                PowerChange(time.monotonic(), vm, record["name_label"], record["power_state"], op)
            )
        self._sleep(int(record[delay]) * self.delay_scale)

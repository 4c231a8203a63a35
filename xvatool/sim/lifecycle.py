"""Which VM operations are allowed when, and the error a host gives otherwise (xapi_vm_lifecycle.ml).

`check_vm_operation(record, ref, op)` applies xapi's checks in xapi's order: an explicitly
blocked operation (`OPERATION_BLOCKED [vm, reason]`), the power state (`VM_BAD_POWER_STATE [vm,
expected, actual]`, expected being every allowed state, lower case, comma-separated), operations
already running (`OTHER_OPERATION_IN_PROGRESS ["VM", vm, op, task]`; clone, copy and export
may overlap, as may snapshots), templates (`VM_IS_TEMPLATE [vm, op]`), snapshots
(`VM_IS_SNAPSHOT [vm, op]`) and the control domain (`OPERATION_NOT_ALLOWED [reason]`).
"""

from __future__ import annotations

from xvatool.sim.values import ApiFailure, Record

__all__ = ["allowed_power_states", "check_vm_operation", "power_name"]

_ALL_STATES = ("Halted", "Paused", "Suspended", "Running")
_POWER_STATES: dict[str, tuple[str, ...]] = {
    "start": ("Halted",),
    "clean_shutdown": ("Running",),
    "clean_reboot": ("Running",),
    "hard_shutdown": ("Paused", "Suspended", "Running"),
    "hard_reboot": ("Paused", "Running"),
    "checkpoint": ("Paused", "Suspended", "Running"),
    "destroy": ("Halted", "Suspended"),
    "export": ("Halted", "Suspended"),
    "clone": ("Halted",),
    "copy": ("Halted",),
    "snapshot": _ALL_STATES,
    "metadata_export": _ALL_STATES,
    "make_into_template": ("Halted",),
}
_OVERLAPPING = (frozenset({"clone", "copy", "export"}), frozenset({"snapshot", "checkpoint"}))
_TEMPLATE_OPS = frozenset({"clone", "copy", "export", "metadata_export", "provision", "destroy"})
_SNAPSHOT_OPS = frozenset(
    {"revert", "clone", "copy", "export", "destroy", "hard_shutdown", "metadata_export"}
)
_CONTROL_DOMAIN_OPS = frozenset({"metadata_export", "start"})


def power_name(state: str) -> str:
    """Power states as error parameters: lower case (`Record_util.power_state_to_string`)."""
    return state.lower()


def allowed_power_states(record: Record, op: str) -> tuple[str, ...]:
    """The power states in which the VM of `record` may do `op`."""
    states = _POWER_STATES[op]
    if op in ("clone", "copy") and record["is_a_snapshot"]:
        return (*states, "Suspended")
    return states


def _overlaps(op: str, running: list[str]) -> bool:
    if op == "hard_shutdown":
        return op not in running
    if op == "hard_reboot":
        return not {"hard_shutdown", "hard_reboot"} & set(running)
    return any(op in group and set(running) <= group for group in _OVERLAPPING)


def check_vm_operation(record: Record, ref: str, op: str) -> None:
    """Raise the host's error if VM `ref` (whose record is `record`) may not do `op` now."""
    reason = record["blocked_operations"].get(op)
    if reason is not None:
        raise ApiFailure("OPERATION_BLOCKED", [ref, reason])
    states = allowed_power_states(record, op)
    if record["power_state"] not in states:
        expected = ", ".join(power_name(state) for state in states)
        raise ApiFailure("VM_BAD_POWER_STATE", [ref, expected, power_name(record["power_state"])])
    current = record["current_operations"]
    if current and not _overlaps(op, list(current.values())):
        if len(current) == 1:
            ((task, running),) = current.items()
        else:
            task = "{" + ",".join(current) + "}"
            running = "{" + ",".join(current.values()) + "}"
        raise ApiFailure("OTHER_OPERATION_IN_PROGRESS", ["VM", ref, running, task])
    if record["is_a_template"] and not record["is_a_snapshot"]:
        default = record["is_default_template"] or record["other_config"].get("default_template") == "true"
        if op not in _TEMPLATE_OPS or (op == "destroy" and default):
            raise ApiFailure("VM_IS_TEMPLATE", [ref, op])
    if record["is_a_snapshot"] and op not in _SNAPSHOT_OPS:
        raise ApiFailure("VM_IS_SNAPSHOT", [ref, op])
    if record["is_control_domain"] and op not in _CONTROL_DOMAIN_OPS:
        detail = "dom0" if op == "destroy" else "a control domain"
        raise ApiFailure("OPERATION_NOT_ALLOWED", [f"This operation is not allowed on {detail}"])

"""Which VDI operations are allowed when, and the host's error otherwise (xapi_vdi.ml).

`check_vdi_operation(state, ref, op)` applies `check_operation_error` in xapi's order: other
operations running (`OTHER_OPERATION_IN_PROGRESS`), attachment (`VDI_IN_USE [vdi, op]`: only
"live" operations may run while a VBD is attached, and `list_changed_blocks` also when every
attached VBD belongs to a snapshot VM, a checkpoint's artefact), the SR driver's capability
(`SR_OPERATION_NOT_SUPPORTED [sr]`), a VDI without data (`VDI_INCOMPATIBLE_TYPE [vdi,
"cbt_metadata"]`), operations CBT forbids (`VDI_CBT_ENABLED [vdi]`), then each operation's own
rules. Only the operations the simulator serves through this check are listed.
"""

from __future__ import annotations

from xvatool.sim.cbt import CBT_SR_TYPES
from xvatool.sim.state import SimState
from xvatool.sim.values import ApiFailure, Record

__all__ = ["CBT_OPERATIONS", "check_vdi_operation"]

CBT_OPERATIONS = frozenset({"enable_cbt", "disable_cbt", "data_destroy", "list_changed_blocks"})
"""The operations that need the SM capability `VDI_CONFIG_CBT`."""
_LIVE = frozenset({"snapshot", "resize_online", "blocked", "clone", "mirror", "enable_cbt", "disable_cbt",
                   "data_destroy"})  # fmt: skip
_NOT_FOR_CBT_METADATA = frozenset({"clone", "copy", "disable_cbt", "enable_cbt", "mirror", "resize",
                                   "resize_online", "snapshot", "set_on_boot"})  # fmt: skip
_NOT_WITH_CBT = frozenset({"mirror", "set_on_boot"})


def _blocked_by_attach(state: SimState, record: Record, op: str) -> bool:
    if op in _LIVE:
        return False
    active = [state.get("VBD", vbd) for vbd in record["VBDs"] if state.exists("VBD", vbd)]
    active = [vbd for vbd in active if vbd["currently_attached"]]
    if op == "copy":  # a read-only attach does not stop a copy
        active = [vbd for vbd in active if vbd["mode"] == "RW"]
    if op == "list_changed_blocks":
        return not all(
            state.exists("VM", v["VM"]) and state.field("VM", v["VM"], "is_a_snapshot") for v in active
        )
    return bool(active)


def check_vdi_operation(state: SimState, ref: str, op: str) -> None:
    """Raise the host's error if VDI `ref` may not do `op` now (xapi `check_operation_error`)."""
    record = state.get("VDI", ref)
    if any(running != "copy" for running in record["current_operations"].values()):
        raise ApiFailure("OTHER_OPERATION_IN_PROGRESS", ["VDI", ref])
    if _blocked_by_attach(state, record, op):
        raise ApiFailure("VDI_IN_USE", [ref, op])
    sr = record["SR"]
    if op in CBT_OPERATIONS and state.field("SR", sr, "type") not in CBT_SR_TYPES:
        raise ApiFailure("SR_OPERATION_NOT_SUPPORTED", [sr])
    if record["type"] == "cbt_metadata" and op in _NOT_FOR_CBT_METADATA:
        raise ApiFailure("VDI_INCOMPATIBLE_TYPE", [ref, "cbt_metadata"])
    if record["cbt_enabled"] and op in _NOT_WITH_CBT:
        raise ApiFailure("VDI_CBT_ENABLED", [ref])
    if op == "data_destroy":
        if not record["is_a_snapshot"]:
            raise ApiFailure("OPERATION_NOT_ALLOWED", [f"VDI is not a snapshot: {ref}"])
        if not record["cbt_enabled"]:
            raise ApiFailure("VDI_NO_CBT_METADATA", [ref])
    elif op in ("enable_cbt", "disable_cbt"):
        if record["is_a_snapshot"]:
            raise ApiFailure("OPERATION_NOT_ALLOWED", [f"VDI is a snapshot: {ref}"])
        if record["type"] not in ("user", "system"):
            raise ApiFailure("VDI_INCOMPATIBLE_TYPE", [ref, record["type"]])
        if record["on_boot"] == "reset":
            raise ApiFailure("VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION")

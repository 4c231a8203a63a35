"""The explicit messages of VM appliances and of the VM fields that place a VM in one.

`VM_appliance.create` takes the generated constructor's record (`name_label`,
`name_description`), `destroy`, `start(paused)`, `clean_shutdown`, `hard_shutdown` and
`shutdown` (all with `Async.` forms); `VM.set_appliance`, and `VM.set_order` /
`set_start_delay` / `set_shutdown_delay`, which xapi checks for negative values (these replace
the generated setters). The operations themselves live in `appliances.py`.
"""

from __future__ import annotations

from typing import Any

from xvatool.sim.appliances import ApplianceOps
from xvatool.sim.classes import SPECS
from xvatool.sim.methods import Method, as_int, constructor_fields
from xvatool.sim.values import ApiFailure

__all__ = ["appliance_messages"]

_NUMBERS = ("order", "start_delay", "shutdown_delay")


def appliance_messages(appliances: ApplianceOps) -> dict[str, Method]:
    """`VM_appliance.*` messages and the VM setters of appliance fields, by wire name."""
    spec = SPECS["VM_appliance"]

    def create(session: str, record: Any) -> str:
        fields = constructor_fields(spec, record, ("name_label", "name_description"))
        return appliances.create(fields.get("name_label", ""), fields.get("name_description", ""))

    def set_appliance(session: str, vm: Any, value: Any) -> None:
        appliances.set_vm_appliance(str(vm), str(value))

    def start(session: str, appliance: Any, paused: Any) -> None:
        if not isinstance(paused, bool):
            raise ApiFailure("FIELD_TYPE_ERROR", ["paused"])
        appliances.start(str(appliance), paused)

    def shutdown(op: str) -> Method:
        return Method.of(lambda session, appliance: appliances.shutdown(str(appliance), op), 1, async_ok=True)

    def number_setter(name: str) -> Method:
        def set_number(session: str, vm: Any, value: Any) -> None:
            appliances.set_vm_number(str(vm), name, as_int(value, name))

        return Method.of(set_number, 2)

    return {
        "VM_appliance.create": Method.of(create, 1, async_ok=True),
        "VM_appliance.destroy": Method.of(lambda s, ref: appliances.destroy(str(ref)), 1, async_ok=True),
        "VM_appliance.start": Method.of(start, 2, async_ok=True),
        "VM_appliance.clean_shutdown": shutdown("clean_shutdown"),
        "VM_appliance.hard_shutdown": shutdown("hard_shutdown"),
        "VM_appliance.shutdown": shutdown("shutdown"),
        "VM.set_appliance": Method.of(set_appliance, 2),
        **{f"VM.set_{name}": number_setter(name) for name in _NUMBERS},
    }

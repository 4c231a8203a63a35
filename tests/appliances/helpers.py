"""Helpers for the appliance tests: what a host holds, disk digests, and faults armed mid-run."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from xvatool._progress import NullBar, ProgressBar
from xvatool.sim.testing import RunningHost
from xvatool.xapi.session import Session, connect

MEMBERS = ("demo-app-db", "demo-app-web")
SOURCE_ORDER = {"demo-app-db": (0, 2, 0), "demo-app-web": (1, 0, 1)}
"""(order, start delay, shutdown delay) of the demo appliance's members, as `serve --demo` seeds them."""


def session_of(host: RunningHost) -> Session:
    return connect(host.url, host.user, host.password)


def disk_digests(host: RunningHost, vm_ref: str) -> list[str]:
    """sha256 of each disk of a VM, in userdevice order (the simulator's small disk files)."""
    return [hashlib.sha256(host.host.vdi_path(v).read_bytes()).hexdigest() for v in host.host.vdis_of(vm_ref)]


def member_digests(host: RunningHost, names: tuple[str, ...] = MEMBERS) -> dict[str, list[str]]:
    return {name: disk_digests(host, host.host.vm(name)) for name in names}


@dataclass(frozen=True)
class Inventory:
    """Every object an appliance operation may create, by ref, so that "nothing left" is checkable."""

    vms: frozenset[str]
    vdis: frozenset[str]
    networks: frozenset[str]
    appliances: frozenset[str]
    disk_files: frozenset[str]


def inventory(host: RunningHost) -> Inventory:
    state = host.host.state
    return Inventory(
        frozenset(state.refs("VM")),
        frozenset(state.refs("VDI")),
        frozenset(state.refs("network")),
        frozenset(state.refs("VM_appliance")),
        frozenset(p.name for p in state.disk_dir.iterdir()),
    )


def appliance_on(host: RunningHost, name: str = "demo-app") -> dict[str, Any]:
    """The one appliance called `name`, with `members`: name → VM record."""
    state = host.host.state
    (ref,) = state.find("VM_appliance", name_label=name)
    record = state.get("VM_appliance", ref)
    record["members"] = {state.field("VM", vm, "name_label"): state.get("VM", vm) for vm in record["VMs"]}
    record["ref"] = ref
    return record


def order_and_delays(record: dict[str, Any]) -> dict[str, tuple[int, int, int]]:
    return {
        name: (int(vm["order"]), int(vm["start_delay"]), int(vm["shutdown_delay"]))
        for name, vm in record["members"].items()
    }


class ArmFault:
    """A `Progress` that arms `fault` on `host` once a bar whose label contains `after` is closed.

    The bars of a member close when its transfer is done, so this fails the next member of an
    appliance operation after the first one succeeded.
    """

    def __init__(self, host: RunningHost, fault: str, after: str) -> None:
        self.host = host
        self.fault = fault
        self.after = after
        self.armed = False

    def __call__(self, label: str, total: int | None, /) -> ProgressBar:
        return _Bar(self) if self.after in label else NullBar()


class _Bar(NullBar):
    def __init__(self, owner: ArmFault) -> None:
        self.owner = owner

    def close(self) -> None:
        if not self.owner.armed:
            self.owner.armed = True
            self.owner.host.host.add_fault(self.owner.fault)

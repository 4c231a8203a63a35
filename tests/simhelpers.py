"""Arranging the simulated host for host-client and CLI tests: VDIs with content, VMs, counters.

These reach into `SimHost.state` and `SimHost.ops` (the same object store the API serves), so a
test can set up exactly the disks and VMs it needs and look at what the client left behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

from xvatool.sim.records import vm_record
from xvatool.sim.testing import RunningHost


def default_sr(sim: RunningHost) -> str:
    state = sim.host.state
    return str(state.field("pool", state.refs("pool")[0], "default_SR"))


def new_vdi(
    sim: RunningHost, data: bytes = b"", size: int | None = None, name: str = "disk"
) -> tuple[str, str]:
    """A VDI of `size` bytes (default: len(data)) holding `data` at offset 0; its (ref, uuid)."""
    host = sim.host
    ref = host.ops.create_vdi(default_sr(sim), len(data) if size is None else size, name_label=name)
    if data:
        fd = os.open(host.vdi_path(ref), os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
        finally:
            os.close(fd)
    return ref, vdi_uuid(sim, ref)


def new_vm(sim: RunningHost, name: str, power_state: str, vdis: Sequence[str], **fields: object) -> str:
    """A VM with one disk VBD per VDI ref (userdevice 0, 1, …) and an empty CD drive; its uuid."""
    host = sim.host
    with host.state.transaction():
        vm = host.state.add("VM", vm_record(name_label=name, power_state=power_state, **fields))
        for index, vdi in enumerate(vdis):
            host.ops.create_vbd(vm, vdi, userdevice=str(index), device=f"xvd{chr(ord('a') + index)}")
        host.ops.create_vbd(vm, "OpaqueRef:NULL", userdevice="3", type="CD", mode="RO", empty=True)
    return str(host.state.field("VM", vm, "uuid"))


def vdi_uuid(sim: RunningHost, ref: str) -> str:
    return str(sim.host.state.field("VDI", ref, "uuid"))


def vdi_ref(sim: RunningHost, uuid: str) -> str:
    (ref,) = sim.host.state.find("VDI", uuid=uuid)
    return ref


def vdi_bytes(sim: RunningHost, uuid: str) -> bytes:
    """The whole content of a (small) VDI."""
    ref = vdi_ref(sim, uuid)
    size = int(sim.host.state.field("VDI", ref, "virtual_size"))
    return sim.host.disk_bytes(ref).ljust(size, b"\0")


def vdi_size(sim: RunningHost, uuid: str) -> int:
    return int(sim.host.state.field("VDI", vdi_ref(sim, uuid), "virtual_size"))


def vdi_count(sim: RunningHost) -> int:
    return len(sim.host.state.refs("VDI"))


def open_sessions(sim: RunningHost) -> int:
    """Sessions still logged in on the host."""
    return len(sim.host.state.refs("session"))


def tasks(sim: RunningHost, status: str | None = None) -> list[str]:
    """Tasks still on the host (with this status, if given)."""
    state = sim.host.state
    return [t for t in state.refs("task") if status is None or state.field("task", t, "status") == status]


def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Whether `predicate` becomes true within `timeout_s`: the host finishes some work on its own
    time (a task destroyed while pending goes once its handler has noticed the broken transfer)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True

"""Seeding an empty data directory: the base pool, the `--demo` VM and the `--demo` appliance.

The base is what every host has: a pool with this host as master, the control domain, a default
SR "Local storage" and the network "Pool-wide network associated with eth0" on the PIF eth0.
`seed_demo` adds `demo-vm`: Halted, two disks holding a recognisable pattern in some 1 MiB blocks and zeros
elsewhere, one VIF and an empty CD drive.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from xvatool.sim.objects import ObjectOps
from xvatool.sim.records import (
    host_record,
    network_record,
    pbd_record,
    pif_record,
    pool_record,
    sr_record,
    vm_appliance_record,
    vm_record,
)
from xvatool.sim.state import SimState
from xvatool.sim.values import NULL_REF

__all__ = [
    "DEMO_APPLIANCE_NAME",
    "DEMO_APPLIANCE_NETWORK",
    "DEMO_DISK_SIZES",
    "DEMO_VM_NAME",
    "demo_block",
    "demo_data_blocks",
    "seed_base",
    "seed_demo",
    "seed_demo_appliance",
]

DEMO_VM_NAME = "demo-vm"
DEMO_APPLIANCE_NAME = "demo-app"
DEMO_APPLIANCE_NETWORK = "demo-app private"
_DEMO_APPLIANCE_VMS = (  # name, order, start_delay, shutdown_delay (seconds), disk bytes
    ("demo-app-db", 0, 2, 0, 8 << 20),
    ("demo-app-web", 1, 0, 1, 4 << 20),
)
DEMO_DISK_SIZES = (256 << 20, 64 << 20)
"""Bytes: the CLI's demo disks; tests pass smaller ones."""
BLOCK = 1 << 20
HOST_NAME = "xvatool-sim"


def demo_data_blocks(size: int) -> list[int]:
    """Indices of the 1 MiB blocks that hold data on a demo disk: first, second, a middle one.

    The rest stays zero (a hole), so exports exercise chunk skipping.
    """
    count = -(-size // BLOCK)
    return sorted({0, min(1, count - 1), count // 2} if count > 2 else set(range(count)))


def demo_block(disk: int, index: int, length: int = BLOCK) -> bytes:
    """The recognisable content of block `index` of demo disk `disk` (first bytes name it)."""
    stamp = f"xvatool demo disk {disk} block {index}\n".encode("ascii")
    return (stamp * (length // len(stamp) + 1))[:length]


def seed_base(state: SimState) -> str:
    """Pool, host, control domain, default SR and network; returns the host ref."""
    with state.transaction():
        host = state.add("host", host_record(name_label=HOST_NAME, hostname=HOST_NAME))
        dom0 = state.add(
            "VM",
            vm_record(
                name_label=f"Control domain on host: {HOST_NAME}",
                power_state="Running",
                is_control_domain=True,
                resident_on=host,
                domid=0,
                allowed_operations=[],
            ),
        )
        sr = state.add("SR", sr_record(name_label="Local storage", name_description="Local file storage"))
        pbd = state.add("PBD", pbd_record(host=host, SR=sr, device_config={"location": str(state.disk_dir)}))
        state.update("SR", sr, PBDs=[pbd])
        state.update("host", host, control_domain=dom0, resident_VMs=[dom0], PBDs=[pbd])
        network = state.add(
            "network", network_record(name_label="Pool-wide network associated with eth0", bridge="xenbr0")
        )
        pif = state.add(  # the network's uplink: a network without a PIF is private
            "PIF", pif_record(network=network, host=host, MAC="02:00:00:00:ff:01", management=True)
        )
        state.update("network", network, PIFs=[pif])
        state.update("host", host, PIFs=[pif])
        state.add("pool", pool_record(master=host, default_SR=sr))
    return host


def _write_demo_blocks(state: SimState, vdi: str, disk: int, size: int) -> None:
    fd = os.open(state.disk_path(vdi), os.O_WRONLY)
    try:
        for index in demo_data_blocks(size):
            length = min(BLOCK, size - index * BLOCK)
            os.pwrite(fd, demo_block(disk, index, length), index * BLOCK)
        os.fsync(fd)
    finally:
        os.close(fd)


def seed_demo(state: SimState, ops: ObjectOps, disk_sizes: Sequence[int] = DEMO_DISK_SIZES) -> str:
    """Add `demo-vm` with its disks, VIF and empty CD drive; returns the VM ref."""
    pool = state.refs("pool")[0]
    sr = state.field("pool", pool, "default_SR")
    network = state.find("network", bridge="xenbr0")[0]
    with state.transaction():
        vm = state.add(
            "VM", vm_record(name_label=DEMO_VM_NAME, name_description="Seeded by xvatool serve --demo")
        )
        for disk, size in enumerate(disk_sizes):
            vdi = ops.create_vdi(sr, size, name_label=f"{DEMO_VM_NAME} disk {disk}")
            _write_demo_blocks(state, vdi, disk, size)
            ops.create_vbd(
                vm, vdi, userdevice=str(disk), device=f"xvd{chr(ord('a') + disk)}", bootable=disk == 0
            )
        ops.create_vbd(vm, NULL_REF, userdevice="3", type="CD", mode="RO", empty=True, device="xvdd")
        ops.create_vif(vm, network, device="0", MAC="02:00:00:00:00:01")
    return vm


def seed_demo_appliance(state: SimState, ops: ObjectOps) -> str:
    """Add the appliance `demo-app`: a database VM started first, then a web VM; returns its ref.

    Both VMs are Halted, with one small disk each, and share the private network
    "demo-app private" (no PIF); the web VM also sits on the pool-wide network. `db` starts
    first and the appliance waits `start_delay` seconds before starting `web`; on shutdown `web`
    goes first.
    """
    pool = state.refs("pool")[0]
    sr = state.field("pool", pool, "default_SR")
    external = state.find("network", bridge="xenbr0")[0]
    with state.transaction():
        private = state.add(
            "network",
            network_record(
                name_label=DEMO_APPLIANCE_NETWORK,
                name_description="Internal network of demo-app",
                bridge="xapi1",
            ),
        )
        appliance = state.add(
            "VM_appliance",
            vm_appliance_record(
                name_label=DEMO_APPLIANCE_NAME, name_description="Seeded by xvatool serve --demo"
            ),
        )
        for n, (name, order, start_delay, shutdown_delay, size) in enumerate(_DEMO_APPLIANCE_VMS):
            vm = state.add(
                "VM",
                vm_record(
                    name_label=name,
                    name_description=f"Member of {DEMO_APPLIANCE_NAME}",
                    memory_static_max=256 << 20,
                    memory_dynamic_max=256 << 20,
                    memory_dynamic_min=256 << 20,
                    memory_static_min=256 << 20,
                    memory_target=256 << 20,
                    appliance=appliance,
                    order=order,
                    start_delay=start_delay,
                    shutdown_delay=shutdown_delay,
                ),
            )
            state.update("VM_appliance", appliance, VMs=[*state.field("VM_appliance", appliance, "VMs"), vm])
            vdi = ops.create_vdi(sr, size, name_label=f"{name} disk 0")
            _write_demo_blocks(state, vdi, 10 + n, size)
            ops.create_vbd(vm, vdi, userdevice="0", device="xvda", bootable=True)
            networks = [private] if name.endswith("db") else [external, private]
            for device, network in enumerate(networks):
                ops.create_vif(vm, network, device=str(device), MAC=f"02:00:00:00:{n + 1:02x}:{device:02x}")
        state.update("VM_appliance", appliance, allowed_operations=["start"])
    return appliance

"""Seeding an empty data directory: the base pool, and the `--demo` VM.

The base is what every host has: a pool with this host as master, the control domain, a default
SR "Local storage" and the network "Pool-wide network associated with eth0". `seed_demo` adds
`demo-vm`: Halted, two disks holding a recognisable pattern in some 1 MiB blocks and zeros
elsewhere, one VIF and an empty CD drive.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from xvatool.sim.objects import ObjectOps
from xvatool.sim.records import host_record, network_record, pbd_record, pool_record, sr_record, vm_record
from xvatool.sim.state import SimState
from xvatool.sim.values import NULL_REF

__all__ = ["DEMO_DISK_SIZES", "DEMO_VM_NAME", "demo_block", "demo_data_blocks", "seed_base", "seed_demo"]

DEMO_VM_NAME = "demo-vm"
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
        state.add(
            "network", network_record(name_label="Pool-wide network associated with eth0", bridge="xenbr0")
        )
        state.add("pool", pool_record(master=host, default_SR=sr))
    return host


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
            path = state.disk_path(vdi)
            fd = os.open(path, os.O_WRONLY)
            try:
                for index in demo_data_blocks(size):
                    length = min(BLOCK, size - index * BLOCK)
                    os.pwrite(fd, demo_block(disk, index, length), index * BLOCK)
                os.fsync(fd)
            finally:
                os.close(fd)
            ops.create_vbd(
                vm, vdi, userdevice=str(disk), device=f"xvd{chr(ord('a') + disk)}", bootable=disk == 0
            )
        ops.create_vbd(vm, NULL_REF, userdevice="3", type="CD", mode="RO", empty=True, device="xvdd")
        ops.create_vif(vm, network, device="0", MAC="02:00:00:00:00:01")
    return vm

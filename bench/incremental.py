"""Benchmark: incremental backups against a full one, and NBD reads against /export_raw_vdi, in one run.

The simulated host runs in its own process (a host and a backup proxy never share a GIL) with
one VM whose disk is full of random data, its network purpose set to ``nbd`` (NBD over TLS).
Backups go into a fresh local repository through `backup_to_repository`, as `xvatool backup
--repo` runs them:

1. the first backup with ``--cbt`` (a full read: the disk as the host's checksummed tar stream);
2. guest writes change 2% of the disk's 64 KiB blocks, in runs of 1 to 32 blocks (files and
   extents, the way file systems write), then an incremental backup (CBT, 4 NBD connections).
   Goals: it moves <= 5% of the bytes the full backup moved, and takes <= 10% of its time;
3. for information: 2% of the blocks changed one by one, scattered at random (each touches its
   own 1 MiB repository chunk, so ~28% of the chunks are read), and the ``base=`` VHD delta way
   after 2% clustered changes;
4. the simulator's `VM.snapshot` alone, a fixed cost of every backup (constant time, as on a
   host: the disk file is shared until written);
5. reading the whole disk: ``GET /export_raw_vdi?format=raw`` (the baseline) against `NbdReader`
   with 4 connections, plain (``insecure_nbd``) and TLS. Goal: NBD >= 0.8x /export_raw_vdi.

Seconds are wall time of one run each (reads: best of 3). Only ratios mean something: the
machine is shared.

    .venv/bin/python bench/incremental.py --disk-size 2GiB
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from _servers import free_port, python_server

from xvatool._human import parse_size

MiB = 1 << 20
BLOCK = 64 << 10
REPEAT = 3
PASSWORD = "bench"
CHANGED = 0.02

SERVER = """
import sys
from pathlib import Path
from xvatool.sim.server import SimHost
sim = SimHost(Path(sys.argv[2]), password=sys.argv[3])
sim.serve("127.0.0.1", int(sys.argv[1]), nbd_port=int(sys.argv[4]))
sim.wait()
"""


def build_host(folder: Path, size: int) -> str:
    """A host with one halted VM whose disk is `size` bytes of random data; the VM's uuid."""
    from xvatool.sim.network_messages import use_nbd_purpose
    from xvatool.sim.server import SimHost

    host = SimHost(folder, password=PASSWORD)
    try:
        state = host.state
        sr = state.field("pool", state.refs("pool")[0], "default_SR")
        vdi = host.ops.create_vdi(sr, size, name_label="bench disk")
        with open(host.vdi_path(vdi), "r+b") as disk:
            for _ in range(size // MiB):
                disk.write(os.urandom(MiB))
        vm = host.ops.create_vm(name_label="bench-vm")
        host.ops.create_vbd(vm, vdi, userdevice="0")
        use_nbd_purpose(state, "nbd")
        return str(state.field("VM", vm, "uuid"))
    finally:
        host.close()


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[str]:
    port, nbd_port = free_port(), free_port()
    with python_server(SERVER, port, str(folder), PASSWORD, str(nbd_port)):
        yield f"http://127.0.0.1:{port}"


def clustered(blocks: int, rng: random.Random) -> list[int]:
    """2% of the blocks, changed in runs of 1 to 32 consecutive blocks."""
    chosen: set[int] = set()
    while len(chosen) < blocks * CHANGED:
        length = rng.randint(1, 32)
        start = rng.randrange(blocks - length)
        chosen.update(range(start, start + length))
    return sorted(chosen)


def scattered(blocks: int, rng: random.Random) -> list[int]:
    """2% of the blocks, each on its own, anywhere."""
    return sorted(rng.sample(range(blocks), int(blocks * CHANGED)))


class Bench:
    def __init__(self, url: str, vm: str, repo: Any) -> None:
        from xvatool.xapi.session import connect

        self.url, self.vm, self.repo = url, vm, repo
        self.factory: Callable[[], Any] = lambda: connect(url, "root", PASSWORD)

    def write(self, blocks: list[int], rng: random.Random) -> None:
        """Guest writes: one chunked `/import_raw_vdi` of random data into these blocks."""
        from xvatool.xapi.tasks import managed_task, wait_task
        from xvatool.xapi.transfer import chunked_frames, chunked_length, upload

        extents = [(b * BLOCK, rng.randbytes(BLOCK)) for b in blocks]
        with self.factory() as session:
            vdi = session.call("VM.get_VBDs", session.call("VM.get_by_uuid", self.vm))
            uuid = session.call("VDI.get_uuid", session.call("VBD.get_VDI", vdi[0]))
            with managed_task(session, "guest writes") as task:
                params = {"vdi": uuid, "format": "raw", "chunked": "true"}
                length = chunked_length([BLOCK] * len(extents))
                upload(
                    session,
                    "/import_raw_vdi",
                    params,
                    lambda: chunked_frames(extents),
                    length=length,
                    task=task,
                )
                wait_task(session, task)

    def backup(self, **options: Any) -> tuple[float, int, str]:
        """(seconds, bytes read from the host, methods) of one backup of the VM."""
        from xvatool.ops.backup import Selection
        from xvatool.ops.repo_backup import backup_to_repository

        start = time.perf_counter()
        report = backup_to_repository(self.factory, Selection(vms=(self.vm,)), self.repo, **options)
        took = time.perf_counter() - start
        (result,) = report.results
        if result.status != "ok":
            raise RuntimeError(result.error)
        return took, result.bytes_read, result.methods

    def snapshot_cost(self) -> float:
        """Seconds of the simulator's `VM.snapshot` of the VM."""
        from xvatool.xapi.vms import destroy_vm_with_disks

        with self.factory() as session:
            vm = session.call("VM.get_by_uuid", self.vm)
            start = time.perf_counter()
            snap = session.call("VM.snapshot", vm, "cost")
            took = time.perf_counter() - start
            destroy_vm_with_disks(session, snap)
        return took

    def read_rates(self) -> dict[str, float]:
        """Bytes per second reading the whole disk: raw export, NBD plain and TLS, 4 connections."""
        from xvatool.nbd import NbdReader
        from xvatool.xapi.cbt import add_network_purpose, nbd_targets, remove_network_purpose
        from xvatool.xapi.transfer import open_download

        rates: dict[str, float] = {}
        with self.factory() as session:
            vbd = session.call("VM.get_VBDs", session.call("VM.get_by_uuid", self.vm))[0]
            vdi = session.call("VBD.get_VDI", vbd)
            uuid = session.call("VDI.get_uuid", vdi)
            net = session.call("network.get_all")[0]
            buf = memoryview(bytearray(MiB))

            def export() -> int:
                total = 0
                with open_download(session, "/export_raw_vdi", {"vdi": uuid, "format": "raw"}) as body:
                    while n := body.readinto(buf):
                        total += n
                return total

            def nbd(plain: bool) -> int:
                with NbdReader(nbd_targets(session, vdi), connections=4, allow_plain=plain) as reader:
                    return sum(len(data) for _, data in reader.read_ranges([(0, reader.size)]))

            rates["/export_raw_vdi?format=raw (baseline)"] = best_rate(export)
            rates["NBD TLS, 4 connections"] = best_rate(lambda: nbd(False))
            remove_network_purpose(session, net, "nbd")
            add_network_purpose(session, net, "insecure_nbd")
            try:
                rates["NBD plain, 4 connections"] = best_rate(lambda: nbd(True))
            finally:
                remove_network_purpose(session, net, "insecure_nbd")
                add_network_purpose(session, net, "nbd")
        return rates


def best_rate(action: Callable[[], int]) -> float:
    best = 0.0
    for _ in range(REPEAT):
        start = time.perf_counter()
        moved = action()
        best = max(best, moved / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--disk-size", default="2GiB", help="size of the VM's disk, all data (default 2GiB)")
    args = parser.parse_args()
    size = parse_size(args.disk_size) // MiB * MiB
    blocks = size // BLOCK
    rng = random.Random(11)

    from xvatool.repo.repository import init_repository

    with tempfile.TemporaryDirectory(prefix="xvatool-bench-incremental-") as tmp:
        work = Path(tmp)
        vm = build_host(work / "host", size)
        repo = init_repository(work / "repo")
        with serving(work / "host") as url:
            bench = Bench(url, vm, repo)
            print(f"disk: {size / 1e6:.0f} MB of random data; {CHANGED:.0%} of {blocks} 64 KiB blocks change")
            full = bench.backup(cbt=True)
            bench.write(clustered(blocks, rng), rng)
            incremental = bench.backup()
            bench.write(scattered(blocks, rng), rng)
            spread = bench.backup()
            bench.backup(snapshots="keep")  # a base with data for the next one
            bench.write(clustered(blocks, rng), rng)
            with bench.factory() as session:
                vbd = session.call("VM.get_VBDs", session.call("VM.get_by_uuid", vm))[0]
                session.call("VDI.disable_cbt", session.call("VBD.get_VDI", vbd))
            delta = bench.backup(snapshots="keep")
            snapshot_s = bench.snapshot_cost()
            rates = bench.read_rates()
        repo.close()
    rows = [("full (first, --cbt)", full), ("CBT + NBD, 2% clustered", incremental),
            ("CBT + NBD, 2% scattered", spread), ("base= VHD delta, 2% clustered", delta)]  # fmt: skip
    print(f"{'backup':32} {'method':9} {'seconds':>8} {'MB read':>8} {'x time':>7} {'x bytes':>8}")
    for label, (took, moved, methods) in rows:
        ratios = f"{took / full[0]:6.3f}x {moved / full[1]:7.3f}x"
        print(f"{label:32} {methods:9} {took:8.2f} {moved / 1e6:8.1f} {ratios}")
    print(f"simulator VM.snapshot (in every backup): {snapshot_s:.2f} s")
    base = rates["/export_raw_vdi?format=raw (baseline)"]
    print(f"{'whole-disk read':40} {'MB/s':>8} {'x export_raw_vdi':>17}")
    for label, value in rates.items():
        print(f"{label:40} {value / 1e6:8.0f} {value / base:16.2f}x")
    inc_time, inc_bytes = incremental[0] / full[0], incremental[1] / full[1]
    print(f"goal: incremental bytes <= 5% of full: {inc_bytes:.1%}")
    print(f"goal: incremental time <= 10% of full: {inc_time:.1%}")
    plain, tls = rates["NBD plain, 4 connections"] / base, rates["NBD TLS, 4 connections"] / base
    print(f"goal: NBD with 4 connections >= 0.8x /export_raw_vdi: plain {plain:.2f}x (TLS: {tls:.2f}x)")


if __name__ == "__main__":
    main()

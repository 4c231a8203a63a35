"""Benchmark: VM transfers on loopback, each against a baseline measured in the same run.

Starts the simulated host (`python -m xvatool serve`, its own process) on 127.0.0.1, imports a
generated 4-disk VM, then measures on the same handlers:

| row | ratio | goal |
|---|---|---|
| stream export (`GET /export` verified in flight into a file) | speed vs `curl -o FILE` + fsync | >= 0.95x |
| backup of the VM (export + manifest with every digest) | time vs stream export | <= 1.1x |
| parallel export (4 disks at once) | speed vs stream export | >= 1.0x |
| parallel import (4 disks at once) | speed vs stream import | >= 0.9x |
| stream import (local verification + `PUT /import`) | speed vs `curl -T` (no verification) | (shown) |
| curl: 4 x `GET /export_raw_vdi?format=tar` at once | speed vs curl `GET /export` | (the host's own limit) |

and the peak RSS of every xvatool measurement (goal <= 64 MiB for exports and imports). Each
xvatool measurement runs in a child process of its own, so that its peak RSS
(`resource.getrusage`) is its own; login is not timed. curl gets the session id from a header
file (`-H @file`, mode 0600), never in argv. MB/s = 10^6 bytes/s of archive. Best of `--repeat`
runs: the machine is shared, only ratios within one run mean something.

    .venv/bin/python bench/transfer.py --disk-size 64MiB --disks 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from _servers import free_port, server_process

from xvatool._human import parse_size

MiB = 1 << 20
PASSWORD = "bench"
TARGET_RSS_MIB = 64
OPS = ("export-stream", "export-parallel", "backup", "import-stream", "import-parallel")


def build_archive(path: Path, disks: int, size: int, fill: float) -> None:
    """An XVA with `disks` disks of `size` bytes, a `fill` fraction of their 1 MiB blocks holding data."""
    from xvatool.xva.disk import BytesSource
    from xvatool.xva.template import DiskSpec, build_vm_metadata
    from xvatool.xva.writer import write_xva

    metadata = build_vm_metadata(name="bench", disks=[DiskSpec(size, f"disk{i}") for i in range(disks)])
    base = bytearray(os.urandom(MiB))
    sources = {}
    for n, disk in enumerate(metadata.disks):
        data = bytearray(size)
        acc = 0.0
        for i in range(size // MiB):
            acc += fill
            if acc >= 1.0:
                acc -= 1.0
                base[:16] = (n * 1_000_000 + i).to_bytes(16, "little")
                data[i * MiB : (i + 1) * MiB] = base
        sources[disk.id] = BytesSource(bytes(data))
    with open(path, "wb") as fh:
        write_xva(fh, metadata, sources, checksum="xxhash", compression="none")


@contextlib.contextmanager
def serve(work: Path) -> Iterator[str]:
    """`python -m xvatool serve` in its own process (so it does not share our GIL), on a free port."""
    pw = work / "sim-password"
    pw.write_text(PASSWORD)
    port = free_port()
    cmd = [sys.executable, "-m", "xvatool", "serve", "--data", str(work / "host"),
           "--listen", f"127.0.0.1:{port}", "--password-file", str(pw)]  # fmt: skip
    with server_process(cmd, port, stderr=subprocess.DEVNULL):
        yield f"http://127.0.0.1:{port}"


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- one xvatool measurement, in a child process ------------------------------------------------------


def child(op: str, url: str, vm: str, archive: Path, work: Path) -> None:
    """Run `op` once (login and clean-up untimed); print seconds, bytes and peak RSS as JSON."""
    from xvatool.ops.backup import Selection, backup
    from xvatool.ops.export import export_vm
    from xvatool.ops.import_ import import_vm
    from xvatool.xapi.session import connect

    out = work / "out.xva"
    out.unlink(missing_ok=True)
    shutil.rmtree(work / "backups", ignore_errors=True)
    with connect(url, "root", PASSWORD) as session:
        start = time.perf_counter()
        if op.startswith("export-"):
            nbytes = export_vm(session, vm, out, mode=op.removeprefix("export-")).bytes_written  # type: ignore[arg-type]
        elif op == "backup":
            report = backup(lambda: connect(url, "root", PASSWORD), Selection(vms=(vm,)), work / "backups")
            if report.exit_code:
                raise SystemExit(f"backup failed: {report.results[0].error}")
            nbytes = report.results[0].archive_size
        else:
            import_vm(session, archive, mode=op.removeprefix("import-"))  # type: ignore[arg-type]
            nbytes = archive.stat().st_size
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "bytes": nbytes, "rss_mib": peak_rss_mib()}))


def peak_rss_mib() -> float:
    """This process's peak RSS. Not `ru_maxrss`: Linux carries it over from the parent across exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(op: str, url: str, vm: str, archive: Path, work: Path, repeat: int) -> tuple[float, int, float]:
    """(best seconds, bytes, peak RSS MiB) of `repeat` child runs of `op`."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, __file__, "--child", op, "--url", url, "--vm", vm, "--archive", str(archive),
             "--work", str(work)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        runs.append(json.loads(out.stdout))
    return min(r["seconds"] for r in runs), runs[0]["bytes"], max(r["rss_mib"] for r in runs)


def _disk_vbds(session: object, vm: str) -> list[str]:
    call = session.call  # type: ignore[attr-defined]
    vbds = call("VM.get_VBDs", call("VM.get_by_uuid", vm))
    return [vbd for vbd in vbds if call("VBD.get_type", vbd) == "Disk"]


def best(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def curl(args: list[str], cookie_file: Path) -> None:
    subprocess.run(["curl", "-sSf", "-H", f"@{cookie_file}", *args], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--disk-size", default="64MiB")
    parser.add_argument("--disks", type=int, default=4)
    parser.add_argument("--fill", type=float, default=0.6, help="fraction of 1 MiB blocks holding data")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", choices=OPS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--vm", help=argparse.SUPPRESS)
    parser.add_argument("--archive", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.vm, args.archive, args.work)
        return
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed for the baselines")

    from xvatool.ops.import_ import import_vm
    from xvatool.xapi.session import connect

    with tempfile.TemporaryDirectory(prefix="xvatool-bench-") as tmp:
        work = Path(tmp)
        archive = work / "bench.xva"
        build_archive(archive, args.disks, parse_size(args.disk_size), args.fill)
        size = archive.stat().st_size
        print(f"archive: {args.disks} disks x {args.disk_size}, {size / 1e6:.1f} MB; repeat {args.repeat}")
        rows: dict[str, tuple[float, int, float | None]] = {}
        with serve(work) as url, connect(url, "root", PASSWORD) as s:
            vm = import_vm(s, archive).vm_uuid
            cookie_file = work / "cookie.txt"
            cookie_file.touch(mode=0o600)
            cookie_file.write_text(f"Cookie: session_id={s.ref}\n")
            out = work / "curl.xva"

            def curl_export(sync: bool) -> None:
                out.unlink(missing_ok=True)
                curl(["-o", str(out), f"{url}/export?uuid={vm}"], cookie_file)
                if sync:
                    fsync(out)

            rows["export: curl + fsync"] = (best(lambda: curl_export(True), args.repeat), size, None)
            rows["export: curl"] = (best(lambda: curl_export(False), args.repeat), size, None)
            vdis = [s.call("VDI.get_uuid", s.call("VBD.get_VDI", vbd)) for vbd in _disk_vbds(s, vm)]

            def curl_disks() -> None:
                procs = [
                    subprocess.Popen(["curl", "-sSf", "-H", f"@{cookie_file}", "-o", "/dev/null",
                                      f"{url}/export_raw_vdi?vdi={vdi}&format=tar"])
                    for vdi in vdis
                ]  # fmt: skip
                if any(proc.wait() for proc in procs):
                    raise SystemExit("curl failed")

            rows["export: curl, disks at once"] = (best(curl_disks, args.repeat), size, None)
            rows["import: curl -T"] = (
                best(lambda: curl(["-T", str(archive), f"{url}/import"], cookie_file), args.repeat),
                size,
                None,
            )
            for op in OPS:
                rows[op] = measure(op, url, vm, archive, work, args.repeat)
            cookie_file.unlink()

    for name, (t, n, rss) in rows.items():
        memory = f"{rss:6.1f} MiB peak RSS" if rss is not None else ""
        print(f"{name:28s} {t:7.3f} s {n / t / 1e6:8.1f} MB/s  {memory}")

    def speed(name: str) -> float:
        t, n, _ = rows[name]
        return n / t

    curl_export = speed("export: curl + fsync")
    checks = [
        ("stream export / (curl + fsync), speed", speed("export-stream") / curl_export, ">=", 0.95),
        ("backup / stream export, time", rows["backup"][0] / rows["export-stream"][0], "<=", 1.1),
        ("parallel / stream export, speed", speed("export-parallel") / speed("export-stream"), ">=", 1.0),
        ("parallel / stream import, speed", speed("import-parallel") / speed("import-stream"), ">=", 0.9),
        ("stream import / curl -T, speed", speed("import-stream") / speed("import: curl -T"), ">=", 0.0),
        ("curl: disks at once / one export, speed",
         speed("export: curl, disks at once") / speed("export: curl"), ">=", 0.0),
    ]  # fmt: skip
    for label, ratio, op, goal in checks:
        ok = ratio >= goal if op == ">=" else ratio <= goal
        print(f"{label:40s} = {ratio:5.2f}x  (goal {op} {goal})  {'ok' if ok else 'MISSED'}")
    for op in OPS:
        rss = rows[op][2] or 0.0
        verdict = "ok" if rss <= TARGET_RSS_MIB else "MISSED"
        print(f"peak RSS {op:31s} = {rss:5.1f} MiB (goal <= {TARGET_RSS_MIB})  {verdict}")


if __name__ == "__main__":
    main()

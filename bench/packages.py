"""Benchmark: OVA export from and import into a host, against the plain XVA export of the same VM.

Two simulated hosts run in this process; a VM whose disk is a sparse image (40% of its 1 MiB
blocks holding data, half random, half text) is imported into the first. Each measurement runs
in its own subprocess, a client of the hosts, so its peak RSS (`resource.getrusage`) is the
client's alone:

- xva export (the baseline): `export_vm`, one verified `GET /export` into a file;
- ova export: `export_package`, the disk streamed from `/export_raw_vdi`, verified, compressed
  into a streamOptimized VMDK inside the OVA;
- ova import: `import_package` of that OVA into the second host, non-zero extents uploaded
  through the chunked `/import_raw_vdi`.

Run at two disk sizes: the peak RSS must not grow with the disk (streams are streams); speeds
are GB/s of disk (virtual size) and ratios are against the baseline of the same size. Numbers
drift on shared machines; only the ratios mean something.

    .venv/bin/python bench/packages.py --sizes 128,512
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from convert import build_image  # bench/ is on the path: the same disk as the conversion benchmark

MiB = 1 << 20
KINDS = ("xva export", "ova export", "ova import")


def run(kind: str, work: Path, source: str, target: str, password: str) -> None:
    from xvatool import connect
    from xvatool.ops.export import export_vm
    from xvatool.ops.package_export import export_package
    from xvatool.ops.package_import import import_package

    if kind == "ova import":
        with connect(target, "root", password) as session:
            import_package(session, work / "vm.ova")
        return
    with connect(source, "root", password) as session:
        if kind == "xva export":
            export_vm(session, "bench", work / "out.xva")
        else:
            export_package(session, work / "vm.ova", vm="bench", overwrite=True)


def measure(kind: str, work: Path, source: str, target: str, password: str) -> dict[str, float]:
    code = (
        "import json, resource, sys, time; from pathlib import Path; sys.path.insert(0, 'bench');"
        "from packages import run; t = time.perf_counter();"
        "run(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:]);"
        "print(json.dumps({'seconds': time.perf_counter() - t,"
        " 'rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    )
    args = [sys.executable, "-c", code, kind, str(work), source, target, password]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def one_size(size: int, fill: float) -> dict[str, dict[str, float]]:
    from xvatool import connect
    from xvatool.ops.import_ import import_vm
    from xvatool.testing import running_host
    from xvatool.xva.convert import create_archive

    with tempfile.TemporaryDirectory(prefix="xvatool-bench-") as tmp:
        work = Path(tmp)
        build_image(work / "disk.raw", size, fill)
        create_archive(work / "vm.xva", name="bench", disks=[work / "disk.raw"])
        (work / "disk.raw").unlink()
        with (
            running_host(work / "source", demo=False) as source,
            running_host(work / "target", demo=False) as target,
        ):
            with connect(source.url, source.user, source.password) as session:
                import_vm(session, work / "vm.xva")
            (work / "vm.xva").unlink()
            return {kind: measure(kind, work, source.url, target.url, source.password) for kind in KINDS}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="128,512", help="disk sizes in MiB, comma-separated")
    parser.add_argument("--fill", type=float, default=0.4, help="fraction of 1 MiB blocks holding data")
    args = parser.parse_args()
    print(f"{'':8} {'':12} {'GB/s of disk':>12} {'x xva export':>13} {'peak RSS MiB':>13}")
    for mib in (int(s) for s in args.sizes.split(",")):
        rows = one_size(mib * MiB, args.fill)
        base = rows["xva export"]["seconds"]
        for kind, row in rows.items():
            speed = mib * MiB / row["seconds"] / 1e9
            ratio = base / row["seconds"]
            print(f"{mib:5} MiB {kind:12} {speed:12.2f} {ratio:13.2f} {row['rss_mib']:13.0f}")


if __name__ == "__main__":
    main()

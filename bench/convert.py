"""Benchmark: XVA -> OVA and OVA -> XVA conversion, against single-threaded zlib measured in the same run.

A sparse raw image (default 512 MiB, 40% of its 1 MiB blocks holding data: half random, half
text, so it compresses about as an OS disk does) is made into an XVA once. Each measurement runs
in its own subprocess so its peak RSS (`resource.getrusage`) is its own:

- reference: the least work of any streamOptimized writer, on one core: read the raw image and
  `zlib.compress` (level 6) every non-zero 64 KiB grain;
- xva->ova (level 6 and level 1): `xvatool.ovf.convert` (reads and verifies the XVA, compresses
  grains in two threads, writes the OVA);
- ova->xva: reading the OVA back (manifest, inflating grains) into an XVA.

Speeds are GB/s of *disk* (virtual size); ratios are against the reference. Numbers drift on
shared machines; only the ratios mean something.

    .venv/bin/python bench/convert.py --size 1GiB
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

MiB = 1 << 20
GRAIN = 64 << 10


def build_image(path: Path, size: int, fill: float) -> None:
    text = (b"The quick brown fox jumps over the lazy dog; 0123456789 " * 20000)[:MiB]
    with open(path, "wb") as f:
        f.truncate(size)
        acc = 0.0
        for i in range(size // MiB):
            acc += fill
            if acc >= 1.0:
                acc -= 1.0
                f.seek(i * MiB)
                f.write(os.urandom(MiB // 2) + text[: MiB // 2])


def reference(image: Path) -> None:
    zero = bytes(GRAIN)
    with open(image, "rb", buffering=0) as f:
        buf = bytearray(GRAIN)
        while n := f.readinto(buf):
            if buf[:n] != zero[:n]:
                zlib.compress(bytes(buf[:n]), 6)


def run(kind: str, work: Path) -> None:
    from xvatool.ovf import convert

    if kind == "reference":
        reference(work / "disk.raw")
    elif kind == "xva->ova":
        convert(str(work / "vm.xva"), str(work / "out.ova"), overwrite=True)
    elif kind == "xva->ova level 1":
        convert(str(work / "vm.xva"), str(work / "out1.ova"), level=1, overwrite=True)
    elif kind == "ova->xva":
        convert(str(work / "out.ova"), str(work / "back.xva"), overwrite=True)


def measure(kind: str, work: Path) -> dict[str, float]:
    code = (
        "import json, resource, sys, time; from pathlib import Path; sys.path.insert(0, 'bench');"
        "from convert import run; t = time.perf_counter(); run(sys.argv[1], Path(sys.argv[2]));"
        "print(json.dumps({'seconds': time.perf_counter() - t,"
        " 'rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, kind, str(work)], check=True, capture_output=True, text=True
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=512, help="disk size in MiB")
    parser.add_argument("--fill", type=float, default=0.4, help="fraction of 1 MiB blocks holding data")
    args = parser.parse_args()
    size = args.size * MiB
    with tempfile.TemporaryDirectory(prefix="xvatool-bench-") as tmp:
        work = Path(tmp)
        build_image(work / "disk.raw", size, args.fill)
        from xvatool.xva.convert import create_archive

        create_archive(work / "vm.xva", name="bench", disks=[work / "disk.raw"])
        rows = {
            kind: measure(kind, work) for kind in ("reference", "xva->ova", "xva->ova level 1", "ova->xva")
        }
        base = rows["reference"]["seconds"]
        ova_mib = (work / "out.ova").stat().st_size / MiB
        print(f"disk {args.size} MiB, {args.fill:.0%} data; OVA {ova_mib:.0f} MiB")
        print(f"{'':18} {'GB/s of disk':>12} {'x reference':>12} {'peak RSS MiB':>13}")
        for kind, row in rows.items():
            speed = size / row["seconds"] / 1e9
            print(f"{kind:18} {speed:12.2f} {base / row['seconds']:12.2f} {row['rss_mib']:13.0f}")


if __name__ == "__main__":
    main()

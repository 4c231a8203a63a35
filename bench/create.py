"""Benchmark: raw image → XVA, against a single-threaded reference loop measured in the same run.

A sparse raw image (default 4 GiB, 40% of its 1 MiB blocks holding data) is built once, streaming.
Each measurement then runs in its own subprocess, so peak RSS (`resource.getrusage`) belongs to it:

- reference: the straightforward loop: read every 1 MiB block of the file into one buffer, skip
  all-zero blocks, hash the others and write header, data and checksum member to /dev/null;
- writer → /dev/null: `write_xva` (sparse-aware source, hashing in a worker thread);
- writer → file: the same into a real file (then deleted).

Speeds are GB/s (10^9 bytes/s) of *disk* (virtual size), not of archive; ratios
are against the reference with the same checksum kind. Numbers drift between runs on shared
machines; only the ratios are meaningful.

    .venv/bin/python bench/create.py --size 1GiB
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from xvatool._human import parse_size

MiB = 1 << 20


def build_image(path: Path, size: int, fill: float) -> None:
    """A sparse file whose blocks are data with probability `fill`, spread evenly; written once."""
    if path.exists() and path.stat().st_size == size:
        return
    base = bytearray(os.urandom(MiB))
    blocks = size // MiB
    with open(path, "wb") as f:
        f.truncate(size)
        acc = 0.0
        for i in range(blocks):
            acc += fill
            if acc >= 1.0:
                acc -= 1.0
                base[:8] = i.to_bytes(8, "little")  # every data block differs
                f.seek(i * MiB)
                f.write(base)


def hexdigest(kind: str, data: memoryview | bytes) -> str:
    if kind == "sha1":
        return hashlib.sha1(data, usedforsecurity=False).hexdigest()
    import xxhash

    return xxhash.xxh64_hexdigest(data, seed=0).upper()


def reference(image: Path, kind: str) -> None:
    """Single-threaded: read + zero check + hash + write each chunk as the host would."""
    from xvatool.xva.tarstream import END_OF_ARCHIVE, v7_header

    zero = bytes(MiB)
    buf = bytearray(MiB)
    view = memoryview(buf)
    suffix = ".checksum" if kind == "sha1" else ".xxhash"
    with open(image, "rb", buffering=0) as src, open(os.devnull, "wb") as out:
        index = 0
        while n := src.readinto(buf):
            if index == 0 or n < MiB or buf != zero:
                name = f"Ref:1/{index:08d}"
                text = hexdigest(kind, view[:n]).encode()
                out.write(v7_header(name, n))
                out.write(view[:n])
                out.write(v7_header(name + suffix, len(text)) + text + bytes(512 - len(text)))
            index += 1
        out.write(END_OF_ARCHIVE)


def writer(image: Path, kind: str, target: str) -> None:
    from xvatool._files import atomic_output
    from xvatool.xva.disk import RawFileSource
    from xvatool.xva.template import DiskSpec, build_vm_metadata
    from xvatool.xva.writer import write_xva

    size = image.stat().st_size
    metadata = build_vm_metadata(name="bench", disks=[DiskSpec(size, "disk")])
    sources = {metadata.disks[0].id: RawFileSource(image)}
    if target == "devnull":
        with open(os.devnull, "wb") as out:
            write_xva(out, metadata, sources, checksum=kind, compression="none")  # type: ignore[arg-type]
    else:
        path = Path(target)
        with atomic_output(path) as out:
            write_xva(out, metadata, sources, checksum=kind, compression="none")  # type: ignore[arg-type]
        path.unlink()


def measure(args: argparse.Namespace) -> None:
    image = Path(args.image)
    import xvatool.xva.convert
    import xvatool.xva.template
    import xvatool.xva.writer  # noqa: F401 - imports are not part of the measurement

    start = time.perf_counter()
    if args.measure == "reference":
        reference(image, args.checksum)
    else:
        writer(image, args.checksum, args.target)
    seconds = time.perf_counter() - start
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "rss_mib": rss_kib / 1024}))


def run(image: Path, what: str, kind: str, target: str = "devnull") -> dict[str, float]:
    cmd = [sys.executable, __file__, "--image", str(image), "--measure", what, "--checksum", kind]
    cmd += ["--target", target]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="4GiB", help="virtual size of the test disk (default 4GiB)")
    parser.add_argument("--fill", type=float, default=0.4, help="fraction of 1 MiB blocks with data")
    parser.add_argument("--dir", default=None, help="where to put the image (default: a temp dir)")
    parser.add_argument("--checksum", default=None, choices=["sha1", "xxhash"], help="only this kind")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the best counts")
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--target", default="devnull", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args)
        return
    size = parse_size(args.size) // MiB * MiB
    workdir = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="xvatool-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    image = workdir / f"bench-{size}-{args.fill}.raw"
    t0 = time.perf_counter()
    build_image(image, size, args.fill)
    built = time.perf_counter() - t0
    print(f"image: {image} ({size / 1e9:.2f} GB virtual, {args.fill:.0%} data), ready in {built:.1f}s")
    subprocess.run(["cat", str(image)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    print(f"{'measurement':<28} {'GB/s disk':>10} {'ratio':>7} {'peak RSS':>10}")
    for kind in [args.checksum] if args.checksum else ["sha1", "xxhash"]:
        rows = [
            ("reference (1 thread)", "reference", "devnull"),
            ("write_xva → /dev/null", "writer", "devnull"),
            ("write_xva → file", "writer", str(workdir / "out.xva")),
        ]
        base = None
        for label, what, target in rows:
            best = min(
                (run(image, what, kind, target) for _ in range(args.repeat)), key=lambda r: r["seconds"]
            )
            speed = size / best["seconds"] / 1e9
            base = base or speed
            print(f"{kind:>6} {label:<21} {speed:>10.2f} {speed / base:>6.2f}x {best['rss_mib']:>7.0f} MiB")
    if not args.dir:
        image.unlink()
        workdir.rmdir()


if __name__ == "__main__":
    main()

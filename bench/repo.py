"""Benchmark: the backup repository against plain exports, in one run (ratios only).

Starts the simulated host on 127.0.0.1, imports a generated VM (a `--fill` fraction of its 1 MiB
blocks hold data: half random, half binary-like data that zstd level 1 about halves at 200-300
MB/s, as it does OS images), then measures, each through the real command line in a subprocess
(so its CPU time and peak RSS are the command's own), `--repeat` times, best run counted:

1. `xvatool export VM -o FILE` (the baseline: verified in flight, written to a file) against
   `xvatool backup --vm VM --repo REPO` into a fresh local repository. Goal: backup >= 0.8x.
   Runs alternate, so both see the same load on a shared machine.
2. a second backup of the unchanged VM: bytes it adds to the repository / the VM's data bytes.
   Goal: <= 1%.
3. peak RSS of the backup command. Goal: <= 256 MiB whatever the disk size.
4. `xvatool repo export REPO latest:VM -o -` (uncompressed, to /dev/null): GB/s of disk data.
   Goal: >= 1 GB/s. The start-up of the command (imports, opening the repository) is measured
   with an empty VM and reported beside it.
5. S3 (moto's server on loopback, `--s3` only): PUT throughput of 1 MiB objects against 16 MiB
   objects, both with 16 requests in flight, the numbers behind "one object per chunk".

    .venv/bin/python bench/repo.py --disk-size 2GiB --fill 0.5 --repeat 3 [--s3]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from xvatool._human import parse_size

MiB = 1 << 20
BASE_BLOCKS = 16
"""Distinct binary-like blocks; each data block is one of them with its own first 16 bytes."""


def binary_like_blocks(count: int, seed: int = 1) -> list[bytes]:
    """1 MiB blocks of short tokens from a small vocabulary: zstd -1 gets ~2x at 200-300 MB/s,
    like executables and libraries (a repeated text line would compress 70x at 2.6 GB/s).
    """
    rng = random.Random(seed)
    tokens = [rng.randbytes(rng.randint(3, 12)) for _ in range(2048)]
    blocks = []
    for _ in range(count):
        parts, n = [], 0
        while n < MiB:
            piece = b"".join(rng.choices(tokens, k=4096))
            parts.append(piece)
            n += len(piece)
        blocks.append(b"".join(parts)[:MiB])
    return blocks


def build_image(path: Path, size: int, fill: float) -> int:
    """A sparse raw image; returns its data bytes."""
    base = binary_like_blocks(BASE_BLOCKS)
    acc, data = 0.0, 0
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(size // MiB):
            acc += fill
            if acc >= 1.0:
                acc -= 1.0
                n = data // MiB
                block = os.urandom(MiB) if n % 2 else (b"%016d" % i) + base[n // 2 % BASE_BLOCKS][16:]
                f.seek(i * MiB)
                f.write(block)
                data += MiB
    return data


@dataclass
class Run:
    wall_s: float
    cpu_s: float
    peak_rss: int


def run(command: list[str], env: dict[str, str], stdout: int | None = None) -> Run:
    """Wall and CPU seconds and peak RSS (bytes) of one command, its own (`wait4`)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=stdout if stdout is not None else subprocess.DEVNULL)
    _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)


def best(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.wall_s)


def spread(runs: list[Run]) -> str:
    walls = sorted(r.wall_s for r in runs)
    return f"best {walls[0]:.2f} s, median {statistics.median(walls):.2f} s"


def stored(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def s3_put_throughput(total: int) -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    client.create_bucket(Bucket="bench")
    try:
        for size in (MiB, 16 * MiB):
            body = os.urandom(size)
            count = total // size
            started = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                list(
                    pool.map(
                        lambda i, size=size, body=body: client.put_object(
                            Bucket="bench", Key=f"{size}/{i}", Body=body
                        ),
                        range(count),
                    )
                )
            seconds = time.perf_counter() - started
            print(
                f"S3 PUT {size // MiB:>2} MiB objects x16 in flight: {total / seconds / 1e6:7.1f} MB/s "
                f"({count / seconds:6.1f} requests/s)"
            )
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--disk-size", default="1GiB")
    parser.add_argument("--fill", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command; the best counts")
    parser.add_argument("--s3", action="store_true", help="also measure PUT sizes against moto")
    args = parser.parse_args()
    size = parse_size(args.disk_size)

    from xvatool.ops.import_ import import_vm
    from xvatool.sim.testing import running_host
    from xvatool.xapi.session import connect
    from xvatool.xva.convert import create_archive

    with tempfile.TemporaryDirectory(prefix="xvatool-bench-repo-") as tmp_name:
        tmp = Path(tmp_name)
        data = build_image(tmp / "disk.img", size, args.fill)
        create_archive(tmp / "vm.xva", name="bench", disks=[tmp / "disk.img"])
        (tmp / "disk.img").unlink()
        with running_host(tmp / "host", demo=False) as host:
            with connect(host.url, host.user, host.password) as session:
                import_vm(session, tmp / "vm.xva")
            (tmp / "vm.xva").unlink()
            (tmp / "pw").write_text(host.password)
            env = {**os.environ, "XVATOOL_CACHE_DIR": str(tmp / "cache")}
            xvatool = [sys.executable, "-m", "xvatool"]
            conn = ["--host", host.url, "--password-file", str(tmp / "pw"), "-q"]
            repo = tmp / "repo"

            exports: list[Run] = []
            backups: list[Run] = []
            for _ in range(args.repeat):
                exports.append(run([*xvatool, "export", "bench", "-o", str(tmp / "out.xva"), *conn], env))
                (tmp / "out.xva").unlink()
                shutil.rmtree(repo, ignore_errors=True)
                run([*xvatool, "repo", "init", str(repo)], env)
                backups.append(run([*xvatool, "backup", "--vm", "bench", "--repo", str(repo), *conn], env))
            first = stored(repo)
            again = run([*xvatool, "backup", "--vm", "bench", "--repo", str(repo), *conn], env)
            added = stored(repo) - first
            reads: list[Run] = []
            with open(os.devnull, "wb") as null:
                for _ in range(args.repeat):
                    reads.append(
                        run(
                            [*xvatool, "repo", "export", str(repo), "latest:bench", "-o", "-", "-q"],
                            env,
                            stdout=null.fileno(),
                        )
                    )
                startup = best(
                    [run([*xvatool, "repo", "snapshots", str(repo), "-q"], env) for _ in range(args.repeat)]
                )

    export, backup, read = best(exports), best(backups), best(reads)
    print(f"VM: one {size / 1e9:.2f} GB disk, {data / 1e9:.2f} GB of data (half random, half binary-like)")
    print(
        f"export to a file:         {export.wall_s:6.2f} s  {size / export.wall_s / 1e9:5.2f} GB/s of disk, "
        f"{export.cpu_s:5.2f} CPU s   (baseline; {spread(exports)})"
    )
    print(
        f"backup into a repository: {backup.wall_s:6.2f} s  {size / backup.wall_s / 1e9:5.2f} GB/s of disk, "
        f"{backup.cpu_s:5.2f} CPU s   ratio {export.wall_s / backup.wall_s:.2f}x (goal >= 0.8x; "
        f"{spread(backups)}); stored {first / 1e6:.1f} MB"
    )
    print(
        f"second backup, unchanged: {again.wall_s:6.2f} s  added {added} bytes = "
        f"{100 * added / data:.4f}% of the data (goal <= 1%)"
    )
    print(
        f"peak RSS: backup {max(r.peak_rss for r in backups) / MiB:.0f} MiB (goal <= 256), "
        f"export {max(r.peak_rss for r in exports) / MiB:.0f} MiB, "
        f"repo export {max(r.peak_rss for r in reads) / MiB:.0f} MiB"
    )
    print(
        f"repo export to /dev/null: {read.wall_s:6.2f} s  {size / read.wall_s / 1e9:5.2f} GB/s of disk "
        f"(goal >= 1), {data / read.wall_s / 1e9:.2f} GB/s of data, {read.cpu_s:5.2f} CPU s "
        f"({spread(reads)}); "
        f"start-up of a repo command {startup.wall_s:.2f} s"
    )
    if args.s3:
        s3_put_throughput(256 * MiB)


if __name__ == "__main__":
    main()

"""Benchmark: the backup repository against plain exports, in one run (ratios only).

Starts the simulated host on 127.0.0.1, imports a generated VM (a `--fill` fraction of its 1 MiB
blocks hold data, half of them random, half text-like that zstd halves), then measures, each
through the real command line in a subprocess (so its peak RSS is the command's own):

1. `xvatool export VM -o FILE` (the baseline: verified in flight, written to a file) against
   `xvatool backup --vm VM --repo REPO` into a fresh local repository. Goal: backup >= 0.8x.
2. a second backup of the unchanged VM: bytes it adds to the repository / the VM's data bytes.
   Goal: <= 1%.
3. peak RSS of the backup command. Goal: <= 256 MiB whatever the disk size.
4. `xvatool repo export REPO latest:VM -o -` (uncompressed, to /dev/null): GB/s of disk data.
   Goal: >= 1 GB/s.
5. S3 (moto's server on loopback, `--s3` only): PUT throughput of 1 MiB objects against 16 MiB
   objects, both with 16 requests in flight, the numbers behind "one object per chunk".

    .venv/bin/python bench/repo.py --disk-size 1GiB --fill 0.5 [--s3]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MiB = 1 << 20
TEXT = b"".join(
    b"%08d the quick brown fox jumps over the lazy dog; lorem ipsum dolor sit amet\n" % i
    for i in range(20000)
)[:MiB]


def parse_size(text: str) -> int:
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    unit = t[-1] if t and t[-1] in units else ""
    return int(float(t[: len(t) - len(unit)]) * units.get(unit, 1))


def build_image(path: Path, size: int, fill: float) -> int:
    """A sparse raw image; returns its data bytes."""
    acc, data = 0.0, 0
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(size // MiB):
            acc += fill
            if acc >= 1.0:
                acc -= 1.0
                block = os.urandom(MiB) if (data // MiB) % 2 else (b"%016d" % i) + TEXT[16:]
                f.seek(i * MiB)
                f.write(block)
                data += MiB
    return data


def run(command: list[str], env: dict[str, str], stdout: int | None = None) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=stdout if stdout is not None else subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) * 1024


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
    parser.add_argument("--disk-size", default="512MiB")
    parser.add_argument("--fill", type=float, default=0.5)
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
            subprocess.run(
                [*xvatool, "repo", "init", str(repo)], env=env, check=True, stdout=subprocess.DEVNULL
            )

            export_s, export_rss = run([*xvatool, "export", "bench", "-o", str(tmp / "out.xva"), *conn], env)
            (tmp / "out.xva").unlink()
            backup_s, backup_rss = run([*xvatool, "backup", "--vm", "bench", "--repo", str(repo), *conn], env)
            first = stored(repo)
            again_s, _ = run([*xvatool, "backup", "--vm", "bench", "--repo", str(repo), *conn], env)
            added = stored(repo) - first
            with open(os.devnull, "wb") as null:
                read_s, read_rss = run(
                    [*xvatool, "repo", "export", str(repo), "latest:bench", "-o", "-", "-q"],
                    env,
                    stdout=null.fileno(),
                )

    print(f"VM: one {size / 1e9:.2f} GB disk, {data / 1e9:.2f} GB of data (half random, half text)")
    print(
        f"export to a file:        {export_s:6.2f} s  {size / export_s / 1e9:5.2f} GB/s of disk   (baseline)"
    )
    print(
        f"backup into a repository:{backup_s:6.2f} s  {size / backup_s / 1e9:5.2f} GB/s of disk   "
        f"ratio {export_s / backup_s:.2f}x (goal >= 0.8x); stored {first / 1e6:.1f} MB"
    )
    print(
        f"second backup, unchanged:{again_s:6.2f} s  added {added} bytes = "
        f"{100 * added / data:.4f}% of the data (goal <= 1%)"
    )
    print(
        f"peak RSS: backup {backup_rss / MiB:.0f} MiB (goal <= 256), export {export_rss / MiB:.0f} MiB, "
        f"repo export {read_rss / MiB:.0f} MiB"
    )
    print(
        f"repo export to /dev/null:{read_s:6.2f} s  {size / read_s / 1e9:5.2f} GB/s of disk (goal >= 1), "
        f"{data / read_s / 1e9:.2f} GB/s of data"
    )
    if args.s3:
        s3_put_throughput(256 * MiB)


if __name__ == "__main__":
    main()

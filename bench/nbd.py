"""Benchmark: NBD reads by xvatool's client over loopback, against baselines measured in the same run.

One disk image (the simulated host's demo disk 0) is served, each server in its own process so
that client and server do not share a GIL (a host and a backup proxy never do):

- the simulated host: ``GET /export_raw_vdi?format=raw``, read through xvatool's download path.
  Issue 11's goal: NBD with 4 connections reaches >= 0.8x of this. The same over HTTPS is the
  fair comparison for NBD over TLS.
- xvatool's `NbdServer` over the same image file: `NbdReader` with 1 and 4 connections, plain
  and TLS (TLS 1.3, the certificate pinned as a backup pins the host's).
- a bare TCP stream of the same file (``sendfile`` into ``recv_into``): what loopback allows.
- reading the image from the page cache: the ceiling.

MB/s = 10^6 bytes/s; best of 3 runs. Only ratios mean something: the machine is shared.

    .venv/bin/python bench/nbd.py --disk-size 256MiB
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _servers import free_port, python_server

from xvatool._human import parse_size

MiB = 1 << 20
REPEAT = 3
PASSWORD = "bench"


def timed(action: Callable[[], int]) -> tuple[float, int]:
    """Best of `REPEAT` runs of `action` (which returns the bytes it moved)."""
    best, moved = float("inf"), 0
    for _ in range(REPEAT):
        start = time.perf_counter()
        moved = action()
        best = min(best, time.perf_counter() - start)
    return best, moved


SIM = """
import sys
from pathlib import Path
from xvatool.sim.server import SimHost, tls_context
sim = SimHost(Path(sys.argv[2]), password=sys.argv[3], demo=True, demo_disk_sizes=(int(sys.argv[4]),))
tls = tls_context(Path(sys.argv[5]), Path(sys.argv[6])) if len(sys.argv) > 5 else None
sim.serve("127.0.0.1", int(sys.argv[1]), tls=tls)
sim.wait()
"""

NBD_SERVER = """
import ssl, sys, threading
from pathlib import Path
from xvatool.nbd import FileExport, NbdServer
path = Path(sys.argv[2])
tls = None
if len(sys.argv) > 3:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(sys.argv[3], sys.argv[4])
server = NbdServer(lambda name: FileExport(path), tls=tls)
server.serve("127.0.0.1", int(sys.argv[1]))
threading.Event().wait()
"""

TCP_SERVER = """
import os, socket, sys
path = sys.argv[2]
with socket.create_server(("127.0.0.1", int(sys.argv[1]))) as listener:
    while True:
        conn, _ = listener.accept()
        with conn, open(path, "rb") as fh:
            if conn.recv(1):
                conn.sendfile(fh)
"""


def read_tcp(port: int) -> int:
    buf = memoryview(bytearray(MiB))
    total = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"g")
        while n := sock.recv_into(buf):
            total += n
    return total


def read_page_cache(path: Path) -> int:
    buf = memoryview(bytearray(MiB))
    total = 0
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            total += n
    return total


def read_export_raw_vdi(session: object, vdi_uuid: str) -> int:
    from xvatool.xapi.transfer import open_download

    buf = memoryview(bytearray(MiB))
    total = 0
    with open_download(session, "/export_raw_vdi", {"vdi": vdi_uuid, "format": "raw"}) as body:  # type: ignore[arg-type]
        while n := body.readinto(buf):
            total += n
    return total


def read_nbd(target: object, connections: int, *, allow_plain: bool) -> int:
    from xvatool.nbd import NbdReader

    with NbdReader(target, connections=connections, allow_plain=allow_plain) as reader:  # type: ignore[arg-type]
        return sum(len(data) for _, data in reader.read_ranges([(0, reader.size)]))


def rate(row: tuple[str, float, int]) -> float:
    return row[2] / row[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--disk-size", default="256MiB", help="size of the demo disk read (default 256MiB)")
    args = parser.parse_args()
    disk_size = str(parse_size(args.disk_size))

    import trustme

    from xvatool.nbd import NbdTarget
    from xvatool.xapi.session import connect

    with tempfile.TemporaryDirectory(prefix="xvatool-bench-nbd-") as tmp:
        work = Path(tmp)
        ca = trustme.CA()
        ca_file = work / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        leaf = ca.issue_cert("nbd.bench.test", "127.0.0.1")
        cert, key = work / "cert.pem", work / "key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        sim_port, https_port, nbd_port, tls_port, tcp_port = (free_port() for _ in range(5))
        rows: list[tuple[str, float, int]] = []
        with (
            python_server(SIM, sim_port, str(work / "host"), PASSWORD, disk_size),
            python_server(SIM, https_port, str(work / "host-tls"), PASSWORD, disk_size, str(cert), str(key)),
            connect(f"http://127.0.0.1:{sim_port}", "root", PASSWORD) as session,
            connect(
                f"https://127.0.0.1:{https_port}", "root", PASSWORD, ca_bundle=str(ca_file)
            ) as secure_session,
        ):
            vdi = next(
                r
                for r in session.xenapi.VDI.get_all_records().values()
                if r["name_label"] == "demo-vm disk 0"
            )
            secure_vdi = next(
                r
                for r in secure_session.xenapi.VDI.get_all_records().values()
                if r["name_label"] == "demo-vm disk 0"
            )
            image = next((work / "host").rglob(f"{vdi['location']}.img"))
            size_mb = int(vdi["virtual_size"]) / 1e6
            print(f"disk: {size_mb:.0f} MB (the simulated host's demo disk 0), best of {REPEAT}")
            rows.append(("page cache read (ceiling)", *timed(lambda: read_page_cache(image))))
            with python_server(TCP_SERVER, tcp_port, str(image)):
                rows.append(("bare TCP stream (loopback)", *timed(lambda: read_tcp(tcp_port))))
            rows.append(
                (
                    "/export_raw_vdi?format=raw (baseline)",
                    *timed(lambda: read_export_raw_vdi(session, vdi["uuid"])),
                )
            )
            rows.append(
                (
                    "/export_raw_vdi over HTTPS",
                    *timed(lambda: read_export_raw_vdi(secure_session, secure_vdi["uuid"])),
                )
            )
            plain = NbdTarget("127.0.0.1", nbd_port, "/x?session_id=bench")
            secure = NbdTarget(
                "127.0.0.1", tls_port, "/x?session_id=bench", cert=cert.read_text(), subject="nbd.bench.test"
            )
            with (
                python_server(NBD_SERVER, nbd_port, str(image)),
                python_server(NBD_SERVER, tls_port, str(image), str(cert), str(key)),
            ):
                for n in (1, 4):
                    result = timed(lambda n=n: read_nbd(plain, n, allow_plain=True))
                    rows.append((f"NBD plain, {n} connection(s)", *result))
                for n in (1, 4):
                    result = timed(lambda n=n: read_nbd(secure, n, allow_plain=False))
                    rows.append((f"NBD TLS, {n} connection(s)", *result))
    by_label = {row[0]: row for row in rows}
    base = rate(by_label["/export_raw_vdi?format=raw (baseline)"])
    print(f"{'what':44} {'MB/s':>8} {'x export_raw_vdi':>17}")
    for row in rows:
        print(f"{row[0]:44} {rate(row) / 1e6:8.0f} {rate(row) / base:16.2f}x")
    nbd4 = rate(by_label["NBD plain, 4 connection(s)"])
    tls4 = rate(by_label["NBD TLS, 4 connection(s)"])
    https = rate(by_label["/export_raw_vdi over HTTPS"])
    print(f"goal: NBD with 4 connections >= 0.8x /export_raw_vdi: {nbd4 / base:.2f}x")
    print(f"(TLS against HTTPS, for information: {tls4 / https:.2f}x)")


if __name__ == "__main__":
    main()

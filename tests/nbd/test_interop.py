"""Independent peers: our client against qemu-nbd, our server against libnbd and qemu's client.

Needs Debian's qemu-utils (qemu-nbd, qemu-img) and libnbd-bin (nbdinfo, nbdcopy); each test is
skipped when its tool is missing.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from xvatool.errors import NbdTlsError
from xvatool.nbd import NbdConnection, NbdReader

from .helpers import EXPORT_NAME, VDI_UUID, nbd_server, target

MiB = 1 << 20
DISK_SIZE = 7 * MiB + 512


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def qemu_nbd(path: Path, work: Path, *, tls_dir: Path | None = None) -> Iterator[int]:
    """qemu-nbd serving `path` read-only under EXPORT_NAME on a loopback port; stopped by pid."""
    need("qemu-nbd")
    port = free_port()
    pid_file = work / "qemu-nbd.pid"
    cmd = ["qemu-nbd", "--fork", "--pid-file", str(pid_file), "-t", "-e", "8", "-r", "-f", "raw"]
    cmd += ["-b", "127.0.0.1", "-p", str(port), "-x", EXPORT_NAME]
    if tls_dir is not None:
        cmd += ["--object", f"tls-creds-x509,id=tls0,endpoint=server,dir={tls_dir},verify-peer=off"]
        cmd += ["--tls-creds", "tls0"]
    subprocess.run([*cmd, str(path)], check=True, timeout=30)  # --fork returns once it listens
    pid = int(pid_file.read_text())
    try:
        yield port
    finally:
        subprocess.run(["kill", str(pid)], check=False)


def test_our_client_reads_from_qemu_nbd(disk, tmp_path):
    path, data = disk
    with qemu_nbd(path, tmp_path) as port:
        with NbdReader(target(port), allow_plain=True, connections=4, request_size=MiB) as reader:
            assert reader.size == len(data)
            got = b"".join(bytes(p) for _, p in reader.read_ranges([(0, reader.size)]))
            ranges = [(o, bytes(p)) for o, p in reader.read_ranges([(3 * MiB + 512, 4096), (7 * MiB, 512)])]
    assert got == data
    assert ranges == [(3 * MiB + 512, data[3 * MiB + 512 : 3 * MiB + 4608]), (7 * MiB, data[7 * MiB :])]


def test_our_client_needs_permission_for_qemu_nbd_without_tls(disk, tmp_path, pki):
    path, _ = disk
    with qemu_nbd(path, tmp_path) as port:
        with pytest.raises(NbdTlsError, match="declined TLS \\(ERR_POLICY: 'TLS not configured'\\)"):
            NbdConnection.open(target(port, leaf=pki.leaf))


def test_our_client_verifies_qemu_nbd_tls(disk, tmp_path, pki):
    path, data = disk
    tls_dir = tmp_path / "qemu-tls"
    pki.leaf.write(tls_dir, "server-cert.pem", "server-key.pem")
    pki.ca.cert_pem.write_to_path(str(tls_dir / "ca-cert.pem"))
    with qemu_nbd(path, tmp_path, tls_dir=tls_dir) as port:
        with NbdReader(target(port, leaf=pki.leaf), connections=2) as reader:  # trusts the leaf, not the CA
            got = b"".join(bytes(p) for _, p in reader.read_ranges([(0, reader.size)]))
        with pytest.raises(NbdTlsError, match="not the one the host vouched for"):
            NbdConnection.open(target(port, leaf=pki.other_leaf))
        with pytest.raises(NbdTlsError, match="Hostname mismatch"):
            NbdConnection.open(target(port, leaf=pki.leaf, subject="elsewhere.test"))
    assert got == data


def nbd_uri(port: int, *, tls_dir: Path | None = None) -> str:
    name = urllib.parse.quote(EXPORT_NAME, safe="")
    if tls_dir is None:
        return f"nbd://127.0.0.1:{port}/{name}"
    return f"nbds://127.0.0.1:{port}/{name}?tls-certificates={tls_dir}"


def test_libnbd_reads_our_server(disk, tmp_path):
    need("nbdcopy")
    need("nbdinfo")
    path, data = disk
    with nbd_server({VDI_UUID: path}) as (server, disks):
        info = subprocess.run(["nbdinfo", "--json", nbd_uri(server.port)], capture_output=True, text=True)
        assert info.returncode == 0, info.stderr
        export = json.loads(info.stdout)
        assert export["protocol"] == "newstyle-fixed" and not export["TLS"]
        assert export["exports"][0]["export-size"] == len(data)
        assert export["exports"][0]["is_read_only"] is True
        out = tmp_path / "copy.raw"
        copy = subprocess.run(["nbdcopy", nbd_uri(server.port), str(out)], capture_output=True, text=True)
        assert copy.returncode == 0, copy.stderr
    assert out.read_bytes() == data
    assert {name.raw for name in disks.asked} == {EXPORT_NAME}  # libnbd fell back from GO to EXPORT_NAME


def test_libnbd_reads_our_server_over_tls(disk, tmp_path, pki):
    need("nbdcopy")
    path, data = disk
    tls_dir = tmp_path / "libnbd-tls"
    tls_dir.mkdir()
    pki.ca.cert_pem.write_to_path(str(tls_dir / "ca-cert.pem"))
    with nbd_server({VDI_UUID: path}, tls=pki.leaf.server_context()) as (server, _):
        out = tmp_path / "copy.raw"
        uri = nbd_uri(server.port, tls_dir=tls_dir)
        copy = subprocess.run(["nbdcopy", uri, str(out)], capture_output=True, text=True)
        assert copy.returncode == 0, copy.stderr
        plain = subprocess.run(
            ["nbdcopy", nbd_uri(server.port), str(tmp_path / "no.raw")], capture_output=True
        )
        assert plain.returncode != 0  # FORCEDTLS: no export over cleartext
    assert out.read_bytes() == data


def test_qemu_clients_cannot_use_xapis_dialect(disk):
    """qemu's client answers GO's ERR_UNSUP by asking LIST, which xapi denies (ERR_POLICY).

    So qemu-img cannot read a XenServer host's NBD exports; this pins that our server answers as
    xapi does, and that the data path is proven with libnbd instead.
    """
    need("qemu-img")
    path, _ = disk
    with nbd_server({VDI_UUID: path}) as (server, disks):
        spec = {
            "driver": "raw",
            "file": {
                "driver": "nbd",
                "server": {"type": "inet", "host": "127.0.0.1", "port": str(server.port)},
                "export": EXPORT_NAME,
            },
        }
        result = subprocess.run(
            ["qemu-img", "info", "json:" + json.dumps(spec)], capture_output=True, text=True
        )
    assert result.returncode != 0
    assert "Denied by server for option 3" in result.stderr
    assert disks.asked == []

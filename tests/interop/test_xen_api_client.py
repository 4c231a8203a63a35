"""Xen Orchestra's own client (`xen-api` on npm, pinned by tests/interop/node) against `xvatool serve`.

The client runs with its defaults, over JSON-RPC (its first choice) and over XML-RPC: it connects,
fills its object cache from the classes `system.listMethods` names, follows events, watches
`Async.` tasks, moves a VM and a disk through `/export/`, `/export_raw_vdi/`, `/import/` and
`/import_raw_vdi/` (spelled with XO's trailing slash), and is refused with a wrong password.
The files it wrote are then checked against the host's disks.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from xvatool.sim.server import SimHost
from xvatool.xva.validate import validate_archive

MiB = 1 << 20
DISK_SIZES = (4 * MiB, 2 * MiB)
SCRIPT = Path(__file__).parent / "node" / "xen_api_client.mjs"
SERVE = [sys.executable, "-c", "import sys; from xvatool.cli import main; sys.exit(main())", "serve"]
START_TIMEOUT_S = 30.0


@dataclass
class Served:
    """A running `xvatool serve` subprocess and what it logged."""

    process: subprocess.Popen[str]
    url: str
    password: str
    data_dir: Path
    log: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; killed if it does not stop within 20 s."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.reader is not None:
            self.reader.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()


def _collect(stream: object, lines: list[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.append(line.rstrip("\n"))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """`xvatool serve --debug` on 127.0.0.1, over a data directory seeded with a small demo VM."""
    data_dir = tmp_path / "host"
    SimHost(data_dir, password="seed", demo=True, demo_disk_sizes=DISK_SIZES).close()
    password = secrets.token_urlsafe(12)
    process = subprocess.Popen(
        [*SERVE, "--data", str(data_dir), "--listen", "127.0.0.1:0", "--debug"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "XVATOOL_SIM_PASSWORD": password},  # never on the command line
    )
    served = Served(process, "", password, data_dir)
    served.reader = threading.Thread(target=_collect, args=(process.stderr, served.log), daemon=True)
    served.reader.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not served.url:
            announced = [line for line in served.log if " listening on " in line]
            served.url = announced[0].split(" listening on ")[1].split()[0] if announced else ""
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"xvatool serve did not start: {served.log[-20:]}")
            time.sleep(0.05)
        yield served
    finally:
        served.stop()


def _run_client(node: str, module: Path, served: Served, transport: str, work: Path) -> dict[str, object]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(work)),
        "XEN_API_MODULE": str(module),
        "XAPI_URL": served.url,
        "XAPI_USER": "root",
        "XAPI_PASSWORD": served.password,
        "XAPI_TRANSPORT": transport,
        "WORK_DIR": str(work),
    }
    done = subprocess.run(
        [node, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert done.returncode == 0, f"{done.stderr[-4000:]}\nserver log: {served.log[-30:]}"
    results: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("transport", ["", "xml-rpc"], ids=["default-json-rpc", "xml-rpc"])
def test_xen_orchestra_client_with_its_defaults(
    node: str, xen_api_module: Path, served: Served, tmp_path: Path, transport: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    results = _run_client(node, xen_api_module, served, transport, work)

    rpc_paths = {line.split()[-1] for line in served.log if "POST /" in line}
    assert rpc_paths == ({"/xmlrpc"} if transport else {"/jsonrpc"})
    counts = results["counts"]
    assert isinstance(counts, dict)
    assert counts["VM"] == 2 and counts["VDI"] == 2 and counts["SR"] == 1 and counts["VBD"] == 3
    assert counts["pool"] == 1 and counts["host"] == 1 and counts["network"] == 1 and counts["PBD"] == 1
    assert results["vbd_devices"] == ["0", "1", "3"]
    assert results["failed_task_code"] == "VM_IS_SNAPSHOT"
    assert results["export_task"] == ""
    assert results["wrong_password_code"] == "SESSION_AUTHENTICATION_FAILED"
    for path in ("/export/", "/export_raw_vdi/", "/import/", "/import_raw_vdi/"):
        assert any(line.endswith(f"{'PUT' if 'import' in path else 'GET'} {path}") for line in served.log), (
            path
        )

    report = validate_archive(work / "export.xva")
    assert report.valid, report.problems
    assert [d.virtual_size for d in report.disks] == list(DISK_SIZES)
    raw = (work / "disk0.raw").read_bytes()
    assert len(raw) == DISK_SIZES[0]

    _stop_and_check(served, (results["exported_vdi"], results["imported_vm"], results["uploaded_vdis"]), raw)


def _stop_and_check(served: Served, ids: tuple[object, object, object], raw: bytes) -> None:
    """Stop the server, then read what the host now holds from its directory."""
    exported_vdi, imported_vm, uploaded = ids
    served.stop()
    assert any("stopping" in line for line in served.log) and served.process.returncode == 0
    host = SimHost(served.data_dir, password="inspect")
    try:
        state = host.state
        (source,) = state.find("VDI", uuid=exported_vdi)
        assert host.disk_bytes(source) == raw
        (vm,) = state.find("VM", uuid=imported_vm)
        assert host.disk_bytes(host.vdis_of(vm)[0]) == raw
        assert isinstance(uploaded, list) and len(uploaded) == 2
        for uuid in uploaded:  # with a length, and without one (XO's 1 PiB Content-Length)
            (vdi,) = state.find("VDI", uuid=uuid)
            assert host.disk_bytes(vdi) == raw, uuid
        # dom0, demo-vm and its import; the clone and the snapshot were destroyed, the snapshot's
        # disks too (the clone's stay, as VM.destroy leaves disks): 2 + 2 + 2 + 2 uploaded
        assert len(state.refs("VM")) == 3 and len(state.refs("VDI")) == 8
    finally:
        host.close()

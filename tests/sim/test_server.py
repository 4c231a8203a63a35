"""The server around the API: persistence, concurrency, TLS, header limits, the CLI command."""

from __future__ import annotations

import hashlib
import io
import json
import ssl
import threading
from pathlib import Path

import httpx
import pytest
import trustme
import XenAPI
from click.testing import CliRunner

from tests.sim.helpers import call, login, task_record
from xvatool.cli import main
from xvatool.errors import UsageError
from xvatool.sim.server import SimHost, longest_prefix
from xvatool.sim.testing import running_host
from xvatool.xva.reader import XvaReader

MiB = 1 << 20
SIZES = (4 * MiB, 2 * MiB)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    with running_host(tmp_path, demo_disk_sizes=SIZES) as sim:
        session = login(sim)
        vm = sim.host.vm("demo-vm")
        snap = call(sim, "VM.snapshot", session, vm, "kept")
        call(sim, "VM.set_name_label", session, vm, "renamed")
        vdi = sim.host.vdis_of(vm)[0]
        digest = hashlib.sha256(sim.host.disk_bytes(vdi)).hexdigest()
    assert json.loads((tmp_path / "state.json").read_text())["objects"]["VM"][vm]["name_label"] == "renamed"
    with running_host(tmp_path, demo_disk_sizes=SIZES) as sim:
        session = login(sim)
        assert call(sim, "VM.get_name_label", session, vm) == "renamed"
        assert call(sim, "VM.get_is_a_snapshot", session, snap) is True
        assert hashlib.sha256(sim.host.disk_bytes(vdi)).hexdigest() == digest
        assert sim.host.state.find("VM", name_label="demo-vm") == []  # no second demo seed


def test_one_server_per_data_directory(tmp_path: Path) -> None:
    with running_host(tmp_path, demo=False):
        with pytest.raises(UsageError, match="in use"):
            SimHost(tmp_path, password="x")


def test_non_loopback_needs_tls(tmp_path: Path) -> None:
    host = SimHost(tmp_path, password="x")
    try:
        with pytest.raises(UsageError, match="TLS"):
            host.serve("0.0.0.0", 0)
    finally:
        host.close()


def test_concurrent_exports_and_imports(tmp_path: Path) -> None:
    with running_host(tmp_path, demo_disk_sizes=SIZES) as sim:
        session = login(sim)
        vm = sim.host.vm("demo-vm")
        reference = httpx.get(f"{sim.url}/export", params={"ref": vm, "session_id": session}).content
        expected = _disk_digests(reference)
        results: list[object] = []

        def export() -> None:
            data = httpx.get(
                f"{sim.url}/export", params={"ref": vm, "session_id": session}, timeout=60
            ).content
            results.append(_disk_digests(data) == expected)

        def import_() -> None:
            task = call(sim, "task.create", session, "i", "")
            httpx.put(
                f"{sim.url}/import",
                params={"session_id": session, "task_id": task},
                content=reference,
                timeout=60,
            )
            results.append(task_record(sim, session, task)["status"] == "success")

        threads = [threading.Thread(target=f) for f in (export, import_) * 4]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [True] * 8
        imported = [r for r in sim.host.state.records("VM").values() if r["name_label"] == "demo-vm"]
        assert len(imported) == 5
    state = json.loads((tmp_path / "state.json").read_text())
    assert len(state["objects"]["VDI"]) == 2 * 5


def _disk_digests(data: bytes) -> list[tuple[int, str]]:
    return [(c.offset, hashlib.sha256(c.data).hexdigest()) for c in XvaReader(io.BytesIO(data)).chunks()]


def test_tls_with_a_trusted_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with running_host(tmp_path, demo_disk_sizes=SIZES, tls=server_context) as sim:
        assert sim.url.startswith("https://127.0.0.1:")
        session = XenAPI.Session(sim.url, transport=None)
        session.__dict__["_ServerProxy__transport"] = __import__("xmlrpc.client").client.SafeTransport(
            context=client_context
        )
        session.xenapi.login_with_password(sim.user, sim.password, "1.0", "tls")
        assert session.xenapi.VM.get_by_name_label("demo-vm")
        vm = session.xenapi.VM.get_by_name_label("demo-vm")[0]
        reply = httpx.get(
            f"{sim.url}/export",
            params={"ref": vm},
            cookies={"session_id": session.handle},
            verify=client_context,
        )
        assert reply.status_code == 200 and reply.content.endswith(bytes(1024))
        session.xenapi.session.logout()
        session("close")()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{sim.url}/export")  # an unknown CA is refused by a verifying client


def test_header_block_over_1024_bytes_gets_431(sim) -> None:
    reply = httpx.get(f"{sim.url}/export", headers={"X-Padding": "a" * 1100})
    assert reply.status_code == 431
    assert httpx.get(f"{sim.url}/export", headers={"X-Padding": "a" * 500}).status_code == 401


def test_handlers_are_chosen_by_longest_path_prefix(sim) -> None:
    # No handler: xapi's default callback answers 403; an unknown method is 501.
    assert httpx.get(f"{sim.url}/nothing").status_code == 403
    assert httpx.get(f"{sim.url}/").status_code == 403
    assert httpx.put(f"{sim.url}/export", content=b"").status_code == 403
    assert httpx.delete(f"{sim.url}/export").status_code == 501
    # With a trailing slash (as Xen Orchestra spells them) each path reaches its own handler.
    for path in ("/export/", "/export_metadata/", "/export_raw_vdi/"):
        assert httpx.get(f"{sim.url}{path}").status_code == 401, path
    for path in ("/import/", "/import_metadata/", "/import_raw_vdi/"):
        assert httpx.put(f"{sim.url}{path}", content=b"").status_code == 401, path
    session = login(sim)
    vm = sim.host.vm("demo-vm")
    reply = httpx.get(f"{sim.url}/export/", params={"ref": vm, "session_id": session})
    assert reply.status_code == 200 and reply.content.endswith(bytes(1024))
    vdi = sim.host.vdis_of(vm)[1]
    raw = httpx.get(f"{sim.url}/export_raw_vdi/", params={"vdi": vdi, "session_id": session})
    assert raw.status_code == 200 and raw.content[:4096] == sim.host.disk_bytes(vdi, 0, 4096)
    assert longest_prefix(["/export", "/export_raw_vdi"], "/export_raw_vdi/x") == "/export_raw_vdi"
    assert longest_prefix(["/export"], "/exp") is None


def test_rpc_keeps_the_connection_alive(sim) -> None:
    with httpx.Client() as client:
        for _ in range(3):  # RPC keeps the connection open
            reply = client.post(
                sim.url + "/", content=b"<methodCall><methodName>system.listMethods</methodName></methodCall>"
            )
            assert reply.status_code == 200 and reply.headers.get("connection") != "close"


def test_cli_serve_options(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--data", str(tmp_path / "d")])
    assert result.exit_code == 2 and "--password-file" in result.output
    result = runner.invoke(main, ["serve", "--data", str(tmp_path / "d"), "--demo", "--listen", "nope"])
    assert result.exit_code == 2 and "HOST:PORT" in result.output
    result = runner.invoke(main, ["serve", "--data", str(tmp_path / "d"), "--demo", "--fault", "export:boom"])
    assert result.exit_code == 2 and "kind must be one of" in result.output
    empty = tmp_path / "pw"
    empty.write_text("")
    result = runner.invoke(main, ["serve", "--data", str(tmp_path / "d"), "--password-file", str(empty)])
    assert result.exit_code == 2 and "empty" in result.output
    result = runner.invoke(
        main, ["serve", "--data", str(tmp_path / "d"), "--demo", "--listen", "10.1.2.3:80"]
    )
    assert result.exit_code == 2 and "needs TLS" in result.output
    assert "Example" in runner.invoke(main, ["serve", "--help"]).output


def test_cli_serve_runs_until_interrupted(tmp_path: Path) -> None:
    import os
    import re
    import signal
    import subprocess
    import sys

    password = tmp_path / "password"
    password.write_text("s3cret\n")
    command = [
        str(Path(sys.executable).with_name("xvatool")),
        "serve",
        "--data",
        str(tmp_path / "d"),
        "--demo",
        "--listen",
        "127.0.0.1:0",
        "--password-file",
        str(password),
        "--fault",
        "export:redirect",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XVATOOL_")}
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
            assert match, line
            peer = proc.stderr.readline()
            assert "redirect peer listening on http://127.0.0.1:" in peer
            url = match.group(1)
            envelope = httpx.post(
                url + "/jsonrpc",
                json={"method": "session.login_with_password", "params": ["root", "s3cret"], "id": 1},
            ).json()
            assert envelope["error"] is None
            session = envelope["result"]
            vms = httpx.post(
                url + "/jsonrpc",
                json={"method": "VM.get_by_name_label", "params": [session, "demo-vm"], "id": 2},
            ).json()["result"]
            sizes = sorted(int(p.stat().st_size) for p in (tmp_path / "d" / "disks").iterdir())
            assert len(vms) == 1 and sizes == [4 << 20, 8 << 20, 64 << 20, 256 << 20]  # + demo-app
        finally:
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "s3cret" not in out + err


def test_cli_serve_takes_a_free_nbd_port_when_the_usual_one_is_taken(tmp_path: Path, monkeypatch) -> None:
    # A second simulator on one machine (rehearsing a migration between two pools) used to fail
    # with "cannot listen on 127.0.0.1:10809"; it now takes any free NBD port and says which.
    import socket

    import xvatool.sim.server as server

    seen: list[int | None] = []
    monkeypatch.setattr(server, "serve_forever", lambda *a, **kw: seen.append(kw["nbd_port"]))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setattr(server, "DEFAULT_NBD_PORT", taken.getsockname()[1])
        args = ["serve", "--data", str(tmp_path / "d"), "--demo", "--listen", "127.0.0.1:18080"]
        assert CliRunner().invoke(main, args).exit_code == 0
        assert CliRunner().invoke(main, [*args, "--nbd-port", "7"]).exit_code == 0  # asked for: kept
    assert CliRunner().invoke(main, args).exit_code == 0  # free again: the host's usual port
    assert seen == [0, 7, server.DEFAULT_NBD_PORT]

"""`xvatool backup --repo` with --cbt, --snapshots and --nbd-connections, and `serve --nbd-purpose`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.incremental.conftest import MIB, Env
from tests.waiting import wait_until
from xvatool.cli import main


def _backup(env: Env, monkeypatch: pytest.MonkeyPatch, vm: str, *extra: str, as_json: bool = True):
    monkeypatch.setenv("XVATOOL_PASSWORD", env.sim.password)
    args = ["backup", "--host", env.sim.url, "--user", env.sim.user, "--vm", vm, "--repo", env.repo.location]
    result = CliRunner().invoke(
        main, [*args, *extra, *(["--json"] if as_json else [])], catch_exceptions=False
    )
    return result


def test_backup_repo_cbt_then_incremental(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    vm = env.add_vm("cli", sizes=(8 * MIB,))
    env.set_purpose("nbd")
    first = _backup(env, monkeypatch, vm, "--cbt")
    assert first.exit_code == 0, first.output
    (report,) = json.loads(first.stdout)["results"]
    assert report["disks"][0]["method"] == "full" and report["vm_snapshot"]["kept_on_host"] == "metadata"
    env.write(vm, 0, (3 * MIB, b"z" * 4096))
    second = _backup(env, monkeypatch, vm, "--nbd-connections", "2", as_json=False)
    assert second.exit_code == 0, second.output
    header, row = second.stdout.splitlines()[:2]
    assert header.split()[:4] == ["VM", "STATUS", "READ", "METHOD"]
    assert row.split()[:2] == ["cli", "ok"] and row.split()[4] == "cbt"


def test_broken_chain_notice_and_option_errors(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    vm = env.add_vm("notice", sizes=(4 * MIB,))
    env.set_purpose("nbd")
    assert _backup(env, monkeypatch, vm, "--cbt", "--snapshots", "keep").exit_code == 0
    (ref, _uuid) = env.disks(vm)[0]
    with env.session() as session:
        session.call("VDI.resize", ref, str(5 * MIB))
    result = _backup(env, monkeypatch, vm, as_json=False)
    assert result.exit_code == 0
    assert f"note: notice disk 0: the disk was resized ({4 * MIB} -> {5 * MIB} bytes)" in result.stderr
    assert result.stderr.count("the disk was resized") == 1  # said once, not again under the table
    bad = _backup(env, monkeypatch, vm, "--snapshots", "sometimes")
    assert bad.exit_code == 2
    args = ["backup", "--host", env.sim.url, "--vm", vm, "--dest", str(env.work / "d"), "--cbt"]
    dest = CliRunner().invoke(main, args)
    assert dest.exit_code == 2 and "need --repo" in dest.output
    compressed = _backup(env, monkeypatch, vm, "--compress", "zstd")
    assert compressed.exit_code == 2 and "--compress are for --dest" in compressed.output


def test_serve_nbd_purpose_and_port(tmp_path: Path) -> None:
    """`xvatool serve --demo --nbd-purpose nbd --listen 127.0.0.1:0`: NBD on a free port, with TLS."""
    command = [sys.executable, "-m", "xvatool", "serve", "--data", str(tmp_path / "d"), "--demo",
               "--listen", "127.0.0.1:0", "--nbd-purpose", "nbd"]  # fmt: skip
    environ = {**os.environ, "PYTHONUNBUFFERED": "1"}
    lines: list[str] = []
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=environ) as proc:
        assert proc.stderr is not None
        stderr = proc.stderr
        reader = threading.Thread(target=lambda: lines.extend(iter(stderr.readline, "")))
        reader.start()
        try:
            wait_until(lambda: any("NBD server" in line for line in lines), timeout=30)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
            reader.join()
    (announce,) = [line for line in lines if "NBD server" in line]
    assert "(TLS)" in announce and "port 10809 " not in announce
    assert (tmp_path / "d" / "nbd-cert.pem").is_file()
    assert (tmp_path / "d" / "nbd-key.pem").stat().st_mode & 0o077 == 0

"""Temporary export snapshots that a killed run leaves on the host are destroyed by the next one."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from xvatool.ops.export import export_vm
from xvatool.xapi.session import connect
from xvatool.xapi.snapshot_ledger import LEDGER_FOLDER, sweep_left_over
from xvatool.xapi.vms import destroy_vm_with_disks, export_source, find_vm

HOLD_SNAPSHOT = textwrap.dedent(
    """
    import sys, time
    from xvatool.xapi.session import connect
    from xvatool.xapi.vms import export_source, find_vm
    url, user, password = sys.argv[1:4]
    session = connect(url, user, password)
    with export_source(session, find_vm(session, "demo-vm")) as source:
        print(source.uuid, flush=True)
        time.sleep(600)
    """
)


def _snapshots(sim) -> set[str]:
    return {r["uuid"] for r in sim.host.state.records("VM").values() if r.get("is_a_snapshot")}


def _entries(state: Path) -> list[Path]:
    folder = state / LEDGER_FOLDER
    return sorted(folder.iterdir()) if folder.exists() else []


def test_a_snapshot_left_by_a_killed_export_is_destroyed_by_the_next(sim, tmp_path, private_state_dir):
    sim.host.set_power_state(sim.host.vm("demo-vm"), "Running")
    with subprocess.Popen(
        [sys.executable, "-c", HOLD_SNAPSHOT, sim.url, sim.user, sim.password],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ),
    ) as holder:  # fmt: skip
        assert holder.stdout is not None
        left = holder.stdout.readline().strip()
        assert left in _snapshots(sim)
        with connect(sim.url, sim.user, sim.password) as session:  # its owner is alive: untouched
            assert sweep_left_over(session, destroy=lambda ref: destroy_vm_with_disks(session, ref)) == []
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert left in _snapshots(sim) and len(_entries(private_state_dir)) == 1  # what kill -9 leaves
    vdis = set(sim.host.state.refs("VDI"))

    with connect(sim.url, sim.user, sim.password) as session:
        result = export_vm(session, "demo-vm", tmp_path / "vm.xva")
    assert result.snapshot_used
    assert _snapshots(sim) == set() and _entries(private_state_dir) == []
    assert len(set(sim.host.state.refs("VDI"))) == len(vdis) - 2  # the leftover's two disks went too


def test_what_the_sweep_leaves_alone_and_what_it_only_reports(sim, private_state_dir, caplog):
    vm = sim.host.vm("demo-vm")
    sim.host.set_power_state(vm, "Running")
    folder = private_state_dir / LEDGER_FOLDER
    with connect(sim.url, sim.user, sim.password) as session:
        found = find_vm(session, "demo-vm")
        users = session.call("VM.snapshot", found.ref, "the user's own")
        users_uuid = session.call("VM.get_uuid", users)
        with export_source(session, found) as source:  # makes the folder; its entry is removed after
            held = source.uuid
        assert held not in _snapshots(sim) and _entries(private_state_dir) == []

        def entry(name: str, **doc: object) -> Path:
            path = folder / name
            base = {
                "host": sim.url,
                "vm_uuid": found.uuid,
                "vm_name": "demo-vm",
                "taken_at": "2026-11-28T02:30:00+00:00",
            }
            path.write_text(json.dumps({**base, **doc}))
            return path

        from xvatool.xapi.journal import host_tag

        tag = host_tag(sim.url)
        pending = entry(f"{tag}-pending.json", snapshot_uuid=None)  # killed inside VM.snapshot
        not_ours = entry(f"{tag}-other-vm.json", snapshot_uuid=users_uuid, vm_uuid="another-vm")
        gone = entry(f"{tag}-gone.json", snapshot_uuid="00000000-0000-0000-0000-000000000000")
        other_host = entry("0123456789ab-x.json", snapshot_uuid=users_uuid, host="https://elsewhere")
        half_written = folder / f".{tag}-y.json.new"  # killed between creating an entry and locking it
        half_written.write_text("{")
        destroyed: list[str] = []

        def destroy(ref: str) -> bool:
            destroyed.append(ref)
            return True

        with caplog.at_level(logging.WARNING):
            assert sweep_left_over(session, destroy=destroy) == []
    assert destroyed == [] and users_uuid in _snapshots(sim)
    assert not pending.exists() and not not_ours.exists() and not gone.exists() and other_host.exists()
    assert not half_written.exists()
    assert "killed while snapshotting VM demo-vm" in caplog.text
    assert f"{users_uuid} is no longer a snapshot of VM another-vm" in caplog.text


def test_an_unwritable_state_folder_is_a_warning_not_a_failed_export(sim, tmp_path, monkeypatch, caplog):
    sim.host.set_power_state(sim.host.vm("demo-vm"), "Running")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XVATOOL_STATE_DIR", str(blocker))
    with connect(sim.url, sim.user, sim.password) as session, caplog.at_level(logging.WARNING):
        result = export_vm(session, "demo-vm", tmp_path / "vm.xva")
    assert result.snapshot_used and _snapshots(sim) == set()
    assert "a killed run would leave its snapshot of demo-vm on the host" in caplog.text

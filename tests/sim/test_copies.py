"""VM and VDI snapshots, clones and copies with the host's semantics (xapi_vm_clone.ml, xapi_vdi.ml)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.sim.helpers import call, failure, login, task_record
from xvatool.sim import disks
from xvatool.sim.records import sr_record
from xvatool.sim.testing import RunningHost
from xvatool.sim.values import NULL_REF

MiB = 1 << 20


def _other_sr(sim: RunningHost) -> str:
    return sim.host.state.add("SR", sr_record(name_label="Second storage"))


def _wait(sim: RunningHost, session: str, task: str) -> dict[str, Any]:
    for _ in range(200):
        record = task_record(sim, session, task)
        if record["status"] != "pending":
            return record
        time.sleep(0.05)
    raise AssertionError("task did not finish")


def _result_ref(record: dict[str, Any]) -> str:
    return str(record["result"]).removeprefix("<value>").removesuffix("</value>")


def _same_disks(sim: RunningHost, a: str, b: str) -> None:
    """Same bytes (where the demo disks hold data) and no more allocated blocks: a sparse copy."""
    host = sim.host
    size = int(host.state.field("VDI", a, "virtual_size"))
    assert int(host.state.field("VDI", b, "virtual_size")) == size
    for offset in range(0, size, MiB):
        assert host.disk_bytes(a, offset, 64) == host.disk_bytes(b, offset, 64)
    assert host.vdi_path(b).stat().st_blocks <= host.vdi_path(a).stat().st_blocks


def _files(sim: RunningHost) -> set[Path]:
    return set(sim.host.state.disk_dir.iterdir())


def test_vm_clone_same_srs_new_uuids_sparse_disks(sim: RunningHost) -> None:
    session = login(sim)
    vm = sim.host.vm("demo-vm")
    source = call(sim, "VM.get_record", session, vm)
    clone = call(sim, "VM.clone", session, vm, "the clone")
    record = call(sim, "VM.get_record", session, clone)
    assert record["uuid"] != source["uuid"] and record["name_label"] == "the clone"
    assert not record["is_a_snapshot"] and not record["is_a_template"] and record["power_state"] == "Halted"
    assert record["parent"] == NULL_REF and record["other_config"]["mac_seed"]
    assert record["current_operations"] == {} and source["snapshots"] == record["snapshots"] == []
    old, new = sim.host.vdis_of(vm), sim.host.vdis_of(clone)
    assert len(new) == 2 and set(new).isdisjoint(old)
    for a, b in zip(old, new, strict=True):
        _same_disks(sim, a, b)
        old_vdi, new_vdi = call(sim, "VDI.get_record", session, a), call(sim, "VDI.get_record", session, b)
        assert new_vdi["SR"] == old_vdi["SR"] and new_vdi["uuid"] != old_vdi["uuid"]
        assert new_vdi["name_label"] == old_vdi["name_label"] and not new_vdi["is_a_snapshot"]
    vbds = [call(sim, "VBD.get_record", session, v) for v in record["VBDs"]]
    assert {v["userdevice"] for v in vbds} == {"0", "1", "3"}  # the empty CD drive comes along
    assert all(v["other_config"].get("owner") == "" for v in vbds if v["type"] == "Disk")
    vifs = [call(sim, "VIF.get_record", session, v) for v in record["VIFs"]]
    assert len(vifs) == 1 and vifs[0]["MAC"] != "02:00:00:00:00:01"  # clones get new MACs


def test_vm_copy_into_another_sr_or_its_own(sim: RunningHost) -> None:
    session = login(sim)
    vm = sim.host.vm("demo-vm")
    other = _other_sr(sim)
    copy = call(sim, "VM.copy", session, vm, "copied", other)
    for a, b in zip(sim.host.vdis_of(vm), sim.host.vdis_of(copy), strict=True):
        _same_disks(sim, a, b)
        assert call(sim, "VDI.get_SR", session, b) == other
        assert b in call(sim, "SR.get_VDIs", session, other)
    home = call(sim, "VM.copy", session, vm, "copied home", NULL_REF)  # not an SR: each disk's own
    own = call(sim, "VDI.get_SR", session, sim.host.vdis_of(vm)[0])
    assert {call(sim, "VDI.get_SR", session, v) for v in sim.host.vdis_of(home)} == {own}


def test_async_clone_and_copy_run_as_tasks(sim: RunningHost) -> None:
    session = login(sim)
    vm = sim.host.vm("demo-vm")
    task = call(sim, "Async.VM.clone", session, vm, "async clone")
    record = _wait(sim, session, task)
    assert record["status"] == "success" and record["name_label"] == "Async.VM.clone"
    assert record["progress"] == 1.0
    clone = _result_ref(record)
    assert call(sim, "VM.get_name_label", session, clone) == "async clone"
    vdi = sim.host.vdis_of(vm)[0]
    for method, args in (("VDI.clone", []), ("VDI.snapshot", [{}]), ("VDI.copy", [_other_sr(sim)])):
        done = _wait(sim, session, call(sim, f"Async.{method}", session, vdi, *args))
        assert done["status"] == "success", (method, done["error_info"])
        _same_disks(sim, vdi, _result_ref(done))


def test_vdi_clone_snapshot_and_copy_semantics(sim: RunningHost) -> None:
    session = login(sim)
    vdi = sim.host.vdis_of(sim.host.vm("demo-vm"))[0]
    call(sim, "VDI.add_to_other_config", session, vdi, "kept", "yes")
    clone = call(sim, "VDI.clone", session, vdi)
    rec = call(sim, "VDI.get_record", session, clone)
    assert rec["other_config"]["kept"] == "yes" and rec["VBDs"] == [] and not rec["is_a_snapshot"]
    snap = call(sim, "VDI.snapshot", session, vdi, {})
    rec = call(sim, "VDI.get_record", session, snap)
    assert rec["is_a_snapshot"] and rec["snapshot_of"] == vdi
    assert snap in call(sim, "VDI.get_snapshots", session, vdi)
    # into an existing VDI: checked for size and writability, then overwritten
    small = call(sim, "VDI.create", session, {"SR": rec["SR"], "virtual_size": str(MiB)})
    assert failure(sim, "VDI.copy", session, vdi, NULL_REF, NULL_REF, small) == [
        "VDI_TOO_SMALL", small, str(4 * MiB),
    ]  # fmt: skip
    target = call(sim, "VDI.create", session, {"SR": rec["SR"], "virtual_size": str(8 * MiB)})
    assert call(sim, "VDI.copy", session, vdi, NULL_REF, NULL_REF, target) == target
    assert sim.host.disk_bytes(target, 0, 4 * MiB) == sim.host.disk_bytes(vdi, 0, 4 * MiB)
    assert int(call(sim, "VDI.get_virtual_size", session, target)) == 8 * MiB
    call(sim, "VDI.set_read_only", session, target, True)
    assert failure(sim, "VDI.copy", session, vdi, NULL_REF, NULL_REF, target) == ["VDI_READONLY", target]
    assert failure(sim, "VDI.copy", session, vdi, "OpaqueRef:nope")[:2] == ["HANDLE_INVALID", "SR"]


def test_snapshot_tree_and_destroy_rebases_children(sim: RunningHost) -> None:
    session = login(sim)
    vm = sim.host.vm("demo-vm")
    first = call(sim, "VM.snapshot", session, vm, "first")
    second = call(sim, "VM.snapshot", session, vm, "second", [sim.host.vdis_of(vm)[1]])  # ignore_vdis
    assert call(sim, "VM.get_parent", session, vm) == second
    assert call(sim, "VM.get_parent", session, second) == first
    assert call(sim, "VM.get_children", session, first) == [second]
    assert len(sim.host.vdis_of(second)) == 1  # the ignored disk is left out
    info = call(sim, "VM.get_snapshot_info", session, second)
    assert info["power-state-at-snapshot"] == "Halted"
    call(sim, "VM.destroy", session, second)
    assert call(sim, "VM.get_parent", session, vm) == first
    assert call(sim, "VM.get_children", session, first) == [vm]
    assert call(sim, "VM.get_snapshots", session, vm) == [first]


def test_lifecycle_errors_of_copies(sim: RunningHost) -> None:
    session = login(sim)
    vm = sim.host.vm("demo-vm")
    assert failure(sim, "VM.checkpoint", session, vm, "c") == [
        "VM_BAD_POWER_STATE", vm, "paused, suspended, running", "halted",
    ]  # fmt: skip
    snap = call(sim, "VM.snapshot", session, vm, "snap")
    assert failure(sim, "VM.snapshot", session, snap, "again") == ["VM_IS_SNAPSHOT", snap, "snapshot"]
    template_of_snapshot = call(sim, "VM.clone", session, snap, "from snapshot")
    assert call(sim, "VM.get_is_a_template", session, template_of_snapshot)  # snapshots are templates
    assert failure(sim, "VM.start", session, template_of_snapshot, False, False) == [
        "VM_IS_TEMPLATE", template_of_snapshot, "start",
    ]  # fmt: skip
    sim.host.set_power_state(vm, "Running")
    assert failure(sim, "VM.clone", session, vm, "x") == ["VM_BAD_POWER_STATE", vm, "halted", "running"]
    checkpoint = call(sim, "VM.checkpoint", session, vm, "cp")
    assert call(sim, "VM.get_power_state", session, checkpoint) == "Suspended"
    dom0 = call(sim, "VM.get_by_name_label", session, "Control domain on host: xvatool-sim")[0]
    assert failure(sim, "VM.snapshot", session, dom0, "x") == [
        "OPERATION_NOT_ALLOWED", "This operation is not allowed on a control domain",
    ]  # fmt: skip


def test_a_failed_or_cancelled_copy_leaves_nothing(sim: RunningHost, monkeypatch: pytest.MonkeyPatch) -> None:
    session = login(sim)
    vm = sim.host.vm("demo-vm")
    state_file = sim.host.state.data_dir / "state.json"
    before = (state_file.read_bytes(), _files(sim), call(sim, "VDI.get_all", session))
    real_copy = disks.copy_sparse
    copies: list[Path] = []

    def second_copy_fails(source: Path, target: Path, **kwargs: Any) -> None:
        copies.append(target)
        if len(copies) == 2:
            raise OSError(28, "No space left on device")
        real_copy(source, target, **kwargs)

    monkeypatch.setattr("xvatool.sim.copies.copy_sparse", second_copy_fails)
    assert failure(sim, "VM.clone", session, vm, "doomed") == [
        "SR_BACKEND_FAILURE", "", "cannot copy the disk: No space left on device", "",
    ]  # fmt: skip
    assert (state_file.read_bytes(), _files(sim), call(sim, "VDI.get_all", session)) == before
    assert call(sim, "VM.get_current_operations", session, vm) == {}
    monkeypatch.undo()

    calls: list[Path] = []

    def slow_second_copy(source: Path, target: Path, **kwargs: Any) -> None:
        calls.append(target)
        for _ in range(100 if len(calls) == 2 else 0):  # the first disk is copied by then
            time.sleep(0.02)
            kwargs["progress"](0)  # a poll point: raises once the task is cancelled
        real_copy(source, target, **kwargs)

    monkeypatch.setattr("xvatool.sim.copies.copy_sparse", slow_second_copy)
    task = call(sim, "Async.VM.copy", session, vm, "cancelled", NULL_REF)
    while len(calls) < 2:
        time.sleep(0.01)
    call(sim, "task.cancel", session, task)
    assert _wait(sim, session, task)["status"] == "cancelled"
    assert (state_file.read_bytes(), _files(sim), call(sim, "VDI.get_all", session)) == before

"""Broken chains and failing transports: each falls back to a way that is still exact, with a notice,
and every snapshot still equals the VM's disks at its time."""

from __future__ import annotations

import threading
import time

import pytest

from tests.incremental.conftest import MIB, Env
from xvatool._retry import RetryPolicy
from xvatool.nbd import NbdConnection
from xvatool.xapi.cbt import data_destroy, nbd_targets


def _vdi(env: Env, vm: str, disk: int = 0) -> str:
    return env.disks(vm)[disk][0]


def _check(env: Env, vm: str, result_snapshot: str | None) -> None:
    assert env.repo_digests(env.repo.find_snapshot(result_snapshot or "")) == env.vm_digests(vm)


def test_cbt_disabled_with_metadata_only_base_falls_back_to_full(env: Env) -> None:
    vm = env.add_vm("a", sizes=(4 * MIB,))
    env.set_purpose("nbd")
    first = env.backup(vm, cbt=True)
    with env.session() as session:
        session.call("VDI.disable_cbt", _vdi(env, vm))
    env.write(vm, 0, (MIB, b"d" * 4096))
    result = env.backup(vm)
    assert result.methods == "full"
    assert result.disks[0].notices == [
        "CBT is off for this disk; the previous snapshot holds metadata only; reading it with full"
    ]
    assert result.kept == "delete"  # nothing is tracked any more: nothing stays
    _check(env, vm, result.snapshot)
    assert first.snapshot != result.snapshot and env.host_snapshots() == []


def test_snapshot_destroyed_on_the_host_falls_back_to_full(env: Env) -> None:
    vm = env.add_vm("b", sizes=(4 * MIB,))
    env.set_purpose("nbd")
    first = env.backup(vm, cbt=True, snapshots="keep")
    with env.session() as session:
        session.call("VDI.destroy", session.call("VDI.get_by_uuid", first.disks[0].snapshot_vdi_uuid))
    env.write(vm, 0, (0, b"e" * 512))
    result = env.backup(vm)
    assert result.methods == "full" and "is gone from the host" in result.disks[0].notices[0]
    _check(env, vm, result.snapshot)


def test_resized_disk_falls_back_to_full(env: Env) -> None:
    vm = env.add_vm("c", sizes=(4 * MIB,))
    env.set_purpose("nbd")
    env.backup(vm, cbt=True)
    with env.session() as session:
        session.call("VDI.resize", _vdi(env, vm), str(6 * MIB))
    env.write(vm, 0, (5 * MIB, b"r" * 4096))
    result = env.backup(vm)
    assert result.methods == "full"
    assert result.disks[0].notices == [
        f"the disk was resized ({4 * MIB} -> {6 * MIB} bytes); reading it with full"
    ]
    _check(env, vm, result.snapshot)
    env.write(vm, 0, (0, b"s" * 512))
    assert env.backup(vm).methods == "cbt"  # and the chain goes on from the resized disk


@pytest.mark.parametrize("snapshots", ["metadata", "keep"])
def test_reverted_vm_is_never_read_by_cbt(env: Env, snapshots: str) -> None:
    vm = env.add_vm("d", sizes=(4 * MIB,))
    env.set_purpose("nbd")
    env.backup(vm, cbt=True, snapshots=snapshots)
    state = env.sim.host.state
    (vm_ref,) = state.find("VM", uuid=vm)
    env.write(vm, 0, (0, b"before" * 100))
    with env.session() as session:
        own = session.call("VM.snapshot", vm_ref, "by the user")
        env.write(vm, 0, (2 * MIB, b"after" * 100))
        session.call("VM.revert", own)
        session.call("VM.destroy", own)
    result = env.backup(vm, snapshots=snapshots)
    expected = "full" if snapshots == "metadata" else "vhd-diff"  # a base with data is still exact
    assert result.methods == expected
    assert "not the one backed up before" in result.disks[0].notices[0]
    _check(env, vm, result.snapshot)


def test_cloned_vm_starts_its_own_chain(env: Env) -> None:
    vm = env.add_vm("e", sizes=(4 * MIB,))
    env.set_purpose("nbd")
    env.backup(vm, cbt=True)
    (vm_ref,) = env.sim.host.state.find("VM", uuid=vm)
    with env.session() as session:
        clone_ref = session.call("VM.clone", vm_ref, "e-clone")
        clone = session.call("VM.get_uuid", clone_ref)
    clone_result = env.backup(clone)
    assert clone_result.methods == "full" and clone_result.disks[0].notices == []
    assert not env.sim.host.state.field("VDI", _vdi(env, clone), "cbt_enabled")
    env.write(vm, 0, (MIB, b"o" * 512))
    assert env.backup(vm).methods == "cbt"  # the original's chain is untouched
    _check(env, clone, clone_result.snapshot)


def test_no_nbd_network_falls_back(env: Env) -> None:
    vm = env.add_vm("f", sizes=(4 * MIB,))
    env.set_purpose(None)  # CBT without NBD: changed blocks are known but cannot be read
    env.backup(vm, cbt=True, snapshots="keep")
    env.write(vm, 0, (0, b"n" * 512))
    result = env.backup(vm, snapshots="keep")
    assert result.methods == "vhd-diff"
    assert (
        result.disks[0].notices[0].startswith("cbt failed") and "no NBD address" in result.disks[0].notices[0]
    )
    _check(env, vm, result.snapshot)


def test_dropped_nbd_connections_are_resumed(env: Env) -> None:
    vm = env.add_vm("g", sizes=(16 * MIB,))
    env.set_purpose("nbd")
    env.backup(vm, cbt=True)
    env.write(vm, 0, *((n * MIB, bytes([n]) * 4096) for n in range(16)))
    env.sim.host.add_fault("nbd:drop-after=3MiB:times=3")
    result = env.backup(vm, nbd_connections=2)
    assert result.methods == "cbt" and result.disks[0].notices == []
    assert not env.sim.host.faults.pending()  # every drop happened, and was survived
    _check(env, vm, result.snapshot)


@pytest.mark.parametrize(("snapshots", "then"), [("keep", "vhd-diff"), ("metadata", "full")])
def test_nbd_failing_for_good_hands_over_where_it_stopped(env: Env, snapshots: str, then: str) -> None:
    vm = env.add_vm("h", sizes=(16 * MIB,))
    env.set_purpose("nbd")
    env.backup(vm, cbt=True, snapshots=snapshots)
    env.write(vm, 0, *((n * MIB, bytes([n + 1]) * 4096) for n in range(16)))
    env.sim.host.add_fault("nbd:drop-after=4MiB:times=1")  # the first connection dies after 4 MiB
    env.sim.host.add_fault("nbd:drop-after=0:times=1000")  # and every later one before any data
    result = env.backup(
        vm, snapshots=snapshots, nbd_connections=1, retry=RetryPolicy(retries=1, backoff_s=0.01)
    )
    assert result.disks[0].methods == ["cbt", then]  # the next way took over where NBD stopped
    assert result.disks[0].notices[0].startswith("cbt failed")
    env.sim.host.faults.clear()
    _check(env, vm, result.snapshot)


def test_data_that_changes_when_read_again_is_not_committed(env: Env) -> None:
    vm = env.add_vm("i", sizes=(4 * MIB,))
    env.set_purpose("nbd")
    first = env.backup(vm, cbt=True)
    env.write(vm, 0, (2 * MIB, b"c" * 512))
    env.sim.host.add_fault("nbd:corrupt-chunk=2")
    from xvatool.ops.backup import Selection
    from xvatool.ops.repo_backup import backup_to_repository

    report = backup_to_repository(env.session, Selection(vms=(vm,)), env.repo)
    (failed,) = report.results
    assert failed.status == "failed" and "other data when the chunk was read again" in (failed.error or "")
    assert [s.id for s in env.repo.snapshots()] == [first.snapshot]
    # The previous snapshot's metadata is still the base, and the failed one left nothing behind.
    assert {r["uuid"] for r in env.host_snapshots()} == {first.disks[0].snapshot_vdi_uuid}
    result = env.backup(vm)
    assert result.methods == "cbt"
    _check(env, vm, result.snapshot)


def test_data_destroy_is_retried_while_dom0_holds_the_vdi(env: Env) -> None:
    vm = env.add_vm("j", sizes=(4 * MIB,))
    env.set_purpose("nbd")
    kept = env.backup(vm, cbt=True, snapshots="keep")
    env.sim.host.ops.cbt.data_destroy_wait_s = 0.1
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    with env.session() as session:
        session.call("VM.destroy", session.call("VM.get_by_uuid", env.snapshot(kept).source["host_snapshot"]))
        vdi = session.call("VDI.get_by_uuid", kept.disks[0].snapshot_vdi_uuid)
        conn = NbdConnection.open(nbd_targets(session, vdi)[0])  # an NBD reader still attached
        timer = threading.Timer(0.5, conn.close)
        timer.start()
        try:
            data_destroy(session, vdi, retry=RetryPolicy(backoff_s=0.2, sleep=sleep))
        finally:
            timer.cancel()
            conn.close()
        assert waits and session.call("VDI.get_type", vdi) == "cbt_metadata"


def test_host_snapshots_left_by_interrupted_runs_are_destroyed_once_old(env: Env) -> None:
    # A run killed before its clean-up (kill -9, a lost connection) leaves its host snapshot, marked
    # as ours. The next backup into the same repository destroys such leftovers once they are older
    # than ORPHAN_AGE; a young one (a run still going), another repository's and the user's stay.
    from xvatool.ops.incremental import MARKER_KEY, REPO_KEY
    from xvatool.xva.ovaxml import DateTime

    vm = env.add_vm("k", sizes=(4 * MIB,))
    env.set_purpose("nbd")
    first = env.backup(vm, cbt=True)
    state = env.sim.host.state
    old = DateTime("20200101T00:00:00Z")

    def left(cls: str, ref: str, *, repo: str | None, taken: DateTime | None) -> str:
        refs = [ref] if cls == "VDI" else [ref, *(r for r, _ in _snapshot_disks(env, ref))]
        with env.session() as session:
            for each in refs:
                kind = "VM" if each == ref and cls == "VM" else "VDI"
                session.call(f"{kind}.add_to_other_config", each, MARKER_KEY, vm)
                if repo is not None:
                    session.call(f"{kind}.add_to_other_config", each, REPO_KEY, repo)
                if taken is not None:
                    state.update(kind, each, snapshot_time=taken)
        return str(state.field(cls, ref, "uuid"))

    with env.session() as session:
        vm_ref = session.call("VM.get_by_uuid", vm)
        snap = lambda name: session.call("VM.snapshot", vm_ref, name)  # noqa: E731
        killed = left("VM", snap("killed"), repo=env.repo.config.id, taken=old)
        running = left("VM", snap("running"), repo=env.repo.config.id, taken=None)
        other_repo = left("VM", snap("other"), repo="another-repository", taken=old)
        users = str(state.field("VM", snap("the user's"), "uuid"))
        vdi_only = left(
            "VDI", session.call("VDI.snapshot", _vdi(env, vm)), repo=env.repo.config.id, taken=old
        )
    killed_disks = {u for _, u in _snapshot_disks(env, state.find("VM", uuid=killed)[0])}

    result = env.backup(vm)
    assert result.methods == "cbt"  # the chain of the first backup is intact
    _check(env, vm, result.snapshot)
    vms = {rec["uuid"] for rec in state.records("VM").values() if rec["is_a_snapshot"]}
    assert killed not in vms and {running, other_repo, users} <= vms
    vdis = {rec["uuid"] for rec in env.host_snapshots()}
    assert vdi_only not in vdis and not killed_disks & vdis
    assert {d.snapshot_vdi_uuid for d in result.disks} <= vdis  # this run's metadata base stays
    assert first.disks[0].snapshot_vdi_uuid not in vdis  # the previous base went as before


def _snapshot_disks(env: Env, vm_ref: str) -> list[tuple[str, str]]:
    state = env.sim.host.state
    return [(ref, str(state.field("VDI", ref, "uuid"))) for ref in env.sim.host.vdis_of(vm_ref)]

"""Each way of reading a disk, night after night: what it read, what it stored, what it left on the host.

Every snapshot is checked against the VM's disks at its time, and, where the host snapshot was
kept, against a full export of that same host snapshot; then the snapshots are restored.
"""

from __future__ import annotations

import os

from tests.incremental.conftest import MIB, Env
from xvatool.ops.hostdisks import vm_disk_digests
from xvatool.ops.repo_restore import restore_from_repository


def _kept_match_host(env: Env, result_snapshot_id: str) -> None:
    """The repository snapshot equals a full export of the host snapshot it was read from."""
    snapshot = env.repo.find_snapshot(result_snapshot_id)
    disks = sorted(snapshot.disks, key=lambda d: int(d.userdevice or 0))
    assert env.repo_digests(snapshot) == [env.host_export_digest(d.source["host_vdi"]) for d in disks]


def test_cbt_over_nbd_night_after_night_and_every_night_restores(env: Env) -> None:
    vm = env.add_vm("web")
    env.set_purpose("nbd")
    expected: dict[str, list[str]] = {}
    first = env.backup(vm, cbt=True)
    assert first.methods == "full,full" and first.kept == "metadata"
    expected[first.snapshot or ""] = env.vm_digests(vm)
    results = [first]
    for night in range(3):
        env.scatter(vm, 0, 3, seed=night)
        env.write(vm, 1, (night * MIB + 4096, os.urandom(8192)))
        result = env.backup(vm)
        assert result.methods == "cbt,cbt", result.disks
        assert result.bytes_read <= 6 * MIB  # changed chunks and the re-read sample, not 12 MiB
        assert result.disks[0].notices == [] and result.kept == "metadata"
        expected[result.snapshot or ""] = env.vm_digests(vm)
        results.append(result)
    for snapshot_id, digests in expected.items():
        assert env.repo_digests(env.repo.find_snapshot(snapshot_id)) == digests
    # Only the newest snapshot stays on the host, as change logs without data, and no snapshot VM.
    left = env.host_snapshots()
    assert {rec["type"] for rec in left} == {"cbt_metadata"} and len(left) == 2
    assert {rec["uuid"] for rec in left} == {d.snapshot_vdi_uuid for d in results[-1].disks}
    state = env.sim.host.state
    assert not [r for r in state.records("VM").values() if r["is_a_snapshot"]]
    with env.session() as session:
        for n, (snapshot_id, digests) in enumerate(expected.items()):
            restored = restore_from_repository(
                session, env.repo, snapshot_id, mode="parallel" if n % 2 else "stream"
            )
            assert [d.sha256 for d in vm_disk_digests(session, restored.vm_uuid)] == digests


def test_each_incremental_equals_a_full_export_of_its_host_snapshot(env: Env) -> None:
    vm = env.add_vm("db", sizes=(16 * MIB,))
    env.set_purpose("insecure_nbd")  # plain NBD: the pool says so, so the client may
    first = env.backup(vm, cbt=True, snapshots="keep")
    _kept_match_host(env, first.snapshot or "")
    env.scatter(vm, 0, 5, seed=7)
    cbt = env.backup(vm, snapshots="keep")
    assert cbt.methods == "cbt"
    _kept_match_host(env, cbt.snapshot or "")
    (disk,) = env.disks(vm)
    with env.session() as session:
        session.call("VDI.disable_cbt", disk[0])
    env.scatter(vm, 0, 5, seed=8)
    delta = env.backup(vm, snapshots="keep")
    assert delta.methods == "vhd-diff" and delta.disks[0].notices == [
        "CBT is off for this disk; reading it with vhd-diff"
    ]
    _kept_match_host(env, delta.snapshot or "")
    env.scatter(vm, 0, 2, seed=9)
    again = env.backup(vm, snapshots="keep")
    assert again.methods == "vhd-diff" and again.disks[0].notices == []
    assert again.bytes_read < 6 * MIB  # two 2 MiB VHD blocks at most, and a re-read MiB
    _kept_match_host(env, again.snapshot or "")
    # With keep, the newest host snapshot is the only one left, with its data.
    assert [rec["type"] for rec in env.host_snapshots()] == ["user"]


def test_without_cbt_or_kept_snapshots_every_night_is_a_full_read(env: Env) -> None:
    vm = env.add_vm("plain", sizes=(4 * MIB,))
    first = env.backup(vm)
    assert first.methods == "full" and first.kept == "delete"
    env.write(vm, 0, (MIB, b"x" * 512))
    second = env.backup(vm)
    # nothing was kept on the host: a full read is the plan every night, not a broken chain to report
    assert second.methods == "full" and second.disks[0].notices == []
    assert env.repo_digests(env.snapshot(second)) == env.vm_digests(vm)
    assert second.new_bytes < first.new_bytes  # deduplication still stores only what changed
    assert env.host_snapshots() == []


def test_first_backup_after_cbt_is_full_then_incremental(env: Env) -> None:
    vm = env.add_vm("late", sizes=(4 * MIB,))
    env.set_purpose("nbd")
    env.backup(vm)  # no CBT yet: nothing kept
    after = env.backup(vm, cbt=True)
    assert after.methods == "full" and after.kept == "metadata"
    env.write(vm, 0, (0, b"y" * 4096))
    assert env.backup(vm).methods == "cbt"


def test_running_vms_in_parallel(env: Env) -> None:
    from xvatool.ops.backup import Selection
    from xvatool.ops.repo_backup import backup_to_repository

    vms = [env.add_vm(name, sizes=(4 * MIB, 2 * MIB), seed=n) for n, name in enumerate(("p1", "p2", "p3"))]
    for vm in vms:
        (ref,) = env.sim.host.state.find("VM", uuid=vm)
        env.sim.host.set_power_state(ref, "Running")
    env.set_purpose("nbd")
    first = backup_to_repository(env.session, Selection(vms=tuple(vms)), env.repo, jobs=3, cbt=True)
    assert first.exit_code == 0 and {r.methods for r in first.results} == {"full,full"}
    for n, vm in enumerate(vms):
        env.write(vm, n % 2, (MIB, os.urandom(4096)))
    second = backup_to_repository(env.session, Selection(vms=tuple(vms)), env.repo, jobs=3)
    assert second.exit_code == 0 and {r.methods for r in second.results} == {"cbt,cbt"}
    for result in second.results:
        assert env.repo_digests(env.snapshot(result)) == env.vm_digests(result.vm_uuid)
        assert result.bytes_read <= 2 * MIB  # one changed chunk and its re-read

"""Appliance backups between two simulated hosts: one consistent run, the group recorded, restored whole."""

from __future__ import annotations

import json

import pytest

from tests.appliances.helpers import (
    MEMBERS,
    SOURCE_ORDER,
    ArmFault,
    appliance_on,
    inventory,
    member_digests,
    order_and_delays,
    session_of,
)
from xvatool._retry import NO_RETRY
from xvatool.errors import ChecksumError, TransferError, UsageError, XvatoolError
from xvatool.ops.appliance_backup import APPLIANCE_MANIFEST, backup_appliance, restore_appliance
from xvatool.ops.restore import restore


def test_backup_records_the_group_and_restore_recreates_it(source, target, tmp_path):
    with session_of(source) as s:
        s.call("VM.start", source.host.vm("demo-app-web"), False, False)  # exported through a snapshot
        result = backup_appliance(s, "demo-app", tmp_path / "bk")
    assert sorted(p.name for p in result.folder.iterdir()) == sorted(
        [APPLIANCE_MANIFEST]
        + [
            f"{m.vm_name}-{m.vm_uuid[:8]}{suffix}"
            for m in result.members
            for suffix in (".xva", ".manifest.json")
        ]
    )
    doc = json.loads(result.manifest.read_text())
    group = doc["appliance"]
    assert (doc["kind"], group["name"], group["description"]) == (
        "xvatool-appliance-backup",
        "demo-app",
        "Seeded by xvatool serve --demo",
    )
    assert {
        m["name"]: (m["order"], m["start_delay"], m["shutdown_delay"]) for m in group["members"]
    } == SOURCE_ORDER
    assert {n["name"]: n["private"] for n in group["networks"]} == {
        "demo-app private": True,
        "Pool-wide network associated with eth0": False,
    }
    assert {m.vm_name: m.snapshot for m in result.members} == {"demo-app-db": False, "demo-app-web": True}
    assert not [r for r in source.host.state.records("VM").values() if r["is_a_snapshot"]]  # snapshots gone

    with session_of(target) as t:
        restored = restore_appliance(t, result.folder)
    app = appliance_on(target)
    assert (
        app["uuid"] == restored.appliance_uuid and app["name_description"] == "Seeded by xvatool serve --demo"
    )
    assert order_and_delays(app) == SOURCE_ORDER
    assert member_digests(target) == member_digests(source)
    assert restored.networks_created == ["demo-app private"]
    (private,) = target.host.state.find("network", name_label="demo-app private")
    assert target.host.state.field("network", private, "PIFs") == []
    db_vifs = app["members"]["demo-app-db"]["VIFs"]
    assert [target.host.state.field("VIF", v, "network") for v in db_vifs] == [private]

    with session_of(target) as t:  # the recreated group starts in the recorded order
        t.call("VM_appliance.start", app["ref"], False)
    assert [c.name_label for c in target.host.api.appliances.log] == list(MEMBERS)


def test_a_member_restores_alone_from_its_own_manifest(source, target, tmp_path):
    with session_of(source) as s:
        result = backup_appliance(s, "demo-app", tmp_path / "bk")
    member = next(m for m in result.members if m.vm_name == "demo-app-web")
    with session_of(target) as t:
        restore(t, result.folder / member.archive)
    assert member_digests(target, ("demo-app-web",)) == member_digests(source, ("demo-app-web",))


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_running_members_are_described_as_themselves_not_their_snapshots(source, target, tmp_path, mode):
    # Regression (issue 12 bug 3): members exported from the snapshots taken together carried the
    # snapshots' VM and VDI uuids in the archive and the manifest; --restore-identity gave those back.
    from xvatool.ops.manifest import load_manifest, manifest_path_for
    from xvatool.xva.opening import open_archive

    state = source.host.state
    web = source.host.vm("demo-app-web")
    web_uuid = state.field("VM", web, "uuid")
    web_disks = sorted(state.field("VDI", v, "uuid") for v in source.host.vdis_of(web))
    with session_of(source) as s:
        s.call("VM.start", web, False, False)
        result = backup_appliance(s, "demo-app", tmp_path / "bk", mode=mode)
    member = next(m for m in result.members if m.vm_name == "demo-app-web")
    archive = result.folder / member.archive
    manifest = load_manifest(manifest_path_for(archive))
    assert manifest.vm_uuid == web_uuid and manifest.snapshot
    assert manifest.snapshot_uuid not in (None, web_uuid)
    assert sorted(d.vdi_uuid for d in manifest.disks) == web_disks
    with open_archive(archive) as reader:
        assert (reader.metadata.vm.uuid, reader.metadata.vm.name_label) == (web_uuid, "demo-app-web")
        assert sorted(d.vdi_uuid for d in reader.metadata.disks) == web_disks
    with session_of(target) as t:
        restored = restore_appliance(t, result.folder, restore_identity=True)
    assert restored.vms["demo-app-web"] == web_uuid  # the VM's identity, on a pool that has not seen it
    assert member_digests(target) == member_digests(source)


def test_a_failing_member_leaves_no_backup(source, tmp_path):
    dest = tmp_path / "bk"
    progress = ArmFault(source, "export:drop-after=64KiB", after="demo-app-db")
    with session_of(source) as s, pytest.raises(TransferError):
        backup_appliance(s, "demo-app", dest, retry=NO_RETRY, progress=progress)
    assert progress.armed
    (folder,) = dest.iterdir()
    assert [p.name for p in folder.iterdir()] == [".lock"]  # the run and the first member's backup are gone
    assert not [r for r in source.host.state.records("VM").values() if r["is_a_snapshot"]]


def test_retention_keeps_the_newest_runs_and_cleans_incomplete_ones(source, tmp_path):
    dest = tmp_path / "bk"
    with session_of(source) as s:
        first = backup_appliance(s, "demo-app", dest)
        leftover = first.folder.parent / "20200101T000000Z"
        leftover.mkdir()
        (leftover / "x.xva").write_bytes(b"partial")
        second = backup_appliance(s, "demo-app", dest, keep=1)
    assert sorted(second.removed) == sorted([first.folder, leftover])
    runs = [p for p in second.folder.parent.iterdir() if p.is_dir()]
    assert runs == [second.folder]


def test_a_tampered_member_is_refused_before_the_host_sees_anything(source, target, tmp_path):
    with session_of(source) as s:
        result = backup_appliance(s, "demo-app", tmp_path / "bk")
    archive = result.folder / result.members[1].archive
    data = bytearray(archive.read_bytes())
    data[-2000] ^= 1
    archive.write_bytes(bytes(data))
    before = inventory(target)
    with session_of(target) as t, pytest.raises(ChecksumError):
        restore_appliance(t, result.folder)
    assert inventory(target) == before


def test_a_swapped_member_is_refused(source, target, tmp_path):
    with session_of(source) as s:
        first = backup_appliance(s, "demo-app", tmp_path / "bk")
        second = backup_appliance(s, "demo-app", tmp_path / "bk")
    for suffix in (".xva", ".manifest.json"):  # a consistent member of another run
        name = first.members[0].archive.removesuffix(".xva") + suffix
        (second.folder / name).write_bytes((first.folder / name).read_bytes())
    with session_of(target) as t, pytest.raises(ChecksumError, match="member archive"):
        restore_appliance(t, second.folder)


def test_a_failed_restore_leaves_nothing_on_the_target(source, target, tmp_path):
    with session_of(source) as s:
        result = backup_appliance(s, "demo-app", tmp_path / "bk")
    before = inventory(target)
    progress = ArmFault(target, "import:drop-after=64KiB", after="demo-app-db")
    with session_of(target) as t, pytest.raises(XvatoolError):
        restore_appliance(t, result.manifest, retry=NO_RETRY, progress=progress)
    assert progress.armed
    assert inventory(target) == before


def test_an_incomplete_run_is_not_restorable(source, target, tmp_path):
    with session_of(source) as s:
        result = backup_appliance(s, "demo-app", tmp_path / "bk")
    (result.folder / APPLIANCE_MANIFEST).unlink()
    with session_of(target) as t, pytest.raises(UsageError, match="not a complete appliance backup"):
        restore_appliance(t, result.folder)


def test_unknown_and_empty_appliances_are_usage_errors(source, tmp_path):
    with session_of(source) as s:
        with pytest.raises(UsageError, match="no appliance"):
            backup_appliance(s, "nope", tmp_path)
        s.call("VM_appliance.create", {"name_label": "empty", "name_description": ""})
        with pytest.raises(UsageError, match="has no VMs"):
            backup_appliance(s, "empty", tmp_path)

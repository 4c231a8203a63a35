from __future__ import annotations

import json
import signal
import threading

import pytest

from tests.ops.helpers import MIB
from tests.progress import RecordingProgress
from xvatool.errors import LocalIOError, PartialFailure, UsageError
from xvatool.ops.backup import Selection, backup, sanitize_name, select_vms, utc_stamp
from xvatool.ops.manifest import load_manifest, verify_backup
from xvatool.xapi.inventory import vm_disks


def _three_vms(host):
    return [
        host.add_vm("alpha", (2 * MIB, MIB), seed=1, tags=("nightly",)),
        host.add_vm("beta one/two", (3 * MIB,), seed=5, tags=("nightly", "db")),
        host.add_vm("gamma", (MIB + 512,), seed=9),
    ]


def test_backup_several_vms_with_two_jobs_writes_verifiable_manifests(host, tmp_path):
    vms = _three_vms(host)
    dest = tmp_path / "backups"
    report = backup(host.session, Selection(all_vms=True), dest, jobs=2)

    assert report.exit_code == 0, [r.error for r in report.results]
    assert sorted(r.vm_uuid for r in report.results) == sorted(v.uuid for v in vms)
    by_uuid = {v.uuid: v for v in vms}
    for result in report.results:
        vm = by_uuid[result.vm_uuid]
        assert result.archive.parent.name == f"{sanitize_name(vm.name)}-{vm.uuid[:8]}"
        assert result.manifest.name == result.archive.name.replace(".xva", ".manifest.json")
        archive, manifest = verify_backup(result.manifest)  # sha256 and size match the file
        assert archive == result.archive
        assert manifest.vm_uuid == vm.uuid
        assert manifest.vm_name == vm.name
        assert manifest.source["url"] == host.url
        assert manifest.source["pool_uuid"]
        assert manifest.checksum_kind in ("sha1", "xxhash")
        assert manifest.compression == "none"
        # Per-disk digests are those of the images the VM was created from.
        assert [d.sha256 for d in manifest.disks] == vm.digests
        assert manifest.started_at <= manifest.finished_at
        assert result.archive_size == archive.stat().st_size
    # No temporary snapshot and no leftover files.
    with host.session() as session:
        records = session.call("VM.get_all_records")
        assert not [r for r in records.values() if r["is_a_snapshot"]]
    leftovers = [p for p in dest.rglob("*") if p.name.endswith(".part")]
    assert leftovers == []
    assert "beta_one_two" in {p.name.rsplit("-", 1)[0] for p in dest.iterdir()}


def test_backup_of_running_vm_uses_and_destroys_a_snapshot(host, tmp_path):
    vm = host.add_vm("live", (MIB,), seed=3)
    with host.session() as session:
        ref = session.call("VM.get_by_uuid", vm.uuid)
        session.call("VM.start", ref, False, False)
        before = set(session.call("VDI.get_all"))
    report = backup(host.session, Selection(vms=("live",)), tmp_path / "b", compression="zstd")
    assert report.exit_code == 0, report.results[0].error
    manifest = load_manifest(report.results[0].manifest)
    assert manifest.snapshot is True
    assert manifest.compression == "zstd"
    assert manifest.vm_uuid == vm.uuid
    assert [d.sha256 for d in manifest.disks] == vm.digests
    with host.session() as session:
        assert set(session.call("VDI.get_all")) == before
        assert session.call("VM.get_power_state", ref) == "Running"
        assert not [r for r in session.call("VM.get_all_records").values() if r["is_a_snapshot"]]


def test_failed_export_of_one_vm_does_not_stop_the_others(host, tmp_path):
    vms = _three_vms(host)
    # One corrupt chunk on the next export: exactly one VM's verification fails (not retried).
    host.running.host.faults.add("export:corrupt-chunk=0")
    dest = tmp_path / "b"
    report = backup(host.session, Selection(all_vms=True), dest, jobs=2)
    assert report.exit_code == 3
    failed = report.failed
    assert len(failed) == 1
    assert "checksum" in failed[0].error
    assert failed[0].archive is None
    failed_dir = next(p for p in dest.iterdir() if p.name.endswith(failed[0].vm_uuid[:8]))
    assert [p.name for p in failed_dir.iterdir() if not p.name.startswith(".")] == []
    ok = [r for r in report.results if r.status == "ok"]
    assert len(ok) == len(vms) - 1
    for result in ok:
        verify_backup(result.archive)
    assert report.to_json()["failed_count"] == 1


def test_all_failed_is_exit_1(host, tmp_path):
    host.add_vm("solo", (MIB,))
    host.running.host.faults.add("export:corrupt-chunk=0")
    report = backup(host.session, Selection(vms=("solo",)), tmp_path / "b")
    assert report.exit_code == 1


def test_retention_keeps_n_newest_complete(host, tmp_path):
    vm = host.add_vm("kept", (MIB,))
    dest = tmp_path / "b"
    archives = []
    for _ in range(3):
        report = backup(host.session, Selection(vms=(vm.uuid,)), dest, keep=2)
        assert report.exit_code == 0
        archives.append(report.results[0].archive)
    folder = archives[0].parent
    # Same-second backups get distinct names; the oldest one went.
    assert len(set(archives)) == 3
    leftover = folder / "20000101T000000Z.xva.part"
    leftover.write_bytes(b"interrupted")
    report = backup(host.session, Selection(vms=(vm.uuid,)), dest, keep=2)
    archives.append(report.results[0].archive)
    assert leftover in report.results[0].cleaned
    assert [e.archive for e in report.results[0].pruned] == [archives[1]]
    names = sorted(p.name for p in folder.iterdir() if p.suffix == ".xva")
    assert names == sorted(a.name for a in archives[-2:])


def test_selection_by_tag_and_exclusions(host):
    alpha, beta, gamma = _three_vms(host)
    with host.session() as session:
        assert {v.uuid for v in select_vms(session, Selection(tags=("db",)))} == {beta.uuid}
        assert {v.uuid for v in select_vms(session, Selection(tags=("nightly",)))} == {alpha.uuid, beta.uuid}
        # --all: no templates, no snapshots, no control domain.
        ref = session.call("VM.get_by_uuid", gamma.uuid)
        snap = session.call("VM.snapshot", ref, "snap")
        chosen = select_vms(session, Selection(all_vms=True))
        records = session.call("VM.get_all_records")
        assert snap not in {v.ref for v in chosen}
        for vm in chosen:
            rec = records[vm.ref]
            assert not (rec["is_a_template"] or rec["is_a_snapshot"] or rec["is_control_domain"])
        # Named VMs come first and each VM appears once.
        both = select_vms(session, Selection(vms=("gamma", alpha.uuid), tags=("nightly",)))
        assert [v.uuid for v in both][:2] == [gamma.uuid, alpha.uuid]
        assert len(both) == 3
        with pytest.raises(UsageError):
            select_vms(session, Selection(tags=("nope",)))
        with pytest.raises(UsageError):
            select_vms(session, Selection(vms=("missing",)))


def test_bad_options_fail_before_any_export(tmp_path):
    def no_session():
        raise AssertionError("must not connect")

    with pytest.raises(UsageError):
        backup(no_session, Selection(all_vms=True), tmp_path, jobs=0)
    with pytest.raises(UsageError):
        backup(no_session, Selection(all_vms=True), tmp_path, keep=0)
    with pytest.raises(UsageError):
        backup(no_session, Selection(all_vms=True), tmp_path, compression="lz4")
    with pytest.raises(UsageError):
        backup(no_session, Selection(all_vms=True), tmp_path, mode="fast")


@pytest.mark.parametrize(
    ("name", "safe"),
    [("web 01/prod", "web_01_prod"), ("..", "vm"), ("ünï", "n"), ("a" * 100, "a" * 64), ("x.y-z", "x.y-z")],
)
def test_sanitize_name(name, safe):
    assert sanitize_name(name) == safe


def test_utc_stamp():
    import datetime as dt

    moment = dt.datetime(2026, 11, 27, 5, 15, tzinfo=dt.UTC)
    assert utc_stamp(moment) == "20261127T051500Z"


def test_report_json_is_serialisable(host, tmp_path):
    host.add_vm("j", (MIB,))
    report = backup(host.session, Selection(vms=("j",)), tmp_path / "b")
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["ok_count"] == 1 and doc["results"][0]["status"] == "ok"


def test_parallel_mode_backup_and_restore(host, tmp_path):
    from xvatool.ops.hostdisks import vm_disk_digests
    from xvatool.ops.restore import restore

    vm = host.add_vm("par", (2 * MIB, MIB), seed=8)
    report = backup(
        host.session, Selection(vms=("par",)), tmp_path / "b", mode="parallel", compression="gzip"
    )
    assert report.exit_code == 0, report.results[0].error
    manifest = load_manifest(report.results[0].manifest)
    assert manifest.extra["mode"] == "parallel"
    assert [d.sha256 for d in manifest.disks] == vm.digests
    with host.session() as session:
        restored = restore(session, report.results[0].archive, mode="parallel")
        assert [d.sha256 for d in vm_disk_digests(session, restored.vm_uuid)] == vm.digests


def test_failed_parallel_export_leaves_no_spool_or_journal(host, tmp_path, private_state_dir):
    vm = host.add_vm("parfail", (2 * MIB, MIB), seed=8)
    host.running.host.add_fault("export_raw_vdi:corrupt-chunk=0")
    report = backup(host.session, Selection(vms=(vm.uuid,)), tmp_path / "b", mode="parallel")
    assert report.exit_code == 1
    folder = next((tmp_path / "b").iterdir())
    assert [p.name for p in folder.iterdir()] == [".lock"]
    assert list(private_state_dir.rglob("*.json")) == []  # the export's journal went too


def test_source_info_never_records_credentials():
    from xvatool.ops.backup import _source_info

    class FakeSession:
        url = "https://root:secret@[::1]:8443"

        def call(self, method, *params):
            return {"OpaqueRef:p": {"uuid": "u", "name_label": "pool", "master": "OpaqueRef:NULL"}}

    info = _source_info(FakeSession())
    assert info == {"url": "https://[::1]:8443", "pool_uuid": "u", "pool_name": "pool", "host_name": ""}


# -- daily use (issue 12) --------------------------------------------------------------------------


def test_an_unknown_vm_is_a_failed_item_and_the_others_run(host, tmp_path):
    # Regression: `--vm nosuch --vm good` aborted the whole run before any backup.
    good = host.add_vm("good", (MIB,), seed=2)
    report = backup(host.session, Selection(vms=("nosuch", "good")), tmp_path / "b")
    assert report.exit_code == 3
    missing, done = report.results
    assert (missing.vm_name, missing.status, missing.error_code) == ("nosuch", "failed", "usage")
    assert "no VM with uuid or name 'nosuch'" in missing.error
    assert (done.vm_uuid, done.status) == (good.uuid, "ok")
    verify_backup(done.manifest)
    with pytest.raises(PartialFailure, match="1 of 2 backups failed: nosuch"):
        report.raise_for_failures()
    doc = report.to_json()
    assert doc["results"][0]["error"] == {"code": "usage", "message": missing.error}


def test_all_with_named_vms_is_a_usage_error_and_nothing_is_created(host, tmp_path):
    host.add_vm("one", (MIB,))
    dest = tmp_path / "b"
    with pytest.raises(UsageError, match="--all"):
        backup(host.session, Selection(vms=("one",), all_vms=True), dest)
    with pytest.raises(UsageError, match="no VM matches tag nobody"):
        backup(host.session, Selection(tags=("nobody",)), dest)
    assert not dest.exists()  # the folder is not created when the selection fails


def test_unwritable_dest_fails_before_any_export(host, tmp_path):
    host.add_vm("one", (MIB,))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    exports = host.running.host.faults.pending()
    with pytest.raises(LocalIOError, match="cannot write backups here"):
        backup(host.session, Selection(vms=("one",)), blocker / "backups")
    assert host.running.host.faults.pending() == exports
    with host.session() as session:
        assert not [r for r in session.call("VM.get_all_records").values() if r["is_a_snapshot"]]


def _running_vm(host, *, seed: int):
    """A started VM "live" with two disks; (the VM, its disks' VDI uuids sorted)."""
    vm = host.add_vm("live", (2 * MIB, MIB), seed=seed)
    with host.session() as session:
        ref = session.call("VM.get_by_uuid", vm.uuid)
        vdi_uuids = sorted(d.uuid for d in vm_disks(session, ref))
        session.call("VM.start", ref, False, False)
    return vm, vdi_uuids


def test_backup_of_a_running_vm_describes_the_vm_not_its_snapshot(host, second_host, tmp_path):
    # Regression: the archive, the manifest, extract's file names and --restore-identity all
    # carried the temporary snapshot's VM and VDI uuids.
    from xvatool.ops.restore import restore
    from xvatool.xva.extract import extract_disks
    from xvatool.xva.opening import open_archive

    vm, vdi_uuids = _running_vm(host, seed=3)
    for mode, compression in (("stream", "zstd"), ("parallel", "none")):
        report = backup(host.session, Selection(vms=("live",)), tmp_path / mode, mode=mode,
                        compression=compression)  # fmt: skip
        result = report.results[0]
        assert report.exit_code == 0, result.error
        manifest = load_manifest(result.manifest)
        assert manifest.vm_uuid == vm.uuid and manifest.snapshot
        assert manifest.snapshot_uuid not in (None, vm.uuid)
        assert sorted(d.vdi_uuid for d in manifest.disks) == vdi_uuids
        assert [d.sha256 for d in manifest.disks] == vm.digests
        with open_archive(result.archive) as reader:
            assert reader.metadata.vm.uuid == vm.uuid
            assert sorted(d.vdi_uuid for d in reader.metadata.disks) == vdi_uuids
        extracted = extract_disks(result.archive, tmp_path / f"disks-{mode}")
        assert sorted(p.name for p in extracted) == sorted(f"{u}.raw" for u in vdi_uuids)
    with second_host.session() as target:
        restored = restore(target, result.manifest, restore_identity=True)
        assert restored.vm_uuid == vm.uuid  # the VM's identity, on a pool that has not seen it


def test_ctrl_c_stops_every_job_of_a_parallel_backup_promptly(host, tmp_path):
    # Regression: with --jobs 2 Ctrl-C waited for both backups to complete, then said "interrupted".
    for name, seed in (("first", 1), ("second", 2)):
        host.add_vm(name, (24 * MIB,), seed=seed, full=True)
    started: set[str] = set()

    def ctrl_c_once_both_run(label: str, done: int) -> None:
        started.add(label.split()[0])
        if started == {"first", "second"} and not interrupted:
            interrupted.append(True)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # as a terminal does

    interrupted: list[bool] = []
    bars = RecordingProgress(on_update=ctrl_c_once_both_run)
    dest = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        backup(host.session, Selection(vms=("first", "second")), dest, jobs=2, progress=bars)
    # Both exports stopped part way: nothing that looks like a backup, nothing half-written.
    assert [b for b in bars.counts if b.endswith("verify")] == []
    assert all(bars.counts[label] < bars.totals[label] for label in ("first", "second"))
    assert [p for p in dest.rglob("*") if p.is_file() and p.name != ".lock"] == []
    with host.session() as session:
        assert not [r for r in session.call("VM.get_all_records").values() if r["is_a_snapshot"]]


def test_a_repository_backup_reports_a_missing_vm_as_a_failed_item(host, tmp_path):
    from xvatool.ops.repo_backup import backup_to_repository
    from xvatool.repo.repository import init_repository

    host.add_vm("present", (MIB,), seed=4)
    repo = init_repository(tmp_path / "repo")
    try:
        report = backup_to_repository(host.session, Selection(vms=("absent", "present")), repo)
    finally:
        repo.close()
    assert report.exit_code == 3
    assert [(r.vm_name, r.status) for r in report.results] == [("absent", "failed"), ("present", "ok")]
    assert report.to_json()["results"][0]["error"]["code"] == "usage"


def test_a_repository_backup_of_a_running_vm_describes_the_vm_not_its_snapshot(host, second_host, tmp_path):
    # Regression (issue 12 bug 3): the repository snapshot's ova.xml carried the host snapshot's VM
    # uuid and VDI uuids, so `repo extract` names and --restore-identity gave back the snapshot.
    from xvatool.ops.repo_backup import backup_to_repository
    from xvatool.ops.repo_restore import restore_from_repository
    from xvatool.repo.reading import extract_snapshot, snapshot_metadata
    from xvatool.repo.repository import init_repository

    vm, vdi_uuids = _running_vm(host, seed=6)
    repo = init_repository(tmp_path / "repo")
    try:
        report = backup_to_repository(host.session, Selection(vms=("live",)), repo)
        (result,) = report.results
        assert result.status == "ok", result.error
        snapshot = repo.find_snapshot(result.snapshot or "")
        metadata = snapshot_metadata(repo, snapshot)
        assert (metadata.vm.uuid, metadata.vm.name_label) == (vm.uuid, "live")
        assert sorted(d.vdi_uuid for d in metadata.disks) == vdi_uuids
        assert sorted(d.vdi_uuid for d in snapshot.disks) == vdi_uuids
        assert sorted(d["vdi_uuid"] for d in result.to_json()["disks"]) == vdi_uuids
        host_snapshot = snapshot.source["host_snapshot"]
        assert result.to_json()["vm_snapshot"] == {"uuid": host_snapshot, "kept_on_host": "nothing"}
        read_from = {d.source["host_vdi"] for d in snapshot.disks}  # the host snapshot's disks
        assert host_snapshot != vm.uuid and read_from.isdisjoint(vdi_uuids)
        extracted = extract_snapshot(repo, snapshot, tmp_path / "disks")
        assert sorted(p.name for p in extracted) == sorted(f"{u}.raw" for u in vdi_uuids)
        with second_host.session() as target:
            restored = restore_from_repository(target, repo, snapshot.id, restore_identity=True)
            assert restored.vm_uuid == vm.uuid  # the VM's identity, on a pool that has not seen it
    finally:
        repo.close()


def test_ctrl_c_stops_every_job_of_a_parallel_repository_backup_promptly(host, tmp_path):
    # Regression (issue 12 bug 2, for --repo): with --jobs 2 Ctrl-C waited for both VMs to be read
    # and committed. Now both stop part way, nothing is committed and the host snapshots are gone.
    from xvatool.ops.repo_backup import backup_to_repository
    from xvatool.repo.repository import init_repository

    for name, seed in (("first", 1), ("second", 2)):
        host.add_vm(name, (24 * MIB,), seed=seed, full=True)
    started: set[str] = set()
    interrupted: list[bool] = []

    def ctrl_c_once_both_run(label: str, done: int) -> None:
        started.add(label.split()[0])
        if started == {"first", "second"} and not interrupted:
            interrupted.append(True)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # as a terminal does

    bars = RecordingProgress(on_update=ctrl_c_once_both_run)
    repo = init_repository(tmp_path / "repo")
    try:
        with pytest.raises(KeyboardInterrupt):
            selection = Selection(vms=("first", "second"))
            backup_to_repository(host.session, selection, repo, jobs=2, progress=bars)
        assert interrupted
        assert all(bars.counts[label] < (bars.totals[label] or 0) for label in bars.counts), bars.counts
        assert repo.snapshots() == []  # nothing committed for an interrupted VM
    finally:
        repo.close()
    with host.session() as session:
        assert not [r for r in session.call("VM.get_all_records").values() if r["is_a_snapshot"]]
        assert not [r for r in session.call("VDI.get_all_records").values() if r["is_a_snapshot"]]

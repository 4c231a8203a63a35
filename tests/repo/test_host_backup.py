"""Nightly backups of several VMs from a simulated host into a repository, and restores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.repo.helpers import MIB
from xvatool.ops.backup import Selection
from xvatool.ops.hostdisks import vm_disk_digests
from xvatool.ops.repo_backup import backup_to_repository, parse_shard, shard_of
from xvatool.ops.repo_restore import restore_from_repository
from xvatool.repo.check import check
from xvatool.repo.gc import prune
from xvatool.repo.repository import init_repository


def _write_into_disk(session, vdi_uuid: str, offset: int, data: bytes) -> None:
    """A guest write between two nights: a chunked `/import_raw_vdi` into the VM's disk."""
    from xvatool.xapi.tasks import managed_task, wait_task
    from xvatool.xapi.transfer import chunked_frames, chunked_length, upload

    params = {"vdi": vdi_uuid, "format": "raw", "chunked": "true"}
    with managed_task(session, "test write") as task:
        upload(session, "/import_raw_vdi", params, lambda: chunked_frames([(offset, data)]),
               length=chunked_length([len(data)]), task=task)  # fmt: skip
        wait_task(session, task)


def _digests(host, vm: str) -> list[str]:
    with host.session() as session:
        return [d.sha256 for d in vm_disk_digests(session, vm)]


def test_nightly_backups_restore_every_night_and_store_only_what_changed(host, repo_place):
    vms = [host.add_vm(name, (4 * MIB, 2 * MIB), seed=n) for n, name in enumerate(("web", "db", "cache"), 1)]
    repo = init_repository(repo_place.location, s3_endpoint=repo_place.endpoint)
    expected: dict[str, list[str]] = {}

    night1 = backup_to_repository(host.session, Selection(all_vms=True), repo, jobs=2)
    assert night1.exit_code == 0 and len(night1.results) == 3
    for result in night1.results:
        expected[result.snapshot] = _digests(host, result.vm_uuid)
    stored1 = repo_place.stored_bytes("data/")

    changed = os.urandom(2 * MIB)
    with host.session() as session:
        disk = vm_disk_digests(session, vms[1].uuid)[0]
        _write_into_disk(session, disk.vdi_uuid, MIB, changed)

    night2 = backup_to_repository(host.session, Selection(all_vms=True), repo, jobs=2)
    assert night2.exit_code == 0
    by_name = {r.vm_name: r for r in night2.results}
    for result in night2.results:
        expected[result.snapshot] = _digests(host, result.vm_uuid)
    growth = repo_place.stored_bytes("data/") - stored1
    assert 2 * MIB <= growth <= 2 * MIB + 64 * 1024  # the two changed MiB of random data, stored once
    assert by_name["db"].new_bytes >= 2 * MIB
    for name in ("web", "cache"):
        assert by_name[name].new_bytes <= 0.01 * by_name[name].data_bytes
    assert expected[by_name["db"].snapshot] != expected[night1.results[1].snapshot]

    assert check(repo, read_data=True).ok
    assert len(repo.snapshots()) == 6
    with host.session() as session:
        for n, (snapshot_id, digests) in enumerate(expected.items()):
            mode = "parallel" if n % 2 else "stream"
            restored = restore_from_repository(session, repo, snapshot_id[:12], mode=mode)
            assert [d.sha256 for d in vm_disk_digests(session, restored.vm_uuid)] == digests, (
                snapshot_id,
                mode,
            )


def test_shards_split_a_pool_stably(host, repo_place):
    for n, name in enumerate(("a", "b", "c", "d")):
        host.add_vm(name, (MIB,), seed=n)
    repo = init_repository(repo_place.location, s3_endpoint=repo_place.endpoint)
    names = []
    for k in (1, 2):
        report = backup_to_repository(host.session, Selection(all_vms=True), repo, shard=(k, 2))
        assert all(shard_of(r.vm_uuid, 2) == k for r in report.results)
        names += [r.vm_name for r in report.results]
    assert sorted(names) == ["a", "b", "c", "d"]
    assert parse_shard("2/3") == (2, 3)
    with pytest.raises(Exception, match="K/N"):
        parse_shard("4/3")


def test_two_backups_at_once_and_a_prune_beside_them(host, repo_place):
    vms = [host.add_vm(name, (6 * MIB,), seed=n) for n, name in enumerate(("left", "right"), 1)]
    repo = init_repository(repo_place.location, s3_endpoint=repo_place.endpoint)
    # an older night whose snapshot is forgotten: its chunks are garbage the backups will reuse
    backup_to_repository(host.session, Selection(all_vms=True), repo)
    from xvatool.repo.forget import forget

    forget(repo, snapshots=[s.id for s in repo.snapshots()])
    reports = {}
    stop = threading.Event()
    prunes = []

    def run(vm):
        reports[vm.name] = backup_to_repository(host.session, Selection(vms=(vm.uuid,)), repo)

    def prune_loop():
        while not stop.is_set():
            prunes.append(prune(repo))

    threads = [threading.Thread(target=run, args=(vm,)) for vm in vms]
    pruner = threading.Thread(target=prune_loop)
    pruner.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    pruner.join()
    assert all(r.exit_code == 0 for r in reports.values())
    assert prunes
    final = prune(repo)
    assert not final.waiting_for
    report = check(repo, read_data=True)
    assert report.ok, report.problems
    with host.session() as session:
        for vm in vms:
            restored = restore_from_repository(session, repo, f"latest:{vm.uuid}")
            assert [d.sha256 for d in vm_disk_digests(session, restored.vm_uuid)] == vm.digests


def test_kill_9_in_the_middle_of_a_backup_leaves_a_sound_repository(host, repo_place, tmp_path):
    from tests.repo.helpers import archive_with, disk_image
    from xvatool.ops.import_ import import_vm

    folder = tmp_path / "big"
    folder.mkdir()
    image = disk_image(folder / "d.img", 160 * MIB, seed=3, blocks=tuple(range(160)))
    with host.session() as session:
        import_vm(session, archive_with(folder, "big", [image]))
    repo = init_repository(repo_place.location, s3_endpoint=repo_place.endpoint)
    password_file = tmp_path / "pw"
    password_file.write_text(host.running.password)
    env = {**os.environ, "XVATOOL_REPO": repo_place.location}
    if repo_place.endpoint:
        env["XVATOOL_S3_ENDPOINT"] = repo_place.endpoint
    command = [sys.executable, "-m", "xvatool", "backup", "--host", host.url,
               "--password-file", str(password_file), "--vm", "big", "-q"]  # fmt: skip
    log = tmp_path / "backup.log"
    with (
        open(log, "wb") as err,
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err) as process,
    ):
        deadline = time.monotonic() + 120
        try:
            while len(repo_place.keys("data/")) < 8:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.02)
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
    assert not repo_place.keys("snapshots/")
    assert repo_place.keys("locks/")  # the dead run's lease is still there
    report = check(repo, read_data=True)
    assert report.ok and report.notes  # leftovers are notes, not problems

    again = backup_to_repository(host.session, Selection(vms=("big",)), repo)  # the next run cleans up
    assert again.exit_code == 0
    assert not repo_place.keys("locks/")
    if repo_place.root is not None:
        assert not list(repo_place.root.rglob(".*.part"))
    pruned = prune(repo)
    assert pruned.deleted == 0 or not pruned.waiting_for
    assert check(repo, read_data=True).ok


def _vdi_uuids(session) -> set[str]:
    return {str(rec["uuid"]) for rec in session.call("VDI.get_all_records").values()}


def test_parallel_restore_sends_every_disk_at_once(host, repo_place, monkeypatch):
    from xvatool.ops import repo_restore

    vm = host.add_vm("three", (3 * MIB, 2 * MIB, MIB + 512 * 1024), seed=4)
    repo = init_repository(repo_place.location, s3_endpoint=repo_place.endpoint)
    (result,) = backup_to_repository(host.session, Selection(vms=(vm.uuid,)), repo).results
    real_upload = repo_restore.upload
    together = threading.Barrier(3, timeout=60)  # broken unless the three uploads overlap

    def upload(*args, **kwargs):
        together.wait()
        return real_upload(*args, **kwargs)

    monkeypatch.setattr(repo_restore, "upload", upload)
    with host.session() as session:
        restored = restore_from_repository(session, repo, result.snapshot, mode="parallel")
        assert [d.sha256 for d in vm_disk_digests(session, restored.vm_uuid)] == vm.digests


def test_a_failed_parallel_restore_leaves_no_vdi_behind(host, repo_place, monkeypatch):
    from xvatool.errors import TransferError
    from xvatool.ops import repo_restore

    vm = host.add_vm("two", (2 * MIB, MIB), seed=6)
    repo = init_repository(repo_place.location, s3_endpoint=repo_place.endpoint)
    (result,) = backup_to_repository(host.session, Selection(vms=(vm.uuid,)), repo).results
    real_upload = repo_restore.upload
    calls = []

    def upload(session, path, params, body, **kwargs):
        calls.append(params["vdi"])
        if len(calls) == 2:
            raise TransferError("connection reset", retryable=False)
        return real_upload(session, path, params, body, **kwargs)

    monkeypatch.setattr(repo_restore, "upload", upload)
    with host.session() as session:
        before = _vdi_uuids(session)
        with pytest.raises(TransferError, match="connection reset"):
            restore_from_repository(session, repo, result.snapshot, mode="parallel")
        assert _vdi_uuids(session) == before


def test_backup_keep_forgets_older_snapshots_of_the_vms_it_backed_up(host, repo_place, tmp_path):
    import json

    from click.testing import CliRunner

    from xvatool.cli import main

    for n, name in enumerate(("kept", "other"), 1):
        host.add_vm(name, (MIB,), seed=n)
    repo = init_repository(repo_place.location, s3_endpoint=repo_place.endpoint)
    password_file = tmp_path / "pw"
    password_file.write_text(host.running.password)
    base = ["backup", "--host", host.url, "--password-file", str(password_file), "--repo",
            repo_place.location, *repo_place.cli_args()]  # fmt: skip
    backup_to_repository(host.session, Selection(all_vms=True), repo)
    backup_to_repository(host.session, Selection(all_vms=True), repo)
    result = CliRunner().invoke(
        main, [*base, "--vm", "kept", "--keep", "2", "--json", "-q"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert len(out["forgotten"]) == 1  # "kept" had three snapshots, keeps the two newest
    names = sorted(s.vm_name for s in repo.snapshots())
    assert names == ["kept", "kept", "other", "other"]  # "other" was not backed up: untouched
    assert out["results"][0]["snapshot"]["id"] in {s.id for s in repo.snapshots()}
    text = CliRunner().invoke(main, [*base, "--all", "--keep", "1"], catch_exceptions=False)
    assert text.exit_code == 0 and "forgot 4 older snapshots" in text.stdout
    quiet = CliRunner().invoke(main, [*base, "--all", "--keep", "1", "-q"], catch_exceptions=False)
    assert quiet.exit_code == 0 and quiet.output == ""  # -q: cron mails nothing
    assert sorted(s.vm_name for s in repo.snapshots()) == ["kept", "other"]
    refused = CliRunner().invoke(main, [*base, "--all", "--mode", "parallel"])
    assert refused.exit_code == 2 and "--mode and --compress are for --dest" in refused.output

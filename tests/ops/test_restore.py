from __future__ import annotations

import pytest

from tests.ops.helpers import MIB
from xvatool.errors import ChecksumError, ManifestMismatchError, UsageError
from xvatool.ops.backup import Selection, backup
from xvatool.ops.hostdisks import vm_disk_digests
from xvatool.ops.restore import restore


def _backed_up(host, tmp_path):
    vm = host.add_vm("orig", (2 * MIB, MIB + 512), seed=4)
    report = backup(host.session, Selection(vms=(vm.uuid,)), tmp_path / "b")
    assert report.exit_code == 0
    return vm, report.results[0]


def test_restore_from_archive_or_manifest_gives_identical_disks(host, tmp_path):
    vm, result = _backed_up(host, tmp_path)
    with host.session() as session:
        first = restore(session, result.archive)
        second = restore(session, result.manifest)
        # three distinct VMs: `a != b != c` would never compare the first restore with the original
        assert len({first.vm_uuid, second.vm_uuid, vm.uuid}) == 3
        assert first.manifest.vm_uuid == vm.uuid
        for new in (first.vm_uuid, second.vm_uuid):
            assert [d.sha256 for d in vm_disk_digests(session, new)] == vm.digests
        assert session.call("VM.get_name_label", first.vm_ref) == "orig"


def test_tampered_archive_is_refused_before_import(host, tmp_path):
    _, result = _backed_up(host, tmp_path)
    data = bytearray(result.archive.read_bytes())
    data[-2000] ^= 0x01  # inside the tar padding: a valid XVA still, but not the one backed up
    result.archive.write_bytes(bytes(data))
    with host.session() as session:
        before = set(session.call("VM.get_all"))
        with pytest.raises(ChecksumError, match="sha256"):
            restore(session, result.archive)
        assert set(session.call("VM.get_all")) == before


def test_archive_without_manifest_is_refused(host, tmp_path):
    _, result = _backed_up(host, tmp_path)
    result.manifest.unlink()
    with host.session() as session, pytest.raises(UsageError, match="incomplete"):
        restore(session, result.archive)


def test_a_vm_folder_restores_its_newest_complete_backup(host, tmp_path):
    from xvatool.ops.restore import newest_backup

    vm, first = _backed_up(host, tmp_path)
    second = backup(host.session, Selection(vms=(vm.uuid,)), tmp_path / "b").results[0]
    folder = first.archive.parent
    (folder / "20990101T000000Z.xva").write_bytes(b"newest by name, but no manifest: not a backup")
    assert newest_backup(folder) == second.manifest
    with host.session() as session:
        restored = restore(session, folder)
        assert restored.archive == second.archive
        assert [d.sha256 for d in vm_disk_digests(session, restored.vm_uuid)] == vm.digests
        with pytest.raises(UsageError, match=r"holds the backups of 1 VMs; name one: .*/<vm-folder> \(orig-"):
            restore(session, tmp_path / "b")
        (tmp_path / "empty").mkdir()
        with pytest.raises(UsageError, match="no complete backup in this folder"):
            restore(session, tmp_path / "empty")


def test_force_restores_a_backup_whose_archive_differs_from_its_manifest(host, tmp_path, caplog):
    vm, result = _backed_up(host, tmp_path)
    with result.archive.open("ab") as fh:
        fh.write(bytes(512))  # one more zero block after the end: valid, not what the manifest describes
    with host.session() as session:
        with pytest.raises(ManifestMismatchError, match="the manifest records size"):
            restore(session, result.manifest)
        with caplog.at_level("WARNING", logger="xvatool"):
            restored = restore(session, result.manifest, force=True)
        assert [d.sha256 for d in vm_disk_digests(session, restored.vm_uuid)] == vm.digests
    assert any("going on: --force" in r.getMessage() for r in caplog.records)


def test_an_interrupted_parallel_restore_resumes_or_discards(host, tmp_path):
    from tests.retry import instant
    from xvatool.errors import TransferError, XapiError

    vm, result = _backed_up(host, tmp_path)
    faults = host.running.host.faults
    with host.session() as session:
        vdis = set(session.call("VDI.get_all"))
        faults.add("import_raw_vdi:drop-after=256KiB:times=4")
        with pytest.raises((TransferError, XapiError), match="for --resume"):
            restore(session, result.manifest, mode="parallel", retry=instant(0))
        with pytest.raises(UsageError, match="--resume, or remove its VDIs and start over with --discard"):
            restore(session, result.manifest, mode="parallel")
        restored = restore(session, result.manifest, mode="parallel", resume=True)
        assert [d.sha256 for d in vm_disk_digests(session, restored.vm_uuid)] == vm.digests
        faults.add("import_raw_vdi:drop-after=256KiB:times=4")
        with pytest.raises((TransferError, XapiError)):
            restore(session, result.manifest, mode="parallel", retry=instant(0))
        again = restore(session, result.manifest, mode="parallel", discard=True)
        kept = set(session.call("VDI.get_all")) - vdis
        # only the two restored VMs' disks remain: --discard removed the interrupted run's VDIs
        assert len(kept) == 2 * len(vm.digests)
        assert session.call("VM.get_uuid", again.vm_ref) == again.vm_uuid

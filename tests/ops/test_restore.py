from __future__ import annotations

import pytest

from tests.ops.helpers import MIB
from xvatool.errors import ChecksumError, UsageError
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

"""Outputs never follow a link planted at a name they use (or used to use) while being written.

Each test plants symlinks at the predictable temporary names the old code wrote through (`OUT.part`,
`JOURNAL.tmp`, `SPOOL.tar.part`, `ARCHIVE.xvatool-extents`) pointing at a victim file, runs the
operation, and checks that the victim is untouched and the output is right.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ops.test_export import archive_disk_digests, session_of
from xvatool._files import temp_files_of
from xvatool.errors import LocalIOError, UsageError
from xvatool.ops.backup import Selection, backup
from xvatool.ops.export import export_vm
from xvatool.ops.import_ import import_vm
from xvatool.ops.manifest import load_manifest, manifest_path_for, write_manifest
from xvatool.ops.spools import spool_name
from xvatool.xapi.journal import Journal, export_journal_path
from xvatool.xapi.session import connect
from xvatool.xapi.vdi import export_vdi
from xvatool.xva.ovaxml import DiskInfo

from .helpers import fake_backup

VICTIM = b"precious data that no output may overwrite\n"


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    if not path.exists():
        path.write_bytes(VICTIM)
    return path


def plant(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def untouched(target: Path, *links: Path) -> bool:
    return target.read_bytes() == VICTIM and all(not link.exists() or link.is_symlink() for link in links)


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_vm_export_never_writes_through_planted_links(sim, tmp_path, mode):
    target = victim(tmp_path)
    out = tmp_path / "vm.xva"
    export_journal_path(out).parent.mkdir(parents=True)
    links = [
        plant(out.with_name("vm.xva.part"), target),
        plant(Path(f"{export_journal_path(out)}.tmp"), target),
    ]
    resume = mode == "parallel"  # a spool folder already there is an interrupted export's state
    if mode == "parallel":
        spools = out.with_name("vm.xva.part.d")
        spools.mkdir()
        host = sim.host
        for vdi in host.vdis_of(host.vm("demo-vm")):
            uuid = str(host.state.field("VDI", vdi, "uuid"))
            links.append(plant(spools / (spool_name(disk_of(uuid)) + ".part"), target))
    with session_of(sim) as s:
        export_vm(s, "demo-vm", out, mode=mode, resume=resume)
    assert untouched(target, *links)
    assert len(archive_disk_digests(out)) == 2
    assert temp_files_of(tmp_path) == []


def disk_of(vdi_uuid: str) -> DiskInfo:
    return DiskInfo(id="", vdi_uuid=vdi_uuid, name_label="", virtual_size=0, userdevice=None,
                    bootable=False, vbd_uuid=None, sr_name=None, vdi_type="user")  # fmt: skip


def test_parallel_export_refuses_a_spool_folder_that_is_a_link(sim, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "vm.xva"
    plant(out.with_name("vm.xva.part.d"), elsewhere)
    with session_of(sim) as s:
        with pytest.raises(UsageError, match=r"interrupted export left vm\.xva\.part\.d/"):
            export_vm(s, "demo-vm", out, mode="parallel")
        with pytest.raises(LocalIOError, match="not a folder"):
            export_vm(s, "demo-vm", out, mode="parallel", resume=True)
    assert list(elsewhere.iterdir()) == [] and not out.exists()


def test_vdi_export_never_writes_through_a_planted_part_file(sim, tmp_path):
    target = victim(tmp_path)
    out = tmp_path / "d.raw"
    link = plant(out.with_name("d.raw.part"), target)
    host = sim.host
    vdi = host.vdis_of(host.vm("demo-vm"))[0]
    with connect(sim.url, sim.user, sim.password) as s:
        export_vdi(s, str(host.state.field("VDI", vdi, "uuid")), out)
    assert untouched(target, link)
    assert out.read_bytes() == host.disk_bytes(vdi)


def test_journal_and_manifest_never_write_through_planted_temp_files(tmp_path):
    target = victim(tmp_path)
    journal_path = tmp_path / "j.json"
    links = [plant(tmp_path / "j.json.tmp", target)]
    journal = Journal.create(journal_path, kind="export", key={"vm": "x"})
    journal.set_disk("d", size=1)
    assert json.loads(journal_path.read_text())["disks"]["d"]["size"] == 1
    archive = fake_backup(tmp_path / "vm", "20261127T000000Z", "2026-11-27T00:00:00.000000Z")
    manifest_path = manifest_path_for(archive)
    manifest = load_manifest(manifest_path)
    links.append(plant(Path(f"{manifest_path}.part"), target))
    write_manifest(manifest_path, manifest)
    assert untouched(target, *links)
    assert load_manifest(manifest_path).archive == archive.name


def test_parallel_import_never_writes_through_a_planted_extents_spool(sim, tmp_path):
    target = victim(tmp_path)
    archive = tmp_path / "vm.xva"
    with session_of(sim) as s:
        export_vm(s, "demo-vm", archive, compression="gzip")
        link = plant(archive.with_name("vm.xva.xvatool-extents"), target)
        result = import_vm(s, archive, mode="parallel")
    assert untouched(target, link)
    assert result.mode == "parallel" and len(result.disks) == 2
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("sim", "xdg-state"))
    assert left == ["victim", "vm.xva", "vm.xva.xvatool-extents"]


def test_backup_lock_never_creates_a_planted_link_target(sim, tmp_path):
    dest = tmp_path / "backups"
    with session_of(sim) as s:
        uuid = s.call("VM.get_uuid", s.call("VM.get_by_name_label", "demo-vm")[0])
    folder = dest / f"demo-vm-{uuid[:8]}"
    folder.mkdir(parents=True)
    dangling = tmp_path / "created-through-the-link"
    plant(folder / ".lock", dangling)

    def factory():
        return session_of(sim)

    report = backup(factory, Selection(vms=("demo-vm",)), dest)
    assert report.results[0].status == "failed"
    assert not dangling.exists()

from __future__ import annotations

import pytest

from tests.ops.helpers import fake_backup
from xvatool.errors import UsageError
from xvatool.ops.manifest import manifest_path_for
from xvatool.ops.retention import apply_retention, list_backups, scan_folder
from xvatool.ops.spools import PartialExport


def _stamped(folder, n):
    return [fake_backup(folder, f"2026112{i}T000000Z", f"2026-11-2{i}T00:00:00.000000Z") for i in range(n)]


def test_keeps_newest_complete_and_removes_only_what_xvatool_wrote(tmp_path):
    # Regression: an .xva without a manifest (the user's own file) and a backup whose archive
    # changed were deleted as "incomplete"; retention now removes only xvatool's own leftovers.
    folder = tmp_path / "web-6f1c4d3e"
    archives = _stamped(folder, 4)
    part = folder / "20261129T000000Z.xva.part"
    part.write_bytes(b"partial")
    temp = folder / ".20261129T000500Z.xva.k3j4h5.part"
    temp.write_bytes(b"an AtomicFile temporary of a killed run")
    orphan = folder / "20261129T010000Z.xva"  # newest by name, but it has no manifest
    orphan.write_bytes(b"no manifest")
    users = folder / "copy-from-friday.xva"
    users.write_bytes(b"the user's own archive")
    broken = fake_backup(folder, "20261129T020000Z", "2026-11-29T02:00:00.000000Z")
    broken.write_bytes(b"short")  # size no longer matches its manifest
    notes = folder / "README.txt"
    notes.write_text("mine")
    not_ours = folder / "notes.part"
    not_ours.write_text("a file that merely ends in .part")
    spool = folder / "20261129T030000Z.xva.part.d"
    spool.mkdir()
    (spool / "Ref_1.tar").write_bytes(b"spooled")
    journal = PartialExport(folder / "20261129T030000Z.xva").journal
    journal.parent.mkdir(parents=True)
    journal.write_text("{}")
    legacy_journal = folder / "20261129T030000Z.xva.xvatool-journal.json"
    legacy_journal.write_text("{}")

    scan = scan_folder(folder)
    assert set(scan.incomplete) == {orphan, users, broken, manifest_path_for(broken)}
    result = apply_retention(folder, keep=2)

    assert result.kept == archives[2:]
    assert [e.archive for e in result.removed] == archives[:2]
    assert set(result.cleaned) == {part, temp, spool, legacy_journal}
    assert not journal.exists()  # the spool's journal in the state folder went with it
    remaining = sorted(p.name for p in folder.iterdir())
    assert remaining == sorted(
        [notes.name, not_ours.name, orphan.name, users.name, broken.name, manifest_path_for(broken).name]
        + [a.name for a in archives[2:]]
        + [manifest_path_for(a).name for a in archives[2:]]
    )


def test_order_is_by_start_time_not_name(tmp_path):
    folder = tmp_path / "vm"
    late = fake_backup(folder, "a", "2026-11-27T10:00:00.000000Z")
    early = fake_backup(folder, "b", "2026-11-27T09:00:00.000000Z")
    assert apply_retention(folder, keep=1).kept == [late]
    assert not early.exists()


def test_keep_none_only_cleans(tmp_path):
    folder = tmp_path / "vm"
    archives = _stamped(folder, 3)
    (folder / "20261120T000000Z.manifest.json.part").write_text("{")
    result = apply_retention(folder, keep=None)
    assert result.kept == archives
    assert result.removed == []
    assert len(result.cleaned) == 1


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(UsageError):
        apply_retention(tmp_path, keep=0)


def test_missing_folder_is_empty(tmp_path):
    assert list_backups(tmp_path / "absent") == []
    assert scan_folder(tmp_path / "absent").complete == []

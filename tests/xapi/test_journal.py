from __future__ import annotations

import json
import threading

import pytest

from xvatool.errors import ResumeError, TransferError
from xvatool.ops.parallel import run_parallel
from xvatool.xapi.journal import STATE_DIR_ENV, Journal, export_journal_path, import_journal_path, state_dir

KEY = {"host": "http://127.0.0.1:1", "archive_sha256": "ab" * 32}


def test_round_trip(tmp_path):
    path = tmp_path / "j.json"
    journal = Journal.create(path, kind="import", key=KEY)
    journal.set_disk("Ref:3", size=4 << 20, target_vdi="uuid-3")
    journal.mark_segment("Ref:3", 0, "AAAA")
    journal.mark_segment("Ref:3", 2, "BBBB")
    journal.set_disk("Ref:10", size=1 << 20)
    journal.mark_disk_done("Ref:10", "cafe")
    loaded = Journal.open_for_resume(path, kind="import", key=KEY)
    assert loaded.disks["Ref:3"].segments == {0: "AAAA", 2: "BBBB"}
    assert loaded.disks["Ref:3"].target_vdi == "uuid-3"
    assert loaded.disks["Ref:10"].done and loaded.disks["Ref:10"].digest == "cafe"
    assert loaded.target_vdis() == ["uuid-3"]
    assert not path.with_name(path.name + ".tmp").exists()


def test_set_disk_keeps_progress_unless_size_changes(tmp_path):
    journal = Journal.create(tmp_path / "j.json", kind="export", key=KEY)
    journal.set_disk("Ref:1", size=100)
    journal.mark_segment("Ref:1", 1, "X")
    assert journal.set_disk("Ref:1", size=100).segments == {1: "X"}
    assert journal.set_disk("Ref:1", size=200).segments == {}
    journal.mark_disk_done("Ref:1", "d")
    journal.reset_disk("Ref:1")
    record = journal.disk("Ref:1")
    assert record is not None and not record.done and record.digest is None


@pytest.mark.parametrize(
    ("kind", "key", "needle"),
    [
        ("export", KEY, "not an export"),
        ("import", {**KEY, "host": "http://other:1"}, "host is 'http://127.0.0.1:1' in the journal"),
        ("import", {**KEY, "archive_sha256": "cd" * 32}, "archive_sha256"),
        ("import", {"host": KEY["host"]}, "unexpected field 'archive_sha256'"),
    ],
)
def test_mismatch_is_refused_with_reason(tmp_path, kind, key, needle):
    path = tmp_path / "j.json"
    Journal.create(path, kind="import", key=KEY)
    with pytest.raises(ResumeError) as info:
        Journal.open_for_resume(path, kind=kind, key=key)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        json.dumps({"tool": "other"}).encode(),
        json.dumps({"tool": "xvatool", "format": 99, "kind": "import", "key": {}, "disks": {}}).encode(),
        json.dumps(
            {"tool": "xvatool", "format": 1, "kind": "import", "key": {}, "disks": {"a": {"size": -1}}}
        ).encode(),
        json.dumps({"tool": "xvatool", "format": 1, "kind": "nope", "key": {}, "disks": {}}).encode(),
    ],
)
def test_corrupt_journal_is_a_resume_error(tmp_path, content):
    path = tmp_path / "j.json"
    path.write_bytes(content)
    with pytest.raises(ResumeError, match="remove it"):
        Journal.load(path)


def test_missing_journal(tmp_path):
    with pytest.raises(ResumeError, match="no journal"):
        Journal.load(tmp_path / "absent.json")


def test_concurrent_marks_all_land(tmp_path):
    path = tmp_path / "j.json"
    journal = Journal.create(path, kind="import", key=KEY)
    for d in range(4):
        journal.set_disk(f"Ref:{d}", size=1 << 30)

    def mark(d):
        for i in range(20):
            journal.mark_segment(f"Ref:{d}", i, f"{d}-{i}")

    threads = [threading.Thread(target=mark, args=(d,)) for d in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loaded = Journal.load(path)
    assert all(len(loaded.disks[f"Ref:{d}"].segments) == 20 for d in range(4))


def test_journals_live_in_the_state_folder_never_beside_the_file(tmp_path, monkeypatch, private_state_dir):
    # Regression: journals beside the archive blocked later restores and failed in read-only folders.
    journals = private_state_dir / "journals"
    export = export_journal_path(tmp_path / "vm.xva")
    assert export.parent == journals and export.name.startswith("export-vm.xva-")
    assert export_journal_path(tmp_path / "other" / "vm.xva") != export  # one per absolute path
    a = import_journal_path(tmp_path / "vm.xva", "http://a:1")
    b = import_journal_path(tmp_path / "vm.xva", "http://b:1")
    assert a != b and a.parent == journals and a.name.startswith("import-vm.xva-")
    assert import_journal_path(tmp_path / "vm.xva", "http://a:1/") == a
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "chosen"))
    assert state_dir() == tmp_path / "chosen"
    assert export_journal_path(tmp_path / "vm.xva").parent == tmp_path / "chosen" / "journals"
    assert state_dir(tmp_path / "option") == tmp_path / "option"  # --state-dir beats the variable
    monkeypatch.delenv(STATE_DIR_ENV)
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "xvatool"


def test_a_journal_creates_its_private_folder(tmp_path):
    path = tmp_path / "state" / "journals" / "j.json"
    Journal.create(path, kind="import", key={"a": "b"})
    assert path.is_file() and (path.parent.stat().st_mode & 0o777) == 0o700


def test_run_parallel_waits_for_all_then_raises_first():
    done = []

    def ok(i):
        return lambda: done.append(i) or i

    def fail():
        raise TransferError("boom")

    assert run_parallel([ok(1), ok(2)]) == [1, 2]
    with pytest.raises(TransferError, match="boom"):
        run_parallel([fail, ok(3)])
    assert 3 in done
    assert run_parallel([]) == []


_CTRL_C_SCRIPT = """
import _thread, threading
from xvatool.ops.parallel import run_parallel

stuck = threading.Event()  # never set: a disk transfer stalled on a silent host


def job():
    _thread.interrupt_main()  # the user presses Ctrl-C while this disk is stalled
    stuck.wait()


stop = threading.Event()
try:
    run_parallel([job], stop=stop)
except KeyboardInterrupt:
    assert stop.is_set()
    print("interrupted")
"""


def test_run_parallel_ctrl_c_does_not_wait_for_a_stalled_job():
    # Regression: pool threads were joined at interpreter exit, so after Ctrl-C the process hung
    # until the stalled transfer timed out.
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _CTRL_C_SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "interrupted"

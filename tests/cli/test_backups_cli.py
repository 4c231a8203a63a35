"""`xvatool backups list|verify|prune` and `restore DIR/<vm-folder>`, on real backups of a simulated host."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.ops.helpers import MIB, Host
from xvatool.cli import main


@pytest.fixture
def backed_up(tmp_path, monkeypatch):
    """Two VMs, each backed up twice into tmp_path/b: (host, dest, vms, cli args for the host)."""
    from xvatool.sim.testing import running_host

    with running_host(tmp_path / "host", demo=False) as sim:
        host = Host(sim, tmp_path / "work")
        vms = [host.add_vm("web", (MIB,), seed=1), host.add_vm("db", (2 * MIB,), seed=2)]
        monkeypatch.setenv("XVATOOL_PASSWORD", sim.password)
        conn = ["--host", sim.url]
        dest = tmp_path / "b"
        for _ in range(2):
            run = CliRunner().invoke(main, ["backup", *conn, "--all", "--dest", str(dest), "-q"])
            assert run.exit_code == 0 and run.output == "", run.output  # -q: cron mails nothing
        yield host, dest, vms, conn


def test_list_shows_every_backup_and_filters_by_vm(backed_up):
    _, dest, vms, _ = backed_up
    (dest / "notes.txt").write_text("not a backup")
    run = CliRunner().invoke(main, ["backups", "list", str(dest), "--json"])
    assert run.exit_code == 0, run.output
    items = json.loads(run.stdout)
    assert len(items) == 4 and {i["status"] for i in items} == {"complete"}
    assert sorted({i["vm"]["uuid"] for i in items}) == sorted(v.uuid for v in vms)
    assert all(i["archive"]["size_bytes"] > 0 and len(i["archive"]["sha256"]) == 64 for i in items)
    web = json.loads(CliRunner().invoke(main, ["backups", "list", str(dest), "--vm", "web", "--json"]).stdout)
    assert [i["vm"]["name"] for i in web] == ["web", "web"] and web[0]["time"] <= web[1]["time"]
    text = CliRunner().invoke(main, ["backups", "list", str(dest)])
    assert text.stdout.splitlines()[0].split() == ["VM", "TIME", "(UTC)", "SIZE", "STATUS", "ARCHIVE"]
    assert text.stdout.splitlines()[-1] == "4 complete backups, 0 incomplete"


def test_verify_finds_a_damaged_archive_and_exits_1(backed_up):
    _, dest, _, _ = backed_up
    ok = CliRunner().invoke(main, ["backups", "verify", str(dest), "-q"])
    assert ok.exit_code == 0 and ok.output == ""
    archive = sorted(dest.rglob("*.xva"))[0]
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 1
    archive.write_bytes(bytes(data))
    run = CliRunner().invoke(main, ["backups", "verify", str(dest)])
    assert run.exit_code == 1
    (bad,) = [line for line in run.stdout.splitlines() if " bad " in line]
    assert "the manifest records sha256" in bad and str(archive) in bad
    assert run.stdout.splitlines()[-1] == "4 backups checked, 1 bad"
    doc = json.loads(CliRunner().invoke(main, ["backups", "verify", str(dest), "--json"]).stdout)
    assert (doc["ok_count"], doc["bad_count"]) == (3, 1)
    (failure,) = [r for r in doc["results"] if r["status"] == "bad"]
    assert failure["error"]["code"] == "manifest-mismatch"


def test_prune_keeps_the_newest_per_vm_and_only_what_xvatool_wrote(backed_up):
    _, dest, _, _ = backed_up
    folder = next(p for p in dest.iterdir() if p.name.startswith("web-"))
    mine = folder / "copied-by-hand.xva"
    mine.write_bytes(b"the user's")
    dry = json.loads(CliRunner().invoke(main, ["backups", "prune", str(dest), "--keep", "1", "--dry-run",
                                               "--json"]).stdout)  # fmt: skip
    assert len(dry["pruned"]) == 2 and dry["kept_count"] == 2 and len(list(dest.rglob("*.xva"))) == 5
    run = CliRunner().invoke(main, ["backups", "prune", str(dest), "--keep", "1"])
    assert run.exit_code == 0, run.output
    assert run.stdout.splitlines()[-1] == "pruned 2 backups, kept 2"
    assert mine.read_bytes() == b"the user's"
    assert len(list(dest.rglob("*.manifest.json"))) == 2


def test_restore_of_a_vm_folder_takes_its_newest_backup(backed_up):
    from xvatool.ops.hostdisks import vm_disk_digests

    host, dest, vms, conn = backed_up
    folder = next(p for p in dest.iterdir() if p.name.startswith("db-"))
    listed = CliRunner().invoke(main, ["backups", "list", str(folder), "--json"])
    newest = json.loads(listed.stdout)[-1]["archive"]["path"]  # oldest first, by start time
    run = CliRunner().invoke(main, ["restore", *conn, str(folder), "--json"])
    assert run.exit_code == 0, run.output
    doc = json.loads(run.stdout)
    assert doc["source"]["path"] == newest and doc["source"]["vm"]["uuid"] == vms[1].uuid
    with host.session() as session:
        assert [d.sha256 for d in vm_disk_digests(session, doc["vm"]["uuid"])] == vms[1].digests
    run = CliRunner().invoke(main, ["restore", *conn, str(dest)])
    assert run.exit_code == 2 and "holds the backups of 2 VMs; name one" in run.stderr

"""The appliance commands end to end, through the CLI, between two simulated hosts."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.appliances.helpers import SOURCE_ORDER, appliance_on, inventory, member_digests, order_and_delays
from xvatool.cli import main
from xvatool.sim.testing import RunningHost


def _host(host: RunningHost, tmp_path: Path, name: str) -> list[str]:
    pw = tmp_path / f"{name}-pw"
    pw.write_text(host.password)
    return ["--host", host.url, "--user", host.user, "--password-file", str(pw)]


def _run(args: list[str], code: int = 0, **env: str) -> str:
    """Standard output of a success; everything (the error line) of a failure."""
    result = CliRunner().invoke(main, args, env=env or None)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.stdout if code == 0 else result.output


def test_appliance_list_text_and_json(source, tmp_path):
    host = _host(source, tmp_path, "src")
    text = _run(["appliance", "list", *host]).splitlines()
    assert text[0].startswith("demo-app (") and text[0].endswith("2 VMs; Seeded by xvatool serve --demo")
    assert text[1].split() == ["ORDER", "VM", "POWER", "START", "DELAY", "SHUTDOWN", "DELAY"]
    assert text[2].split() == ["0", "demo-app-db", "Halted", "2", "s", "0", "s"]
    assert text[4].strip() == "networks: Pool-wide network associated with eth0, demo-app private (private)"
    (app,) = json.loads(_run(["appliance", "list", *host, "--json"]))
    assert [(m["name"], m["order"], m["start_delay_s"], m["shutdown_delay_s"]) for m in app["vms"]] == [
        ("demo-app-db", 0, 2, 0),
        ("demo-app-web", 1, 0, 1),
    ]


def test_backup_restore_and_migrate_an_appliance(source, target, tmp_path):
    src, dst = _host(source, tmp_path, "src"), _host(target, tmp_path, "dst")
    report = json.loads(
        _run(["backup", *src, "--appliance", "demo-app", "--dest", str(tmp_path / "bk"), "--json"])
    )
    folder = report["path"]
    assert [m["vm"]["name"] for m in report["backups"]] == ["demo-app-db", "demo-app-web"]
    uuid = _run(["restore", *dst, folder]).strip()
    app = appliance_on(target)
    assert app["uuid"] == uuid and order_and_delays(app) == SOURCE_ORDER
    assert member_digests(target) == member_digests(source)

    target.host.state.update("VM_appliance", app["ref"], name_label="restored")
    out = _run(["migrate", *src, "--appliance", "demo-app", "--to", target.url, "--mode", "parallel"],
               XVATOOL_TO_PASSWORD=target.password)  # fmt: skip
    migrated = appliance_on(target)
    assert migrated["uuid"] == out.strip() and order_and_delays(migrated) == SOURCE_ORDER


def test_export_an_appliance_and_import_it_elsewhere(source, target, tmp_path):
    src, dst = _host(source, tmp_path, "src"), _host(target, tmp_path, "dst")
    ova = tmp_path / "app.ova"
    assert "demo-app-db, demo-app-web (2 disks" in _run(
        ["export", *src, "--appliance", "demo-app", "-o", str(ova)]
    )
    result = CliRunner().invoke(main, ["import", *dst, str(ova), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [vm["name"] for vm in doc["vms"]] == ["demo-app-db", "demo-app-web"] and doc["appliance"]["uuid"]
    assert "created it as a private network" in result.stderr
    assert order_and_delays(appliance_on(target)) == SOURCE_ORDER
    folder = tmp_path / "web"
    _run(["export", *src, "demo-app-web", "-o", f"{folder}/"])
    uuids = _run(["import", *dst, str(folder), "--map-network", "demo-app private=demo-app private"])
    assert len(uuids.split()) == 1


def test_quiet_prints_only_what_was_asked_and_notes_go_to_stderr(source, target, tmp_path):
    src, dst = _host(source, tmp_path, "src"), _host(target, tmp_path, "dst")
    long_name = "demo-app-web-with-a-name-longer-than-any-column-would-allow"
    source.host.state.update("VM", source.host.vm("demo-app-web"), name_label=long_name)
    source.host.set_power_state(source.host.vm(long_name), "Running")
    assert long_name in _run(["appliance", "list", *src])  # never cut short

    def run(*args: str, **env: str):
        result = CliRunner().invoke(main, list(args), env=env or None)
        assert result.exit_code == 0, result.output
        return result

    ova, bk = str(tmp_path / "app.ova"), str(tmp_path / "bk")
    loud = run("export", *src, "--appliance", "demo-app", "-o", ova)
    assert loud.stdout.startswith(f"wrote {ova}: appliance 'demo-app': ")
    said = f"xvatool: note: {long_name} is running: reading it through a temporary snapshot"
    assert loud.stderr == f"{said}, taken with the others\n"
    quiet = [
        run("export", *src, "--appliance", "demo-app", "-o", str(tmp_path / "q.ova"), "-q"),
        run("backup", *src, "--appliance", "demo-app", "--dest", bk, "--keep", "1", "-q"),
        run("backup", *src, "--appliance", "demo-app", "--dest", bk, "--keep", "1", "-q"),  # prunes one
    ]
    assert [(r.stdout, r.stderr) for r in quiet] == [("", "")] * 3
    (run_folder,) = (tmp_path / "bk").glob("*/2*")
    imported = run("import", *dst, ova, "-q")
    assert len(imported.stdout.split()) == 2 and imported.stderr == ""  # the uuids: what was asked for
    restored = run("restore", *dst, str(run_folder), "-q")
    assert len(restored.stdout.split()) == 1 and restored.stderr == ""
    for ref in target.host.state.refs("VM_appliance"):
        target.host.state.update("VM_appliance", ref, name_label=f"copy {ref[-4:]}")
    moved = run("migrate", *src, "--appliance", "demo-app", "--to", target.url, "-q",
                XVATOOL_TO_PASSWORD=target.password)  # fmt: skip
    assert len(moved.stdout.split()) == 1 and moved.stderr == ""


@pytest.mark.parametrize(
    ("command", "rest", "message"),
    [
        (["export"], ["--appliance", "demo-app", "-o", "x.xva"], "OUT.ova, OUT.ovf or DIR/"),
        (["export"], ["demo-app-web", "--appliance", "demo-app", "-o", "x.ova"], "not both"),
        (["export"], ["demo-app-web", "-o", "x.ova", "--compress", "zstd"], "not packages"),
        (["backup"], ["--appliance", "demo-app", "--repo", "r"], "--appliance takes --dest"),
        (["backup"], ["--appliance", "demo-app", "--vm", "x", "--dest", "d"], "--appliance takes --dest"),
        (["migrate"], ["demo-app-web", "--appliance", "demo-app", "--to", "http://127.0.0.1:1"], "not both"),
        (["export"], ["--appliance", "nope", "-o", "x.ova"], "no appliance"),
    ],
)
def test_usage_errors_exit_2_with_one_line(source, tmp_path, monkeypatch, command, rest, message):
    monkeypatch.chdir(tmp_path)
    output = _run([*command, *_host(source, tmp_path, "src"), *rest], 2, XVATOOL_TO_PASSWORD="x")
    assert message in output and len(output.strip().splitlines()) == 1
    assert not list(tmp_path.glob("x.*"))


def test_a_hostile_package_is_one_line_and_exit_1(target, tmp_path):
    dst = _host(target, tmp_path, "dst")
    ova = tmp_path / "evil.ova"
    with tarfile.open(ova, "w") as tar:
        tar.addfile(tarfile.TarInfo("../evil.ovf"))
    before = inventory(target)
    output = _run(["import", *dst, str(ova)], 1)
    assert len(output.strip().splitlines()) == 1 and "evil.ova" in output and "escapes" in output
    assert inventory(target) == before

from __future__ import annotations

import json
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner

from xvatool.cli import main
from xvatool.ops.backup import BackupReport, Selection, VmBackupResult

CONN = ["--host", "http://127.0.0.1:1", "--user", "root"]


@pytest.fixture
def runner(monkeypatch):
    monkeypatch.setenv("XVATOOL_PASSWORD", "secret")
    return CliRunner()


def _report(tmp_path, statuses):
    results = [
        VmBackupResult(f"uuid-{i}", f"vm{i}", status=s, archive=tmp_path / f"{i}.xva" if s == "ok" else None,
                       archive_size=2048, error=None if s == "ok" else "boom")
        for i, s in enumerate(statuses)
    ]  # fmt: skip
    return BackupReport(results, dest=tmp_path)


@pytest.mark.parametrize(("statuses", "code"), [(["ok", "ok"], 0), (["ok", "failed"], 3), (["failed"], 1)])
def test_backup_exit_codes_and_kwargs(runner, tmp_path, statuses, code):
    with mock.patch(
        "xvatool.ops.backup.backup", autospec=True, return_value=_report(tmp_path, statuses)
    ) as fn:
        result = runner.invoke(
            main,
            ["backup", *CONN, "--tag", "nightly", "--vm", "web", "--dest", str(tmp_path), "--jobs", "2",
             "--keep", "3", "--compress", "zstd", "--mode", "parallel"],
        )  # fmt: skip
    assert result.exit_code == code, result.output
    args, kwargs = fn.call_args
    assert args[1] == Selection(("web",), False, ("nightly",))
    assert args[2] == tmp_path
    assert kwargs == {"jobs": 2, "keep": 3, "compression": "zstd", "mode": "parallel", "state_dir": None,
                      "progress": None}  # fmt: skip
    assert "vm0" in result.output
    if code:
        assert "failed" in result.output


def test_backup_json(runner, tmp_path):
    with mock.patch("xvatool.ops.backup.backup", autospec=True, return_value=_report(tmp_path, ["ok"])):
        result = runner.invoke(main, ["backup", *CONN, "--all", "--dest", str(tmp_path), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["results"][0]["vm"] == {"uuid": "uuid-0", "name": "vm0"}


def test_backup_needs_a_selection(runner, tmp_path):
    result = runner.invoke(main, ["backup", *CONN, "--dest", str(tmp_path)])
    assert result.exit_code == 2
    assert "--vm, --all or --tag" in result.output


def test_backup_all_with_vm_is_a_usage_error(runner, tmp_path):
    result = runner.invoke(main, ["backup", *CONN, "--all", "--vm", "web", "--dest", str(tmp_path / "b")])
    assert result.exit_code == 2 and "--all already selects every VM" in result.stderr
    assert not (tmp_path / "b").exists()


def test_password_never_in_argv(runner, tmp_path):
    result = runner.invoke(main, ["backup", *CONN, "--password", "x", "--all", "--dest", str(tmp_path)])
    assert result.exit_code == 2  # no such option


def test_restore_prints_uuid(runner, tmp_path):
    from xvatool.ops.restore import RestoreResult

    fake = RestoreResult("new-uuid", "OpaqueRef:1", tmp_path / "a.xva", mock.Mock())
    with mock.patch("xvatool.ops.restore.restore", autospec=True, return_value=fake) as fn, \
            mock.patch("xvatool.xapi.session.connect", autospec=True) as connect:  # fmt: skip
        result = runner.invoke(main, ["restore", *CONN, str(tmp_path / "a.xva"), "--sr", "Local storage",
                                      "--restore-identity", "--mode", "parallel", "--retries", "7",
                                      "--resume", "--discard", "--force",
                                      "--state-dir", str(tmp_path / "st")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "new-uuid"
    args, kwargs = fn.call_args
    assert args[1] == Path(tmp_path / "a.xva")
    retry = kwargs.pop("retry")
    assert retry.retries == 7
    assert kwargs == {"sr": "Local storage", "restore_identity": True, "mode": "parallel", "resume": True,
                      "discard": True, "force": True, "state_dir": tmp_path / "st",
                      "progress": None}  # fmt: skip
    assert connect.call_args[0] == ("http://127.0.0.1:1", "root", "secret")


def test_migrate_target_credentials_from_env_and_network_map(runner, monkeypatch):
    from xvatool.ops.migrate import MigrateResult

    monkeypatch.setenv("XVATOOL_TO_USER", "admin")
    monkeypatch.setenv("XVATOOL_TO_PASSWORD", "other")
    fake = MigrateResult("new", "OpaqueRef:2", "old", "web", 10, ["xapi version 25.1 -> 24.19"])
    with mock.patch("xvatool.ops.migrate.migrate", autospec=True, return_value=fake) as fn, \
            mock.patch("xvatool.xapi.session.connect", autospec=True) as connect:  # fmt: skip
        result = runner.invoke(main, ["migrate", *CONN, "web", "--to", "https://xen2", "--map-network", "A=B",
                                      "--map-network", "C=D=E", "--shutdown-source"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "new"
    assert [c[0][:3] for c in connect.call_args_list] == [
        ("http://127.0.0.1:1", "root", "secret"),
        ("https://xen2", "admin", "other"),
    ]
    kwargs = fn.call_args[1]
    assert kwargs["network_map"] == {"A": "B", "C": "D=E"}
    assert kwargs["shutdown_source"] is True
    assert kwargs["mode"] == "stream"


def test_migrate_mode_option(runner, monkeypatch):
    from xvatool.ops.migrate import MigrateResult

    monkeypatch.setenv("XVATOOL_TO_PASSWORD", "other")
    fake = MigrateResult("new", "OpaqueRef:2", "old", "web", 10)
    with mock.patch("xvatool.ops.migrate.migrate", autospec=True, return_value=fake) as fn, \
            mock.patch("xvatool.xapi.session.connect", autospec=True):  # fmt: skip
        result = runner.invoke(main, ["migrate", *CONN, "web", "--to", "https://xen2", "--mode", "parallel",
                                      "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert fn.call_args[1]["mode"] == "parallel"
    assert json.loads(result.stdout)["vm"] == {"uuid": "new", "name": "web"}
    result = runner.invoke(main, ["migrate", *CONN, "web", "--to", "https://xen2", "--mode", "sideways"])
    assert result.exit_code == 2
    assert "stream" in result.output and "parallel" in result.output
    assert "--mode [stream|parallel]" in runner.invoke(main, ["migrate", "--help"]).output


def test_migrate_needs_target_password(runner):
    result = runner.invoke(main, ["migrate", *CONN, "web", "--to", "https://xen2"])
    assert result.exit_code == 2
    assert (
        "no password for https://xen2: use --to-password-file FILE, set XVATOOL_TO_PASSWORD" in result.output
    )


def test_migrate_prompts_for_the_target_password_on_a_terminal(runner):
    from xvatool.ops.migrate import MigrateResult

    fake = MigrateResult("new", "OpaqueRef:2", "old", "web", 10)
    with mock.patch("xvatool.ops.migrate.migrate", autospec=True, return_value=fake), \
            mock.patch("xvatool.xapi.session.connect", autospec=True) as connect, \
            mock.patch("xvatool.cli._connection.sys", mock.Mock(stdin=mock.Mock(isatty=lambda: True))), \
            mock.patch("click.prompt", return_value="typed") as prompt:  # fmt: skip
        result = runner.invoke(main, ["migrate", *CONN, "web", "--to", "https://xen2"])
    assert result.exit_code == 0, result.output
    assert (
        prompt.call_args.args[0] == "Password for root at https://xen2"
        and prompt.call_args.kwargs["hide_input"]
    )
    assert connect.call_args_list[1].args[:3] == ("https://xen2", "root", "typed")


def test_migrate_bad_network_map(runner, monkeypatch):
    monkeypatch.setenv("XVATOOL_TO_PASSWORD", "x")
    result = runner.invoke(main, ["migrate", *CONN, "web", "--to", "https://xen2", "--map-network", "A"])
    assert result.exit_code == 2
    assert "OLD=NEW" in result.output


def test_backup_and_restore_end_to_end(tmp_path, monkeypatch):
    from tests.ops.helpers import MIB, Host
    from xvatool.sim.testing import running_host

    with running_host(tmp_path / "host", demo=False) as sim:
        host = Host(sim, tmp_path / "work")
        vm = host.add_vm("cli-vm", (MIB,), seed=2)
        monkeypatch.setenv("XVATOOL_PASSWORD", sim.password)
        runner = CliRunner()
        conn = ["--host", sim.url, "--user", sim.user]
        result = runner.invoke(
            main, ["backup", *conn, "--vm", "cli-vm", "--dest", str(tmp_path / "b"), "--json"]
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.output)
        manifest = report["results"][0]["manifest"]["path"]
        result = runner.invoke(main, ["restore", *conn, manifest])
        assert result.exit_code == 0, result.output
        new_uuid = result.stdout.strip()
        with host.session() as session:
            from xvatool.ops.hostdisks import vm_disk_digests

            assert [d.sha256 for d in vm_disk_digests(session, new_uuid)] == vm.digests
        # A VM that does not exist is a failed item: here the only one, so all failed (exit 1).
        result = runner.invoke(main, ["backup", *conn, "--vm", "nope", "--dest", str(tmp_path / "c")])
        assert result.exit_code == 1
        assert "the backup of nope failed: no VM with uuid or name 'nope'" in result.stderr
        assert not (tmp_path / "c").exists()


def test_demo_command_json():
    result = CliRunner().invoke(main, ["demo", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stdout is the document alone; notes may go to stderr
    assert summary["disks_equal"] is True
    assert [d["virtual_size"] for d in summary["disks"]] == [256 << 20, 64 << 20]


def test_backup_partial_failure_exits_3(tmp_path, monkeypatch):
    from tests.ops.helpers import MIB, Host
    from xvatool.sim.testing import running_host

    with running_host(tmp_path / "host", demo=False) as sim:
        host = Host(sim, tmp_path / "work")
        host.add_vm("one", (MIB,), seed=1)
        host.add_vm("two", (MIB,), seed=2)
        sim.host.add_fault("export:corrupt-chunk=0")
        monkeypatch.setenv("XVATOOL_PASSWORD", sim.password)
        args = ["backup", "--host", sim.url, "--all", "--dest", str(tmp_path / "b"), "--jobs", "2"]
        result = CliRunner().invoke(main, args)
    assert result.exit_code == 3, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["VM", "STATUS"]
    assert sorted(line.split()[1] for line in lines[1:3]) == ["failed", "ok"]
    assert "1 of 2 backups failed" in result.output
    assert lines[3] == f"1 of 2 VMs backed up to {tmp_path / 'b'}"


def test_backup_table_lists_pruned_backups_and_an_unwritable_dest_is_exit_2(tmp_path, monkeypatch):
    from tests.ops.helpers import MIB, Host
    from xvatool.sim.testing import running_host

    with running_host(tmp_path / "host", demo=False) as sim:
        Host(sim, tmp_path / "work").add_vm("kept", (MIB,), seed=1)
        monkeypatch.setenv("XVATOOL_PASSWORD", sim.password)
        args = ["backup", "--host", sim.url, "--vm", "kept", "--keep", "1"]
        first = CliRunner().invoke(main, [*args, "--dest", str(tmp_path / "b")])
        assert first.exit_code == 0, first.output
        second = CliRunner().invoke(main, [*args, "--dest", str(tmp_path / "b")])
        assert second.exit_code == 0, second.output
        rows = [line.split() for line in second.stdout.splitlines()]
        assert [r[0] for r in rows if r[0] == "pruned"] == ["pruned"]  # the older backup, in the table
        pruned = next(r for r in rows if r[0] == "pruned")
        assert pruned[-1].endswith(".xva") and not (tmp_path / pruned[-1]).exists()
        assert second.stdout.splitlines()[-1] == f"1 of 1 VM backed up to {tmp_path / 'b'}"
        blocker = tmp_path / "file"
        blocker.write_text("x")
        run = CliRunner().invoke(main, [*args, "--dest", str(blocker / "b")])
        assert run.exit_code == 2 and "cannot write backups here" in run.stderr
        archives = [p for p in (tmp_path / "b").rglob("*.xva")]
        assert len(archives) == 1 and all((p.stat().st_mode & 0o777) == 0o600 for p in archives)
        manifests = list((tmp_path / "b").rglob("*.manifest.json"))
        assert all((p.stat().st_mode & 0o777) == 0o600 for p in manifests)

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner

from tests.simhelpers import new_vdi, new_vm, open_sessions, vdi_bytes
from xvatool.cli import _connection as conn_mod
from xvatool.cli import main
from xvatool.testing import running_host

MIB = 1 << 20


@pytest.fixture
def host(tmp_path):
    """A simulated host without VMs whose user `root` has the password `secret`."""
    with running_host(tmp_path / "host", demo=False, password="secret") as running:
        yield running


@pytest.fixture
def runner():
    return CliRunner()


def invoke(runner, host, *args, password="secret", **kw):
    env = {"XVATOOL_HOST": host.url, **({"XVATOOL_PASSWORD": password} if password else {})}
    return runner.invoke(main, list(args), env=env, catch_exceptions=False, **kw)


def test_vm_list_text_and_json(runner, host):
    a, _ = new_vdi(host, size=2 * MIB)
    b, _ = new_vdi(host, size=3 * MIB)
    uuid = new_vm(host, "web-01", "Running", [a, b])
    new_vm(host, "tmpl", "Halted", [], is_a_template=True)
    result = invoke(runner, host, "vm", "list", "--json")
    assert result.exit_code == 0, result.output
    (vm,) = json.loads(result.stdout)
    assert vm["uuid"] == uuid and vm["power_state"] == "Running"
    assert [d["vdi_uuid"] for d in vm["disks"]] == [host.host.state.field("VDI", r, "uuid") for r in (a, b)]
    assert vm["virtual_size"] == 5 * MIB and vm["name"] == "web-01"
    text = invoke(runner, host, "vm", "list")
    assert text.exit_code == 0
    assert "web-01" in text.stdout and "5.0 MiB" in text.stdout and "tmpl" not in text.stdout
    assert open_sessions(host) == 0  # both runs logged out


def test_vm_list_never_cuts_names_and_says_when_there_are_none(runner, host):
    # Regression: names were cut at 24 characters; an empty host printed a bare header.
    empty = invoke(runner, host, "vm", "list")
    assert empty.exit_code == 0 and empty.stdout == ""
    assert "no VMs on" in empty.stderr
    long_name = "accounting-database-primary-eu-west-replica-03"
    new_vm(host, long_name, "Halted", [])
    text = invoke(runner, host, "vm", "list")
    header, row = text.stdout.splitlines()
    assert row.startswith(long_name + "  ") and header.index("UUID") == row.index(row.split()[1])


def test_password_file_and_user(runner, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    with running_host(tmp_path / "host", demo=False, user="admin", password="secret") as admin_host:
        result = invoke(
            runner, admin_host, "vm", "list", "--user", "admin", "--password-file", str(pw), password=None
        )
    assert result.exit_code == 0, result.output  # the host accepts admin / secret, nothing else


def test_user_from_environment(runner, tmp_path):
    with running_host(tmp_path / "host", demo=False, user="ops", password="secret") as ops_host:
        result = runner.invoke(
            main,
            ["vm", "list"],
            env={"XVATOOL_HOST": ops_host.url, "XVATOOL_PASSWORD": "secret", "XVATOOL_USER": "ops"},
        )
    assert result.exit_code == 0, result.output


def test_no_password_off_terminal_is_usage_error(runner, host):
    result = invoke(runner, host, "vm", "list", password=None)
    assert result.exit_code == 2
    assert "no password" in result.stderr
    assert open_sessions(host) == 0


def test_password_is_never_an_option(runner, host):
    result = invoke(runner, host, "vm", "list", "--password", "secret")
    assert result.exit_code == 2
    assert "No such option" in result.stderr


def test_prompt_on_terminal(monkeypatch):
    monkeypatch.setattr(conn_mod.sys, "stdin", mock.Mock(isatty=lambda: True))
    prompt = mock.Mock(return_value="typed")
    monkeypatch.setattr(conn_mod.click, "prompt", prompt)
    c = conn_mod.Connection(
        url="https://h",
        user="root",
        password_file=None,
        fingerprint=None,
        ca_bundle=None,
        insecure=False,
        timeout_s=5,
    )
    assert c.password == "typed"
    assert c.password == "typed"
    assert prompt.call_count == 1
    assert prompt.call_args.kwargs["hide_input"] is True
    assert "typed" not in repr(c)


def test_empty_or_missing_password_file(runner, host, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = invoke(runner, host, "vm", "list", "--password-file", str(empty), password=None)
    assert result.exit_code == 2 and "empty" in result.stderr
    result = invoke(runner, host, "vm", "list", "--password-file", str(tmp_path / "nope"), password=None)
    assert result.exit_code == 2


def test_wrong_password_exit_1_in_words_and_never_echoed(runner, host):
    result = invoke(runner, host, "vm", "list", password="hunter2-not-it")
    assert result.exit_code == 1
    assert result.stderr.endswith("wrong user name or password for 'root' (SESSION_AUTHENTICATION_FAILED)\n")
    assert "hunter2" not in result.stderr
    as_json = invoke(runner, host, "vm", "list", "--json", password="hunter2-not-it")
    assert as_json.exit_code == 1
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == "SESSION_AUTHENTICATION_FAILED" and error["exit_code"] == 1
    assert "wrong user name or password" in error["message"] and "hunter2" not in as_json.stdout


def test_missing_host_mentions_the_variable(runner):
    result = runner.invoke(main, ["vm", "list"], env={"XVATOOL_PASSWORD": "x"})
    assert result.exit_code == 2
    assert "Missing option '--host' (or set XVATOOL_HOST)." in result.stderr


def test_plain_http_elsewhere_refused(runner):
    result = runner.invoke(
        main, ["vm", "list", "--host", "http://xen1.example"], env={"XVATOOL_PASSWORD": "x"}
    )
    assert result.exit_code == 2
    assert "plain http" in result.stderr


def test_insecure_warns_on_stderr(runner, host):
    result = invoke(runner, host, "vm", "list", "--insecure")
    assert result.exit_code == 0
    assert "--insecure" in result.stderr and "not verified" in result.stderr


def test_vdi_export_and_import_round_trip(runner, host, tmp_path):
    content = bytearray(3 * MIB)
    content[MIB : MIB + 10] = b"0123456789"
    _, uuid = new_vdi(host, bytes(content))
    out = tmp_path / "disk.raw"
    result = invoke(runner, host, "vdi-export", uuid, "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["size_bytes"] == 3 * MIB and doc["disk"]["vdi_uuid"] == uuid and doc["path"] == str(out)
    assert out.read_bytes() == content
    result = invoke(runner, host, "vdi-import", str(out), "--sr", "Local storage")
    assert result.exit_code == 0, result.output
    new_uuid = result.stdout.strip()
    assert vdi_bytes(host, new_uuid) == content


def test_vdi_import_needs_exactly_one_target(runner, host, tmp_path):
    f = tmp_path / "d.raw"
    f.write_bytes(b"\1" * 512)
    for extra in ([], ["--vdi", "a", "--sr", "b"]):
        result = invoke(runner, host, "vdi-import", str(f), *extra)
        assert result.exit_code == 2
        assert "exactly one" in result.stderr


def test_vdi_import_passes_options(runner, host, tmp_path):
    from xvatool.ops.disk_import import ImageImport

    f = tmp_path / "d.vhd"
    f.write_bytes(b"x")
    done = ImageImport("new-uuid", "d.vhd", 512, f, "vhd", 1, 512)
    with mock.patch("xvatool.ops.disk_import.import_image", autospec=True, return_value=done) as imp:
        result = invoke(runner, host, "vdi-import", str(f), "--vdi", "u-1", "--format", "vhd", "--resume",
                        "--retries", "0", "--force", "--state-dir", str(tmp_path / "state"))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "new-uuid"
    kwargs = imp.call_args.kwargs
    assert kwargs["vdi_uuid"] == "u-1" and kwargs["sr"] is None and kwargs["force"] is True
    assert kwargs["format"] == "vhd" and kwargs["resume"] is True and kwargs["retry"].retries == 0
    assert kwargs["state_dir"] == tmp_path / "state"


def test_vdi_export_passes_options(runner, host, tmp_path):
    from xvatool.xapi.vdi import VdiInfo

    info = VdiInfo("OpaqueRef:1", "u-2", "disk", 512)
    with (
        mock.patch("xvatool.xapi.vdi.export_vdi", autospec=True, return_value=tmp_path) as exp,
        mock.patch("xvatool.xapi.vdi.find_vdi", autospec=True, return_value=info),
    ):
        result = invoke(runner, host, "vdi-export", "u-2", "-o", "x.vhd", "--format", "vhd", "--timeout", "5",
                        "--force")  # fmt: skip
    assert result.exit_code == 0, result.output
    args, kwargs = exp.call_args
    assert args[1:] == ("u-2", Path("x.vhd"))
    assert kwargs["format"] == "vhd" and kwargs["retry"].retries == 3 and kwargs["overwrite"] is True
    assert args[0].timeout_s == 5.0


def test_vdi_export_unknown_vdi_exit_2(runner, host, tmp_path):
    result = invoke(runner, host, "vdi-export", "nope", "-o", str(tmp_path / "x"))
    assert result.exit_code == 2
    assert "no VDI" in result.stderr
    assert open_sessions(host) == 0  # logged out on the error path too


def test_vm_list_against_simulated_host(runner, sim):
    result = runner.invoke(
        main, ["vm", "list", "--json", "--host", sim.url], env={"XVATOOL_PASSWORD": sim.password}
    )
    assert result.exit_code == 0, result.output
    (vm,) = [v for v in json.loads(result.stdout) if v["name"] == "demo-vm"]
    assert [d["virtual_size"] for d in vm["disks"]] == [4 * MIB, 2 * MIB]  # the sim fixture's demo disks
    assert vm["virtual_size"] == 6 * MIB


def test_vdi_round_trip_against_simulated_host(runner, sim, tmp_path):
    host = sim.host
    ref = host.vdis_of(host.vm("demo-vm"))[1]
    uuid = str(host.state.field("VDI", ref, "uuid"))
    out = tmp_path / "d.raw"
    env = {"XVATOOL_PASSWORD": sim.password, "XVATOOL_HOST": sim.url}
    result = runner.invoke(main, ["vdi-export", uuid, "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == host.disk_bytes(ref)
    result = runner.invoke(main, ["vdi-import", str(out), "--sr", "Local storage", "--json"], env=env)
    assert result.exit_code == 0, result.output
    new_ref = host.state.find("VDI", uuid=json.loads(result.stdout)["disk"]["vdi_uuid"])[0]
    assert host.disk_bytes(new_ref) == out.read_bytes()


def test_sigterm_becomes_keyboard_interrupt(monkeypatch):
    installed = {}
    monkeypatch.setattr(conn_mod.signal, "getsignal", lambda sig: conn_mod.signal.SIG_DFL)
    monkeypatch.setattr(conn_mod.signal, "signal", lambda sig, handler: installed.setdefault(sig, handler))
    conn_mod.terminate_as_interrupt()
    handler = installed[conn_mod.signal.SIGTERM]
    with pytest.raises(KeyboardInterrupt):
        handler(conn_mod.signal.SIGTERM, None)


def test_sigterm_keeps_a_foreign_handler(monkeypatch):
    monkeypatch.setattr(conn_mod.signal, "getsignal", lambda sig: print)
    monkeypatch.setattr(conn_mod.signal, "signal", lambda *a: pytest.fail("replaced a handler"))
    conn_mod.terminate_as_interrupt()


def test_vm_list_against_xvatool_serve_process(tmp_path):
    """The real thing: `xvatool serve` in one process, `xvatool vm list` in another (this checkout)."""
    exe = [sys.executable, "-m", "xvatool"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XVATOOL_")}
    env["PYTHONUNBUFFERED"] = "1"  # the URL line must arrive while the server runs
    server = subprocess.Popen(
        [*exe, "serve", "--data", str(tmp_path / "sim"), "--listen", "127.0.0.1:0", "--demo"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,  # serve announces its URL on stderr
        text=True,
        env=env,
    )
    try:
        # seeding the demo disks (320 MiB, sparse) is quick, but generous on a loaded machine
        ready, _, _ = select.select([server.stderr], [], [], 120)
        assert ready, "xvatool serve printed no URL within 120 s"
        line = server.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line).group(0)
        result = subprocess.run(
            [*exe, "vm", "list", "--json", "--host", url],
            env={**env, "XVATOOL_PASSWORD": "demo"},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stderr.close()
    assert result.returncode == 0, result.stderr
    assert "demo-vm" in [vm["name"] for vm in json.loads(result.stdout)]

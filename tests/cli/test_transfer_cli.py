from __future__ import annotations

import io
import json
from pathlib import Path
from unittest import mock

import pytest
from click.testing import CliRunner

from xvatool.cli import main
from xvatool.ops.export import ExportResult
from xvatool.ops.import_ import ImportResult


@pytest.fixture
def password_file(tmp_path):
    path = tmp_path / "pw"
    path.write_text("secret\n")
    return path


def _fake_session():
    session = mock.MagicMock()
    session.__enter__.return_value = session
    return session


def test_export_passes_options_to_the_library(tmp_path, password_file):
    session = _fake_session()
    out = tmp_path / "vm.xva"
    result = ExportResult(out, "uuid-1", "web-01", "parallel", "zstd", 123, "snap-uuid")
    with (
        mock.patch("xvatool.xapi.session.connect", return_value=session) as connect,
        mock.patch("xvatool.ops.export.export_vm", autospec=True, return_value=result) as export_vm,
    ):
        run = CliRunner().invoke(
            main,
            ["export", "--host", "https://xen1", "--password-file", str(password_file), "web-01",
             "-o", str(out), "--compress", "zstd", "--mode", "parallel", "--snapshot", "never",
             "--retries", "0", "--resume", "--force", "--discard", "--state-dir", str(tmp_path / "st"),
             "--json"],
        )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert connect.call_args.args[:3] == ("https://xen1", "root", "secret")
    kwargs = export_vm.call_args.kwargs
    assert export_vm.call_args.args[1:] == ("web-01", out)
    assert (kwargs["mode"], kwargs["compression"], kwargs["snapshot"]) == ("parallel", "zstd", "never")
    assert (kwargs["retry"].retries, kwargs["resume"], kwargs["overwrite"], kwargs["discard"]) == (
        0,
        True,
        True,
        True,
    )
    assert kwargs["state_dir"] == tmp_path / "st"
    doc = json.loads(run.output)
    assert doc["vm"] == {"uuid": "uuid-1", "name": "web-01"} and doc["size_bytes"] == 123
    assert doc["vm_snapshot"] == {"uuid": "snap-uuid"}


def test_import_passes_options_and_prints_the_uuid(tmp_path, password_file):
    session = _fake_session()
    archive = tmp_path / "vm.xva"
    archive.write_bytes(b"")
    with (
        mock.patch("xvatool.xapi.session.connect", return_value=session),
        mock.patch(
            "xvatool.ops.import_.import_vm",
            autospec=True,
            return_value=ImportResult("uuid-9", "OpaqueRef:9"),
        ) as import_vm,
    ):
        run = CliRunner().invoke(
            main,
            ["import", "--host", "https://xen1", "--password-file", str(password_file), str(archive),
             "--sr", "Local storage", "--restore-identity", "--force", "--mode", "parallel", "--retries", "5",
             "--resume", "--discard"],
        )  # fmt: skip
    assert run.exit_code == 0, run.output
    assert run.output.strip() == "uuid-9"
    kwargs = import_vm.call_args.kwargs
    assert kwargs["sr"] == "Local storage" and kwargs["restore"] and kwargs["force"]
    assert (kwargs["mode"], kwargs["retry"].retries, kwargs["resume"], kwargs["discard"]) == (
        "parallel",
        5,
        True,
        True,
    )


def test_help_has_examples():
    for command in ("export", "import"):
        run = CliRunner().invoke(main, [command, "--help"])
        assert run.exit_code == 0 and "Example" in run.output and "--resume" in run.output


def _host_args(sim, tmp_path: Path) -> list[str]:
    pw = tmp_path / "sim-pw"
    pw.write_text(sim.password)
    return ["--host", sim.url, "--user", sim.user, "--password-file", str(pw)]


@pytest.mark.parametrize("mode", ["stream", "parallel"])
def test_export_then_import_end_to_end(sim, tmp_path, mode):
    out = tmp_path / "vm.xva"
    runner = CliRunner()
    host = _host_args(sim, tmp_path)
    run = runner.invoke(main, ["export", *host, "demo-vm", "-o", str(out), "--mode", mode])
    assert run.exit_code == 0, run.output
    assert out.is_file()
    run = runner.invoke(main, ["import", *host, str(out), "--mode", mode, "--json"])
    assert run.exit_code == 0, run.output
    uuid = json.loads(run.output)["vm"]["uuid"]
    assert sim.host.state.find("VM", uuid=uuid)


def test_errors_are_one_line_with_exit_codes(sim, tmp_path):
    runner = CliRunner()
    run = runner.invoke(main, ["export", *_host_args(sim, tmp_path), "nope", "-o", str(tmp_path / "x.xva")])
    assert run.exit_code == 2
    assert "no VM with uuid or name 'nope'" in run.output and "Traceback" not in run.output
    sim.host.add_fault("export:corrupt-chunk=0")
    run = runner.invoke(
        main, ["export", *_host_args(sim, tmp_path), "demo-vm", "-o", str(tmp_path / "y.xva")]
    )
    assert run.exit_code == 1 and "checksum mismatch" in run.output
    assert not list(tmp_path.glob("y.xva*"))


@pytest.mark.parametrize("command", [["vdi-export", "uuid-1"], ["export", "web-01", "--mode", "parallel"]])
def test_export_refuses_dash_where_it_cannot_stream(command, tmp_path, password_file, monkeypatch):
    # Regression: `vdi-export -o -` wrote a file named "-". `export -o -` streams (stream mode only).
    monkeypatch.chdir(tmp_path)
    with mock.patch("xvatool.xapi.session.connect") as connect:
        run = CliRunner().invoke(
            main, [*command, "--host", "https://xen1", "--password-file", str(password_file), "-o", "-"]
        )
    assert run.exit_code == 2 and "-o -" in run.output
    assert not connect.called and not (tmp_path / "-").exists()


def test_create_refuses_dash_as_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.img").write_bytes(bytes(512))
    run = CliRunner().invoke(main, ["create", "-o", "-", "--name", "x", "--disk", "d.img"])
    assert run.exit_code == 2 and "-o -" in run.output
    assert not (tmp_path / "-").exists()


def test_import_refused_by_the_host_names_the_task_error(sim, tmp_path, monkeypatch):
    """`--restore-identity` of a VM that exists: one attempt, the task's error in words with its code."""
    from tests.ops.test_import import count_uploads

    out = tmp_path / "vm.xva"
    runner = CliRunner()
    host = _host_args(sim, tmp_path)
    assert runner.invoke(main, ["export", *host, "demo-vm", "-o", str(out)]).exit_code == 0
    sends = count_uploads(monkeypatch)
    run = runner.invoke(main, ["import", *host, str(out), "--restore-identity", "--retries", "3"])
    assert run.exit_code == 1, run.output
    assert "Traceback" not in run.output and len(run.output.strip().splitlines()) == 1
    assert "a VM with this identity already exists" in run.output
    assert "(VM_TO_IMPORT_IS_NOT_NEWER_VERSION)" in run.output
    assert "the task says why" not in run.output
    assert sends == ["/import"]
    as_json = runner.invoke(main, ["import", *host, str(out), "--restore-identity", "--json"])
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == "VM_TO_IMPORT_IS_NOT_NEWER_VERSION" and error["exit_code"] == 1
    assert error["params"][0] == sim.host.vm("demo-vm")  # the parameters stay in the JSON


def test_export_to_a_pipe_and_import_from_one(sim, tmp_path, monkeypatch):
    # `export -o -` writes the verified stream to stdout (its summary to stderr); `import -` reads one.
    from xvatool.xva.reader import XvaReader

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    host = _host_args(sim, tmp_path)
    run = runner.invoke(main, ["export", *host, "demo-vm", "-o", "-"])
    assert run.exit_code == 0, run.stderr
    archive = run.stdout_bytes
    reader = XvaReader(io.BytesIO(archive), source="pipe")
    assert reader.metadata.vm.name_label == "demo-vm" and sum(1 for _ in reader.chunks()) > 0
    assert "wrote standard output" in run.stderr and sorted(p.name for p in tmp_path.iterdir()) == [
        "sim",
        "sim-pw",
    ]
    run = runner.invoke(main, ["import", *host, "-", "--json"], input=archive)
    assert run.exit_code == 0, run.output
    doc = json.loads(run.stdout)
    new = doc["vm"]["uuid"]
    assert sim.host.state.find("VM", uuid=new) and doc["source"]["path"] is None
    assert [d["userdevice"] for d in doc["disks"]] == ["0", "1"] and all(d["vdi_uuid"] for d in doc["disks"])
    broken = bytearray(archive)
    broken[len(archive) // 2] ^= 1  # in a chunk: the upload stops, the host keeps nothing
    vms = set(sim.host.state.refs("VM"))
    run = runner.invoke(main, ["import", *host, "-"], input=bytes(broken))
    assert run.exit_code == 1 and "checksum mismatch" in run.stderr
    assert set(sim.host.state.refs("VM")) == vms

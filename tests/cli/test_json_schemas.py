"""Every command's ``--json`` output, success and failure, against docs/schemas/xvatool.schema.json.

Simulated hosts, one repository and backup folders; every command that takes ``--json`` (and
every variant with a document of its own: packages, appliances, repositories) is run for real
and its document validated against the schema the docs promise (docs/json.md). A command that
gains ``--json`` without a schema entry here fails `test_every_json_command_is_covered`.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import click
import jsonschema
import pytest
from click.testing import CliRunner

from tests.ops.helpers import MIB, Host, image
from xvatool.cli import main

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "xvatool.schema.json"

DOCUMENTS = {
    "inspect": "inspect",
    "verify": "verify",
    "extract": "extract",
    "create": "create",
    "repack": "repack",
    "convert": "convert",
    "vm list": "vm_list",
    "appliance list": "appliance_list",
    "export": "export",
    "import": "import",
    "vdi-export": "vdi_export",
    "vdi-import": "vdi_import",
    "backup": "backup",
    "restore": "restore",
    "migrate": "migrate",
    "demo": "demo",
    "backups list": "backups_list",
    "backups verify": "backups_verify",
    "backups prune": "backups_prune",
    "repo init": "repo_init",
    "repo add": "repo_add",
    "repo snapshots": "repo_snapshots",
    "repo extract": "repo_extract",
    "repo check": "repo_check",
    "repo forget": "repo_forget",
    "repo prune": "repo_prune",
    "repo stats": "repo_stats",
}
"""Command → the schema definition of its document (``#/$defs/<name>``)."""
VARIANTS = {
    "backup --repo": "backup_repo",
    "restore --repo": "restore_repo",
    "export --appliance": "export_package",
    "import PACKAGE": "import_package",
    "backup --appliance": "backup_appliance",
    "restore APPLIANCE-BACKUP": "restore_appliance",
    "migrate --appliance": "migrate_appliance",
}
"""Variants of a command with a document of their own → its definition."""


def _json_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> set[str]:
    found: set[str] = set()
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found |= _json_commands(command, (*prefix, name))
        elif any("--json" in p.opts for p in command.params if isinstance(p, click.Option)):
            found.add(" ".join((*prefix, name)))
    return found


@pytest.fixture(scope="module")
def schema() -> dict:
    document = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(document)
    return document


def validate(schema: dict, definition: str, document: object) -> None:
    jsonschema.validate(document, {"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]})


def test_every_json_command_is_covered():
    assert _json_commands(main) == set(DOCUMENTS)


class Runner:
    """Runs commands with ``--json``, validates each document, and remembers what was covered."""

    def __init__(self, schema: dict) -> None:
        self.schema = schema
        self.seen: set[str] = set()

    def __call__(self, *args: str, variant: str | None = None, code: int = 0) -> object:
        """Run `args` with --json; exit `code`; the document checked against its definition.

        The definition is the variant's, else the command's (its first one or two words);
        a failure (exit 1 or 2) must be an error document.
        """
        result = CliRunner().invoke(main, [*args, "--json"])
        assert result.exit_code == code, (args, result.output)
        document = json.loads(result.stdout)
        if code in (1, 2):
            validate(self.schema, "error_document", document)
            assert document["error"]["exit_code"] == code
            return document
        words = [a for a in args if not a.startswith("-") and "/" not in a and "." not in a]
        name = " ".join(words[:2]) if " ".join(words[:2]) in DOCUMENTS else words[0]
        validate(self.schema, VARIANTS[variant] if variant else DOCUMENTS[name], document)
        self.seen.add(variant or name)
        return document


def test_every_command_follows_its_schema(schema, tmp_path, monkeypatch):
    from xvatool.sim.records import network_record
    from xvatool.sim.testing import running_host

    run = Runner(schema)
    monkeypatch.chdir(tmp_path)
    with running_host(tmp_path / "a", demo=False) as a, running_host(tmp_path / "b", demo=False) as b:
        source = Host(a, tmp_path / "work")
        vm = source.add_vm("schema-vm", (2 * MIB, MIB), seed=3)
        b.host.state.add("network", network_record(name_label="LAN", bridge="xenbr9"))
        monkeypatch.setenv("XVATOOL_PASSWORD", a.password)
        monkeypatch.setenv("XVATOOL_TO_PASSWORD", b.password)
        monkeypatch.setenv("XVATOOL_REPO_PASSWORD", "correct horse")
        host = ["--host", a.url]

        run("vm", "list", *host)
        run("appliance", "list", *host)
        run("export", *host, "schema-vm", "-o", "vm.xva")
        run("import", "--host", b.url, "vm.xva", "--mode", "parallel")  # b: "schema-vm" stays unique on a
        run("inspect", "vm.xva")
        run("verify", "vm.xva")
        run("extract", "vm.xva", "-o", "disks")
        disk = image(tmp_path / "d.img", 3 * MIB, seed=9)
        run("create", "-o", "new.xva", "--name", "new", "--disk", str(disk), "--network", "LAN")
        run("repack", "new.xva", "renamed.xva", "--rename", "renamed", "--compress", "zstd")
        run("convert", "new.xva", "new.ova")
        vdi = vm.uuid and json.loads(CliRunner().invoke(main, ["vm", "list", *host, "--json"]).stdout)
        vdi_uuid = next(v for v in vdi if v["uuid"] == vm.uuid)["disks"][0]["vdi_uuid"]
        run("vdi-export", *host, vdi_uuid, "-o", "d.tar", "--format", "tar")
        run("vdi-import", *host, "d.tar", "--sr", "Local storage")
        run("backup", *host, "--vm", "schema-vm", "--vm", "gone", "--dest", "backups", code=3)
        run("backup", *host, "--all", "--dest", "backups", "--keep", "1")
        run("backups", "list", "backups")
        run("backups", "verify", "backups")
        run("backups", "prune", "backups", "--keep", "1", "--dry-run")
        run("restore", *host, next(Path("backups").iterdir()).as_posix(), "--mode", "parallel")
        run("migrate", *host, vm.uuid, "--to", b.url)
        run("repo", "init", "--encrypt", "repo")
        run("repo", "add", "repo", "vm.xva")
        a.host.set_power_state(a.host.state.find("VM", uuid=vm.uuid)[0], "Running")  # via a host snapshot
        nights = [
            run("backup", *host, "--vm", vm.uuid, "--repo", "repo", "--keep", "2", variant="backup --repo")
            for _night in range(2)
        ]  # the second forgets the snapshot `repo add` made
        assert [len(n["forgotten"]) for n in nights] == [0, 1]  # type: ignore[index]
        missing = run("backup", *host, "--vm", vm.uuid, "--vm", "gone", "--repo", "repo", code=3,
                      variant="backup --repo")  # fmt: skip
        assert [r["status"] for r in missing["results"]] == ["failed", "ok"]  # type: ignore[index]
        snapshots = run("repo", "snapshots", "repo")
        assert all(s["verified"] is None for s in snapshots)  # type: ignore[union-attr]
        run("repo", "extract", "repo", snapshots[0]["id"][:8], "-o", "repo-disks")  # type: ignore[index]
        run("restore", *host, "--repo", "repo", f"latest:{vm.uuid}", variant="restore --repo")
        checked = run("repo", "check", "repo", "--read-data")
        assert checked["verified_count"] == len(snapshots)  # type: ignore[index,arg-type]
        assert {s["verified"]["state"] for s in run("repo", "snapshots", "repo")} == {"ok"}  # type: ignore[index]
        run("repo", "forget", "repo", "--keep-last", "1", "--prune")
        run("repo", "prune", "repo")
        run("repo", "stats", "repo")
    run("demo")
    assert run.seen == set(DOCUMENTS) | {"backup --repo", "restore --repo"}


def test_appliances_and_packages_follow_their_schema(schema, tmp_path, monkeypatch):
    """The package and appliance variants of export, import, backup, restore and migrate."""
    from xvatool.sim.testing import running_host

    run = Runner(schema)
    monkeypatch.chdir(tmp_path)
    with (
        running_host(tmp_path / "a", demo=False, demo_appliance=True) as a,
        running_host(tmp_path / "b", demo=False) as b,
    ):
        for sim in (a, b):
            sim.host.api.appliances.delay_scale = 0.01
        monkeypatch.setenv("XVATOOL_PASSWORD", a.password)
        monkeypatch.setenv("XVATOOL_TO_PASSWORD", b.password)
        host, target = ["--host", a.url], ["--host", b.url]
        a.host.set_power_state(a.host.vm("demo-app-web"), "Running")  # through snapshots taken together

        (app,) = run("appliance", "list", *host)  # type: ignore[misc]
        assert [m["name"] for m in app["vms"]] == ["demo-app-db", "demo-app-web"]
        package = run(
            "export", *host, "--appliance", "demo-app", "-o", "app.ova", variant="export --appliance"
        )
        assert [v["vm_snapshot"] is not None for v in package["vms"]] == [False, True]  # type: ignore[index]
        run("export", *host, "demo-app-web", "-o", "web/", variant="export --appliance")
        imported = run("import", *target, "app.ova", variant="import PACKAGE")
        assert imported["appliance"]["name"] == "demo-app"  # type: ignore[index]
        backup = run("backup", *host, "--appliance", "demo-app", "--dest", "bk", variant="backup --appliance")
        restored = run("restore", *target, backup["path"], variant="restore APPLIANCE-BACKUP")  # type: ignore[index]
        assert [m["source_vm"]["name"] for m in restored["vms"]] == ["demo-app-db", "demo-app-web"]  # type: ignore[index]
        for ref in b.host.state.refs("VM_appliance"):
            b.host.state.update("VM_appliance", ref, name_label=f"copy {ref[-4:]}")
        moved = run("migrate", *host, "--appliance", "demo-app", "--to", b.url, variant="migrate --appliance")
        assert [m["source_vm"]["name"] for m in moved["vms"]] == ["demo-app-db", "demo-app-web"]  # type: ignore[index]

        run("export", *host, "--appliance", "nope", "-o", "x.ova", code=2)
        hostile = tmp_path / "evil.ova"
        with tarfile.open(hostile, "w") as tar:
            tar.addfile(tarfile.TarInfo("../evil.ovf"))
        run("import", *target, str(hostile), code=1)
        run("backup", *host, "--appliance", "nope", "--dest", "bk", code=2)
        bad = tmp_path / "bad" / "appliance.json"
        bad.parent.mkdir()
        bad.write_text("{}")
        run("restore", *target, str(bad), code=1)
        run("migrate", *host, "--appliance", "nope", "--to", b.url, code=2)
    assert run.seen == {"appliance list", *VARIANTS} - {"backup --repo", "restore --repo"}


@pytest.mark.parametrize("command", sorted(DOCUMENTS))
def test_every_command_reports_errors_as_one_json_object(schema, tmp_path, command, monkeypatch):
    """A failure is ``{"error": {...}}`` on stdout with the same exit code as without --json."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XVATOOL_PASSWORD", "x")
    monkeypatch.setenv("XVATOOL_TO_PASSWORD", "x")
    missing = str(tmp_path / "missing")
    failing = {
        "inspect": [missing], "verify": [missing], "extract": [missing, "-o", "out"],
        "create": ["-o", "x.xva", "--name", "x", "--disk", missing], "repack": [missing, "out.xva"],
        "convert": [missing, "out.xva"], "demo": ["--keep-dir", "/proc/forbidden"],
        "backups list": [missing], "backups verify": [missing], "backups prune": [missing, "--keep", "1"],
        "repo init": [], "repo add": [missing], "repo snapshots": [missing], "repo extract": [missing, "x"],
        "repo check": [missing], "repo forget": [missing], "repo prune": [missing], "repo stats": [missing],
    }  # fmt: skip
    host = ["--host", "http://127.0.0.1:9"]  # nothing listens on the discard port
    args = failing.get(command)
    if args is None:  # a host command: the connection is refused
        args = {
            "vm list": [], "appliance list": [], "export": ["vm", "-o", "x.xva"],
            "import": [str(Path(__file__))], "vdi-export": ["u", "-o", "x"],
            "vdi-import": [str(Path(__file__)), "--sr", "sr"],
            "backup": ["--all", "--dest", "b"], "restore": [str(Path(__file__))],
            "migrate": ["vm", "--to", "http://127.0.0.1:9"],
        }[command] + host  # fmt: skip
    plain = CliRunner().invoke(main, [*command.split(), *args])
    result = CliRunner().invoke(main, [*command.split(), *args, "--json"])
    assert result.exit_code == plain.exit_code and result.exit_code in (1, 2), result.output
    document = json.loads(result.stdout)
    validate(schema, "error_document", document)
    assert document["error"]["exit_code"] == result.exit_code
    assert plain.stderr.strip().endswith(document["error"]["message"].split(":")[-1].strip())

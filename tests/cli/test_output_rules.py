"""What the command line prints and where: -q, --log-file, warnings on one line, help, completion."""

from __future__ import annotations

import io
import json
import re

import click
import pytest
from click.testing import CliRunner

from tests.builders import MIB, XvaSpec, build_xva, disk_from_image, pattern
from xvatool.cli import main

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (INFO|NOTE|WARNING|ERROR) \[\d+\] \S.*$")


def _commands(
    group: click.Group, prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append(((*prefix, name), command))
    return found


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "good.xva"
    image = pattern(MIB, 1) + pattern(4096, 2)
    path.write_bytes(build_xva(XvaSpec([disk_from_image("Ref:2", image, "xxhash")])).data)
    return path


def test_log_file_gets_one_timestamped_line_per_event_and_no_bars(archive, tmp_path):
    log = tmp_path / "xvatool.log"
    for _ in range(2):  # appended to, never replaced
        run = CliRunner().invoke(main, ["verify", str(archive), "--log-file", str(log), "-q"])
        assert run.exit_code == 0 and run.output == ""
    run = CliRunner().invoke(main, ["verify", str(tmp_path / "missing.xva"), "--log-file", str(log)])
    assert run.exit_code == 2
    lines = log.read_text().splitlines()
    assert all(LOG_LINE.match(line) for line in lines), lines
    assert sum("INFO" in line and "start: xvatool verify" in line for line in lines) == 3
    assert sum(line.endswith("exit 0") for line in lines) == 2 and lines[-1].endswith("exit 2")
    assert any(f"{archive}: valid;" in line for line in lines)  # what -q kept off the terminal
    assert any("ERROR" in line and "missing.xva: No such file or directory" in line for line in lines)
    assert (log.stat().st_mode & 0o777) == 0o600


def test_log_file_from_the_environment_and_an_unwritable_one(archive, tmp_path, monkeypatch):
    monkeypatch.setenv("XVATOOL_LOG_FILE", str(tmp_path / "env.log"))
    assert CliRunner().invoke(main, ["inspect", str(archive)]).exit_code == 0
    assert "start: xvatool inspect" in (tmp_path / "env.log").read_text()
    run = CliRunner().invoke(main, ["inspect", str(archive), "--log-file", str(tmp_path / "no" / "dir.log")])
    assert run.exit_code == 2 and "--log-file" in run.stderr and "Traceback" not in run.output


def test_retry_warnings_are_one_line_starting_with_xvatool_warning(sim, tmp_path):
    pw = tmp_path / "pw"
    pw.write_text(sim.password)
    sim.host.add_fault("export:drop-after=1MiB:times=2")
    args = [
        "export",
        "--host",
        sim.url,
        "--password-file",
        str(pw),
        "demo-vm",
        "-o",
        str(tmp_path / "vm.xva"),
    ]
    run = CliRunner().invoke(main, [*args, "--retries", "3", "--timeout", "5"])
    assert run.exit_code == 0, run.output
    warnings = run.stderr.splitlines()
    assert len(warnings) == 2 and all(w.startswith("xvatool: warning: export of demo-vm: ") for w in warnings)
    assert all(re.search(r"; retry \d of 3 in \d+\.\d s$", w) for w in warnings)
    quiet = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "q.xva"), "-q", "--retries", "3"])
    assert quiet.exit_code == 0 and quiet.output == ""  # no warnings, no summary: cron mails nothing


def test_messages_go_through_tqdm_while_bars_are_up(monkeypatch):
    from tqdm import tqdm

    from xvatool._progress import TqdmProgress
    from xvatool.cli._output import warn

    written: list[str] = []
    monkeypatch.setattr(tqdm, "write", classmethod(lambda cls, text, file=None, **kw: written.append(text)))
    monkeypatch.setattr("sys.stderr", io.StringIO())
    bar = TqdmProgress()("web-01 disk 0", 1 << 30)
    try:
        warn("a retry")
    finally:
        bar.close()
    assert written == ["xvatool: warning: a retry"]


def test_long_warnings_are_cut_in_the_middle_to_fit_one_line():
    from xvatool.cli._output import one_line

    text = "export of web-01: " + "x" * 300 + "\nsecond line; retry 1 of 3 in 0.5 s"
    line = one_line(text, 120)
    assert len(line) == 120 and "\n" not in line and line.endswith("retry 1 of 3 in 0.5 s")


def test_bars_use_binary_units_and_show_percent_and_eta(monkeypatch):
    from xvatool._progress import TqdmProgress

    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    bar = TqdmProgress()("web-01 disk 0 (root)", 300 << 20)
    bar.update(150 << 20)
    bar.close()
    text = stream.getvalue()
    assert "web-01 disk 0 (root):  50%|" in text and "150.0 MiB/300.0 MiB" in text
    assert "MB" not in text.replace("MiB", "")


@pytest.mark.parametrize(
    ("path", "command"), _commands(main), ids=lambda c: " ".join(c) if isinstance(c, tuple) else ""
)
def test_every_option_is_described(path, command):
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"


def test_placeholders_and_names_are_consistent():
    def help_of(*command: str) -> str:
        return " ".join(CliRunner().invoke(main, [*command, "--help"]).stdout.split())

    for command in (["import"], ["restore"], ["migrate"], ["vdi-import"]):
        assert "--sr SR" in help_of(*command), command
    for command in (["import"], ["restore"]):
        assert "--restore-identity" in help_of(*command), command
    migrate = help_of("migrate")
    assert "--to-fingerprint SHA256" in migrate and "--to-password-file FILE" in migrate
    assert "--host URL" in help_of("export") and "(or XVATOOL_HOST)" in help_of("export")
    assert CliRunner().invoke(main, ["-V"]).stdout.startswith("xvatool, version ")


def test_shell_completion(monkeypatch):
    script = CliRunner().invoke(main, ["completion", "bash"])
    assert script.exit_code == 0 and "_XVATOOL_COMPLETE=bash_complete" in script.stdout
    monkeypatch.setenv("_XVATOOL_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", "xvatool back")
    monkeypatch.setenv("COMP_CWORD", "1")
    answer = CliRunner().invoke(main, [], prog_name="xvatool")
    assert {"plain,backup", "plain,backups"} <= set(answer.stdout.split())


def test_json_usage_errors_are_json_too():
    run = CliRunner().invoke(main, ["verify", "--json", "--no-such-option"])
    assert run.exit_code == 2
    assert json.loads(run.stdout)["error"] == {
        "code": "usage",
        "message": "No such option '--no-such-option'.",
        "exit_code": 2,
    }

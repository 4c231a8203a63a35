"""House rules that every command follows: an example in --help, --debug accepted after it."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from xvatool.cli import main


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


COMMANDS = _commands(main)


def test_the_issues_commands_exist():
    names = {" ".join(c) for c in COMMANDS}
    assert {
        "inspect", "verify", "extract", "create", "repack", "serve", "vm list", "export", "import",
        "vdi-export", "vdi-import", "backup", "restore", "migrate", "demo",
    } <= names  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_has_an_example_and_debug(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    assert "--debug" in result.output

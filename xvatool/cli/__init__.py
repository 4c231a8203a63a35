"""The `xvatool` command line: a thin click layer over the library.

Exit codes: 0 success; 1 archive invalid or operation failed; 2 usage or local I/O error;
3 some items of a batch failed; 130 interrupted. Output rules (stdout, stderr, -q, --json,
--log-file) live in `cli._output`; errors in `cli._errors` and `cli._exit`.
"""

from __future__ import annotations

import click

from xvatool import __version__
from xvatool.cli import (
    appliance,
    archive,
    backups,
    convert,
    host,
    package,
    repo,
    serve,
    shell,
    transfer,
    workflows,
)
from xvatool.cli._output import OutputGroup, output_options

__all__ = ["main"]


@click.group(
    cls=OutputGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, "-V", "--version", prog_name="xvatool")
@output_options
def main() -> None:
    """Move XenServer / XCP-ng VMs in and out of hosts, and inspect, verify, extract and create XVA archives.

    \b
    Exit codes: 0 ok, 1 invalid archive or failed operation, 2 usage or I/O error,
    3 some VMs of a batch failed, 130 interrupted.
    Every command takes -q (print only what was asked for), --json (one JSON document,
    errors included; docs/json.md) and --log-file PATH (timestamped events, e.g. for cron).
    """


for _module in (archive, convert, package, serve, host, appliance, transfer, workflows, backups, repo, shell):
    for _command in _module.COMMANDS:
        main.add_command(_command)

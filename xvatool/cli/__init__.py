"""The `xvatool` command line: a thin click layer over the library.

Exit codes: 0 success; 1 archive invalid or operation failed; 2 usage or local I/O error;
3 some items of a batch failed; 130 interrupted (state kept for --resume).
"""

from __future__ import annotations

import click

from xvatool import __version__
from xvatool.cli import appliance, archive, convert, host, package, repo, serve, transfer, workflows
from xvatool.cli._common import debug_option, quiet_option

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="xvatool")
@quiet_option
@debug_option
@click.pass_context
def main(ctx: click.Context) -> None:
    """Move XenServer / XCP-ng VMs in and out of hosts, and inspect, verify, extract and create XVA archives.

    \b
    Exit codes: 0 ok, 1 invalid archive or failed operation, 2 usage or I/O error,
    3 some VMs of a batch failed, 130 interrupted (state kept for --resume).
    """
    ctx.ensure_object(dict)


for _module in (archive, convert, package, serve, host, appliance, transfer, workflows, repo):
    for _command in _module.COMMANDS:
        main.add_command(_command)

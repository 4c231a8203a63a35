"""The `backups` command group: list, verify and prune the backups `backup --dest` writes.

DIR is the backup folder (``--dest``) or one VM's folder in it. Restoring one is `xvatool restore
DIR/<vm-folder>` (its newest backup) or `xvatool restore ARCHIVE`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from xvatool.cli._common import command_errors, echo_json, human_size, json_option, terminal_progress
from xvatool.cli._output import output_options, plural, result, summary, table

__all__ = ["COMMANDS", "backups_group"]

_DIR = click.argument("dest", metavar="DIR", type=click.Path(file_okay=False, exists=True, path_type=Path))
_VM = click.option("--vm", metavar="VM", help="Only this VM's backups (name, uuid or uuid prefix).")


@click.group("backups")
def backups_group() -> None:
    """List, verify and prune the backups in a backup folder (`backup --dest DIR`).

    \b
    Example:
      xvatool backups list /backups
      xvatool backups verify /backups
      xvatool backups prune /backups --keep 7
      xvatool restore --host https://xen1 /backups/web-01-6f1c4d3e   # its newest backup
    """


@backups_group.command("list")
@_DIR
@_VM
@json_option("backups")
@output_options
@command_errors
def list_command(*, dest: Path, vm: str | None, as_json: bool) -> None:
    """List the backups in DIR, oldest first per VM; incomplete ones (no manifest) too.

    \b
    Example:
      xvatool backups list /backups --vm web-01
    """
    from xvatool.ops.catalog import list_backups_in

    items = list_backups_in(dest, vm=vm)
    if as_json:
        echo_json([item.to_json() for item in items])
        return
    if not items:
        summary(f"no backups{f' of {vm}' if vm else ''} in {dest}")
        return
    rows = [("VM", "TIME (UTC)", "SIZE", "STATUS", "ARCHIVE")]
    for item in items:
        size = human_size(item.entry.manifest.archive_size) if item.entry else "-"
        rows.append((item.vm_name, item.time or "-", size, item.state, str(item.archive)))
    for line in table(rows, right=(2,)):
        result(line)
    complete = sum(1 for item in items if item.entry is not None)
    summary(f"{plural(complete, 'complete backup')}, {len(items) - complete} incomplete")


@backups_group.command("verify")
@_DIR
@_VM
@json_option("report")
@output_options
@command_errors
def verify_command(*, dest: Path, vm: str | None, as_json: bool) -> None:
    """Check every archive in DIR against its manifest (size and SHA-256); exit 1 if any is bad.

    An archive whose SHA-256 matches its manifest is byte for byte the one whose every chunk
    was verified when it was written. A backup without its manifest counts as bad.

    \b
    Example:
      xvatool backups verify /backups -q || echo "some backup is damaged"
    """
    from xvatool.ops.catalog import verify_backups

    report = verify_backups(dest, vm=vm, progress=terminal_progress())
    if as_json:
        echo_json(report.to_json())
    else:
        rows = [("VM", "TIME (UTC)", "STATUS", "ARCHIVE / PROBLEM")]
        for item, status, exc in report.results:
            rows.append((item.vm_name, item.time or "-", status, str(exc) if exc else str(item.archive)))
        lines = table(rows)
        say = summary if report.ok else result
        for line in lines:
            say(line)
        say(f"{plural(len(report.results), 'backup')} checked, {len(report.bad)} bad")
    if not report.ok:
        sys.exit(1)


@backups_group.command("prune")
@_DIR
@click.option("--keep", type=click.IntRange(min=1), required=True, metavar="N",
              help="Keep the N newest complete backups of each VM.")  # fmt: skip
@_VM
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@json_option("report")
@output_options
@command_errors
def prune_command(*, dest: Path, keep: int, vm: str | None, dry_run: bool, as_json: bool) -> None:
    """Remove all but the N newest complete backups of each VM in DIR.

    Only what xvatool wrote is removed: complete backups (archive and manifest) and leftovers
    of interrupted runs; other files, and archives without a manifest, stay.

    \b
    Example:
      xvatool backups prune /backups --keep 7 --dry-run
    """
    from xvatool.ops.catalog import prune_backups

    report = prune_backups(dest, keep=keep, vm=vm, dry_run=dry_run)
    if as_json:
        echo_json(report.to_json())
        return
    verb = "would prune" if dry_run else "pruned"
    for item in report.pruned:
        summary(f"{verb} {item.vm_name} {item.time} {item.archive}")
    summary(f"{verb} {plural(len(report.pruned), 'backup')}, kept {len(report.kept)}")


COMMANDS: list[click.Command] = [backups_group]

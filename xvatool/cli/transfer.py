"""CLI commands that move whole VMs: export, import."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from xvatool.cli._common import (
    command_errors,
    debug_option,
    echo_json,
    file_output_option,
    json_option,
    quiet_option,
    terminal_progress,
)
from xvatool.cli._connection import Connection, connection_options, retries_option

if TYPE_CHECKING:
    from xvatool._retry import RetryPolicy

__all__ = ["COMMANDS", "export_command", "import_command"]

_MODE = click.Choice(["stream", "parallel"])


@click.command("export")
@click.argument("vm")
@file_output_option("out", "The XVA to write.")
@click.option("--compress", type=click.Choice(["none", "gzip", "zstd"]), default="none", show_default=True)
@click.option("--mode", type=_MODE, default="stream", show_default=True, help="One stream, or one per disk.")
@click.option(
    "--snapshot",
    type=click.Choice(["auto", "never"]),
    default="auto",
    show_default=True,
    help="Export a running VM through a temporary snapshot (auto) or refuse (never).",
)
@retries_option
@click.option("--resume", is_flag=True, help="Continue an interrupted export from its journal.")
@json_option()
@connection_options
@quiet_option
@debug_option
@command_errors
def export_command(
    *,
    connect: Connection,
    vm: str,
    out: Path,
    compress: str,
    mode: str,
    snapshot: str,
    retry: RetryPolicy,
    resume: bool,
    as_json: bool,
) -> None:
    """Export VM (uuid or unique name) to an XVA file, verified while it downloads.

    \b
    Example:
      xvatool export --host xen1 --password-file pw web-01 -o web-01.xva --mode parallel
    """
    from xvatool.ops.export import export_vm

    with connect() as session:
        result = export_vm(
            session, vm, out, mode=mode, compression=compress, snapshot=snapshot,  # type: ignore[arg-type]
            retry=retry, resume=resume, progress=terminal_progress(),
        )  # fmt: skip
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(f"{result.path}: {result.bytes_written} bytes, VM {result.vm_uuid}")


@click.command("import")
@click.argument("archive", type=click.Path(dir_okay=False))
@click.option("--sr", help="Target SR (uuid or unique name); default: the pool's default SR.")
@click.option("--restore", is_flag=True, help="Keep the VM's identity (MACs, uuids) as exported.")
@click.option("--force", is_flag=True, help="Let the host ignore checksum errors (stream mode).")
@click.option("--mode", type=_MODE, default="stream", show_default=True, help="One stream, or one per disk.")
@retries_option
@click.option("--resume", is_flag=True, help="Continue an interrupted parallel import from its journal.")
@click.option("--discard", is_flag=True, help="On failure (or with an old journal) remove the VDIs created.")
@json_option()
@connection_options
@quiet_option
@debug_option
@command_errors
def import_command(
    *,
    connect: Connection,
    archive: str,
    sr: str | None,
    restore: bool,
    force: bool,
    mode: str,
    retry: RetryPolicy,
    resume: bool,
    discard: bool,
    as_json: bool,
) -> None:
    """Import an XVA archive as a new VM and print its uuid.

    \b
    Example:
      xvatool import --host xen1 --password-file pw web-01.xva --sr "Local storage" --mode parallel
    """
    from xvatool.ops.import_ import import_vm

    with connect() as session:
        result = import_vm(
            session, archive, sr=sr, restore=restore, force=force, mode=mode,  # type: ignore[arg-type]
            retry=retry, resume=resume, discard=discard, progress=terminal_progress(),
        )  # fmt: skip
    if as_json:
        echo_json({"vm": {"uuid": result.vm_uuid}, "mode": result.mode, "disks": result.to_json()["disks"]})
    else:
        click.echo(result.vm_uuid)


COMMANDS: list[click.Command] = [export_command, import_command]

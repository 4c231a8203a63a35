"""CLI commands that talk to a host about VMs and single disks: vm list, vdi-export, vdi-import.

Each command parses its options, calls one library function and renders text or ``--json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from xvatool.cli._common import (
    command_errors,
    debug_option,
    echo_json,
    file_output_option,
    human_size,
    json_option,
    quiet_option,
    terminal_progress,
)
from xvatool.cli._connection import Connection, connection_options, retries_option

if TYPE_CHECKING:
    from xvatool._retry import RetryPolicy

__all__ = ["COMMANDS", "vdi_export_command", "vdi_import_command", "vm_group", "vm_list_command"]


@click.group("vm")
def vm_group() -> None:
    """VMs on a host.

    \b
    Example:
        xvatool vm list --host https://xen1.example --password-file pw --json
    """


@vm_group.command("list")
@connection_options
@json_option()
@quiet_option
@debug_option
@command_errors
def vm_list_command(*, connect: Connection, as_json: bool) -> None:
    """List VMs (no templates, snapshots or dom0) with power state, disks and total size.

    \b
    Example:
        XVATOOL_PASSWORD=... xvatool vm list --host https://xen1.example --fingerprint AB:CD:...
    """
    from xvatool.xapi.inventory import list_vms

    with connect() as session:
        vms = list_vms(session)
    if as_json:
        echo_json([vm.to_json() for vm in vms])
        return
    click.echo(f"{'NAME':<24} {'UUID':<36} {'POWER':<9} {'DISKS':>5} {'SIZE':>10}")
    for vm in vms:
        click.echo(
            f"{vm.name_label[:24]:<24} {vm.uuid:<36} {vm.power_state:<9} {len(vm.disks):>5} "
            f"{human_size(vm.total_size):>10}"
        )


@click.command("vdi-export")
@click.argument("vdi", metavar="VDI_UUID")
@file_output_option("out", "File to write.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["raw", "vhd", "tar"]),
    default="raw",
    show_default=True,
    help="raw: the whole disk (written sparse); vhd: dynamic VHD; tar: the XVA disk encoding.",
)
@retries_option
@connection_options
@json_option()
@quiet_option
@debug_option
@command_errors
def vdi_export_command(
    *, connect: Connection, vdi: str, out: Path, fmt: str, retry: RetryPolicy, as_json: bool
) -> None:
    """Download one disk to OUT (which must not exist; written as OUT.part, renamed when complete).

    \b
    Example:
        xvatool vdi-export --host https://xen1 --password-file pw 3f2a...-uuid -o disk.raw
    """
    from xvatool.xapi.vdi import export_vdi

    with connect() as session:
        path = export_vdi(session, vdi, out, format=fmt, retry=retry, progress=terminal_progress())  # type: ignore[arg-type]
    if as_json:
        echo_json({"vdi": vdi, "path": str(path), "format": fmt, "size": path.stat().st_size})
    else:
        click.echo(f"{path}: VDI {vdi} ({fmt})")


@click.command("vdi-import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option(
    "--vdi", "vdi_uuid", metavar="UUID", help="Write into this existing VDI (raw: every block is written)."
)
@click.option(
    "--sr", metavar="SR", help="Create a new VDI in this SR (uuid or name); zero blocks are skipped."
)
@click.option("--format", "fmt", type=click.Choice(["raw", "vhd"]), default="raw", show_default=True)
@click.option("--resume", is_flag=True, help="Continue an interrupted raw import from its journal.")
@retries_option
@connection_options
@json_option()
@quiet_option
@debug_option
@command_errors
def vdi_import_command(
    *,
    connect: Connection,
    file: str,
    vdi_uuid: str | None,
    sr: str | None,
    fmt: str,
    resume: bool,
    retry: RetryPolicy,
    as_json: bool,
) -> None:
    """Upload a disk image into a VDI; prints the VDI's uuid.

    Raw images go in segments; an interrupted import continues with --resume, re-sending only
    unfinished segments (the journal is FILE.xvatool-import-*.json).

    \b
    Example:
        xvatool vdi-import --host https://xen1 --password-file pw disk.raw --sr "Local storage"
    """
    from xvatool.errors import UsageError
    from xvatool.xapi.vdi import import_vdi

    if (vdi_uuid is None) == (sr is None):
        raise UsageError("give exactly one of --vdi UUID or --sr SR")
    with connect() as session:
        uuid = import_vdi(
            session, file, vdi_uuid=vdi_uuid, sr=sr, format=fmt, resume=resume,  # type: ignore[arg-type]
            retry=retry, progress=terminal_progress(),
        )  # fmt: skip
    if as_json:
        echo_json({"vdi": uuid, "file": file, "format": fmt})
    else:
        click.echo(uuid)


COMMANDS: list[click.Command] = [vm_group, vdi_export_command, vdi_import_command]

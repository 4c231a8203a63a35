"""CLI commands that talk to a host about VMs and single disks: vm list, vdi-export, vdi-import.

Each command parses its options, calls one library function and renders text or ``--json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from xvatool.cli._common import (
    command_errors,
    echo_json,
    file_output_option,
    human_size,
    json_option,
    terminal_progress,
)
from xvatool.cli._connection import Connection, connection_options, retries_option, state_dir_option
from xvatool.cli._output import note, output_options, result, summary, table
from xvatool.errors import UsageError

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
@output_options
@command_errors
def vm_list_command(*, connect: Connection, as_json: bool) -> None:
    """List VMs (no templates, snapshots or dom0) with power state, disks and total size.

    Names are shown whole, however long. --json gives each VM with its disks.

    
    Example:
        XVATOOL_PASSWORD=... xvatool vm list --host https://xen1.example --fingerprint AB:CD:...
    """
    from xvatool.xapi.inventory import list_vms

    with connect() as session:
        vms = list_vms(session)
        host = session.host
    if as_json:
        echo_json([vm.to_json() for vm in vms])
        return
    if not vms:
        note(f"no VMs on {host} (templates, snapshots and the control domain are not listed)")
        return
    rows = [("NAME", "UUID", "POWER", "DISKS", "SIZE")]
    rows += [
        (vm.name_label, vm.uuid, vm.power_state, str(len(vm.disks)), human_size(vm.total_size)) for vm in vms
    ]
    for line in table(rows, right=(3, 4)):
        result(line)


@click.command("vdi-export")
@click.argument("vdi", metavar="VDI_UUID")
@file_output_option("out", "File to write (refused if it exists, unless --force).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["raw", "vhd", "tar"]),
    default="raw",
    show_default=True,
    help="raw: the whole disk (written sparse); vhd: dynamic VHD; tar: the XVA disk encoding.",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@retries_option
@connection_options
@json_option()
@output_options
@command_errors
def vdi_export_command(
    *, connect: Connection, vdi: str, out: Path, fmt: str, force: bool, retry: RetryPolicy, as_json: bool
) -> None:
    """Download one disk to OUT, written under a temporary name and renamed when complete.

    
    Example:
        xvatool vdi-export --host https://xen1 --password-file pw 3f2a...-uuid -o disk.raw
    """
    from xvatool.xapi.vdi import export_vdi, find_vdi

    with connect() as session:
        path = export_vdi(session, vdi, out, format=fmt, overwrite=force, retry=retry,  # type: ignore[arg-type]
                          progress=terminal_progress())  # fmt: skip
        disk = find_vdi(session, vdi)
    size = path.stat().st_size
    if as_json:
        echo_json({
            "path": str(path), "size_bytes": size, "format": fmt,
            "disk": {"vdi_uuid": disk.uuid, "name": disk.name_label, "virtual_size": disk.virtual_size},
        })  # fmt: skip
    else:
        summary(f"wrote {path}: {human_size(size)}, VDI {disk.uuid} ({disk.name_label or 'no name'}), {fmt}")


@click.command("vdi-import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True))
@click.option(
    "--vdi", "vdi_uuid", metavar="UUID", help="Write into this existing VDI (raw: every block is written)."
)
@click.option(
    "--sr", metavar="SR", help="Create a new VDI in this SR (uuid or name); zero blocks are skipped."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["raw", "vhd", "tar"]),
    default=None,
    help="What FILE holds; default: told by its content. A --format the content contradicts is refused.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Import a raw image larger than the target VDI: only its first VDI-size bytes.",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted raw import from its journal.")
@retries_option
@state_dir_option
@connection_options
@json_option()
@output_options
@command_errors
def vdi_import_command(
    *,
    connect: Connection,
    file: str,
    vdi_uuid: str | None,
    sr: str | None,
    fmt: str | None,
    force: bool,
    resume: bool,
    retry: RetryPolicy,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Upload a disk image (raw, VHD, or the disk tar `vdi-export` writes); prints the VDI's uuid.

    The format is told by content: a VHD or a tar is never uploaded as raw bytes; an XVA,
    qcow2 or a compressed file is refused with what to do instead. An image larger than the
    VDI is refused (unless --force, raw only); a smaller one is imported with a warning. Raw
    images go in segments; an interrupted import continues with --resume, re-sending only
    unfinished segments (the journal is in --state-dir).

    
    Example:
        xvatool vdi-import --host https://xen1 --password-file pw disk.raw --sr "Local storage"
        xvatool vdi-import --host https://xen1 --password-file pw disk.tar --vdi 3f2a...-uuid
    """
    from xvatool.ops.disk_import import import_image

    if (vdi_uuid is None) == (sr is None):
        raise UsageError("give exactly one of --vdi UUID or --sr SR")
    with connect() as session:
        imported = import_image(
            session, file, vdi_uuid=vdi_uuid, sr=sr, format=fmt, force=force,  # type: ignore[arg-type]
            resume=resume, retry=retry, state_dir=state_dir, progress=terminal_progress(),
        )  # fmt: skip
    echo_json(imported.to_json()) if as_json else result(imported.vdi_uuid)


COMMANDS: list[click.Command] = [vm_group, vdi_export_command, vdi_import_command]

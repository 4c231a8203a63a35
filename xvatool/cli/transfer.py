"""CLI commands that move whole VMs: export, import."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from xvatool.cli._common import (
    command_errors,
    debug_option,
    echo_json,
    json_option,
    network_map_option,
    quiet_option,
    refuse_dash,
    terminal_progress,
)
from xvatool.cli._connection import Connection, connection_options, retries_option
from xvatool.errors import UsageError

if TYPE_CHECKING:
    from xvatool._retry import RetryPolicy

__all__ = ["COMMANDS", "export_command", "import_command"]

_MODE = click.Choice(["stream", "parallel"])


@click.command("export")
@click.argument("vm", required=False)
@click.option("--appliance", metavar="NAME", help="Export every VM of this appliance (vApp) as one package.")
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    metavar="OUT",
    callback=refuse_dash,
    help="The XVA to write; OUT.ova, OUT.ovf or DIR/ write an OVF package (streamOptimized VMDK disks).",
)
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
    vm: str | None,
    appliance: str | None,
    out: str,
    compress: str,
    mode: str,
    snapshot: str,
    retry: RetryPolicy,
    resume: bool,
    as_json: bool,
) -> None:
    """Export VM (uuid or unique name) to an XVA file, verified while it downloads.

    With -o OUT.ova (or OUT.ovf, DIR/) the VM, or with --appliance every VM of an appliance,
    becomes an OVF package instead: disks streamed from the host into streamOptimized VMDKs,
    running VMs through snapshots taken together, the appliance's start order and delays in
    the package's StartupSection.

    \b
    Example:
      xvatool export --host xen1 --password-file pw web-01 -o web-01.xva --mode parallel
      xvatool export --host xen1 --password-file pw --appliance web-app -o web-app.ova
    """
    from xvatool.ops.export import export_vm
    from xvatool.ops.package_export import export_package, package_layout

    if appliance is not None or package_layout(out) is not None:
        if resume or compress != "none" or mode != "stream":
            raise UsageError("--resume, --compress and --mode are for XVA exports, not packages")
        with connect() as session:
            package = export_package(session, out, vm=vm, appliance=appliance, snapshot=snapshot,  # type: ignore[arg-type]
                                     retry=retry, progress=terminal_progress())  # fmt: skip
        summary = (
            f"{package.path}: {', '.join(package.vms)} ({package.disks} disks, {package.bytes_written} bytes)"
        )
        echo_json(package.to_json()) if as_json else click.echo(summary)
        return
    if vm is None:
        raise UsageError("name the VM to export (or --appliance NAME)")
    with connect() as session:
        result = export_vm(
            session, vm, Path(out), mode=mode, compression=compress, snapshot=snapshot,  # type: ignore[arg-type]
            retry=retry, resume=resume, progress=terminal_progress(),
        )  # fmt: skip
    if as_json:
        echo_json(result.to_json())
    else:
        click.echo(f"{result.path}: {result.bytes_written} bytes, VM {result.vm_uuid}")


@click.command("import")
@click.argument("archive", metavar="ARCHIVE|PACKAGE", type=click.Path())
@click.option("--sr", help="Target SR (uuid or unique name); default: the pool's default SR.")
@network_map_option("Package NICs on network OLD go to host network NEW (names; repeatable).")
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
    map_network: dict[str, str],
    restore: bool,
    force: bool,
    mode: str,
    retry: RetryPolicy,
    resume: bool,
    discard: bool,
    as_json: bool,
) -> None:
    """Import an XVA archive as a new VM and print its uuid.

    An OVF package (an .ova, a package folder or its .ovf; told by content) creates its VMs, and
    an appliance for a multi-VM package with its start order; disks go up as they stream (only
    their data), networks by name or --map-network (missing ones are created, private), and a
    failure leaves nothing behind. Prints one uuid per VM.

    \b
    Example:
      xvatool import --host xen1 --password-file pw web-01.xva --sr "Local storage" --mode parallel
      xvatool import --host xen1 --password-file pw vendor.ova --map-network "VM Network=LAN"
    """
    from xvatool.ops.import_ import import_vm
    from xvatool.ops.package_import import import_package, is_package

    if is_package(archive):
        if force or resume or discard or mode != "stream":
            raise UsageError("--force, --resume, --discard and --mode are for XVA archives, not packages")
        with connect() as session:
            package = import_package(session, archive, sr=sr, network_map=map_network, restore=restore,
                                     progress=terminal_progress())  # fmt: skip
        for note in package.notes:
            click.echo(f"xvatool: note: {note}", err=True)
        echo_json(package.to_json()) if as_json else click.echo("\n".join(vm.uuid for vm in package.vms))
        return
    if map_network:
        raise UsageError("--map-network is for packages; rename an XVA's networks with `xvatool repack`")
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

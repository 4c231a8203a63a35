"""CLI commands that move whole VMs: export, import."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from xvatool.cli._common import (
    command_errors,
    echo_json,
    human_size,
    json_option,
    network_map_option,
    terminal_progress,
)
from xvatool.cli._connection import (
    Connection,
    connection_options,
    resumable_import_options,
    retries_option,
    state_dir_option,
)
from xvatool.cli._output import note, output_options, plural, result, summary
from xvatool.errors import UsageError

if TYPE_CHECKING:
    from xvatool._retry import RetryPolicy
    from xvatool._types import Compression
    from xvatool.ops.export import ExportResult
    from xvatool.ops.import_ import ImportResult
    from xvatool.xapi.session import Session
    from xvatool.xapi.vms import SnapshotPolicy

__all__ = ["COMMANDS", "export_command", "import_command"]

_MODE = click.Choice(["stream", "parallel"])
_COMPRESS = click.Choice(["none", "gzip", "zstd"])


def _exported(found: ExportResult) -> str:
    where = str(found.path) if found.path is not None else "standard output"
    snapshot = ", through a temporary snapshot" if found.snapshot_used else ""
    return (
        f"wrote {where}: {human_size(found.bytes_written)}, VM {found.vm_name} ({found.vm_uuid}), "
        f"{plural(len(found.disks), 'disk')}{snapshot}"
    )


@click.command("export")
@click.argument("vm", required=False)
@click.option("--appliance", metavar="NAME", help="Export every VM of this appliance (vApp) as one package.")
@click.option("-o", "--output", "out", required=True, metavar="OUT|-",
              help="The XVA to write; - writes the stream to standard output (stream mode); OUT.ova, "
                   "OUT.ovf or DIR/ write an OVF package (streamOptimized VMDK disks).")  # fmt: skip
@click.option("--compress", type=_COMPRESS, default="none", show_default=True,
              help="Ask the host to compress the archive (zstd is much faster than gzip).")  # fmt: skip
@click.option("--mode", type=_MODE, default="stream", show_default=True,
              help="One verified stream, or every disk at once (resumable per disk).")  # fmt: skip
@click.option(
    "--snapshot",
    type=click.Choice(["auto", "never"]),
    default="auto",
    show_default=True,
    help="Export a running VM through a temporary snapshot (auto) or refuse (never).",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@retries_option
@click.option("--resume", is_flag=True, help="Continue an interrupted parallel export from its journal.")
@click.option("--discard", is_flag=True,
              help="Remove what an interrupted parallel export left (spools, journal) and start over; "
                   "after a failure, remove it instead of keeping it for --resume.")  # fmt: skip
@state_dir_option
@json_option()
@connection_options
@output_options
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
    force: bool,
    retry: RetryPolicy,
    resume: bool,
    discard: bool,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Export VM (uuid or unique name) to an XVA file, verified while it downloads.

    A running VM is exported through a temporary snapshot, and the archive describes the VM
    itself (its uuid and its disks' uuids). OUT appears only when complete and verified; an
    existing OUT is refused unless --force. A failed parallel export keeps what it fetched for
    --resume and says so; --discard removes it.

    With -o OUT.ova (or OUT.ovf, DIR/) the VM, or with --appliance every VM of an appliance,
    becomes an OVF package instead: disks streamed from the host into streamOptimized VMDKs,
    running VMs through snapshots taken together, the appliance's start order and delays in
    the package's StartupSection.

    \b
    Example:
      xvatool export --host xen1 --password-file pw web-01 -o web-01.xva --mode parallel
      xvatool export --host xen1 web-01 -o - | ssh backup 'cat > web-01.xva'
      xvatool export --host xen1 --password-file pw --appliance web-app -o web-app.ova
    """
    from xvatool.ops.export import export_to_stream, export_vm
    from xvatool.ops.package_export import export_package, package_layout

    if appliance is not None or (out != "-" and package_layout(out) is not None):
        if resume or discard or compress != "none" or mode != "stream":
            raise UsageError("--resume, --discard, --compress and --mode are for XVA exports, not packages")
        with connect() as session:
            package = export_package(session, out, vm=vm, appliance=appliance, overwrite=force,
                                     snapshot=cast("SnapshotPolicy", snapshot), retry=retry,
                                     progress=terminal_progress())  # fmt: skip
        group = f"appliance {package.appliance!r}: " if package.appliance else ""
        described = (
            f"wrote {package.path}: {group}{', '.join(package.vms)} ({plural(package.disks, 'disk')}, "
            f"{human_size(package.bytes_written)})"
        )
        echo_json(package.to_json()) if as_json else summary(described)
        return
    if vm is None:
        raise UsageError("name the VM to export (or --appliance NAME)")

    if out == "-":
        if mode != "stream" or resume or discard or force:
            raise UsageError(
                "-o - (standard output) is one stream: no --mode parallel, --resume, --discard or --force"
            )
        if sys.stdout.isatty():
            raise UsageError("refusing to write an archive to a terminal; redirect standard output")
        with connect() as session:
            found = export_to_stream(
                session, vm, sys.stdout.buffer, compression=cast("Compression", compress),
                snapshot=cast("SnapshotPolicy", snapshot), progress=terminal_progress(),
            )  # fmt: skip
        sys.stdout.buffer.flush()
        if not as_json:  # stdout carries the archive: the summary goes to stderr
            note(_exported(found))
        return
    with connect() as session:
        found = export_vm(
            session, vm, Path(out), mode=mode, compression=compress, snapshot=snapshot,  # type: ignore[arg-type]
            retry=retry, resume=resume, discard=discard, overwrite=force, state_dir=state_dir,
            progress=terminal_progress(),
        )  # fmt: skip
    echo_json(found.to_json()) if as_json else summary(_exported(found))


@click.command("import")
@click.argument("archive", metavar="ARCHIVE|PACKAGE|-")
@click.option("--sr", metavar="SR", help="Target SR (uuid or unique name); default: the pool's default SR.")
@click.option("--restore-identity", "restore", is_flag=True,
              help="Keep the VM's identity (uuid, MACs) as exported, instead of a new one.")  # fmt: skip
@network_map_option("Package NICs on network OLD go to host network NEW (names; repeatable).")
@click.option("--force", is_flag=True, help="Let the host ignore checksum errors (stream mode).")
@resumable_import_options("import")
@json_option()
@connection_options
@output_options
@command_errors
def import_command(
    *,
    connect: Connection,
    archive: str,
    sr: str | None,
    restore: bool,
    map_network: dict[str, str],
    force: bool,
    mode: str,
    retry: RetryPolicy,
    resume: bool,
    discard: bool,
    state_dir: Path | None,
    as_json: bool,
) -> None:
    """Import an XVA archive (or an OVF package) as a new VM and print its uuid.

    ARCHIVE - reads the archive from standard input: every chunk is verified as it passes, and
    a bad one stops the upload so the host keeps nothing. A failed parallel import keeps its
    VDIs for --resume only when a retry could succeed (a network fault, Ctrl-C); when the host
    refuses the archive they are removed at once.

    An OVF package (an .ova, a package folder or its .ovf; told by content) creates its VMs, and
    an appliance for a multi-VM package with its start order; disks go up as they stream (only
    their data), networks by name or --map-network (missing ones are created, private), and a
    failure leaves nothing behind. Prints one uuid per VM.

    \b
    Example:
      xvatool import --host xen1 --password-file pw web-01.xva --sr "Local storage" --mode parallel
      ssh backup 'cat web-01.xva' | xvatool import --host xen1 --password-file pw -
      xvatool import --host xen1 --password-file pw vendor.ova --map-network "VM Network=LAN"
    """
    from xvatool.ops.import_ import import_vm
    from xvatool.ops.package_import import import_package, is_package

    if archive != "-" and is_package(archive):
        if force or resume or discard or mode != "stream":
            raise UsageError("--force, --resume, --discard and --mode are for XVA archives, not packages")
        with connect() as session:
            package = import_package(session, archive, sr=sr, network_map=map_network, restore=restore,
                                     retry=retry, progress=terminal_progress())  # fmt: skip
        for text in package.notes:
            note(text)
        if as_json:
            echo_json(package.to_json())
        else:
            for vm in package.vms:
                result(vm.uuid)
        return
    if map_network:
        raise UsageError("--map-network is for packages; rename an XVA's networks with `xvatool repack`")

    with connect() as session:
        if archive == "-":
            imported = _import_stdin(session, sr, restore, mode, resume, discard, force)
        else:
            imported = import_vm(
                session, archive, sr=sr, restore=restore, force=force, mode=mode,  # type: ignore[arg-type]
                retry=retry, resume=resume, discard=discard, state_dir=state_dir,
                progress=terminal_progress(),
            )  # fmt: skip
    echo_json(imported.to_json()) if as_json else result(imported.vm_uuid)


def _import_stdin(
    session: Session, sr: str | None, restore: bool, mode: str, resume: bool, discard: bool, force: bool
) -> ImportResult:
    from xvatool.ops.live_import import import_live
    from xvatool.xapi.vms import find_sr
    from xvatool.xva.reader import XvaReader

    if mode != "stream" or resume or discard or force:
        raise UsageError(
            "ARCHIVE - (standard input) is one stream: no --mode parallel, --resume, --discard or --force"
        )
    if sys.stdin.isatty():
        raise UsageError("ARCHIVE -: standard input is a terminal; pipe an archive into it")
    _ref, sr_uuid = find_sr(session, sr)
    reader = XvaReader(sys.stdin.buffer, source="standard input")
    return import_live(session, reader, sr=sr_uuid, restore=restore, progress=terminal_progress())


COMMANDS: list[click.Command] = [export_command, import_command]

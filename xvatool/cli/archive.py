"""CLI commands that read archives: inspect, verify, extract. Each is a few lines over one library call."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from xvatool.cli._common import (
    byte_progress,
    command_errors,
    debug_option,
    echo_json,
    human_size,
    json_option,
    quiet_option,
)

__all__ = ["COMMANDS"]

_ARCHIVE = click.argument("archive", metavar="ARCHIVE")


@click.command("inspect")
@_ARCHIVE
@json_option()
@quiet_option
@debug_option
@command_errors
def inspect_command(*, archive: str, as_json: bool) -> None:
    """Show the VM, disks and networks of an archive, reading only its metadata.

    \b
    Example:
        xvatool inspect vm.xva --json
    """
    from xvatool.xva.validate import inspect_archive

    info = inspect_archive(archive)
    if as_json:
        echo_json(info.to_json())
        return
    vm = info.vm
    click.echo(
        f"VM {vm.name_label!r} uuid {vm.uuid}: {vm.power_state}, {vm.vcpus} vCPUs, {human_size(vm.memory)}"
    )
    for d in info.disks:
        boot = ", bootable" if d.bootable else ""
        click.echo(f"  disk {d.id} uuid {d.vdi_uuid} {d.name_label!r}: {human_size(d.virtual_size)}, "
                   f"device {d.userdevice}{boot}")  # fmt: skip
    for n in info.networks:
        click.echo(f"  vif {n.vif_device} MAC {n.mac or '-'} on {n.name_label!r} (bridge {n.bridge})")
    version = " ".join(f"{k}={v}" for k, v in info.to_json()["version"].items())
    click.echo(f"version: {version}")
    click.echo(f"compression: {info.compression}, checksum: {info.checksum or '-'}")


@click.command("verify")
@_ARCHIVE
@json_option()
@quiet_option
@debug_option
@command_errors
def verify_command(*, archive: str, as_json: bool) -> None:
    """Check an archive completely (structure, metadata, every checksum); report every problem.

    ARCHIVE may be - for standard input. Exit status 0 if valid, 1 if not, 2 if unreadable.

    \b
    Example:
        xvatool verify vm.xva --json; cat vm.xva.gz | xvatool verify -
    """
    from xvatool.xva.validate import validate_archive

    with byte_progress("verify") as progress:
        report = validate_archive(archive, progress=progress)
    if as_json:
        echo_json(report.to_json())
    else:
        for problem in report.problems:
            click.echo(str(problem))
        for code, count in sorted(report.omitted.items()):
            click.echo(f"... and {count} more {code} problems, not listed")
        chunks = sum(d.chunks for d in report.disks)
        state = "valid" if report.valid else f"INVALID ({len(report.errors)} errors)"
        click.echo(f"{report.source}: {state}; {len(report.disks)} disks, {chunks} chunks, "
                   f"compression {report.compression}, checksum {report.checksum or '-'}")  # fmt: skip
    if not report.valid:
        sys.exit(1)


@click.command("extract")
@_ARCHIVE
@click.option(
    "-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
    help="Directory for the disk images (created if missing).",
)  # fmt: skip
@click.option("--disk", "disks", multiple=True, metavar="UUID", help="Only this VDI uuid; repeat for more.")
@click.option("--format", "fmt", type=click.Choice(["raw"]), default="raw", show_default=True,
              help="Image format.")  # fmt: skip
@quiet_option
@debug_option
@command_errors
def extract_command(*, archive: str, out_dir: Path, disks: tuple[str, ...], fmt: str) -> None:
    """Extract the disks of an archive as sparse raw images named <vdi-uuid>.raw, verified.

    \b
    Example:
        xvatool extract vm.xva -o disks/
    """
    from xvatool.xva.extract import extract_disks

    with byte_progress("extract") as progress:
        paths = extract_disks(archive, out_dir, disk_uuids=disks or None, progress=progress)
    for path in paths:
        click.echo(str(path))


COMMANDS: list[click.Command] = [inspect_command, verify_command, extract_command]

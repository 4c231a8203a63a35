"""CLI commands that read archives: inspect, verify, extract. Each is a few lines over one library call."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from xvatool.cli._common import (
    command_errors,
    echo_json,
    human_size,
    json_option,
    progress_bar,
    refuse_existing,
)
from xvatool.cli._output import output_options, plural, result, summary

__all__ = ["COMMANDS", "disk_total"]

_ARCHIVE = click.argument("archive", metavar="ARCHIVE")


def disk_total(archive: str) -> int | None:
    """The sum of an archive file's disk sizes, read from its ova.xml: a bar's total.

    None for standard input (it can be read once only) or when the head cannot be read: the
    full pass that follows reports that properly.
    """
    from xvatool.errors import XvatoolError
    from xvatool.xva.validate import inspect_archive

    if archive == "-" or not Path(archive).is_file():
        return None
    try:
        return sum(d.virtual_size for d in inspect_archive(archive).disks)
    except XvatoolError:
        return None


@click.command("inspect")
@_ARCHIVE
@json_option()
@output_options
@command_errors
def inspect_command(*, archive: str, as_json: bool) -> None:
    """Show the VM, disks and networks of an archive, reading only its metadata.

    \b
    Example:
        xvatool inspect vm.xva --json
    """
    from xvatool.cli._documents import inspect_doc
    from xvatool.xva.validate import inspect_archive

    info = inspect_archive(archive)
    if as_json:
        echo_json(inspect_doc(info))
        return
    vm = info.vm
    result(f"VM {vm.name_label!r} uuid {vm.uuid}: {vm.power_state}, {plural(vm.vcpus, 'vCPU')}, "
           f"{human_size(vm.memory)}")  # fmt: skip
    for d in info.disks:
        boot = ", bootable" if d.bootable else ""
        result(
            f"  disk {d.userdevice} uuid {d.vdi_uuid} {d.name_label!r}: {human_size(d.virtual_size)}{boot}"
        )
    for n in info.networks:
        result(f"  VIF {n.vif_device} MAC {n.mac or '-'} on {n.name_label!r} (bridge {n.bridge})")
    version = " ".join(f"{k}={v}" for k, v in info.to_json()["version"].items())
    result(f"version: {version}")
    result(f"compression: {info.compression}, checksum: {info.checksum or '-'}")


@click.command("verify")
@_ARCHIVE
@json_option()
@output_options
@command_errors
def verify_command(*, archive: str, as_json: bool) -> None:
    """Check an archive completely (structure, metadata, every checksum); report every problem.

    ARCHIVE may be - for standard input. Exit status 0 if valid, 1 if not, 2 if unreadable.
    With -q a valid archive prints nothing.

    \b
    Example:
        xvatool verify vm.xva --json; cat vm.xva.gz | xvatool verify -
    """
    from xvatool.cli._documents import verify_doc
    from xvatool.xva.validate import validate_archive

    with progress_bar(f"verify {Path(archive).name}", disk_total(archive)) as bar:
        report = validate_archive(archive, progress=bar.update)
    if as_json:
        echo_json(verify_doc(report))
    else:
        for problem in report.problems:
            result(str(problem))
        for code, count in sorted(report.omitted.items()):
            result(f"... and {count} more {code} problems, not listed")
        chunks = sum(d.chunks for d in report.disks)
        state = "valid" if report.valid else f"INVALID ({plural(len(report.errors), 'error')})"
        line = (f"{report.source}: {state}; {plural(len(report.disks), 'disk')}, {plural(chunks, 'chunk')}, "
                f"compression {report.compression}, checksum {report.checksum or '-'}")  # fmt: skip
        result(line) if not report.valid else summary(line)
    if not report.valid:
        sys.exit(1)


@click.command("extract")
@_ARCHIVE
@click.option(
    "-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
    metavar="DIR", help="Directory for the disk images (created if missing).",
)  # fmt: skip
@click.option("--disk", "disks", multiple=True, metavar="UUID", help="Only this VDI uuid; repeat for more.")
@click.option("--format", "fmt", type=click.Choice(["raw"]), default="raw", show_default=True,
              help="Image format.")  # fmt: skip
@click.option("--force", is_flag=True, help="Replace <vdi-uuid>.raw files that exist in DIR.")
@json_option("files written")
@output_options
@command_errors
def extract_command(
    *, archive: str, out_dir: Path, disks: tuple[str, ...], fmt: str, force: bool, as_json: bool
) -> None:
    """Extract the disks of an archive as sparse raw images named <vdi-uuid>.raw, verified.

    A disk file appears only when the whole archive verified. Existing files are refused
    unless --force.

    \b
    Example:
        xvatool extract vm.xva -o disks/
    """
    from xvatool.cli._documents import extract_doc
    from xvatool.xva.extract import extract_disks

    _refuse_existing_disks(archive, out_dir, disks, force=force)
    with progress_bar(f"extract {Path(archive).name}", disk_total(archive)) as bar:
        paths = extract_disks(archive, out_dir, disk_uuids=disks or None, progress=bar.update)
    if as_json:
        echo_json(extract_doc(archive, paths))
        return
    for path in paths:
        summary(str(path))


def _refuse_existing_disks(archive: str, out_dir: Path, chosen: tuple[str, ...], *, force: bool) -> None:
    """The overwrite policy for extract: every ``<uuid>.raw`` it would write must be new."""
    from xvatool.xva.validate import inspect_archive

    if force or not out_dir.is_dir():
        return
    if archive != "-" and not Path(archive).is_file():
        return  # extract_disks says what is wrong with it
    if archive == "-":  # which disks the stream holds is known only once it is read
        names = [p for p in out_dir.glob("*.raw") if not chosen or p.stem in chosen]
    else:
        uuids = [d.vdi_uuid for d in inspect_archive(archive).disks if not chosen or d.vdi_uuid in chosen]
        names = [out_dir / f"{uuid}.raw" for uuid in uuids]
    for path in names:
        refuse_existing(path, force=False)


COMMANDS: list[click.Command] = [inspect_command, verify_command, extract_command]

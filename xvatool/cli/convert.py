"""CLI commands that write archives: create, repack. Each is a few lines over one library call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from xvatool.cli._common import (
    command_errors,
    echo_json,
    file_output_option,
    human_size,
    json_option,
    network_map_option,
    progress_bar,
    refuse_existing,
)
from xvatool.cli._output import note, output_options, plural, summary

__all__ = ["COMMANDS", "MIN_MEMORY", "SizeParam"]

MIN_MEMORY = 16 << 20
"""Bytes: less memory than this boots nothing; ``--memory 4`` meaning 4 bytes was a trap."""


class SizeParam(click.ParamType[int, Any]):
    """A size such as `2GiB`, `512M` or `1.5g` (binary units); a bare number is in `unit`."""

    name = "size"

    def __init__(self, *, unit: str = "B", minimum: int = 0) -> None:
        self.unit = unit
        self.minimum = minimum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from xvatool._human import human_size, parse_size
        from xvatool.errors import UsageError

        if isinstance(value, int):
            return value
        try:
            size = parse_size(str(value), unit=self.unit)
        except UsageError as exc:
            self.fail(f"{exc.message} (a bare number is {self.unit})", param, ctx)
        if size < self.minimum:
            self.fail(f"{value!r} is {human_size(size)}; at least {human_size(self.minimum)}", param, ctx)
        return size


class _HostVersionParam(click.ParamType[tuple[int, int], Any]):
    name = "MAJOR.MINOR"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        major, dot, minor = str(value).partition(".")
        if not (dot and major.isdigit() and minor.isdigit()):
            self.fail(f"{value!r} is not MAJOR.MINOR, e.g. 1.1", param, ctx)
        return int(major), int(minor)


_CHECKSUM = click.Choice(["sha1", "xxhash"])
_COMPRESS = click.Choice(["none", "gzip", "zstd"])


@click.command("create")
@file_output_option(
    "output",
    "Archive to write (a temporary file in its folder, renamed when complete; refused if it "
    "exists, unless --force).",
)
@click.option("--name", required=True, metavar="NAME", help="name_label of the VM.")
@click.option(
    "--disk",
    "disks",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    required=True,
    help="Raw disk image; repeat for more disks (userdevice 0, 1, … in this order).",
)
@click.option("--vcpus", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Number of vCPUs.")  # fmt: skip
@click.option("--memory", type=SizeParam(unit="MiB", minimum=MIN_MEMORY), default="1GiB", show_default=True,
              metavar="SIZE",
              help="Memory, e.g. 4GiB or 512MiB; a bare number is MiB. At least 16 MiB.")  # fmt: skip
@click.option("--network", "networks", multiple=True, metavar="NAME",
              help="Network name for a VIF; repeat for more VIFs.")  # fmt: skip
@click.option(
    "--checksum",
    type=_CHECKSUM,
    default="xxhash",
    show_default=True,
    help="Chunk checksums; sha1 also imports on hosts older than 8.1.",
)
@click.option(
    "--compress",
    "compression",
    type=_COMPRESS,
    default="none",
    show_default=True,
    help="Compress the whole archive (zstd needs a host that has the zstd binary).",
)
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@json_option()
@output_options
@command_errors
def create_command(
    *, output: Path, name: str, disks: tuple[Path, ...], vcpus: int, memory: int,
    networks: tuple[str, ...], checksum: str, compression: str, force: bool, as_json: bool,
) -> None:  # fmt: skip
    """Create an importable XVA for a halted VM from raw disk images.

    \b
    Example:
      xvatool create -o web.xva --name web --disk root.img --disk data.img \\
          --vcpus 2 --memory 4GiB --network "Pool-wide network" --compress zstd
    """
    from xvatool.cli._documents import create_doc
    from xvatool.xva.convert import create_archive

    refuse_existing(output, force=force)
    total = sum(p.stat().st_size for p in disks if p.is_file())
    with progress_bar(f"create {output.name}", total) as bar:
        created = create_archive(
            output, name=name, disks=list(disks), vcpus=vcpus, memory=memory, networks=list(networks),
            checksum=checksum, compression=compression, progress=bar.update,  # type: ignore[arg-type]
        )  # fmt: skip
    for text in created.notes:
        note(text)
    if as_json:
        echo_json(create_doc(created, name))
        return
    stats = created.stats
    summary(
        f"wrote {created.path}: {plural(len(created.disks), 'disk')}, {human_size(stats.disk_bytes)} of disk "
        f"in {plural(stats.chunks, 'chunk')} ({plural(stats.zero_chunks_skipped, 'zero chunk')} left out), "
        f"{human_size(stats.output_bytes)}, {created.checksum}, {created.compression}"
    )


@click.command("repack")
@click.argument("source", metavar="IN")
@click.argument("target", metavar="OUT")
@click.option(
    "--compress",
    "compression",
    type=_COMPRESS,
    default=None,
    help="Compression of OUT (default: the same as IN).",
)
@click.option(
    "--checksum",
    type=_CHECKSUM,
    default=None,
    help="Checksum kind of every chunk (default: keep each chunk's own).",
)
@click.option(
    "--host-version",
    type=_HostVersionParam(),
    default=None,
    help="Declare this xapi version in ova.xml, e.g. 1.1 so older hosts accept it.",
)
@click.option("--rename", default=None, metavar="NAME", help="New name_label for the VM.")
@network_map_option("Rename a network so the VIF lands on NEW on import; repeatable.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
@json_option()
@output_options
@command_errors
def repack_command(
    *, source: str, target: str, compression: str | None, checksum: str | None,
    host_version: tuple[int, int] | None, rename: str | None, map_network: dict[str, str], force: bool,
    as_json: bool,
) -> None:  # fmt: skip
    """Rewrite an XVA: change compression, checksums, declared version, VM or network names.

    Every chunk is verified while reading and re-emitted with the same bytes and counters, so
    the disks import exactly as before. IN and OUT may be - for stdin and stdout.

    \b
    Example:
      xvatool repack vm.xva vm-old-host.xva --checksum sha1 --host-version 1.1 --compress gzip
    """
    from xvatool.cli._documents import repack_doc
    from xvatool.xva.convert import repack_archive

    if target != "-":
        refuse_existing(Path(target), force=force)
    total = Path(source).stat().st_size if source != "-" and Path(source).is_file() else None
    with progress_bar(f"repack {Path(source).name}", total) as bar:
        repacked = repack_archive(
            source, target, compression=compression, checksum=checksum,  # type: ignore[arg-type]
            host_version=host_version, rename=rename, network_map=map_network or None,
            progress=bar.update,
        )  # fmt: skip
    if as_json:
        echo_json(repack_doc(repacked, source))
        return
    stats = repacked.stats
    kinds = ", ".join(sorted(repacked.checksum_kinds)) or "none"
    line = (
        f"wrote {target if target != '-' else 'standard output'}: {plural(stats.chunks, 'chunk')}, "
        f"{human_size(stats.output_bytes)}, checksums {kinds}, {repacked.compression}"
        + (f"; changed: {', '.join(repacked.changes)}" if repacked.changes else "")
    )
    note(line) if target == "-" else summary(line)


COMMANDS: list[click.Command] = [create_command, repack_command]

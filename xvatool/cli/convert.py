"""CLI commands that write archives: create, repack. Each is a few lines over one library call."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from xvatool.cli._common import (
    byte_progress,
    command_errors,
    debug_option,
    echo_json,
    file_output_option,
    json_option,
    network_map_option,
    quiet_option,
)

__all__ = ["COMMANDS", "SizeParam"]

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


class SizeParam(click.ParamType[int, Any]):
    """A byte count such as `2GiB`, `512M` or `1073741824` (binary units, as memory sizes are)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        match = _SIZE_RE.match(str(value))
        if not match:
            self.fail(f"{value!r} is not a size like 2GiB, 512MiB or 1073741824", param, ctx)
        return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


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
@file_output_option("output", "Archive to write (to a temporary file in its folder, renamed when complete).")
@click.option("--name", required=True, help="name_label of the VM.")
@click.option(
    "--disk",
    "disks",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    required=True,
    help="Raw disk image; repeat for more disks (userdevice 0, 1, … in this order).",
)
@click.option("--vcpus", type=click.IntRange(min=1), default=1, show_default=True, help="Number of vCPUs.")
@click.option("--memory", type=SizeParam(), default="1GiB", show_default=True, help="Memory, e.g. 2GiB.")
@click.option("--network", "networks", multiple=True, help="Network name for a VIF; repeat for more VIFs.")
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
@json_option()
@quiet_option
@debug_option
@command_errors
def create_command(
    *, output: Path, name: str, disks: tuple[Path, ...], vcpus: int, memory: int,
    networks: tuple[str, ...], checksum: str, compression: str, as_json: bool,
) -> None:  # fmt: skip
    """Create an importable XVA for a halted VM from raw disk images.

    \b
    Example:
      xvatool create -o web.xva --name web --disk root.img --disk data.img \\
          --vcpus 2 --memory 4GiB --network "Pool-wide network" --compress zstd
    """
    from xvatool.xva.convert import create_archive

    total = sum(p.stat().st_size for p in disks if p.is_file())
    with byte_progress("create", total) as update:
        result = create_archive(
            output, name=name, disks=list(disks), vcpus=vcpus, memory=memory, networks=list(networks),
            checksum=checksum, compression=compression, progress=update,  # type: ignore[arg-type]
        )  # fmt: skip
    for note in result.notes:
        click.echo(f"xvatool: note: {note}", err=True)
    if as_json:
        echo_json(result.to_json())
        return
    stats = result.stats
    click.echo(
        f"wrote {result.path}: {len(result.disks)} disk(s), {stats.disk_bytes} bytes of disk in "
        f"{stats.chunks} chunks ({stats.zero_chunks_skipped} zero chunks left out), "
        f"{stats.output_bytes} bytes, {result.checksum}, {result.compression}"
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
@click.option("--rename", default=None, help="New name_label for the VM.")
@network_map_option("Rename a network so the VIF lands on NEW on import; repeatable.")
@json_option()
@quiet_option
@debug_option
@command_errors
def repack_command(
    *, source: str, target: str, compression: str | None, checksum: str | None,
    host_version: tuple[int, int] | None, rename: str | None, map_network: dict[str, str], as_json: bool,
) -> None:  # fmt: skip
    """Rewrite an XVA: change compression, checksums, declared version, VM or network names.

    Every chunk is verified while reading and re-emitted with the same bytes and counters, so
    the disks import exactly as before. IN and OUT may be - for stdin and stdout.

    \b
    Example:
      xvatool repack vm.xva vm-old-host.xva --checksum sha1 --host-version 1.1 --compress gzip
    """
    from xvatool.xva.convert import repack_archive

    total = Path(source).stat().st_size if source != "-" and Path(source).is_file() else None
    with byte_progress("repack", total) as update:
        result = repack_archive(
            source, target, compression=compression, checksum=checksum,  # type: ignore[arg-type]
            host_version=host_version, rename=rename, network_map=map_network or None,
            progress=update,
        )  # fmt: skip
    if as_json:
        echo_json(result.to_json())
    elif target != "-":
        stats = result.stats
        click.echo(
            f"wrote {target}: {stats.chunks} chunks, {stats.output_bytes} bytes, "
            f"checksums {', '.join(sorted(result.checksum_kinds)) or 'none'}, {result.compression}"
            + (f"; changed: {', '.join(result.changes)}" if result.changes else "")
        )


COMMANDS: list[click.Command] = [create_command, repack_command]

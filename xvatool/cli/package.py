"""CLI commands for OVF packages: convert between XVA and OVA / OVF, both ways."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click

from xvatool._types import ChecksumKind, Compression
from xvatool.cli._common import (
    command_errors,
    echo_json,
    json_option,
    progress_bar,
)
from xvatool.cli._output import note, output_options, plural, summary

__all__ = ["COMMANDS"]


@click.command("convert")
@click.argument("source", metavar="IN")
@click.argument("target", metavar="OUT")
@click.option(
    "--to",
    type=click.Choice(["xva", "ova", "ovf", "xvas"]),
    default=None,
    help="Output kind (default: from OUT: .xva, .ova, .ovf, or a folder/). xvas: one XVA per VM into OUT/.",
)
@click.option("--vm", default=None, metavar="NAME", help="Convert only this VM of a multi-VM package.")
@click.option(
    "--ovf-version",
    type=click.Choice(["1.0", "2.0"]),
    default="1.0",
    show_default=True,
    help="OVF version of a written descriptor (1.0 is read by every importer).",
)
@click.option(
    "--digest",
    type=click.Choice(["sha256", "sha1"]),
    default="sha256",
    show_default=True,
    help="Manifest digest of a written package (sha1 for very old importers).",
)
@click.option(
    "--level",
    type=click.IntRange(0, 9),
    default=6,
    metavar="0-9",
    show_default=True,
    help="zlib level of written VMDK grains (1 is about 3x faster, a little larger).",
)
@click.option(
    "--checksum",
    type=click.Choice(["xxhash", "sha1"]),
    default="xxhash",
    show_default=True,
    help="Chunk checksums of a written XVA (sha1 also imports on hosts older than 8.1).",
)
@click.option(
    "--compress",
    "compression",
    type=click.Choice(["none", "gzip", "zstd"]),
    default="none",
    show_default=True,
    help="Compression of a written XVA.",
)
@click.option("--force", is_flag=True, help="Replace existing output files.")
@click.option(
    "--spool-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Folder for the temporary copy of a VHD stored out of disk order (default: the system's).",
)
@json_option()
@output_options
@command_errors
def convert_command(
    *,
    source: str,
    target: str,
    to: str | None,
    vm: str | None,
    ovf_version: str,
    digest: Literal["sha256", "sha1"],
    level: int,
    checksum: ChecksumKind,
    compression: Compression,
    force: bool,
    spool_dir: Path | None,
    as_json: bool,
) -> None:
    """Convert between an XVA and an OVF package (.ova or a folder), by content, both ways.

    IN is an .xva, an .ova (plain or gzip-compressed), a package folder or its .ovf file, or - for
    standard input. Disks are converted as they stream, verified on the way: XVA chunk checksums,
    the package's manifest. Written packages hold streamOptimized VMDK disks and a manifest.
    A package of several VMs becomes one XVA per VM in a folder OUT/, or one with --vm.

    \b
    Example:
      xvatool convert web.xva web.ova
      xvatool convert vendor-appliance.ova appliance.xva --compress zstd
      xvatool convert three-vms.ova xvas/
    """
    from xvatool.cli._documents import convert_doc
    from xvatool.ovf.conversion import convert

    total = Path(source).stat().st_size if source != "-" and Path(source).is_file() else None
    with progress_bar(f"convert {Path(source).name}", total) as bar:
        result = convert(
            source,
            target,
            to=to,
            vm=vm,
            ovf_version=ovf_version,
            digest=digest,
            level=level,
            checksum=checksum,
            compression=compression,
            overwrite=force,
            spool_dir=str(spool_dir) if spool_dir else None,
            progress=bar.update,
        )
    for text in result.notes:
        note(text)
    if as_json:
        echo_json(convert_doc(result))
        return
    outputs = ", ".join(str(p) for p in result.outputs)
    proof = "verified" if result.verified else "NOT verified: the package has no manifest"
    summary(f"wrote {outputs}: {plural(len(result.vms), 'VM')}, {plural(result.disks, 'disk')} "
            f"({result.source_kind} -> {result.target_kind}, {proof})")  # fmt: skip


COMMANDS: list[click.Command] = [convert_command]

"""Reading converted XVAs back for comparison, and making qemu-img disks for packages."""

from __future__ import annotations

from pathlib import Path

from tests.images.conftest import QemuImg
from tests.images.helpers import patterned_disk
from xvatool.xva.opening import open_archive


def xva_disks(path: Path) -> dict[int, bytes]:
    """userdevice → disk content of a (small) XVA, every checksum verified."""
    with open_archive(path) as reader:
        out = {d.id: bytearray(d.virtual_size) for d in reader.disks}
        for chunk in reader.chunks():
            out[chunk.disk.id][chunk.offset : chunk.offset + len(chunk.data)] = chunk.data
        return {int(d.userdevice or -1): bytes(out[d.id]) for d in reader.disks}


def xva_metadata(path: Path):
    with open_archive(path) as reader:
        return reader.metadata


def qemu_disk(
    qemu: QemuImg, folder: Path, name: str, size: int, fmt: str, options: str, seed: int
) -> tuple[bytes, bytes]:
    """(raw content, image bytes) of a patterned disk converted by qemu-img."""
    raw = folder / f"{name}.raw"
    content = patterned_disk(raw, size, seed)
    image = qemu.convert(raw, folder / name, fmt, options)
    return content, image.read_bytes()

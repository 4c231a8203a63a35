"""Regenerate the small disk images in this folder: `.venv/bin/python testdata/images/make.py`.

One 64 KiB disk (two recognisable 4 KiB runs, zeros elsewhere) in every container `vdi-import`
must tell apart by content. Needs `qemu-img` (Debian's qemu-utils) for qcow2 and the fixed VHD.
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

from xvatool.xva.convert import create_archive
from xvatool.xva.tarstream import END_OF_ARCHIVE
from xvatool.xva.writer import chunk_members

HERE = Path(__file__).resolve().parent
SIZE = 64 << 10


def disk() -> bytes:
    data = bytearray(SIZE)
    data[0:4096] = b"\x5a" * 4096
    data[SIZE - 4096 :] = bytes(range(256)) * 16
    return bytes(data)


def main() -> None:
    raw = HERE / "disk.raw"
    raw.write_bytes(disk())
    tar = b"".join(bytes(piece) for piece in chunk_members("vdi/00000000", disk(), "xxhash"))
    (HERE / "disk.tar").write_bytes(tar + END_OF_ARCHIVE)
    for name, options in (("disk.qcow2", ["-O", "qcow2", "-o", "cluster_size=4096"]), ("disk-fixed.vhd", ["-O", "vpc", "-o", "subformat=fixed"])):
        subprocess.run(["qemu-img", "convert", *options, str(raw), str(HERE / name)], check=True)
    (HERE / "disk.raw.gz").write_bytes(gzip.compress(disk(), mtime=0))
    vm = HERE / "vm.xva"
    vm.unlink(missing_ok=True)
    create_archive(vm, name="testdata-vm", disks=[raw])


if __name__ == "__main__":
    main()

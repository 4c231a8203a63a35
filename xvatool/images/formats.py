"""Recognising disk images and archives by their content, and opening an image by its format.

File names lie (Citrix ships gzip files named `.xva`, oVirt puts qcow2 in files it calls VMDK),
so formats are told by their bytes. `sniff` needs the first `SNIFF_SIZE` bytes; a fixed VHD is a
raw disk with a footer at the end, so it is recognised only when the last 512 bytes are given too.
"""

from __future__ import annotations

import os
import struct
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from xvatool._streams import LocalStream
from xvatool._types import Readable
from xvatool.errors import FormatError, LocalIOError, UsageError
from xvatool.images.extents import DiskImage
from xvatool.images.raw import RawFileImage, RawStreamImage
from xvatool.images.vhd import DISK_FIXED, FOOTER_COOKIE, VhdReader
from xvatool.images.vmdk import MAGIC as VMDK_MAGIC
from xvatool.images.vmdk import VmdkReader

__all__ = ["IMAGE_FORMATS", "SNIFF_SIZE", "Format", "ImageFormat", "open_image", "open_image_file", "sniff"]

SNIFF_SIZE = 64 << 10
"""Bytes of the head `sniff` looks at (an ISO 9660 volume descriptor sits at 32 KiB)."""

Format = Literal[
    "raw", "vhd", "vmdk", "vmdk-descriptor", "qcow2", "vdi", "iso", "xva", "ova", "tar", "ovf", "gzip", "zstd"
]
ImageFormat = Literal["raw", "vhd", "vmdk"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("raw", "vhd", "vmdk")
"""The disk image formats `open_image` reads."""

_QCOW_MAGIC = b"QFI\xfb"
_VDI_SIGNATURE = struct.pack("<I", 0xBEDA107F)
_ISO_MAGIC = b"CD001"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _tar_first_name(head: bytes) -> str | None:
    """The first member's name if `head` starts with a valid tar header (any dialect), else None."""
    if len(head) < 512:
        return None
    try:
        info = tarfile.TarInfo.frombuf(head[:512], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None
    return info.name


def sniff(head: bytes, tail: bytes | None = None) -> Format:
    """The format of a file or stream from its first bytes (and optionally its last 512).

    ``"xva"`` is a tar whose first member is ``ova.xml``, ``"ova"`` one whose first member is an
    ``.ovf`` descriptor, ``"tar"`` any other tar (the host's ``vdi/`` disk tar among them);
    ``"gzip"`` and ``"zstd"`` are compressed streams of something else (look inside).

    >>> sniff(b"conectix" + bytes(504))
    'vhd'
    """
    if head.startswith(FOOTER_COOKIE):
        return "vhd"
    if head.startswith(VMDK_MAGIC):
        return "vmdk"
    if head.startswith(b"# Disk DescriptorFile"):
        return "vmdk-descriptor"
    if head.startswith(_QCOW_MAGIC):
        return "qcow2"
    if head[64:68] == _VDI_SIGNATURE:
        return "vdi"
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    name = _tar_first_name(head)
    if name is not None:
        if name == "ova.xml":
            return "xva"
        if name.lower().endswith(".ovf"):
            return "ova"
        return "tar"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"<") and b"Envelope" in head[:4096]:
        return "ovf"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 descriptor, as .NET writes them
        decoded = head[:8192].decode("utf-16", "ignore").lstrip()
        if decoded.startswith("<") and "Envelope" in decoded:
            return "ovf"
    if head[0x8001:0x8006] == _ISO_MAGIC:
        return "iso"
    if tail is not None and len(tail) >= 512 and tail[-512:].startswith(FOOTER_COOKIE):
        if struct.unpack_from(">I", tail, len(tail) - 512 + 60)[0] == DISK_FIXED:
            return "vhd"
    return "raw"


def open_image(
    stream: Readable,
    fmt: ImageFormat,
    *,
    length: int | None = None,
    virtual_size: int | None = None,
    source: str | None = None,
) -> DiskImage:
    """A `DiskImage` reading `stream` as `fmt`; a raw stream needs its size (`virtual_size` or `length`)."""
    if fmt == "vhd":
        return VhdReader(stream, length=length, source=source)
    if fmt == "vmdk":
        return VmdkReader(stream, length=length, source=source)
    size = virtual_size if virtual_size is not None else length
    if size is None:
        raise UsageError("a raw disk stream needs its size")
    return RawStreamImage(stream, size, source=source)


@contextmanager
def open_image_file(path: str | os.PathLike[str]) -> Iterator[tuple[Format, DiskImage]]:
    """Open a local image file, its format told by content; raw files skip their holes.

    Example::

        with open_image_file("disk.vmdk") as (fmt, image):
            print(fmt, image.virtual_size)
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        f = path.open("rb")
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc
    with f:
        head = f.read(SNIFF_SIZE)
        f.seek(max(0, size - 512))
        tail = f.read(512)
        f.seek(0)
        fmt = sniff(head, tail)
        if fmt == "raw":
            yield fmt, RawFileImage(path)
        elif fmt in ("vhd", "vmdk"):
            yield fmt, open_image(LocalStream(f, str(path)), fmt, length=size, source=str(path))
        else:
            raise FormatError(
                f"a {fmt} file, not a disk image this tool reads (raw, VHD, VMDK)",
                code="image-format",
                file=str(path),
            )

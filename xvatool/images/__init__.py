"""Disk image formats: raw, VHD and VMDK read as `DiskImage` extents and written from them.

Every reader is streaming (never seeks, bounded memory) and refuses hostile input with one
`FormatError` naming the file and offset; every writer is an iterator of byte pieces. See
docs/architecture.md (images/) for the formats and the design.
"""

from __future__ import annotations

from xvatool.images.extents import (
    BlockSourceImage,
    DiskImage,
    Extent,
    ImageBlockSource,
    ordered_image,
    rechunk,
    write_image,
)
from xvatool.images.formats import SNIFF_SIZE, Format, ImageFormat, open_image, open_image_file, sniff
from xvatool.images.raw import RawFileImage, RawStreamImage
from xvatool.images.vhd import VhdParent, VhdReader
from xvatool.images.vhdwriter import VhdWriter
from xvatool.images.vmdk import VmdkReader
from xvatool.images.vmdkwriter import VmdkWriter

__all__ = [
    "SNIFF_SIZE",
    "BlockSourceImage",
    "DiskImage",
    "Extent",
    "Format",
    "ImageBlockSource",
    "ImageFormat",
    "RawFileImage",
    "RawStreamImage",
    "VhdParent",
    "VhdReader",
    "VhdWriter",
    "VmdkReader",
    "VmdkWriter",
    "open_image",
    "open_image_file",
    "ordered_image",
    "rechunk",
    "sniff",
    "write_image",
]

"""A disk as extents: the one shape every image reader hands to every writer.

Readers of VHD, VMDK, raw and XVA disks all produce a `DiskImage`: its `virtual_size` and one pass
of ``(offset, data)`` extents. Writers (VMDK, VHD, XVA, a sparse file, the host's chunked upload)
consume extents. Keeping one shape means any reader feeds any writer, and the host upload of a
later phase (`/import_raw_vdi?chunked`, which takes extents in any order) is a plain loop.

Contract of `DiskImage.extents()`: iterated once; every extent lies inside ``[0, virtual_size)``;
regions that are not covered read as zeros (or, for a differencing image, as the parent); an
extent may itself be all zeros; the view is valid only until the next extent is requested (copy
it to keep it). When `ordered` is true, extents come in ascending offset order without overlap;
streaming readers know this before the first extent (a VHD from its BAT, a VMDK stream by
promise, checked as it goes), because an XVA needs its disk in order and must know before it
starts whether a temporary copy is needed (`ordered_image`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from xvatool.errors import StreamStateError, UsageError
from xvatool.xva.disk import CHUNK_SIZE, BlockSource, SparseFileSink, is_zero

__all__ = [
    "BlockSourceImage",
    "DiskImage",
    "Extent",
    "ImageBlockSource",
    "ordered_image",
    "rechunk",
    "write_image",
]

Extent = tuple[int, memoryview]
"""``(offset, data)``: `data` belongs at byte `offset` of the disk; valid until the next extent."""


class DiskImage(Protocol):
    """A readable disk: its size and one pass of its extents (module docstring)."""

    virtual_size: int
    ordered: bool

    def extents(self) -> Iterator[Extent]: ...


def rechunk(extents: Iterable[Extent], size: int, unit: int = CHUNK_SIZE) -> Iterator[Extent]:
    """Ordered extents regrouped into `unit`-aligned blocks of `unit` bytes (the last one short).

    Only blocks that some extent touches are yielded; their uncovered bytes are zeros. An extent
    that is exactly one aligned block passes through without a copy. The yielded view is valid
    until the next block is requested. Extents out of order raise `StreamStateError`.

    Example::

        for offset, block in rechunk(image.extents(), image.virtual_size, 1 << 20):
            ...
    """
    buf = bytearray(unit)
    view = memoryview(buf)
    current = -1  # index of the block being filled in `buf`
    dirty = False
    low = 0  # no extent may start below this offset any more
    for offset, data in extents:
        length = len(data)
        if offset < low or offset + length > size:
            raise StreamStateError(
                f"extent at {offset} (+{length}) is out of order or past the disk end ({size})"
            )
        if not length:
            continue
        low = offset + length
        if offset % unit == 0 and (length == unit or offset + length == size) and length <= unit:
            if current >= 0:
                yield current * unit, view[: min(unit, size - current * unit)]
                current, dirty = -1, True
            yield offset, data if isinstance(data, memoryview) else memoryview(data)
            continue
        pos = 0
        while pos < length:
            at = offset + pos
            index, start = divmod(at, unit)
            if index != current:
                if current >= 0:
                    yield current * unit, view[: min(unit, size - current * unit)]
                if dirty:
                    view[:] = bytes(unit)
                current, dirty = index, True
            n = min(unit - start, length - pos)
            view[start : start + n] = data[pos : pos + n]
            pos += n
    if current >= 0:
        yield current * unit, view[: min(unit, size - current * unit)]


class ImageBlockSource:
    """A `DiskImage` seen as the XVA writer's `BlockSource` (1 MiB aligned blocks, in order).

    The image must be ordered (`ordered_image` makes one that is). All-zero blocks are passed on;
    the XVA writer leaves them out where the format allows.
    """

    def __init__(self, image: DiskImage) -> None:
        if not image.ordered:
            raise UsageError("the disk's extents are not in disk order; use ordered_image() first")
        self.image = image
        self.size = image.virtual_size

    def blocks(self) -> Iterator[tuple[int, memoryview]]:
        return rechunk(self.image.extents(), self.size, CHUNK_SIZE)


class BlockSourceImage:
    """An XVA writer's `BlockSource` (a raw file, an XVA disk) seen as a `DiskImage`."""

    ordered = True

    def __init__(self, source: BlockSource) -> None:
        self.source = source
        self.virtual_size = source.size

    def extents(self) -> Iterator[Extent]:
        return self.source.blocks()


def write_image(image: DiskImage, sink: SparseFileSink) -> int:
    """Write every extent of `image` into `sink` (holes stay holes); return the data bytes written.

    The sink is not committed: the caller does that once everything it reads is verified.
    """
    written = 0
    for offset, data in image.extents():
        for start in range(0, len(data), CHUNK_SIZE):
            piece = data[start : start + CHUNK_SIZE]
            if not is_zero(piece):
                sink.write_at(offset + start, piece)
                written += len(piece)
    return written


@contextlib.contextmanager
def ordered_image(
    image: DiskImage, *, spool_dir: str | os.PathLike[str] | None = None
) -> Iterator[DiskImage]:
    """`image` itself if it is ordered; else a sparse temporary copy read back in order.

    The copy holds only the image's data (holes stay holes) and is removed when the block ends.
    It is the one place a conversion needs temporary space: a VHD whose blocks are stored out of
    disk order (Hyper-V writes them as the guest allocates) going into an XVA, which needs order.
    """
    if image.ordered:
        yield image
        return
    from xvatool.images.raw import RawFileImage

    folder = Path(spool_dir) if spool_dir is not None else Path(tempfile.gettempdir())
    fd, name = tempfile.mkstemp(prefix=".xvatool-spool.", suffix=".raw", dir=folder)
    os.close(fd)
    path = Path(name)
    try:
        with SparseFileSink(path, image.virtual_size) as sink:
            write_image(image, sink)
            sink.commit()
        yield RawFileImage(path)
    finally:
        path.unlink(missing_ok=True)

"""Progress of whole-VM transfers in disk bytes, so every bar has a total, a percent and an ETA.

An XVA stream's length is unknown before it ends (zero chunks are left out, compression), but
its chunk counters are not: each chunk says where on its disk it lies, so the bytes of disk
covered so far, out of the sum of the disks' virtual sizes, is exact progress
(`xva.validate.ProgressTracker`). Bars are labelled with the VM and the disk as users know it,
``web-01 disk 0 (root)``, never with the archive's ``Ref:`` ids.

Example::

    bars = ProgressGroup(progress)
    tracker = ProgressTracker(reader.disks, bars.new(vm_label, total_size(reader.disks)).update)
    for chunk in reader.chunks():
        tracker.advance(chunk)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from xvatool.xva.ovaxml import DiskInfo
from xvatool.xva.validate import ProgressTracker

if TYPE_CHECKING:
    from xvatool.xva.reader import Chunk, XvaReader

__all__ = ["disk_label", "tapped", "total_size", "tracked"]


def disk_label(vm_name: str, disk: DiskInfo) -> str:
    """``web-01 disk 0 (root)``: the VM, the disk's position in it, and its name when it has one."""
    position = f"disk {disk.userdevice}" if disk.userdevice else "disk"
    name = f" ({disk.name_label})" if disk.name_label else ""
    return f"{vm_name} {position}{name}".strip()


def total_size(disks: Sequence[DiskInfo]) -> int:
    """The sum of the disks' virtual sizes: the total of a whole-VM bar."""
    return sum(d.virtual_size for d in disks)


class _Tapped:
    """An `XvaReader` whose chunks are also handed to `on_chunk`, for code that iterates them."""

    def __init__(self, reader: XvaReader, on_chunk: Callable[[Chunk], None]) -> None:
        self._reader = reader
        self._on_chunk = on_chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def chunks(self) -> Iterator[Chunk]:
        for chunk in self._reader.chunks():
            self._on_chunk(chunk)
            yield chunk


def tapped(reader: XvaReader, on_chunk: Callable[[Chunk], None]) -> XvaReader:
    """`reader`, its chunks also handed to `on_chunk` (a digest, a progress tracker) as they pass."""
    return cast("XvaReader", _Tapped(reader, on_chunk))


def tracked(reader: XvaReader, update: Callable[[int], None]) -> XvaReader:
    """`reader`, reporting disk bytes covered to `update` as its chunks are consumed.

    For consumers that iterate the chunks themselves (`repack_pieces`): the bar then moves with
    the data, whatever the consumer does with it.
    """
    return tapped(reader, ProgressTracker(reader.disks, update).advance)

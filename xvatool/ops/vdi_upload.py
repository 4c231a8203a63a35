"""Live disk data into a host: extents of any order as one chunked `PUT /import_raw_vdi`.

The chunked form of `/import_raw_vdi` (xapi-protocol.md §3.6) takes `(offset, length, data)`
frames in any order and ends at a 12-byte terminator, so a disk whose size on the wire is not
known in advance (a verified XVA disk stream, a VMDK read from a package) goes to the host as it
is read, with no temporary copy and only its non-zero regions. The migration and the package
import share this.

A live body cannot be sent twice, and it must end cleanly when its source fails: `LiveBody`
keeps the source's error and stops the body before the terminator, so the host fails the
truncated upload on its own terms; the task tells when it has cleaned up, and then the source's
error is raised (not the host's echo of it).

Example::

    with open_package("appliance.ova") as reader:
        for item in reader.disks():
            upload_extents(session, vdi_uuid, nonzero_extents(item.image.extents()))
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from xvatool.errors import StreamStateError, XvatoolError
from xvatool.xapi.session import Session
from xvatool.xapi.tasks import managed_task, task_reason, wait_task
from xvatool.xapi.transfer import chunked_frames, upload_unsized
from xvatool.xva.disk import CHUNK_SIZE, is_zero

__all__ = ["SECTOR_SIZE", "LiveBody", "nonzero_extents", "upload_extents"]

SECTOR_SIZE = 512
"""The host writes with O_DIRECT: frame offsets and lengths are whole sectors (§3.6)."""

Extent = tuple[int, bytes | memoryview]


class LiveBody:
    """The body factory for a live stream: consumed once, and ends cleanly if the source fails.

    A reader error (bad chunk, source connection lost) is kept in `error` and the body simply
    stops, so the upload is half-closed rather than reset: the target then fails the import of
    a truncated body and cleans up, and the task tells us when that is done. Letting the
    exception tear the socket down instead would race the target's cleanup.
    """

    def __init__(self, pieces: Iterator[bytes | memoryview]) -> None:
        self._pieces = pieces
        self._used = False
        self.error: XvatoolError | None = None

    def __call__(self) -> Iterator[bytes | memoryview]:
        if self._used:
            raise StreamStateError("a live export cannot be sent twice")
        self._used = True
        return self._guarded()

    def _guarded(self) -> Iterator[bytes | memoryview]:
        try:
            yield from self._pieces
        except XvatoolError as exc:
            self.error = exc


def nonzero_extents(extents: Iterable[Extent], *, unit: int = CHUNK_SIZE) -> Iterator[Extent]:
    """`extents` cut into pieces of at most `unit` bytes, all-zero pieces left out.

    A target VDI made by `VDI.create` reads as zeros already. A piece whose length is not whole
    sectors (the end of a raw disk whose size is not) is padded with zeros; offsets must be
    whole sectors. Views are passed on as they came, valid until the next piece.
    """
    for offset, data in extents:
        view = memoryview(data) if not isinstance(data, memoryview) else data
        if offset % SECTOR_SIZE:
            raise ValueError(f"extent at offset {offset} does not start on a sector")
        for start in range(0, len(view), unit):
            piece = view[start : start + unit]
            if is_zero(piece):
                continue
            if len(piece) % SECTOR_SIZE:
                piece = memoryview(bytes(piece) + bytes(-len(piece) % SECTOR_SIZE))
            yield offset + start, piece


def upload_extents(session: Session, vdi_uuid: str, extents: Iterable[Extent]) -> None:
    """One `PUT /import_raw_vdi?chunked=true` of unknown length into VDI `vdi_uuid`, then its task.

    `extents` is read once, as it is sent. An `XvatoolError` raised while reading it is
    re-raised once the host has failed the truncated upload.
    """
    live = LiveBody(chunked_frames(extents))
    params = {"vdi": vdi_uuid, "format": "raw", "chunked": "true"}
    with managed_task(session, f"xvatool import_raw_vdi {vdi_uuid}") as task:
        try:
            with task_reason(session, task):  # a broken upload reports the target's reason
                upload_unsized(session, "/import_raw_vdi", params, live, task=task)
            wait_task(session, task)
        except XvatoolError as exc:
            if live.error is not None:  # the target failed because the source did
                raise live.error from exc
            raise
    if live.error is not None:  # cannot happen without the terminator, but never keep it
        raise live.error

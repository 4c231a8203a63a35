"""Live disk data out of and into a host, as extents: no temporary copy, no zeros on the wire.

Out: `HostDisk` is a VDI as the host streams it with `GET /export_raw_vdi?format=tar` (the XVA
disk encoding, docs/xva-format.md §6, zero chunks left out by the host), verified chunk by chunk,
as a `DiskImage` any writer takes (the VMDK writer of a package export, an upload).

In:
The chunked form of `/import_raw_vdi` (docs/host-protocol.md §4.12) takes `(offset, length, data)`
frames in any order and ends at a 12-byte terminator, so a disk whose size on the wire is not
known in advance (a verified XVA disk stream, a VMDK read from a package) goes to the host as it
is read, with no temporary copy and only its non-zero regions. The parallel migration and the
package export and import share these.

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

from collections.abc import Callable, Generator, Iterable, Iterator

from xvatool._streams import TeeReader
from xvatool.errors import StreamStateError, XvatoolError
from xvatool.ops.export import transport_errors
from xvatool.ops.progress import tracked
from xvatool.xapi.session import Session
from xvatool.xapi.tasks import managed_task, task_reason, wait_task
from xvatool.xapi.transfer import chunked_frames, open_download, upload_unsized
from xvatool.xva.disk import CHUNK_SIZE, is_zero
from xvatool.xva.reader import XvaReader

__all__ = ["SECTOR_SIZE", "HostDisk", "LiveBody", "nonzero_extents", "upload_extents"]

SECTOR_SIZE = 512
"""The host writes with O_DIRECT: frame offsets and lengths are whole sectors
(host-protocol.md §4.12)."""

Extent = tuple[int, bytes | memoryview]


class HostDisk:
    """A VDI's data streamed from the host, verified, as a one-pass `DiskImage` of non-zero chunks.

    `extents()` runs one `GET /export_raw_vdi?format=tar` under its own task: every chunk's
    checksum is checked before it is handed on, a cut stream is a retryable `TransferError`, and
    the task is waited for at the end. `bytes_read` counts the body; `progress` gets the disk
    bytes covered (gaps included), so a bar's total is the disk's virtual size. Example::

        disk = HostDisk(session, vdi_uuid, virtual_size)
        for offset, data in disk.extents():
            ...
    """

    ordered = True

    def __init__(
        self,
        session: Session,
        vdi_uuid: str,
        virtual_size: int,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.session = session
        self.vdi_uuid = vdi_uuid
        self.virtual_size = virtual_size
        self.progress = progress
        self.bytes_read = 0

    def extents(self) -> Generator[tuple[int, memoryview], None, None]:
        params = {"vdi": self.vdi_uuid, "format": "tar"}
        where = f"{self.session.url}/export_raw_vdi?vdi={self.vdi_uuid}"
        with managed_task(self.session, f"xvatool export_raw_vdi {self.vdi_uuid}") as task:
            with open_download(self.session, "/export_raw_vdi", params, task=task) as body:
                tee = TeeReader(body)
                reader = XvaReader.for_disk_stream(tee, size=self.virtual_size, source=where)
                if self.progress is not None:
                    reader = tracked(reader, self.progress)
                with transport_errors(tee):
                    for chunk in reader.chunks():
                        self.bytes_read = tee.count
                        if not is_zero(chunk.data):
                            yield chunk.offset, chunk.data
                    tee.drain()  # what follows the tar, so the task completes cleanly
                self.bytes_read = tee.count
            wait_task(self.session, task)


class LiveBody:
    """The body factory for a live stream: consumed once, and ends cleanly if the source fails.

    A reader error (bad chunk, source connection lost) is kept in `error` and the body simply
    stops, so the upload is half-closed rather than reset: the target then fails the import of
    a truncated body and cleans up, and the task tells us when that is done. Letting the
    exception tear the socket down instead would race the target's cleanup. A chunked-frame
    body stops before its terminator, so the host cannot take it for whole.
    """

    def __init__(self, pieces: Iterator[bytes | memoryview]) -> None:
        self._pieces = pieces
        self._used = False
        self.error: XvatoolError | None = None

    def __call__(self) -> Iterator[bytes | memoryview]:
        if self._used:
            raise StreamStateError("a live stream cannot be sent twice")
        self._used = True
        return self._guarded()

    def _guarded(self) -> Iterator[bytes | memoryview]:
        try:
            yield from self._pieces
        except XvatoolError as exc:
            self.error = exc


def nonzero_extents(extents: Iterable[Extent], *, unit: int = CHUNK_SIZE) -> Iterator[tuple[int, memoryview]]:
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

"""One disk in or out of a host: ``GET /export_raw_vdi`` and ``PUT /import_raw_vdi`` (§3.5, §3.6).

Export writes ``OUT.part`` (raw: sparse, holes for zero blocks) and renames it into place only
after the body had the expected size and the task succeeded. There is no ``Range`` (§3.0), so a
transient failure restarts the download.

A raw import uses the chunked framing (§3.6): the disk is cut into `SEGMENT_SIZE` segments and
each is one ``PUT /import_raw_vdi?chunked=true`` with its own task. Frames only cover what they
cover and re-sending a range is idempotent (§4), so a failed segment is simply sent again and
``--resume`` re-sends only the segments the journal does not list as done, after checking that
the file and the VDI are still the ones it describes. Zero blocks are skipped only when the VDI
was created blank by us (``sr=``); an existing VDI (``vdi_uuid=``) may hold old data, so every
block is written. A VHD import is one plain PUT with Content-Length (§3.6); the host writes only
the blocks present in the VHD, so into an existing VDI it applies the VHD as a delta.

Example::

    with connect(url, "root", password) as host:
        export_vdi(host, vdi_uuid, "disk.raw")
        new_uuid = import_vdi(host, "disk.raw", sr="Local storage")
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import xxhash

from xvatool.errors import LocalIOError, ResumeError, TransferError, UsageError, XapiError
from xvatool.xapi.journal import Journal, import_journal_path, is_transient
from xvatool.xapi.session import Session
from xvatool.xapi.tasks import managed_task, task_reason, wait_task
from xvatool.xapi.transfer import (
    DEFAULT_RETRIES,
    chunked_frames,
    chunked_length,
    open_download,
    retrying,
    upload,
)
from xvatool.xapi.vms import find_sr
from xvatool.xva.disk import CHUNK_SIZE, ZERO_CHUNK, SparseFileSink, data_ranges, is_zero

__all__ = [
    "SEGMENT_SIZE",
    "ExportFormat",
    "ImportFormat",
    "Progress",
    "VdiInfo",
    "export_vdi",
    "find_vdi",
    "import_vdi",
    "vhd_virtual_size",
]

log = logging.getLogger(__name__)

ExportFormat = Literal["raw", "vhd", "tar"]
ImportFormat = Literal["raw", "vhd"]
Progress = Callable[[int, int], None]
"""Called with (bytes done, bytes total) as a transfer advances; done may go back on a retry."""

SEGMENT_SIZE = 256 << 20
"""Bytes of disk per chunked PUT. Each PUT attaches the VDI to dom0 (seconds on a real host,
§3.5), so segments are large; a failure re-sends at most one."""
SECTOR_SIZE = 512
"""The host writes chunked frames with O_DIRECT: offsets and lengths are multiples of it (§3.6)."""
VHD_FOOTER_SIZE = 512
VHD_COOKIE = b"conectix"
_VHD_SIZE = struct.Struct(">Q")
_VHD_SIZE_OFFSET = 48  # "Current Size" in the VHD footer (VHD spec, hard disk footer format)
_RAW_PARAMS = {"format": "raw", "chunked": "true"}
_SEGMENT_KEY = "vdi"


@dataclass(frozen=True)
class VdiInfo:
    """A VDI as the transfers need it."""

    ref: str
    uuid: str
    name_label: str
    virtual_size: int


def find_vdi(session: Session, uuid: str) -> VdiInfo:
    """The VDI with this uuid; `UsageError` if the host has none."""
    try:
        ref = str(session.call("VDI.get_by_uuid", uuid))
    except XapiError as exc:
        if exc.code in ("UUID_INVALID", "HANDLE_INVALID"):
            raise UsageError(f"no VDI with uuid {uuid!r} on {session.host}") from exc
        raise
    record: dict[str, Any] = session.call("VDI.get_record", ref)
    return VdiInfo(
        ref=ref,
        uuid=str(record.get("uuid", uuid)),
        name_label=str(record.get("name_label", "")),
        virtual_size=int(record.get("virtual_size", 0)),
    )


# ------------------------------------------------------------------------------ export


def _fill(body: Any, view: memoryview) -> int:
    """Read until `view` is full or the body ends, so sink writes stay 1 MiB aligned."""
    got = 0
    while got < len(view):
        n = int(body.readinto(view[got:]))
        if n == 0:
            break
        got += n
    return got


def export_vdi(
    session: Session,
    vdi_uuid: str,
    out_path: str | os.PathLike[str],
    *,
    format: ExportFormat = "raw",
    retries: int = DEFAULT_RETRIES,
    progress: Progress | None = None,
    timeout_s: float | None = None,
) -> Path:
    """Download one disk to `out_path` (via ``.part``); returns the final path.

    `format` ``raw`` gives exactly ``virtual_size`` bytes (sparse on disk), ``vhd`` a dynamic VHD,
    ``tar`` the XVA disk encoding (§3.5). Transient failures restart the download up to
    `retries` times (no Range on the host).
    """
    if format not in ("raw", "vhd", "tar"):
        raise UsageError(f"unknown VDI format {format!r} (raw, vhd or tar)")
    out = Path(out_path)
    if out.exists():
        raise UsageError(f"{out} exists; remove it or choose another name")
    vdi = find_vdi(session, vdi_uuid)
    expected = vdi.virtual_size if format == "raw" else 0

    def attempt() -> Path:
        with managed_task(session, f"xvatool vdi-export {vdi.uuid}") as task, task_reason(session, task):
            with SparseFileSink(out, expected) as sink:
                params = {"vdi": vdi.uuid, "format": format}
                with open_download(
                    session, "/export_raw_vdi", params, task=task, timeout_s=timeout_s
                ) as body:
                    buf = memoryview(bytearray(CHUNK_SIZE))
                    offset = 0
                    while n := _fill(body, buf):
                        sink.write_at(offset, buf[:n])
                        offset += n
                        if progress is not None:
                            progress(offset, expected)
                if format == "raw" and offset != vdi.virtual_size:
                    raise TransferError(
                        f"GET /export_raw_vdi: body ended after {offset} of {vdi.virtual_size} bytes",
                        host=session.host,
                    )
                wait_task(session, task)
                sink.size = offset  # vhd/tar: the size is what the host sent
                return sink.commit()

    return retrying(attempt, retries)


# ------------------------------------------------------------------------------ import


def vhd_virtual_size(path: str | os.PathLike[str]) -> int:
    """The disk size a VHD file describes (footer "Current Size"); `UsageError` if not a VHD."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() < VHD_FOOTER_SIZE:
                raise UsageError(f"{path}: too small to be a VHD")
            fh.seek(-VHD_FOOTER_SIZE, os.SEEK_END)
            footer = fh.read(VHD_FOOTER_SIZE)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc
    if not footer.startswith(VHD_COOKIE):
        raise UsageError(f"{path}: not a VHD file (no 'conectix' footer)")
    return int(_VHD_SIZE.unpack_from(footer, _VHD_SIZE_OFFSET)[0])


def _has_vhd_footer(path: Path, size: int) -> bool:
    """Whether the file ends in a VHD footer (its last 512 bytes start with the cookie)."""
    if size < VHD_FOOTER_SIZE or size % SECTOR_SIZE:
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(size - VHD_FOOTER_SIZE)
            return fh.read(len(VHD_COOKIE)) == VHD_COOKIE
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def _create_vdi(session: Session, sr: str, size: int, name: str) -> VdiInfo:
    """A blank VDI of `size` bytes in SR `sr` (uuid or name), made by the import's `create_vdi`."""
    from xvatool.xapi.import_ import create_vdi
    from xvatool.xva.ovaxml import DiskInfo

    sr_ref, _ = find_sr(session, sr)
    disk = DiskInfo(
        id="",
        vdi_uuid="",
        name_label=name,
        virtual_size=size,
        userdevice=None,
        bootable=False,
        vbd_uuid=None,
        sr_name=None,
        vdi_type="user",
    )
    ref, uuid = create_vdi(session, sr_ref, disk, description="imported by xvatool")
    return VdiInfo(ref=ref, uuid=uuid, name_label=name, virtual_size=size)


class _RawFile:
    """A raw image read in 1 MiB blocks per segment; the plan (extents + digest) of a segment."""

    def __init__(self, path: Path, size: int, segment_size: int, send_zeros: bool) -> None:
        self.path = path
        self.size = size
        self.segment_size = segment_size
        self.send_zeros = send_zeros
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc
        self._buf = bytearray(CHUNK_SIZE)
        # where the file may hold data (SEEK_DATA); blocks outside are holes, sent unread
        self._ranges = list(data_ranges(self.fd, size))

    def close(self) -> None:
        os.close(self.fd)

    def segments(self) -> range:
        return range(-(-self.size // self.segment_size))

    def _blocks(self, index: int) -> Iterator[tuple[int, memoryview, bool]]:
        """(offset, data padded to 512, is_zero) for every 1 MiB block of a segment."""
        start = index * self.segment_size
        end = min(self.size, start + self.segment_size)
        view = memoryview(self._buf)
        ranges = [
            (max(a, start), min(b, end)) for a, b in data_ranges(self.fd, self.size) if b > start and a < end
        ]
        for offset in range(start, end, CHUNK_SIZE):
            n = min(CHUNK_SIZE, end - offset)
            padded = _round_up(n, SECTOR_SIZE)
            if not any(a < offset + n and b > offset for a, b in ranges):  # a hole: zeros, unread
                yield offset, memoryview(ZERO_CHUNK)[:padded], True
                continue
            try:
                got = os.preadv(self.fd, [view[:n]], offset)
            except OSError as exc:
                raise LocalIOError(exc.strerror or str(exc), path=str(self.path)) from exc
            if got != n:
                raise LocalIOError(f"short read at offset {offset} (file changed?)", path=str(self.path))
            view[n:padded] = bytes(padded - n)
            yield offset, view[:padded], is_zero(view[:padded])

    def plan(self, index: int) -> tuple[list[tuple[int, int]], str]:
        """The extents a segment sends and a digest of its non-zero content (for the journal)."""
        hasher = xxhash.xxh3_128()
        extents: list[tuple[int, int]] = []
        for offset, data, zero in self._blocks(index):
            if not zero:
                hasher.update(offset.to_bytes(8, "little"))
                hasher.update(data)
            if self.send_zeros or not zero:
                extents.append((offset, len(data)))
        return extents, hasher.hexdigest()

    def frames(self, index: int, progress: Progress | None = None) -> Iterator[tuple[int, memoryview]]:
        for offset, data, zero in self._blocks(index):
            if self.send_zeros or not zero:
                yield offset, data
            if progress is not None:
                progress(min(self.size, offset + len(data)), self.size)


def _journal_key(session: Session, st: os.stat_result, target: str, segment: int) -> dict[str, str]:
    return {
        "host": session.url,
        "file_size": str(st.st_size),
        "file_mtime_ns": str(st.st_mtime_ns),
        "format": "raw",
        "target": target,
        "segment_size": str(segment),
    }


def _resume_target(session: Session, journal: Journal, size: int) -> VdiInfo:
    record = journal.disk(_SEGMENT_KEY)
    if record is None or not record.target_vdi:
        raise ResumeError("journal names no target VDI; remove it to start over", journal=str(journal.path))
    try:
        vdi = find_vdi(session, record.target_vdi)
    except UsageError as exc:
        raise ResumeError(
            f"VDI {record.target_vdi} no longer exists on {session.host}; remove the journal to start over",
            journal=str(journal.path),
        ) from exc
    if vdi.virtual_size != record.size or vdi.virtual_size < size:
        raise ResumeError(
            f"VDI {vdi.uuid} is now {vdi.virtual_size} bytes, the journal says {record.size}",
            journal=str(journal.path),
        )
    return vdi


def import_vdi(
    session: Session,
    path: str | os.PathLike[str],
    *,
    vdi_uuid: str | None = None,
    sr: str | None = None,
    format: ImportFormat = "raw",
    resume: bool = False,
    retries: int = DEFAULT_RETRIES,
    progress: Progress | None = None,
    segment_size: int = SEGMENT_SIZE,
    timeout_s: float | None = None,
) -> str:
    """Upload a disk image into an existing VDI (`vdi_uuid`) or a new one in `sr`; returns its uuid.

    `sr` is an SR uuid or unique name; the new VDI is named after the file. Raw images go in
    chunked segments with a journal next to the file (``FILE.xvatool-import-<host>.json``) so
    that `resume` continues an interrupted import; VHD images go in one PUT (into an existing
    VDI only the VHD's allocated blocks are written: a delta).
    """
    if (vdi_uuid is None) == (sr is None):
        raise UsageError("give exactly one of a target VDI (--vdi) or an SR (--sr)")
    if format not in ("raw", "vhd"):
        raise UsageError(f"unknown import format {format!r} (raw or vhd)")
    if segment_size <= 0 or segment_size % CHUNK_SIZE:
        raise UsageError(f"segment size must be a positive multiple of {CHUNK_SIZE} bytes")
    source = Path(path)
    try:
        st = source.stat()
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(source)) from exc
    if st.st_size == 0:
        raise UsageError(f"{source}: empty file")
    if format == "raw" and _has_vhd_footer(source, st.st_size):
        # A raw upload would make the VHD container itself the disk's contents.
        raise UsageError(f"{source}: this is a VHD file (it ends in a 'conectix' footer); use --format vhd")
    if format == "vhd":
        if resume:
            raise UsageError("--resume works with raw images only (a VHD is sent in one request)")
        return _import_vhd(session, source, st.st_size, vdi_uuid, sr, retries, progress, timeout_s)
    return _import_raw(session, source, st, vdi_uuid, sr, resume, retries, progress, segment_size, timeout_s)


def _import_vhd(
    session: Session,
    source: Path,
    length: int,
    vdi_uuid: str | None,
    sr: str | None,
    retries: int,
    progress: Progress | None,
    timeout_s: float | None,
) -> str:
    virtual_size = vhd_virtual_size(source)
    if vdi_uuid is not None:
        vdi = find_vdi(session, vdi_uuid)
        if vdi.virtual_size < virtual_size:
            raise UsageError(f"VDI {vdi.uuid} has {vdi.virtual_size} bytes, the VHD needs {virtual_size}")
    else:
        assert sr is not None
        vdi = _create_vdi(session, sr, virtual_size, source.name)

    def body() -> Iterator[bytes]:
        done = 0
        try:
            with source.open("rb") as fh:
                while piece := fh.read(CHUNK_SIZE):
                    done += len(piece)
                    if progress is not None:
                        progress(done, length)
                    yield piece
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=str(source)) from exc

    def attempt() -> None:
        with managed_task(session, f"xvatool vdi-import {vdi.uuid}") as task, task_reason(session, task):
            params = {"vdi": vdi.uuid, "format": "vhd"}
            upload(session, "/import_raw_vdi", params, body, length=length, task=task, timeout_s=timeout_s)
            _wait_segment(session, task)

    retrying(attempt, retries)
    return vdi.uuid


def _wait_segment(session: Session, task: str) -> None:
    try:
        wait_task(session, task)
    except XapiError as exc:
        # vhd-tool fails with VDI_IO_ERROR when the body was cut short (§3.6): sending the same
        # bytes again is safe, so this (like every transient code) is a failure of the transfer
        if is_transient(exc):
            raise TransferError(f"the host could not write the data: {exc}", host=session.host) from exc
        raise


def _import_raw(
    session: Session,
    source: Path,
    st: os.stat_result,
    vdi_uuid: str | None,
    sr: str | None,
    resume: bool,
    retries: int,
    progress: Progress | None,
    segment_size: int,
    timeout_s: float | None,
) -> str:
    size = st.st_size
    journal_path = import_journal_path(source, session.url)
    target = f"vdi:{vdi_uuid}" if vdi_uuid is not None else f"sr:{sr}"
    key = _journal_key(session, st, target, segment_size)
    if journal_path.exists() and not resume:
        raise UsageError(f"{journal_path} exists from an interrupted import; use --resume or remove it")
    if resume and journal_path.exists():
        journal = Journal.open_for_resume(journal_path, kind="import", key=key)
        vdi = _resume_target(session, journal, size)
        log.info("resuming import into VDI %s from %s", vdi.uuid, journal_path)
    else:
        if vdi_uuid is not None:
            vdi = find_vdi(session, vdi_uuid)
            if vdi.virtual_size < _round_up(size, SECTOR_SIZE):
                raise UsageError(f"VDI {vdi.uuid} has {vdi.virtual_size} bytes, {source} has {size}")
        else:
            assert sr is not None
            vdi = _create_vdi(session, sr, _round_up(size, SECTOR_SIZE), source.name)
        journal = Journal.create(journal_path, kind="import", key=key)
        journal.set_disk(_SEGMENT_KEY, size=vdi.virtual_size, target_vdi=vdi.uuid)
    record = journal.disk(_SEGMENT_KEY)
    done_before = dict(record.segments) if record is not None else {}
    # a VDI we created is blank; an existing one may hold old data where the file has zeros
    image = _RawFile(source, size, segment_size, send_zeros=vdi_uuid is not None)
    try:
        for index in image.segments():
            done = done_before.get(index)
            _send_segment(session, image, index, vdi, journal, done, retries, progress, timeout_s)
            _report(progress, index, image)
    except BaseException:
        log.warning("import into VDI %s interrupted; continue it with --resume (%s)", vdi.uuid, journal_path)
        raise
    finally:
        image.close()
    journal.remove()
    return vdi.uuid


def _send_segment(
    session: Session,
    image: _RawFile,
    index: int,
    vdi: VdiInfo,
    journal: Journal,
    done_digest: str | None,
    retries: int,
    progress: Progress | None,
    timeout_s: float | None,
) -> None:
    """Send one segment unless the journal proves it was sent with this content; then journal it."""
    extents, digest = image.plan(index)
    if done_digest == digest:
        return
    if done_digest is not None:
        log.warning("segment %d of %s changed since it was sent; sending it again", index, image.path)
    length = chunked_length(n for _, n in extents)

    def attempt() -> None:
        with (
            managed_task(session, f"xvatool vdi-import {vdi.uuid} segment {index}") as task,
            task_reason(session, task),
        ):
            upload(
                session,
                "/import_raw_vdi",
                {"vdi": vdi.uuid, **_RAW_PARAMS},
                lambda: chunked_frames(image.frames(index, progress)),
                length=length,
                task=task,
                timeout_s=timeout_s,
            )
            _wait_segment(session, task)

    retrying(attempt, retries)
    journal.mark_segment(_SEGMENT_KEY, index, digest)


def _report(progress: Progress | None, index: int, image: _RawFile) -> None:
    if progress is not None:
        progress(min(image.size, (index + 1) * image.segment_size), image.size)

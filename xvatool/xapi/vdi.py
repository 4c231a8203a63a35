"""One disk in or out of a host: ``GET /export_raw_vdi`` and ``PUT /import_raw_vdi``.

See docs/host-protocol.md §4.10–§4.12.

Export writes a temporary file (`xvatool._files.AtomicFile`; raw: sparse, holes for zero blocks)
and renames it into place only after the body had the expected size and the task succeeded. There
is no ``Range`` (host-protocol.md §4.3), so a transient failure restarts the download.

A raw import uses the chunked framing (host-protocol.md §4.12): the disk is cut into
`IMPORT_SEGMENT_SIZE` segments and each is one ``PUT /import_raw_vdi?chunked=true`` with its own
task. Frames only cover what they cover and re-sending a range is idempotent (host-protocol.md §5),
so a failed segment is simply sent again and ``--resume`` re-sends only the segments the journal
does not list as done, after checking that the file and the VDI are still the ones it describes.
Zero blocks are skipped only when the VDI was created blank by us (``sr=``); an existing VDI
(``vdi_uuid=``) may hold old data, so every block is written. A VHD import is one plain PUT with
Content-Length (host-protocol.md §4.11); the host writes only the blocks present in the VHD, so into
an existing VDI it applies the VHD as a delta.

Example::

    with connect(url, "root", password) as host:
        export_vdi(host, vdi_uuid, "disk.raw")
        new_uuid = import_vdi(host, "disk.raw", sr="Local storage")
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import xxhash

from xvatool._files import AtomicFile
from xvatool._human import human_size
from xvatool._progress import NullBar, Progress, ProgressBar
from xvatool._retry import DEFAULT_RETRY, RetryPolicy, is_transient
from xvatool.errors import (
    Interrupted,
    LocalIOError,
    ResumeError,
    TransferError,
    UsageError,
    XapiError,
    XvatoolError,
)
from xvatool.xapi.journal import Journal, StatePath, import_journal_path
from xvatool.xapi.session import Session
from xvatool.xapi.tasks import managed_task, task_reason, wait_task
from xvatool.xapi.transfer import BodyFactory, chunked_frames, chunked_length, open_download, upload
from xvatool.xapi.vms import find_sr
from xvatool.xva.disk import CHUNK_SIZE, ZERO_CHUNK, data_ranges, is_zero

__all__ = [
    "IMPORT_SEGMENT_SIZE",
    "ExportFormat",
    "ImportFormat",
    "VdiInfo",
    "create_vdi",
    "export_vdi",
    "find_vdi",
    "import_vdi",
    "vhd_virtual_size",
]

log = logging.getLogger(__name__)

ExportFormat = Literal["raw", "vhd", "tar"]
ImportFormat = Literal["raw", "vhd", "tar"]

IMPORT_SEGMENT_SIZE = 256 << 20
"""Bytes of disk per chunked ``PUT /import_raw_vdi`` (here and in parallel imports): the unit of
resume. Each PUT attaches the VDI to dom0 (seconds on a real host, host-protocol.md §4.10), so
segments are large; a failure re-sends at most one."""
SECTOR_SIZE = 512
"""The host writes chunked frames with O_DIRECT: offsets and lengths are multiples of it
(host-protocol.md §4.12)."""
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


def create_vdi(
    session: Session,
    sr_ref: str,
    *,
    name_label: str,
    virtual_size: int,
    vdi_type: str = "user",
    description: str = "",
) -> tuple[str, str]:
    """`VDI.create` an empty VDI in SR `sr_ref`; its (ref, uuid).

    A new VDI reads as zeros, so a chunked upload (host-protocol.md §4.12) needs to send only the
    non-zero data.
    """
    ref = str(
        session.call(
            "VDI.create",
            {
                "name_label": name_label,
                "name_description": description,
                "SR": sr_ref,
                "virtual_size": str(virtual_size),  # 64-bit ints go as strings (host-protocol.md §2.3)
                "type": vdi_type or "user",
                "sharable": False,
                "read_only": False,
                "other_config": {},
                "xenstore_data": {},
                "sm_config": {},
                "tags": [],
            },
        )
    )
    return ref, str(session.call("VDI.get_uuid", ref))


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
    overwrite: bool = False,
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
    timeout_s: float | None = None,
) -> Path:
    """Download one disk to `out_path` (via a temporary file); returns the final path.

    `format` ``raw`` gives exactly ``virtual_size`` bytes (sparse on disk), ``vhd`` a dynamic VHD,
    ``tar`` the XVA disk encoding (xva-format.md §6). An existing `out_path` is refused unless `overwrite`.
    Transient failures restart the download as `retry` allows (no Range on the host). Example::

        export_vdi(host, vdi_uuid, "disk.raw", progress=TqdmProgress())
    """
    if format not in ("raw", "vhd", "tar"):
        raise UsageError(f"unknown VDI format {format!r} (raw, vhd or tar)")
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise LocalIOError("already exists (use --force to replace it)", path=str(out))
    vdi = find_vdi(session, vdi_uuid)
    expected = vdi.virtual_size if format == "raw" else None
    bar = progress(vdi.name_label or f"VDI {vdi.uuid}", expected) if progress else NullBar()
    position = _Position(bar)

    def attempt() -> Path:
        with (
            managed_task(session, f"xvatool vdi-export {vdi.uuid}") as task,
            task_reason(session, task),
            AtomicFile(out, overwrite=overwrite) as output,
        ):
            params = {"vdi": vdi.uuid, "format": format}
            with open_download(session, "/export_raw_vdi", params, task=task, timeout_s=timeout_s) as body:
                offset = _write_sparse(body, output, out, position)
            if expected is not None and offset != expected:
                raise TransferError(
                    f"GET /export_raw_vdi: body ended after {offset} of {expected} bytes", host=session.host
                )
            wait_task(session, task)
            return output.commit()

    try:
        return retry.run(attempt, what=f"export of VDI {vdi.uuid}")
    finally:
        bar.close()


def _write_sparse(body: Any, output: AtomicFile, path: Path, position: _Position) -> int:
    """Copy `body` into `output` in 1 MiB blocks, leaving holes for zero blocks; the bytes copied."""
    buf = memoryview(bytearray(CHUNK_SIZE))
    fd = output.fileno()
    offset = 0
    try:
        while n := _fill(body, buf):
            if not is_zero(buf[:n]) and os.pwrite(fd, buf[:n], offset) != n:
                raise LocalIOError(f"short write at offset {offset}", path=str(path))
            offset += n
            position.to(offset)
        os.ftruncate(fd, offset)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc
    return offset


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


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def _new_vdi(session: Session, sr: str, size: int, name: str) -> VdiInfo:
    """A blank VDI of `size` bytes in SR `sr` (uuid or name), named after the image."""
    sr_ref, _ = find_sr(session, sr)
    ref, uuid = create_vdi(
        session, sr_ref, name_label=name, virtual_size=size, description="imported by xvatool"
    )
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

    def frames(self, index: int, position: _Position) -> Iterator[tuple[int, memoryview]]:
        for offset, data, zero in self._blocks(index):
            if self.send_zeros or not zero:
                yield offset, data
            position.to(min(self.size, offset + len(data)))


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
    size: int | None = None,
    resume: bool = False,
    retry: RetryPolicy = DEFAULT_RETRY,
    state_dir: StatePath = None,
    progress: Progress | None = None,
    segment_size: int = IMPORT_SEGMENT_SIZE,
    timeout_s: float | None = None,
) -> str:
    """Upload a disk image into an existing VDI (`vdi_uuid`) or a new one in `sr`; returns its uuid.

    `sr` is an SR uuid or unique name; the new VDI is named after the file. Raw images go in
    chunked segments with a journal in the state folder (`journal.import_journal_path`) so that
    `resume` continues an interrupted import; `size` sends only the first `size` bytes. VHD
    images and ``vdi/`` tar streams go in one PUT (into an existing VDI only the blocks they
    hold are written: a delta); for those `size` is the virtual size of a new VDI. The format is
    the caller's word: `xvatool.ops.disk_import.import_image` recognises it by content and
    checks that the image fits. Example::

        new_uuid = import_vdi(host, "disk.raw", sr="Local storage")
    """
    if (vdi_uuid is None) == (sr is None):
        raise UsageError("give exactly one of a target VDI (--vdi) or an SR (--sr)")
    if format not in ("raw", "vhd", "tar"):
        raise UsageError(f"unknown import format {format!r} (raw, vhd or tar)")
    if segment_size <= 0 or segment_size % CHUNK_SIZE:
        raise UsageError(f"segment size must be a positive multiple of {CHUNK_SIZE} bytes")
    source = Path(path)
    try:
        st = source.stat()
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(source)) from exc
    if st.st_size == 0:
        raise UsageError(f"{source}: empty file")
    if format != "raw" and resume:
        raise UsageError(f"--resume works with raw images only (a {format} image is sent in one request)")
    bar = progress(source.name, st.st_size) if progress else NullBar()
    sender = _Sender(session, retry, _Position(bar), timeout_s)
    try:
        if format == "raw":
            length = min(st.st_size, size) if size is not None else st.st_size
            return _import_raw(sender, source, st, length, vdi_uuid, sr, resume=resume,
                               segment_size=segment_size, state_dir=state_dir)  # fmt: skip
        virtual_size = size if size is not None else vhd_virtual_size(source)
        return _import_whole(sender, source, st.st_size, format, virtual_size, vdi_uuid, sr)
    finally:
        bar.close()


class _Position:
    """A bar moved to absolute positions; a retry that starts a piece again does not move it back."""

    def __init__(self, bar: ProgressBar) -> None:
        self.bar = bar
        self.shown = 0

    def to(self, position: int) -> None:
        if position > self.shown:
            self.bar.update(position - self.shown)
            self.shown = position


@dataclass(frozen=True)
class _Sender:
    """What every upload of one import shares: the session, the retry policy, the bar, the timeout."""

    session: Session
    retry: RetryPolicy
    position: _Position
    timeout_s: float | None

    def send(self, vdi: VdiInfo, params: dict[str, str], body: BodyFactory, length: int, what: str) -> None:
        """One `PUT /import_raw_vdi` with its own task, retried as a whole under the policy."""

        def attempt() -> None:
            with managed_task(self.session, f"xvatool vdi-import {vdi.uuid}") as task:
                with task_reason(self.session, task):
                    upload(self.session, "/import_raw_vdi", {"vdi": vdi.uuid, **params}, body,
                           length=length, task=task, timeout_s=self.timeout_s)  # fmt: skip
                _wait_segment(self.session, task)

        self.retry.run(attempt, what=what)


def _import_whole(
    sender: _Sender,
    source: Path,
    length: int,
    fmt: str,
    virtual_size: int,
    vdi_uuid: str | None,
    sr: str | None,
) -> str:
    """A VHD or a ``vdi/`` tar in one PUT with its length, into the VDI or a new one of `virtual_size`."""
    if vdi_uuid is not None:
        vdi = find_vdi(sender.session, vdi_uuid)
        if vdi.virtual_size < virtual_size:
            needs = human_size(virtual_size)
            raise UsageError(f"VDI {vdi.uuid} has {human_size(vdi.virtual_size)}, the image needs {needs}")
    else:
        assert sr is not None
        vdi = _new_vdi(sender.session, sr, _round_up(virtual_size, SECTOR_SIZE), source.name)

    def body() -> Iterator[bytes]:
        done = 0
        try:
            with source.open("rb") as fh:
                while piece := fh.read(CHUNK_SIZE):
                    done += len(piece)
                    sender.position.to(done)
                    yield piece
        except OSError as exc:
            raise LocalIOError(exc.strerror or str(exc), path=str(source)) from exc

    sender.send(vdi, {"format": fmt}, body, length, f"import of {source} into VDI {vdi.uuid}")
    return vdi.uuid


def _wait_segment(session: Session, task: str) -> None:
    try:
        wait_task(session, task)
    except XapiError as exc:
        # vhd-tool fails with VDI_IO_ERROR when the body was cut short (host-protocol.md §4.11): sending the
        # same bytes again is safe, so this (like every transient code) is a failure of the transfer
        if is_transient(exc):
            raise TransferError(f"the host could not write the data: {exc}", host=session.host) from exc
        raise


def _import_raw(
    sender: _Sender,
    source: Path,
    st: os.stat_result,
    size: int,
    vdi_uuid: str | None,
    sr: str | None,
    *,
    resume: bool,
    segment_size: int,
    state_dir: StatePath,
) -> str:
    session = sender.session
    journal_path = import_journal_path(source, session.url, state=state_dir)
    target = f"vdi:{vdi_uuid}" if vdi_uuid is not None else f"sr:{sr}"
    key = _journal_key(session, st, target, segment_size)
    if size != st.st_size:
        key["length"] = str(size)
    if journal_path.exists() and not resume:
        raise UsageError(
            f"{source}: an interrupted import into this host left a journal ({journal_path}); continue it "
            "with --resume, or remove the journal to start over"
        )
    if resume and not journal_path.exists():
        log.warning("%s: nothing to resume (no journal for this host); starting from the beginning", source)
    if resume and journal_path.exists():
        journal = Journal.open_for_resume(journal_path, kind="import", key=key)
        vdi = _resume_target(session, journal, size)
        log.info("resuming import into VDI %s from %s", vdi.uuid, journal_path)
    else:
        if vdi_uuid is not None:
            vdi = find_vdi(session, vdi_uuid)
            if vdi.virtual_size < _round_up(size, SECTOR_SIZE):
                raise UsageError(
                    f"VDI {vdi.uuid} has {human_size(vdi.virtual_size)}, {source} has {human_size(size)}"
                )
        else:
            assert sr is not None
            vdi = _new_vdi(session, sr, _round_up(size, SECTOR_SIZE), source.name)
        journal = Journal.create(journal_path, kind="import", key=key)
        journal.set_disk(_SEGMENT_KEY, size=vdi.virtual_size, target_vdi=vdi.uuid)
    record = journal.disk(_SEGMENT_KEY)
    done_before = dict(record.segments) if record is not None else {}
    # a VDI we created is blank; an existing one may hold old data where the file has zeros
    image = _RawFile(source, size, segment_size, send_zeros=vdi_uuid is not None)
    try:
        for index in image.segments():
            _send_segment(sender, image, index, vdi, journal, done_before.get(index))
            sender.position.to(min(image.size, (index + 1) * image.segment_size))
    except KeyboardInterrupt as exc:
        raise Interrupted(
            f"interrupted; kept VDI {vdi.uuid} and the journal {journal_path} for --resume"
        ) from exc
    except XvatoolError as exc:
        exc.message += f"; kept VDI {vdi.uuid} and the journal {journal_path} for --resume"
        raise
    finally:
        image.close()
    journal.remove()
    return vdi.uuid


def _send_segment(
    sender: _Sender, image: _RawFile, index: int, vdi: VdiInfo, journal: Journal, done_digest: str | None
) -> None:
    """Send one segment unless the journal proves it was sent with this content; then journal it."""
    extents, digest = image.plan(index)
    if done_digest == digest:
        return
    if done_digest is not None:
        log.warning("segment %d of %s changed since it was sent; sending it again", index, image.path)
    length = chunked_length(n for _, n in extents)
    sender.send(
        vdi,
        _RAW_PARAMS,
        lambda: chunked_frames(image.frames(index, sender.position)),
        length,
        f"segment {index} of {image.path}",
    )
    journal.mark_segment(_SEGMENT_KEY, index, digest)

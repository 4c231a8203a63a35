"""`GET /export_raw_vdi` and `PUT /import_raw_vdi` (docs/host-protocol.md §4.10–§4.12).

Formats: `raw` (the whole disk, zeros included), `vhd` (a dynamic VHD, see `vhd_streams.py`) and `tar`
(the XVA chunk encoding under the fixed prefix `vdi`, docs/xva-format.md §6). Uploads also accept the
`chunked` framing: frames of u64 LE offset, u32 LE length and payload, ended by 12 zero bytes;
only the frames sent are written. Quirks: `task-id:X` without a space; no Content-Length on
downloads; 404 for an unknown format, `chunked` with a non-raw format, or `Transfer-Encoding`;
400 `VDI_MISSING` without `vdi` or SR; a short or broken upload fails the task `VDI_IO_ERROR`.
An upload with `sr_id` creates its VDI first (raw with a Content-Length only) and, unlike a host,
destroys it again when the upload fails, so a failed upload leaves no VDI and no disk file.

Every write marks the 64 KiB blocks it touches in the VDI's change log when CBT is on (`cbt.py`).
`format=vhd&base=REF` sends a differencing VHD against the base VDI (`vhd_streams.py`). A VDI
whose data was destroyed (`cbt_metadata`) cannot be attached, so it can be neither read, written
nor used as a base: the task fails as the host's does when its dom0 attach is refused.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable, Iterator

from xvatool.errors import FormatError
from xvatool.sim import vhd_streams
from xvatool.sim.cbt import TrackedWrites
from xvatool.sim.handlers import BodyReader, BodyWriter, DataRequest, HttpReject, TaskProgress
from xvatool.sim.tasks import ref_fragment
from xvatool.sim.values import ApiFailure
from xvatool.xva.checksum import hexdigest, split_checksum_name
from xvatool.xva.disk import CHUNK_SIZE, RawFileSource, is_zero
from xvatool.xva.tarstream import END_OF_ARCHIVE, TarReader
from xvatool.xva.writer import chunk_members

__all__ = ["export_raw_vdi", "import_raw_vdi"]

FORMATS = ("raw", "vhd", "tar")
_CONTENT_TYPES = {"raw": "application/octet-stream", "vhd": "application/vhd", "tar": "application/x-tar"}
_FRAME = struct.Struct("<QI")
MAX_FRAME_PIECE = 2 << 20
"""The chunked server reads a frame's payload in pieces of at most 2 MiB (vhd-tool `chunked.ml`)."""
TAR_PREFIX = "vdi"
IO_ERROR = ApiFailure("VDI_IO_ERROR", ["Device I/O errors"])
Write = Callable[[int, memoryview], None]


def _resolve_vdi(request: DataRequest, value: str) -> str:
    state = request.host.state
    if state.exists("VDI", value):
        return value
    found = state.find("VDI", uuid=value)
    if not found:
        raise ApiFailure("HANDLE_INVALID", ["VDI", value])
    return found[0]


def _attachable(request: DataRequest, vdi: str) -> None:
    """The host attaches the VDI to dom0 first; a `cbt_metadata` VDI has no data to attach."""
    if request.host.state.field("VDI", vdi, "type") == "cbt_metadata":
        reason = f"VDI_INCOMPATIBLE_TYPE: [ {vdi}; cbt_metadata ]"
        raise ApiFailure("INTERNAL_ERROR", [f"Caught exception: {reason}"])


def _format(request: DataRequest) -> str:
    fmt = (request.param("format") or "raw").lower()
    if fmt not in FORMATS:
        raise HttpReject(404, ApiFailure("INTERNAL_ERROR", [f"Unknown format {fmt}"]))
    return fmt


# -- export --------------------------------------------------------------------------------------


def _raw_pieces(path: os.PathLike[str], size: int) -> Iterator[bytes | memoryview]:
    """The whole disk: data blocks from the file, zero blocks for its holes."""
    position = 0
    zero = memoryview(bytes(CHUNK_SIZE))
    for offset, block in RawFileSource(path, size=size).blocks():
        while position < offset:
            n = min(CHUNK_SIZE, offset - position)
            yield zero[:n]
            position += n
        yield block
        position = offset + len(block)
    while position < size:
        n = min(CHUNK_SIZE, size - position)
        yield zero[:n]
        position += n


def _tar_pieces(path: os.PathLike[str], size: int) -> Iterator[bytes | memoryview]:
    """`vdi/NNNNNNNN` chunks with `.xxhash` members; zero chunks skipped but first and last
    (xva-format.md §5.2).
    """
    last = (size - 1) // CHUNK_SIZE if size else -1
    source = RawFileSource(path, size=size)
    emitted: set[int] = set()
    zero = memoryview(bytes(CHUNK_SIZE))
    for offset, block in source.blocks():
        index = offset // CHUNK_SIZE
        if 0 not in emitted and index > 0:
            yield from chunk_members(f"{TAR_PREFIX}/{0:08d}", zero[: min(CHUNK_SIZE, size)], "xxhash")
            emitted.add(0)
        if index in (0, last) or not is_zero(block):
            yield from chunk_members(f"{TAR_PREFIX}/{index:08d}", block, "xxhash")
            emitted.add(index)
    for index in (0, last):
        if index >= 0 and index not in emitted:
            length = min(CHUNK_SIZE, size - index * CHUNK_SIZE)
            yield from chunk_members(f"{TAR_PREFIX}/{index:08d}", zero[:length], "xxhash")
            emitted.add(index)
    yield END_OF_ARCHIVE


def export_raw_vdi(request: DataRequest) -> None:
    """`GET /export_raw_vdi?vdi=…[&format=raw|vhd|tar]`."""
    host = request.host
    vdi_param = request.param("vdi")
    if vdi_param is None:
        raise HttpReject(500, detail="Missing vdi query parameter")
    if not request.start("VDI.export_raw"):
        return
    request.abort_failure = IO_ERROR
    fmt = _format(request)
    vdi = _resolve_vdi(request, vdi_param)
    _attachable(request, vdi)
    base_param = request.param("base")
    base = _resolve_vdi(request, base_param) if base_param is not None else None
    if base is not None:
        _attachable(request, base)
        if fmt != "vhd":
            raise ApiFailure("INTERNAL_ERROR", ["Cannot compute differences on non-VHD images"])
    record = host.state.get("VDI", vdi)
    size = int(record["virtual_size"])
    path = host.state.disk_path(vdi)
    if fmt == "vhd" and size > vhd_streams.MAX_VHD_SIZE:
        raise ApiFailure("VDI_TOO_LARGE", [vdi, vhd_streams.MAX_VHD_SIZE])
    request.send_head(
        200,
        [
            ("Connection", "close"),
            request.task_header(spaced=False),
            ("content-type", _CONTENT_TYPES[fmt]),
            ("content-disposition", f'attachment; filename="{record["uuid"]}.{fmt}"'),
        ],
    )
    host.tasks.set_progress(request.task, 0.0)
    pieces: Iterator[bytes | memoryview]
    if base is not None:
        base_record = host.state.get("VDI", base)
        pieces = vhd_streams.delta_pieces(
            path,
            size,
            host.state.disk_path(base),
            int(base_record["virtual_size"]),
            base_uuid=base_record["uuid"],
            base_name=f"{base_record['location']}.vhd",
        )
    else:
        pieces = {"raw": _raw_pieces, "tar": _tar_pieces, "vhd": vhd_streams.vhd_pieces}[fmt](path, size)
    corrupter = request.corrupter() if fmt == "tar" else None
    corrupt = request.faults.get("corrupt-chunk")
    flip_at = corrupt.bytes * CHUNK_SIZE if corrupt and fmt == "raw" else -1
    progress = TaskProgress(request, size)
    body = BodyWriter(request)
    sent = 0
    piece: bytes | bytearray | memoryview
    with host.ops.vdi_operation(vdi, request.task, "export"):
        for piece in pieces:
            if corrupter is not None:
                piece = corrupter.feed(piece)
            elif sent <= flip_at < sent + len(piece) and request.fire("corrupt-chunk"):
                flipped = bytearray(piece)
                flipped[flip_at - sent] ^= 0xFF
                piece = flipped
            body.write(piece)
            sent += len(piece)
            progress.add(len(piece))
    host.tasks.complete(request.task, "")


# -- import --------------------------------------------------------------------------------------


def _target(request: DataRequest, fmt: str, length: int | None) -> tuple[str, bool]:
    """The VDI to write and whether it was created for this upload (`sr_id`, raw, sized)."""
    host = request.host
    vdi_param = request.param("vdi")
    if vdi_param is not None:
        return _resolve_vdi(request, vdi_param), False
    sr = request.param("sr_id")
    sr_uuid = request.param("sr_uuid")
    if sr is None and sr_uuid is not None:
        found = host.state.find("SR", uuid=sr_uuid)
        sr = found[0] if found else None
    if sr is None:
        raise HttpReject(400, ApiFailure("VDI_MISSING"))
    if fmt != "raw" or length is None or "chunked" in request.query or "chunked" in request.cookies:
        raise HttpReject(
            400, ApiFailure("VDI_MISSING"), detail="Importing directly into an SR needs raw + length"
        )
    return host.ops.create_vdi(sr, length, name_label="Imported VDI"), True


def import_raw_vdi(request: DataRequest) -> None:
    """`PUT /import_raw_vdi?vdi=…|sr_id=…[&format=raw|vhd|tar][&chunked=true]`."""
    host = request.host
    if "Transfer-Encoding" in request.headers:
        request.take_task("VDI.import_raw")
        encoding = request.headers["Transfer-Encoding"]
        raise HttpReject(404, ApiFailure("INTERNAL_ERROR", [f"Cannot handle encoding: {encoding}"]))
    if not request.start("VDI.import_raw"):
        return
    request.abort_failure = IO_ERROR
    fmt = _format(request)
    chunked = "chunked" in request.query or "chunked" in request.cookies
    if chunked and fmt != "raw":
        raise HttpReject(404, ApiFailure("INTERNAL_ERROR", ["Cannot handle chunked VHD"]))
    length = request.content_length
    vdi, created = _target(request, fmt, length)
    _attachable(request, vdi)
    try:
        _receive(request, vdi, fmt, chunked, length)
    except BaseException:
        if created:  # an upload into a VDI made for it leaves nothing behind when it fails
            with contextlib.suppress(ApiFailure):
                host.ops.destroy_vdi(vdi)
        raise
    host.tasks.complete(request.task, ref_fragment(vdi))


def _receive(request: DataRequest, vdi: str, fmt: str, chunked: bool, length: int | None) -> None:
    host = request.host
    size = int(host.state.field("VDI", vdi, "virtual_size"))
    request.send_upload_head()
    host.tasks.set_progress(request.task, 0.0)
    # The host ignores Content-Length on chunked uploads and reads to the terminator; bounding the
    # body by it (when given) only turns a hang on a missing terminator into a prompt VDI_IO_ERROR.
    body = BodyReader(request, length)
    uuid = str(host.state.field("VDI", vdi, "uuid"))
    with (
        host.ops.vdi_operation(vdi, request.task, "import"),
        host.ops.cbt.tracking(uuid),
        TrackedWrites(host.ops.cbt, uuid, host.state.disk_path(vdi)) as write,
    ):
        try:
            if chunked:
                _receive_chunked(body, write, size)
            elif fmt == "raw":
                _receive_raw(request, body, write, size, length)
            elif fmt == "tar":
                _receive_tar(body, write, size)
            else:
                vhd_streams.receive_vhd(body, write, size)
            write.sync()
        except FormatError as exc:
            raise ApiFailure("VDI_IO_ERROR", [str(exc)]) from None


def _receive_raw(request: DataRequest, body: BodyReader, write: Write, size: int, length: int | None) -> None:
    """Sequential bytes from offset 0, written as they arrive, up to the VDI's size.

    Exactly Content-Length (or the VDI size) must arrive and fit: a short body, or a longer one
    than the disk, ends in `VDI_IO_ERROR` after what fits has been written, as vhd-tool's copy
    does. (XO announces 1 PiB for streams of unknown length and relies on exactly that.)
    """
    expected = length if length is not None else size
    progress = TaskProgress(request, min(expected, size))
    buf = bytearray(CHUNK_SIZE)
    position = 0
    while position < min(expected, size):
        want = min(CHUNK_SIZE, min(expected, size) - position)
        got = _fill(body, memoryview(buf)[:want])
        write(position, memoryview(buf)[:got])
        if got < want:
            raise IO_ERROR
        position += want
        progress.add(want)
    if expected > size:
        raise IO_ERROR


def _fill(body: BodyReader, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = body.readinto(view[got:])
        if n == 0:
            break
        got += n
    return got


def _receive_chunked(body: BodyReader, write: Write, size: int) -> None:
    """Frames until the (0, 0) terminator; regions not covered are left untouched
    (host-protocol.md §4.12).
    """
    buf = bytearray(MAX_FRAME_PIECE)
    while True:
        head = body.read_exact(_FRAME.size)
        if len(head) < _FRAME.size:
            raise IO_ERROR
        offset, length = _FRAME.unpack(head)
        if offset == 0 and length == 0:
            return
        if offset + length > size:
            raise IO_ERROR
        while length:
            n = min(length, MAX_FRAME_PIECE)
            got = _fill(body, memoryview(buf)[:n])
            write(offset, memoryview(buf)[:got])
            if got < n:
                raise IO_ERROR
            offset += n
            length -= n


def _receive_tar(body: BodyReader, write: Write, size: int) -> None:
    """The `vdi/` chunk stream, placed by the host's rule (xva-format.md §5.4) and verified."""
    tar = TarReader(body)
    offset, last, first_len = 0, "-1", -1
    buf = bytearray(CHUNK_SIZE)
    while offset < size:
        member = tar.next_member()
        if member is None:
            raise IO_ERROR
        name = member.name
        if not name.startswith(TAR_PREFIX + "/") or member.size > CHUNK_SIZE:
            raise ApiFailure("INTERNAL_ERROR", [f"Expected VDI chunk prefixed {TAR_PREFIX}; got {name}"])
        suffix = name[len(TAR_PREFIX) + 1 :]
        if not suffix.isdigit() or suffix <= last:
            raise ApiFailure("INTERNAL_ERROR", ["Invalid XVA file"])
        if first_len < 0:
            first_len = member.size
        gap = (int(suffix) - int(last) - 1) * first_len
        data = memoryview(buf)[: member.size]
        tar.readinto(data)
        checksum = tar.next_member()
        split = split_checksum_name(checksum.name) if checksum is not None else None
        if checksum is None or split is None or split[0] != name:
            found = checksum.name if checksum is not None else "end of stream"
            raise ApiFailure("INTERNAL_ERROR", [f"Found unsupported checksum file: {found}"])
        expected = tar.read_member(64).decode("ascii", "replace")
        actual = hexdigest(split[1], data)
        if expected != actual:
            message = f"Block {name} checksum failed: original = {expected}; recomputed = {actual}"
            raise ApiFailure("INTERNAL_ERROR", [message])
        if offset + gap + member.size > size:
            raise IO_ERROR
        write(offset + gap, data)
        offset += gap + member.size
        last = suffix

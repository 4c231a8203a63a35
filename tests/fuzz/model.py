"""An independent model of the host's importer: the disks it would write for an archive, or a refusal.

The fuzzer's oracle for mutants that `extract` accepts but whose disks differ from the seed's: such
a mutant must be a legal archive, and its disks must be exactly what the host would write. This
model shares no code with `xvatool.xva`: it decompresses with the standard library, walks the tar
block by block with `tarfile.TarInfo.frombuf`, reads ova.xml with `xml.etree`, and applies
docs/xva-format.md §5.4 in the most direct way. Where the host is lenient and we are not (a first chunk
that is not counter 0), the model is lenient too: it is only asked about archives we accepted.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from typing import Any

import xxhash
import zstandard

__all__ = ["MODEL_OUTPUT_LIMIT", "Refused", "host_disks"]

MODEL_OUTPUT_LIMIT = 256 << 20
"""Bytes of decompressed archive the model handles; more is refused (the fuzzer's inputs are small)."""
_BLOCK = 512
_ZERO = bytes(_BLOCK)


class Refused(Exception):
    """The host would refuse this archive (or the model cannot tell what it would write)."""


def _decompress(data: bytes) -> bytes:
    """Sniff, then decompress the whole stream, trailers checked (gzip CRC/ISIZE, zstd).

    As xva-format.md §2.3 says xvatool reads compressed archives.
    """
    try:
        if data[:4] == b"\x28\xb5\x2f\xfd":
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
            out = reader.read(MODEL_OUTPUT_LIMIT + 1)
            if reader.read(1) or len(out) > MODEL_OUTPUT_LIMIT:
                raise Refused("too large for the model")
            if not _zstd_complete(data):
                raise Refused("zstd stream cut inside a frame")
            return out
        if data[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
                out = stream.read(MODEL_OUTPUT_LIMIT + 1)
            if len(out) > MODEL_OUTPUT_LIMIT:
                raise Refused("too large for the model")
            return out
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        raise Refused(f"decompression: {exc}") from exc
    return data


def _zstd_complete(data: bytes) -> bool:
    """True if the zstd stream is whole frames (python-zstandard ends quietly inside one)."""
    pos = 0
    while pos < len(data):
        try:
            pos += _frame_length(memoryview(data)[pos:])
        except (ValueError, IndexError):
            return False
    return True


def _frame_length(data: memoryview) -> int:
    """Length of the first zstd frame (RFC 8878 §3.1), or ValueError if it is cut or not one."""
    magic = int.from_bytes(data[:4], "little")
    if 0x184D2A50 <= magic <= 0x184D2A5F:
        if len(data) < 8 + int.from_bytes(data[4:8], "little"):
            raise ValueError("cut")
        return 8 + int.from_bytes(data[4:8], "little")
    if magic != 0xFD2FB528:
        raise ValueError("not a frame")
    descriptor = data[4]
    fcs_flag, single, checksum, dict_flag = (
        descriptor >> 6,
        (descriptor >> 5) & 1,
        (descriptor >> 2) & 1,
        descriptor & 3,
    )
    pos = 5 + (1 - single) + (0, 1, 2, 4)[dict_flag] + (single, 2, 4, 8)[fcs_flag]
    while True:
        if pos + 3 > len(data):
            raise ValueError("cut")
        header = int.from_bytes(data[pos : pos + 3], "little")  # Last_Block, Block_Type, Block_Size
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        pos += 3 + (1 if kind == 1 else size)
        if last:
            break
    pos += 4 * checksum
    if pos > len(data):
        raise ValueError("cut")
    return pos


def _members(tar: bytes) -> Iterator[tuple[str, str, bytes]]:
    """(name, kind, data) of each member, with ocaml-tar's rules: one stray zero block is skipped,
    two end the archive; GNU long names and pax paths apply to the next member."""
    pos, long_name, pax_path = 0, None, None
    while pos + _BLOCK <= len(tar):
        block = tar[pos : pos + _BLOCK]
        if block == _ZERO:
            if tar[pos + _BLOCK : pos + 2 * _BLOCK] in (_ZERO, b""):
                return
            pos += _BLOCK
            continue
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise Refused(f"tar header: {exc}") from exc
        start = pos + _BLOCK
        end = start + info.size
        if end > len(tar):
            raise Refused("truncated member")
        data = tar[start:end]
        pos = start + -(-info.size // _BLOCK) * _BLOCK
        if info.type == tarfile.GNUTYPE_LONGNAME:
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if info.type in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
            for record in data.decode("utf-8", "surrogateescape").split("\n"):
                key, _, value = record.partition(" ")[2].partition("=")
                if key == "path":
                    pax_path = value
            continue
        if info.type in (tarfile.XGLTYPE, tarfile.GNUTYPE_LONGLINK):
            continue
        name = pax_path or long_name or info.name
        long_name = pax_path = None
        kind = "file" if info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE) else "other"
        yield name, kind, data


# -- ova.xml (xva-format.md §4.1, §4.2, §4.7) ----------------------------------------------------


def _value(el: ElementTree.Element) -> Any:
    children = list(el)
    if el.tag != "value" or len(children) > 1:
        raise Refused("not an XML-RPC value")
    if not children:
        return el.text or ""
    typed = children[0]
    if typed.tag == "struct":
        out = {}
        for member in typed:
            name, value = list(member)
            out[name.text or ""] = _value(value)
        return out
    if typed.tag == "array":
        [data] = list(typed)
        return [_value(item) for item in data]
    if typed.tag == "boolean":
        return (typed.text or "") == "1"
    return typed.text or ""


def _lookup(record: dict[str, Any], key: str) -> Any:
    found = [value for name, value in record.items() if name.lower() == key]
    if not found:
        raise Refused(f"no {key}")
    return found[-1]


def _data_disks(ova: bytes) -> list[tuple[str, str, int]]:
    """(id, vdi uuid, virtual_size) of the VDIs the importer streams into, in id byte order."""
    try:
        top = _value(ElementTree.fromstring(ova))
        objects = {}
        for obj in _lookup(top, "objects"):
            objects.setdefault(_lookup(obj, "id"), (_lookup(obj, "class"), _lookup(obj, "snapshot")))
    except (ElementTree.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise Refused(f"ova.xml: {exc}") from exc

    def typed(ref: Any, cls: str) -> dict[str, Any] | None:
        found = objects.get(ref) if isinstance(ref, str) else None
        return found[1] if found is not None and found[0] == cls else None

    chosen: dict[str, dict[str, Any]] = {}
    for cls, snap in objects.values():
        if cls == "VBD" and str(snap.get("type", "")).lower() != "cd":
            vdi = typed(snap.get("VDI"), "VDI")
            sr = typed(vdi.get("SR"), "SR") if vdi is not None else None
            if vdi is not None and not (sr is not None and sr.get("content_type") == "iso"):
                chosen[snap["VDI"]] = vdi
    for obj_id, (cls, snap) in objects.items():
        if cls == "VDI" and str(snap.get("type", "")).lower() == "suspend":
            chosen[obj_id] = snap
    try:
        return sorted(
            ((obj_id, str(vdi["uuid"]), int(vdi["virtual_size"])) for obj_id, vdi in chosen.items()),
            key=lambda disk: disk[0].encode("utf-8", "surrogatepass"),
        )
    except (KeyError, ValueError) as exc:
        raise Refused(f"VDI record: {exc}") from exc


# -- disks (xva-format.md §5.3, §5.4) ---------------------------------------------------------------


def _digest(suffix: str, data: bytes) -> str:
    if suffix == ".checksum":
        return hashlib.sha1(data).hexdigest()
    if suffix == ".xxhash":
        return xxhash.xxh64_hexdigest(data).upper()
    raise Refused(f"unsupported checksum file {suffix!r}")


def host_disks(archive: bytes) -> dict[str, bytes]:
    """VDI uuid → the bytes the host's importer writes, or `Refused`."""
    members = _members(_decompress(archive))
    first = next(members, None)
    if first is None or first[:2] != ("ova.xml", "file"):
        raise Refused("ova.xml is not first")
    out: dict[str, bytes] = {}
    first_len: int | None = None  # one variable for the whole import
    for disk_id, uuid, size in _data_disks(first[2]):
        if not 0 <= size <= MODEL_OUTPUT_LIMIT:
            raise Refused("disk too large for the model")
        disk = bytearray(size)
        offset, last = 0, "-1"
        while offset < size:
            name, kind, data = next(members, (None, None, b""))
            if name is None or kind != "file" or not name.startswith(disk_id + "/"):
                raise Refused(f"expected a chunk of {disk_id}, found {name!r}")
            counter = name[len(disk_id) + 1 :]
            if len(counter) != 8 or not counter.isascii() or not counter.isdigit() or counter <= last:
                raise Refused(f"bad counter {counter!r}")
            if len(data) % _BLOCK:
                raise Refused("chunk not a multiple of 512 bytes")
            if first_len is None:
                first_len = len(data)
            start = offset + (int(counter) - int(last) - 1) * first_len
            if start + len(data) > size:
                raise Refused("chunk past virtual_size")
            disk[start : start + len(data)] = data
            check_name, check_kind, check = next(members, (None, None, b""))
            if check_name is None or check_kind != "file" or not check_name.startswith(name + "."):
                raise Refused(f"no checksum member after {name}")
            if check.decode("latin-1") != _digest(check_name[len(name) :], data):
                raise Refused(f"checksum of {name}")
            offset, last = start + len(data), counter
        out[uuid] = bytes(disk)
    return out

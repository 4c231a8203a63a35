"""Building a standard XVA from the host's ova.xml and verified per-disk `vdi/` tar spools.

A parallel export fetches each disk as its own `vdi/` tar stream (docs/xva-format.md §6) and the
metadata as a metadata-only tar (docs/host-protocol.md §4.7). Both use the host's chunk encoding,
so assembly is a rename: ova.xml first, then every disk's members `vdi/N` → `<id>/N` (checksum
members too), in the order the importer reads disks (byte-wise id order, xva-format.md §4.7),
then the end marker (xva-format.md §3.4). The output is byte for byte what the host's own
`/export` writes for the same chunks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from xvatool._streams import LocalStream, open_local
from xvatool._types import Compression, Readable, Writable
from xvatool.errors import FormatError, location_context
from xvatool.xva.disk import CHUNK_SIZE
from xvatool.xva.ovaxml import MAX_OVA_XML_SIZE
from xvatool.xva.tarstream import END_OF_ARCHIVE, TarReader, padding, v7_header
from xvatool.xva.writer import Piece, WriteStats, write_pieces

__all__ = ["VDI_TAR_PREFIX", "assemble_xva", "ova_xml_members", "ova_xml_tar", "read_ova_xml_tar"]

VDI_TAR_PREFIX = "vdi/"
"""Member names of a `/export_raw_vdi?format=tar` stream: `vdi/%08d` (xva-format.md §6)."""
OVA_XML_NAME = "ova.xml"
SPOOL_BUFFER_SIZE = CHUNK_SIZE


def read_ova_xml_tar(stream: Readable, *, source: str) -> bytes:
    """The ova.xml bytes of a metadata-only tar (`/export_metadata`, host-protocol.md §4.7)."""
    reader = TarReader(stream)
    with location_context(file=source):
        member = reader.next_member()
        if member is None or member.name != OVA_XML_NAME:
            raise FormatError("metadata export does not start with ova.xml", code="no-ova-xml")
        return reader.read_member(MAX_OVA_XML_SIZE)


def ova_xml_members(ova_xml: bytes) -> list[Piece]:
    """The ova.xml member in the host's V7 dialect: header, document, padding (xva-format.md §3.2)."""
    return [v7_header(OVA_XML_NAME, len(ova_xml)), ova_xml, padding(len(ova_xml))]


def ova_xml_tar(ova_xml: bytes) -> bytes:
    """A metadata-only tar, as `/import_metadata` takes it (host-protocol.md §4.9)."""
    return b"".join(bytes(piece) for piece in ova_xml_members(ova_xml)) + END_OF_ARCHIVE


def _renamed_members(spool: Path, disk_id: str) -> Iterator[bytes | memoryview]:
    """The members of a verified `vdi/` spool, renamed `<disk_id>/N` in the host's V7 dialect."""
    buf = bytearray(SPOOL_BUFFER_SIZE)
    with open_local(spool, "rb") as fh, location_context(file=str(spool)):
        reader = TarReader(LocalStream(fh, str(spool)))
        for member in reader:
            yield v7_header(disk_id + "/" + member.name[len(VDI_TAR_PREFIX) :], member.size)
            while n := reader.readinto(buf):
                yield memoryview(buf)[:n]
            pad = padding(member.size)
            if pad:
                yield pad


def assemble_xva(
    out: Writable, ova_xml: bytes, spools: Sequence[tuple[str, Path]], *, compression: Compression = "none"
) -> int:
    """Write a standard XVA from the host's ova.xml and verified per-disk `vdi/` spools.

    `spools` pairs each disk id with its spool and must already be in the order the importer
    reads disks (byte-wise id order, xva-format.md §4.7). Returns the bytes written to `out`.
    """

    def pieces() -> Iterator[Piece]:
        yield from ova_xml_members(ova_xml)
        for disk_id, spool in spools:
            yield from _renamed_members(spool, disk_id)
        yield END_OF_ARCHIVE

    return write_pieces(out, pieces(), WriteStats(), compression=compression).output_bytes

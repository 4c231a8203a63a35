"""Our tar writer against a file a real XenServer host wrote, byte for byte (docs/xva-format.md §3.2)."""

from __future__ import annotations

from xvatool.xva.tarstream import END_OF_ARCHIVE, TarReader, padding, v7_header
from xvatool.xva.writer import chunk_members


def test_real_host_export_is_reproduced_byte_for_byte(shared_fixture):
    """XenServer 5.6 (ocaml-tar 1.1: mode 0000) wrote vmexport.bin; rebuild it from its parts."""
    original = shared_fixture("real/vmexport.bin").read_bytes()
    with open(shared_fixture("real/vmexport.bin"), "rb") as f:
        reader = TarReader(f)
        ova = next(reader)
        ova_xml = reader.read()
        pieces = [v7_header("ova.xml", len(ova_xml), mode=0, mtime=ova.mtime), ova_xml, padding(len(ova_xml))]
        for member in reader:
            if member.name.endswith(".checksum"):
                continue
            pieces += chunk_members(member.name, reader.read(), "sha1", mode=0)
    pieces.append(END_OF_ARCHIVE)
    rebuilt = b"".join(bytes(p) for p in pieces)
    assert len(rebuilt) == len(original)
    assert rebuilt == original

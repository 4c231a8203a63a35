from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import threading
from dataclasses import dataclass

import pytest
import xxhash
import zstandard

from xvatool.errors import UsageError
from xvatool.xva.compression import sniff
from xvatool.xva.disk import CHUNK_SIZE, BytesSource
from xvatool.xva.template import DiskSpec, build_vm_metadata
from xvatool.xva.writer import XvaWriter, chunk_members, write_xva

MiB = CHUNK_SIZE


# -- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeDisk:
    id: str
    virtual_size: int


class FakeMetadata:
    """Just what the writer needs from Metadata: `disks` and `to_bytes()`."""

    def __init__(self, *disks: tuple[str, int], xml: bytes = b"<value><struct/></value>") -> None:
        self.disks = [FakeDisk(i, s) for i, s in disks]
        self._xml = xml

    def to_bytes(self) -> bytes:
        return self._xml


class ReusingSource:
    """Yields every block from one buffer that it scribbles over when the next block is asked for,
    like RawFileSource; a writer that keeps a view too long writes garbage."""

    def __init__(self, data: bytes, *, size: int | None = None) -> None:
        self.data = data
        self.size = len(data) if size is None else size

    def blocks(self):
        buf = bytearray(MiB)
        for offset in range(0, len(self.data), MiB):
            n = min(MiB, len(self.data) - offset)
            buf[:n] = self.data[offset : offset + n]
            yield offset, memoryview(buf)[:n]
            buf[:] = b"\xee" * MiB


def build(metadata, sources, **kwargs) -> bytes:
    # Copy each piece before asking for the next one: pieces are valid only until then.
    return b"".join(bytes(piece) for piece in XvaWriter(metadata, sources, **kwargs))


def members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        out = []
        for info in tar.getmembers():
            f = tar.extractfile(info)
            out.append((info, f.read() if f else b""))
        return out


def names(data: bytes) -> list[str]:
    return [info.name for info, _ in members(data)]


def digest(kind: str, data: bytes) -> str:
    if kind == "sha1":
        return hashlib.sha1(data).hexdigest()
    return xxhash.xxh64(data, seed=0).hexdigest().upper()


def rebuild(data: bytes, disk_id: str, size: int) -> bytes:
    """Counter-as-offset reconstruction, enough for archives written without keep-alives."""
    disk = bytearray(size)
    for info, body in members(data):
        if info.name.startswith(disk_id + "/") and info.name[len(disk_id) + 1 :].isdigit():
            offset = int(info.name[len(disk_id) + 1 :]) * MiB
            disk[offset : offset + len(body)] = body
    return bytes(disk)


def pattern(n: int, seed: int = 1) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(256)) * (n // 256) + bytes(n % 256)


# -- header bytes (xva-format.md §3.2 test vectors) -------------------------------------------


def test_chunk_header_matches_the_spec_test_vectors():
    header = chunk_members("Ref:2/00000000", bytes(MiB), "xxhash")[0]
    assert len(header) == 512
    assert header[148:156] == b"0006120\0"
    expected = bytearray(512)
    expected[0:14] = b"Ref:2/00000000"
    expected[100:108] = b"0000400\0"
    expected[108:116] = b"0000000\0"
    expected[116:124] = b"0000000\0"
    expected[124:136] = b"00004000000\0"
    expected[136:148] = b"00000000000\0"
    expected[148:156] = b"0006120\0"
    assert header == bytes(expected)  # typeflag NUL, no ustar magic, no uname/gname


def test_mode_zero_and_checksum_member_vectors():
    assert chunk_members("Ref:2/00000000", bytes(MiB), "xxhash", mode=0)[0][148:156] == b"0006114\0"
    tail = chunk_members("Ref:2/00000000", bytes(MiB), "xxhash")[2]
    assert tail[:100].rstrip(b"\0") == b"Ref:2/00000000.xxhash"
    assert tail[148:156] == b"0007420\0"
    assert tail[512:528] == b"87D2A1B6E1163EF1"
    assert tail[528:1024] == bytes(496)


@pytest.mark.parametrize(
    ("kind", "data", "text"),
    [
        ("xxhash", b"", "EF46DB3751D8E999"),
        ("sha1", b"", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        ("xxhash", bytes(MiB), "87D2A1B6E1163EF1"),
        ("sha1", bytes(MiB), "3b71f43ff30f4b15b5cd85dd9e95ebc7e84eb5a3"),
        ("xxhash", bytes(512 * 1024), "091AB0B4B605C552"),
    ],
)
def test_chunk_members_digest_vectors(kind, data, text):
    blob = b"".join(bytes(p) for p in chunk_members("vdi/00000000", data, kind))
    parsed = members(blob + bytes(1024))
    suffix = ".xxhash" if kind == "xxhash" else ".checksum"
    assert [(i.name, i.size) for i, _ in parsed] == [
        ("vdi/00000000", len(data)),
        ("vdi/00000000" + suffix, len(text)),
    ]
    assert parsed[1][1] == text.encode()


# -- archive structure ------------------------------------------------------------------------


def test_archive_lists_with_tarfile_in_host_order():
    d1 = pattern(MiB) + bytes(2 * MiB) + pattern(MiB, 3) + pattern(1536, 5)
    d2 = bytes(3 * MiB)
    metadata = build_vm_metadata(name="t", disks=[DiskSpec(len(d1), "a"), DiskSpec(len(d2), "b")])
    id1, id2 = (d.id for d in metadata.disks)
    data = build(metadata, {id1: BytesSource(d1), id2: BytesSource(d2)}, checksum="sha1")
    parsed = members(data)
    assert [(i.name, i.size) for i, _ in parsed] == [
        ("ova.xml", len(metadata.to_bytes())),
        (f"{id1}/00000000", MiB),
        (f"{id1}/00000000.checksum", 40),
        (f"{id1}/00000003", MiB),
        (f"{id1}/00000003.checksum", 40),
        (f"{id1}/00000004", 1536),  # partial last chunk: virtual_size mod 1 MiB
        (f"{id1}/00000004.checksum", 40),
        (f"{id2}/00000000", MiB),  # first and last are written even when all zeros
        (f"{id2}/00000000.checksum", 40),
        (f"{id2}/00000002", MiB),
        (f"{id2}/00000002.checksum", 40),
    ]
    for info, _ in parsed:
        assert info.mode == 0o400 and info.uid == info.gid == 0 and info.isreg()
        assert info.mtime == 0
    assert parsed[0][1] == metadata.to_bytes()
    for (info, body), (check, text) in zip(parsed[1::2], parsed[2::2], strict=True):
        assert check.name == info.name + ".checksum"
        assert text.decode() == digest("sha1", body)
    assert rebuild(data, id1, len(d1)) == d1
    assert rebuild(data, id2, len(d2)) == d2


def test_end_of_archive_and_block_alignment():
    metadata = FakeMetadata(("Ref:1", 2 * MiB), xml=b"x" * 1000)
    data = build(metadata, {"Ref:1": BytesSource(pattern(2 * MiB))})
    assert len(data) % 512 == 0
    assert data[-1024:] == bytes(1024)
    assert data[-1536:-1024] != bytes(512)  # exactly two zero blocks, no record padding
    assert all(not name.endswith("/") for name in names(data))  # no directory entries
    assert data[:7] == b"ova.xml"


def test_disks_in_bytewise_id_order_ref10_before_ref9():
    metadata = FakeMetadata(("Ref:9", MiB), ("Ref:10", MiB))
    data = build(metadata, {"Ref:9": BytesSource(pattern(MiB)), "Ref:10": BytesSource(pattern(MiB, 2))})
    assert [n for n in names(data) if "." not in n] == ["Ref:10/00000000", "Ref:9/00000000"]
    assert rebuild(data, "Ref:9", MiB) == pattern(MiB)


def test_zero_chunks_skipped_but_first_and_last_kept():
    size = 6 * MiB
    disk = bytes(2 * MiB) + pattern(MiB) + bytes(3 * MiB)  # the source yields its zero blocks too
    metadata = FakeMetadata(("Ref:1", size))
    writer = XvaWriter(metadata, {"Ref:1": BytesSource(disk)})
    data = b"".join(bytes(p) for p in writer)
    assert [n for n in names(data) if n.startswith("Ref:1/") and "." not in n] == [
        "Ref:1/00000000",
        "Ref:1/00000002",
        "Ref:1/00000005",
    ]
    assert writer.stats.zero_chunks_skipped == 3
    assert writer.stats.chunks == 3
    assert writer.stats.disk_bytes == size
    assert writer.stats.tar_bytes == len(data)
    assert rebuild(data, "Ref:1", size) == disk


def test_short_source_is_zero_padded_and_last_chunk_written():
    size = 4 * MiB + 512
    disk = pattern(MiB + 1024)  # ends inside chunk 1
    metadata = FakeMetadata(("Ref:1", size))
    data = build(metadata, {"Ref:1": ReusingSource(disk)})
    assert [
        (i.name, i.size) for i, _ in members(data) if i.name.startswith("Ref:1/") and "." not in i.name
    ] == [
        ("Ref:1/00000000", MiB),
        ("Ref:1/00000001", MiB),
        ("Ref:1/00000004", 512),
    ]
    assert rebuild(data, "Ref:1", size) == disk + bytes(size - len(disk))


def test_data_is_copied_before_the_source_reuses_its_buffer():
    # Enough chunks to wrap the writer's slot ring several times, with skipped zero chunks mixed in.
    layout = "DZDDZZDDDDZDDDDDZD"
    disk = b"".join(pattern(MiB, seed) if c == "D" else bytes(MiB) for seed, c in enumerate(layout))
    metadata = FakeMetadata(("Ref:1", len(disk)))
    for kind in ("sha1", "xxhash"):
        data = build(metadata, {"Ref:1": ReusingSource(disk)}, checksum=kind)
        parsed = members(data)
        assert len(parsed) == 1 + 2 * layout.count("D")
        assert rebuild(data, "Ref:1", len(disk)) == disk
        for (info, body), (_, text) in zip(parsed[1::2], parsed[2::2], strict=True):
            assert text.decode() == digest(kind, body), info.name


def test_first_disk_under_one_mib_turns_off_skipping():
    # xva-format.md §5.4: the importer sizes every gap by the archive's first data member.
    metadata = FakeMetadata(("Ref:1", 4096), ("Ref:2", 3 * MiB))
    data = build(metadata, {"Ref:1": BytesSource(pattern(4096)), "Ref:2": BytesSource(b"")})
    assert [n for n in names(data) if n.startswith("Ref:2/") and "." not in n] == [
        "Ref:2/00000000",
        "Ref:2/00000001",
        "Ref:2/00000002",
    ]


def test_empty_disk_writes_no_chunks():
    metadata = FakeMetadata(("Ref:1", 0), ("Ref:2", MiB))
    data = build(metadata, {"Ref:1": BytesSource(b""), "Ref:2": BytesSource(b"")})
    assert names(data) == ["ova.xml", "Ref:2/00000000", "Ref:2/00000000.xxhash"]


def test_mode_and_ova_mtime_options():
    metadata = FakeMetadata(("Ref:1", MiB))
    data = build(metadata, {"Ref:1": BytesSource(b"")}, mode=0, ova_mtime=1735689600)
    parsed = members(data)
    assert parsed[0][0].mtime == 1735689600 and parsed[1][0].mtime == 0
    assert {info.mode for info, _ in parsed} == {0}
    assert data[1024 : 1024 + 14] == b"Ref:1/00000000"
    assert data[1024 + 100 : 1024 + 108] == b"0000000\0"


@pytest.mark.parametrize(
    ("disks", "sources", "message"),
    [
        ((("Ref:1", MiB),), {"Ref:1": BytesSource(bytes(MiB + 512))}, "more than its virtual_size"),
        ((("Ref:1", MiB),), {}, "no data source for disk Ref:1"),
        ((("Ref:1", MiB),), {"Ref:1": BytesSource(b""), "Ref:2": BytesSource(b"")}, "Ref:2"),
        ((("Ref:1", 1000),), {"Ref:1": BytesSource(b"")}, "multiple of 512"),
    ],
)
def test_bad_inputs_raise_usage_errors(disks, sources, message):
    with pytest.raises(UsageError, match=message):
        XvaWriter(FakeMetadata(*disks), sources)


def test_bad_checksum_kind_is_rejected():
    with pytest.raises(UsageError, match="checksum"):
        XvaWriter(FakeMetadata(), {}, checksum="md5")  # type: ignore[arg-type]


def test_misaligned_source_block_is_an_error():
    class Bad:
        size = 2 * MiB

        def blocks(self):
            yield 512, memoryview(bytes(512))

    with pytest.raises(UsageError, match="aligned"):
        build(FakeMetadata(("Ref:1", 2 * MiB)), {"Ref:1": Bad()})


def test_writer_iterates_once():
    writer = XvaWriter(FakeMetadata(), {})
    list(writer)
    with pytest.raises(UsageError):
        iter(writer)


def test_closing_early_leaves_no_hash_thread():
    disk = pattern(4 * MiB)
    before = threading.active_count()
    pieces = iter(XvaWriter(FakeMetadata(("Ref:1", len(disk))), {"Ref:1": BytesSource(disk)}))
    for _ in range(4):
        next(pieces)
    pieces.close()  # type: ignore[attr-defined]
    assert threading.active_count() == before


# -- write_xva and compression ----------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_write_xva_compresses_whole_stream(compression):
    disk = pattern(MiB) + bytes(MiB) + pattern(512, 9)
    metadata = FakeMetadata(("Ref:1", len(disk)))
    plain = build(metadata, {"Ref:1": BytesSource(disk)})
    out = io.BytesIO()
    covered = []
    stats = write_xva(
        out,
        metadata,
        {"Ref:1": BytesSource(disk)},
        checksum="xxhash",
        compression=compression,
        progress=covered.append,
    )
    blob = out.getvalue()
    assert sniff(blob[:4]) == compression
    if compression == "gzip":
        blob = gzip.decompress(blob)
    elif compression == "zstd":
        blob = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    assert blob == plain
    assert stats.output_bytes == len(out.getvalue())
    assert stats.tar_bytes == len(plain)
    assert sum(covered) == len(disk)


def test_keepalive_writes_zero_chunks_in_full_after_silence():
    disk = pattern(MiB) + bytes(4 * MiB)
    metadata = FakeMetadata(("Ref:1", len(disk)))
    # keepalive_s=0: every stretch without output is "too long", so no zero chunk is skipped and
    # counters stay equal to offset / 1 MiB (xva-format.md §5.2, NBD strategy).
    writer = XvaWriter(metadata, {"Ref:1": BytesSource(disk)}, keepalive_s=0)
    data = b"".join(bytes(p) for p in writer)
    assert [n for n in names(data) if "." not in n] == [f"Ref:1/{i:08d}" for i in range(5)]
    assert writer.stats.zero_chunks_skipped == 0
    assert rebuild(data, "Ref:1", len(disk)) == disk
    quiet = XvaWriter(metadata, {"Ref:1": BytesSource(disk)}, keepalive_s=None)
    assert len(names(b"".join(bytes(p) for p in quiet))) == 1 + 2 * 2

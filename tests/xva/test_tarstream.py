from __future__ import annotations

import io
import tarfile

import pytest

from xvatool.errors import FormatError, TruncatedError
from xvatool.xva.tarstream import END_OF_ARCHIVE, TarReader, padding, v7_header


class ShortReads(io.RawIOBase):
    """A stream that returns at most `step` bytes per read, like a pipe or a socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._step = step
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buf), self._step, len(self._data) - self._pos)
        buf[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def v7_archive(members: list[tuple[str, bytes]], *, end: bool = True) -> bytes:
    out = b"".join(v7_header(name, len(data)) + data + padding(len(data)) for name, data in members)
    return out + (END_OF_ARCHIVE if end else b"")


@pytest.mark.parametrize(
    ("name", "size", "mode", "expected"),
    [
        ("Ref:2/00000000", 1 << 20, 0o400, b"0006120\0"),
        ("Ref:2/00000000", 1 << 20, 0, b"0006114\0"),
        ("Ref:2/00000000.xxhash", 16, 0o400, b"0007420\0"),
    ],
)
def test_v7_header_checksum_vectors_from_spec(name, size, mode, expected):
    header = v7_header(name, size, mode=mode)
    assert len(header) == 512
    assert header[148:156] == expected
    assert header[156:157] == b"\0"  # typeflag NUL, not '0'
    assert header[257:] == bytes(255)  # no ustar magic, uname, gname
    assert header[100:108] == b"%07o\0" % mode
    assert header[136:148] == b"00000000000\0"


def test_v7_header_rejects_long_names_and_sizes():
    with pytest.raises(ValueError):
        v7_header("x" * 101, 1)
    with pytest.raises(ValueError):
        v7_header("x", 8**11)


def test_stdlib_lists_what_we_write():
    data = v7_archive([("ova.xml", b"<value/>"), ("Ref:1/00000000", b"a" * 1000)])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        assert [(m.name, m.size) for m in tf] == [("ova.xml", 8), ("Ref:1/00000000", 1000)]


@pytest.mark.parametrize("step", [1, 7, 511, 513, 1 << 20])
def test_reader_handles_short_reads(step):
    members = [("ova.xml", b"<value/>"), ("Ref:1/00000000", bytes(range(256)) * 5), ("empty", b"")]
    reader = TarReader(ShortReads(v7_archive(members), step))
    got = [(m.name, reader.read()) for m in reader]
    assert got == members
    assert reader.end_seen


def test_offsets_are_absolute():
    data = v7_archive([("a", b"x" * 600), ("b", b"y")])
    reader = TarReader(io.BytesIO(data))
    a = next(reader)
    b = next(reader)
    assert (a.header_offset, a.data_offset) == (0, 512)
    assert (b.header_offset, b.data_offset) == (512 + 1024, 1024 + 1024)
    assert data[b.data_offset : b.data_offset + 1] == b"y"


def test_unread_data_is_skipped():
    reader = TarReader(io.BytesIO(v7_archive([("a", b"x" * 5000), ("b", b"yz")])))
    next(reader)
    assert reader.read(3) == b"xxx"
    assert next(reader).name == "b"
    assert reader.read() == b"yz"


def test_gnu_long_names_and_pax_headers_are_applied():
    buf = io.BytesIO()
    long = "d/" + "n" * 150
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo(long)
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    reader = TarReader(io.BytesIO(buf.getvalue()))
    member = next(reader)
    assert member.name == long and member.extensions == ("gnu-longname",) and member.dialect == "gnu"
    assert reader.read() == b"abc"

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("p/" + "q" * 120)
        info.size = 2
        info.pax_headers = {"comment": "é"}
        tf.addfile(info, io.BytesIO(b"hi"))
    reader = TarReader(io.BytesIO(buf.getvalue()))
    member = next(reader)
    assert member.name == "p/" + "q" * 120 and "pax" in member.extensions
    assert reader.read() == b"hi"


def test_ustar_prefix_is_joined():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("a" * 80 + "/" + "b" * 60)
        tf.addfile(info, io.BytesIO(b""))
    member = next(TarReader(io.BytesIO(buf.getvalue())))
    assert member.name == "a" * 80 + "/" + "b" * 60 and member.dialect == "ustar"


def test_a_stray_zero_block_is_skipped_like_ocaml_tar():
    one = v7_header("a", 1) + b"1" + padding(1)
    two = v7_header("b", 1) + b"2" + padding(1)
    reader = TarReader(io.BytesIO(one + bytes(512) + two + END_OF_ARCHIVE))
    got = [(m.name, reader.read()) for m in reader]
    assert got == [("a", b"1"), ("b", b"2")]
    assert reader.stray_zero_blocks == 1 and reader.end_seen


def test_thousands_of_stray_zero_blocks_keep_one_pending_block():
    # Issue 8 finding 5: each stray block used to wrap the stream once more (RecursionError).
    members = [v7_header(f"m{i}", 1) + b"x" + padding(1) for i in range(3000)]
    data = bytes(512).join(members) + END_OF_ARCHIVE
    reader = TarReader(ShortReads(data, 700))
    got = [(m.name, m.header_offset) for m in reader]
    assert got == [(f"m{i}", i * 1536) for i in range(3000)]
    assert reader.stray_zero_blocks == 2999 and reader.end_seen


def test_read_raw_reads_what_follows_the_end_marker_within_a_limit():
    data = v7_archive([("a", b"1")])
    reader = TarReader(io.BytesIO(data + b"g" * 5000))
    assert [m.name for m in reader] == ["a"]
    assert reader.read_raw(10_000) == (5000, True)
    reader = TarReader(io.BytesIO(data + b"g" * 5000))
    list(reader)
    assert reader.read_raw(100) == (101, True)  # more than the limit: stops after limit + 1 bytes
    reader = TarReader(io.BytesIO(data + bytes(9216)))  # GNU tar's record padding: zeros
    list(reader)
    assert reader.read_raw(100_000) == (9216, False)


def test_clean_end_without_marker_and_trailing_garbage_is_not_read():
    reader = TarReader(io.BytesIO(v7_archive([("a", b"1")], end=False)))
    assert [m.name for m in reader] == ["a"]
    assert not reader.end_seen
    reader = TarReader(io.BytesIO(v7_archive([("a", b"1")]) + b"garbage" * 100))
    assert [m.name for m in reader] == ["a"]
    assert reader.end_seen


@pytest.mark.parametrize("cut", [100, 512, 700, 1024, 1536 - 1])
def test_truncation_is_reported_with_offset(cut):
    data = v7_archive([("a", b"x" * 1000)])[:cut]
    reader = TarReader(io.BytesIO(data))
    with pytest.raises(TruncatedError) as info:
        for _ in reader:
            reader.read()
    assert info.value.offset is not None


def test_bad_header_checksum():
    data = bytearray(v7_archive([("a", b"x")]))
    data[0] ^= 0x01
    with pytest.raises(FormatError) as info:
        list(TarReader(io.BytesIO(bytes(data))))
    assert info.value.code == "tar-header" and info.value.offset == 0


def _tar_with(info: tarfile.TarInfo) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        tf.addfile(info, io.BytesIO(b"") if info.isreg() else None)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("name", "kind", "code"),
    [
        ("../evil", tarfile.REGTYPE, "unsafe-name"),
        ("a/../../evil", tarfile.REGTYPE, "unsafe-name"),
        ("/etc/passwd", tarfile.REGTYPE, "unsafe-name"),
        ("link", tarfile.SYMTYPE, "tar-link"),
        ("hard", tarfile.LNKTYPE, "tar-link"),
        ("dev", tarfile.CHRTYPE, "tar-device"),
        ("fifo", tarfile.FIFOTYPE, "tar-device"),
    ],
)
def test_hostile_members_are_rejected(name, kind, code):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
    with pytest.raises(FormatError) as exc:
        list(TarReader(io.BytesIO(_tar_with(info))))
    assert exc.value.code == code


def test_directory_entries_are_reported_as_such():
    info = tarfile.TarInfo("Ref:4")
    info.type = tarfile.DIRTYPE
    member = next(TarReader(io.BytesIO(_tar_with(info))))
    assert member.kind == "dir" and member.name == "Ref:4"


def test_oversized_extension_header_is_refused():
    header = bytearray(v7_header("././@LongLink", 10 << 20))
    header[156:157] = b"L"
    header[148:156] = b" " * 8
    header[148:156] = b"%07o\0" % sum(header)
    with pytest.raises(FormatError, match="limit"):
        list(TarReader(io.BytesIO(bytes(header))))


def test_read_member_limit():
    reader = TarReader(io.BytesIO(v7_archive([("ova.xml", b"x" * 100)])))
    next(reader)
    with pytest.raises(FormatError) as info:
        reader.read_member(10)
    assert info.value.code == "member-too-large" and info.value.member == "ova.xml"


def test_real_host_archive(shared_fixture):
    path = shared_fixture("real/vmexport.bin")
    with open(path, "rb") as f:
        reader = TarReader(f)
        names = [(m.name, m.size, m.mode, m.dialect) for m in reader]
    assert names == [
        ("ova.xml", 26014, 0, "v7"),
        ("Ref:20/00000000", 1 << 20, 0, "v7"),
        ("Ref:20/00000000.checksum", 40, 0, "v7"),
        ("Ref:20/00000001", 1 << 20, 0, "v7"),
        ("Ref:20/00000001.checksum", 40, 0, "v7"),
    ]
    assert reader.end_seen and reader.position == path.stat().st_size


def test_header_byte_sum_equals_sum_for_any_block():
    import random

    from xvatool.xva.tarstream import _byte_sum

    rng = random.Random(5)
    blocks = [bytes(512), b"\xff" * 512, v7_header("Ref:2/00000000", 1 << 20)]
    blocks += [rng.randbytes(512) for _ in range(200)]
    for block in blocks:
        assert _byte_sum(block) == sum(block)

"""VHD: round trips, differencing, the host's layout, and hostile files refused with one FormatError."""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.images.helpers import MiB, Trickle, image_bytes
from tests.images.helpers import disk_bytes as disk
from xvatool.errors import FormatError, TruncatedError, UsageError
from xvatool.images import BlockSourceImage, VhdParent, VhdReader, VhdWriter
from xvatool.images.vhd import BLOCK_SIZE, DISK_DIFFERENCING, DISK_DYNAMIC, VhdFooter
from xvatool.xva.disk import BytesSource


def vhd_of(content: bytes, *, blocks=None, parent=None, extents=None) -> bytes:
    image = BlockSourceImage(BytesSource(content))
    if blocks is None:
        blocks = {o // BLOCK_SIZE for o, d in image.extents() if any(d)}
    writer = VhdWriter(len(content), blocks, parent=parent, timestamp=0, unique_id=b"u" * 16)
    data = b"".join(bytes(p) for p in writer.pieces(extents if extents is not None else image.extents()))
    assert len(data) == writer.length
    return data


def test_layout_is_the_hosts():
    data = vhd_of(disk(5 * MiB, (3 * MiB, b"x" * 100)))
    footer = VhdFooter.parse(data[:512])
    assert (footer.disk_type, footer.current_size, footer.data_offset) == (DISK_DYNAMIC, 5 * MiB, 512)
    assert data[512:520] == b"cxsparse"
    assert struct.unpack_from(">Q", data, 512 + 16)[0] == 2048  # BAT at 2048, as vhd-tool
    bat = struct.unpack_from(">3I", data, 2048)
    assert bat[0] == 0xFFFFFFFF and bat[2] == 0xFFFFFFFF and bat[1] == (2048 + 512) // 512
    block = bat[1] * 512
    assert data[block : block + 512] == b"\xff" * 512  # full bitmap
    assert data[-512:] == data[:512]


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 12).map(lambda n: n * 512 * 1031),
    pieces=st.lists(st.tuples(st.integers(0, 6 * MiB), st.binary(min_size=1, max_size=5000)), max_size=6),
)
def test_round_trip(size, pieces):
    content = disk(size, *[(o, d) for o, d in pieces if o + len(d) <= size])
    data = vhd_of(content)
    assert image_bytes(VhdReader(io.BytesIO(data))) == content
    assert image_bytes(VhdReader(Trickle(data, 999), length=len(data))) == content


def test_fixed_vhd_needs_its_length_and_checks_its_footer():
    content = disk(2 * MiB, (4096, b"data"))
    footer = VhdFooter(2, len(content), b"f" * 16, data_offset=0xFFFFFFFFFFFFFFFF).pack()
    fixed = content + footer
    assert image_bytes(VhdReader(io.BytesIO(fixed), length=len(fixed))) == content
    with pytest.raises(FormatError, match="needs its length"):
        VhdReader(io.BytesIO(fixed))
    wrong = content + VhdFooter(2, len(content) - 512, b"f" * 16).pack()
    with pytest.raises(FormatError, match="footer says"):
        image_bytes(VhdReader(io.BytesIO(wrong), length=len(wrong), source="x.vhd"))


def test_differencing_marks_only_covered_sectors_and_applies_over_a_parent():
    base = disk(4 * MiB, (0, b"A" * (4 * MiB)))
    parent = VhdParent(b"p" * 16, "base.vhd", 7)
    # change two sectors in block 0 and one whole block 1
    extents = [(1024, memoryview(b"B" * 1024)), (BLOCK_SIZE, memoryview(b"C" * BLOCK_SIZE))]
    data = vhd_of(base, blocks=[0, 1], parent=parent, extents=extents)
    reader = VhdReader(io.BytesIO(data))
    assert reader.disk_type == DISK_DIFFERENCING
    assert reader.parent is not None
    assert (reader.parent.uuid, reader.parent.name, reader.parent.timestamp) == (b"p" * 16, "base.vhd", 7)
    assert b"file://./base.vhd" in data[1536:2048]
    applied = bytearray(base)
    for offset, piece in reader.extents():
        applied[offset : offset + len(piece)] = piece
    assert applied == disk(
        4 * MiB, (0, b"A" * (4 * MiB)), (1024, b"B" * 1024), (BLOCK_SIZE, b"C" * BLOCK_SIZE)
    )


def test_writer_refuses_misuse():
    with pytest.raises(UsageError):
        VhdWriter(1000, [])
    with pytest.raises(UsageError):
        VhdWriter(3000 << 30, [])
    writer = VhdWriter(4 * MiB, [0])
    with pytest.raises(UsageError, match="not declared"):
        list(writer.pieces([(BLOCK_SIZE, memoryview(b"x" * 512))]))
    diff = VhdWriter(4 * MiB, [0], parent=VhdParent(b"p" * 16, "p"))
    with pytest.raises(UsageError, match="whole 512-byte sectors"):
        list(diff.pieces([(3, memoryview(b"x"))]))


def _corrupt(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


def _fix_header_checksum(data: bytes) -> bytes:
    header = bytearray(data[512:1536])
    header[36:40] = bytes(4)
    header[36:40] = struct.pack(">I", ~sum(header) & 0xFFFFFFFF)
    return data[:512] + bytes(header) + data[1536:]


GOOD = vhd_of(disk(6 * MiB, (0, b"a" * 1000), (4 * MiB, b"b" * 1000)))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_corrupt(GOOD, 70, b"\x01"), "footer checksum"),
        (_corrupt(GOOD, 600, b"\x01"), "header checksum"),
        (_fix_header_checksum(_corrupt(GOOD, 512 + 28, struct.pack(">I", 1 << 23))), "over the limit"),
        (_fix_header_checksum(_corrupt(GOOD, 512 + 32, struct.pack(">I", 3 << 20))), "block size"),
        (_corrupt(GOOD, 2048 + 4, struct.pack(">I", 4)), "overlaps"),
        (_corrupt(GOOD, len(GOOD) - 512 + 70, b"\x01"), "footer checksum"),
        (GOOD[:-512] + VhdFooter(3, 5 * MiB, b"u" * 16).pack(), "differs from its copy"),
    ],
)
def test_hostile_vhds_are_refused_with_one_format_error(data, match):
    with pytest.raises(FormatError, match=match) as info:
        image_bytes(VhdReader(io.BytesIO(data), source="evil.vhd"))
    assert info.value.file == "evil.vhd"


def test_truncated_vhd_names_where():
    with pytest.raises(TruncatedError) as info:
        image_bytes(VhdReader(io.BytesIO(GOOD[: len(GOOD) - 5000]), source="cut.vhd"))
    assert info.value.file == "cut.vhd"
    assert info.value.offset is not None


def test_a_vhd_without_trailing_footer_reads_when_asked_as_the_host_does():
    assert image_bytes(VhdReader(io.BytesIO(GOOD[:-512]), check_footer=False))[:1000] == b"a" * 1000


def test_blocks_stored_out_of_disk_order_are_read_in_file_order():
    data = bytearray(GOOD)
    bat = 2048
    first, second = struct.unpack_from(">3I", data, bat)[0], struct.unpack_from(">3I", data, bat)[2]
    struct.pack_into(">I", data, bat, second)
    struct.pack_into(">I", data, bat + 8, first)
    reader = VhdReader(io.BytesIO(bytes(data)))
    assert not reader.ordered
    offsets = [o for o, _ in reader.extents()]
    assert offsets == [4 * MiB, 0]

"""VMDK: round trips of our writer through our reader, and hostile streams refused."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.images.helpers import MiB, Trickle, image_bytes
from tests.images.helpers import disk_bytes as disk
from xvatool.errors import FormatError, TruncatedError, UsageError
from xvatool.images import BlockSourceImage, VmdkReader, VmdkWriter
from xvatool.images.vmdk import VmdkHeader
from xvatool.xva.disk import BytesSource


def vmdk_of(content: bytes, **options) -> bytes:
    image = BlockSourceImage(BytesSource(content))
    writer = VmdkWriter(len(content), **options)
    data = b"".join(writer.pieces(image.extents()))
    assert writer.bytes_written == len(data)
    return data


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 80 * 1024).map(lambda n: n * 512),
    pieces=st.lists(st.tuples(st.integers(0, 40 * MiB), st.binary(min_size=1, max_size=3000)), max_size=6),
    level=st.sampled_from([0, 1, 6]),
)
def test_round_trip(size, pieces, level):
    content = disk(size, *[(o, d) for o, d in pieces if o + len(d) <= size])
    data = vmdk_of(content, level=level)
    reader = VmdkReader(Trickle(data, 4099), source="x")
    assert reader.create_type == "streamOptimized"
    assert image_bytes(reader) == content


def test_output_is_reproducible_and_streams_to_a_pipe_layout():
    content = disk(40 * MiB, (0, b"x" * 70000), (39 * MiB, b"y" * 10))
    assert vmdk_of(content) == vmdk_of(content)
    data = vmdk_of(content)
    header = VmdkHeader.parse(data[:512])
    assert header.gd_offset == 0xFFFFFFFFFFFFFFFF and header.version == 3
    assert data[-512:] == bytes(512)  # end-of-stream marker
    footer = VmdkHeader.parse(data[-1024:-512])
    assert footer.gd_offset not in (0, 0xFFFFFFFFFFFFFFFF)
    assert b'createType="streamOptimized"' in data[512:1024]


def test_writer_refuses_misuse():
    with pytest.raises(UsageError):
        VmdkWriter(0)
    with pytest.raises(UsageError):
        VmdkWriter(3 << 40)
    with pytest.raises(UsageError):
        VmdkWriter(1 << 20, level=12)


X_GRAIN = zlib.compress(b"x" * 65536)
GOOD = vmdk_of(disk(3 * MiB, (0, b"a" * 100_000), (2 * MiB, b"b" * 5)))
FIRST_GRAIN = 1024  # header + one descriptor sector


def grain_marker(lba: int, payload: bytes) -> bytes:
    record = struct.pack("<QI", lba, len(payload)) + payload
    return record + bytes(-len(record) % 512)


def stream_with(*records: bytes) -> bytes:
    return GOOD[:FIRST_GRAIN] + b"".join(records) + bytes(512)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"KDMX" + GOOD[4:], "no 'KDMV' magic"),
        (GOOD[:4] + struct.pack("<I", 9) + GOOD[8:], "version 9"),
        (GOOD[:12] + struct.pack("<Q", 1 << 60) + GOOD[20:], "absurd"),
        (GOOD[:20] + struct.pack("<Q", 100) + GOOD[28:], "grain size"),
        (GOOD[:73] + b"\r\n\r\n" + GOOD[77:], "newline"),
        (
            stream_with(grain_marker(128, zlib.compress(bytes(65536))), grain_marker(0, X_GRAIN)),
            "out of order",
        ),
        (
            stream_with(grain_marker(0, X_GRAIN), grain_marker(0, X_GRAIN)),
            "out of order",
        ),
        (stream_with(grain_marker(3, zlib.compress(b"x" * 65536))), "grain-aligned"),
        (stream_with(grain_marker(1 << 40, zlib.compress(b"x" * 65536))), "grain-aligned"),
        (stream_with(grain_marker(0, b"garbage that is not zlib")), "corrupt compressed grain"),
        (stream_with(grain_marker(0, zlib.compress(b"x" * 65536 * 4))), "more than one grain"),
        (stream_with(grain_marker(0, zlib.compress(b"x" * 100))), "inflates to 100 bytes"),
        (stream_with(grain_marker(0, zlib.compress(b"x" * 65536)[:-3])), "cut short"),
        (stream_with(struct.pack("<QI", 0, 1 << 30) + bytes(500)), "over the limit"),
        (stream_with(struct.pack("<QII", 1, 0, 77) + bytes(496)), "unknown marker type 77"),
        (stream_with(struct.pack("<QII", 1 << 40, 0, 1) + bytes(496)), "unknown marker"),
        (b"# Disk DescriptorFile\nversion=1\n" + bytes(600), "separate extent files"),
    ],
)
def test_hostile_vmdks_are_refused_with_one_format_error(data, match):
    with pytest.raises(FormatError, match=match) as info:
        image_bytes(VmdkReader(io.BytesIO(data), source="evil.vmdk"))
    assert info.value.file == "evil.vmdk"


def test_a_stream_without_end_marker_is_truncated():
    with pytest.raises(TruncatedError, match="end-of-stream marker is missing"):
        image_bytes(VmdkReader(io.BytesIO(GOOD[:-512]), source="cut.vmdk"))


def test_a_delta_link_is_refused():
    data = GOOD.replace(b"parentCID=ffffffff", b"parentCID=12345678")
    with pytest.raises(FormatError, match="parent"):
        VmdkReader(io.BytesIO(data))

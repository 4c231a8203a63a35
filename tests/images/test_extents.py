"""The extent shape: rechunking, adapters between images and the XVA writer's block sources."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.images.helpers import image_bytes
from xvatool.errors import StreamStateError, UsageError
from xvatool.images import BlockSourceImage, ImageBlockSource, RawFileImage, ordered_image, rechunk
from xvatool.xva.disk import BytesSource


def ordered_extents(size, pieces):
    """Non-overlapping ascending extents from arbitrary (offset, data) pairs."""
    out, low = [], 0
    for offset, data in sorted(pieces):
        if offset >= low and offset + len(data) <= size:
            out.append((offset, memoryview(data)))
            low = offset + len(data)
    return out


@settings(max_examples=80, deadline=None)
@given(
    size=st.integers(1, 5000),
    unit=st.sampled_from([512, 1000, 4096]),
    pieces=st.lists(st.tuples(st.integers(0, 5000), st.binary(min_size=0, max_size=900)), max_size=10),
)
def test_rechunk_keeps_every_byte_and_aligns(size, unit, pieces):
    extents = ordered_extents(size, pieces)
    expected = bytearray(size)
    for offset, data in extents:
        expected[offset : offset + len(data)] = data
    got = bytearray(size)
    last = -1
    for offset, block in rechunk(extents, size, unit):
        assert offset % unit == 0 and offset > last
        assert len(block) == min(unit, size - offset)
        got[offset : offset + len(block)] = block
        last = offset
    assert got == expected


def test_rechunk_refuses_disorder():
    with pytest.raises(StreamStateError):
        list(rechunk([(100, memoryview(b"x")), (50, memoryview(b"y"))], 1000, 512))
    with pytest.raises(StreamStateError):
        list(rechunk([(999, memoryview(b"xy"))], 1000, 512))


class Unordered:
    ordered = False

    def __init__(self, size, extents):
        self.virtual_size = size
        self._extents = extents

    def extents(self):
        return iter(self._extents)


def test_an_unordered_image_is_spooled_sparse_and_read_back_in_order(tmp_path):
    image = Unordered(4 << 20, [(3 << 20, memoryview(b"late")), (0, memoryview(b"early"))])
    with pytest.raises(UsageError):
        ImageBlockSource(image)
    with ordered_image(image, spool_dir=tmp_path) as ordered:
        assert isinstance(ordered, RawFileImage)
        spool = ordered.path
        assert spool.stat().st_blocks * 512 < 1 << 20  # sparse
        data = image_bytes(ordered)
    assert not spool.exists()
    assert data[:5] == b"early" and data[3 << 20 : (3 << 20) + 4] == b"late"


def test_block_sources_and_images_convert_both_ways():
    content = bytes(range(256)) * 9000
    image = BlockSourceImage(BytesSource(content))
    source = ImageBlockSource(image)
    assert source.size == len(content)
    assert b"".join(bytes(b) for _, b in source.blocks()) == content

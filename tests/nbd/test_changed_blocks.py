from __future__ import annotations

import base64
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xvatool.errors import CbtBitmapError
from xvatool.nbd import CBT_BLOCK_SIZE, ChangedBlocks, bitmap_length

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BLOCK = CBT_BLOCK_SIZE


def sm_style_bitmap(size: int, blocks: set[int]) -> str:
    """The host's encoding, derived the way SM derives it (docs/incremental.md §1.4), independently of
    the module: tapdisk sets bit n%64 of little-endian u64 word n//64; SM byte-reverses the bit
    order of every byte (bitarray.bytereverse) and base64-encodes the bytes, cut to the length rule."""
    count = -(-size // BLOCK)
    words = [0] * (-(-count // 64) or 1)
    for n in blocks:
        words[n // 64] |= 1 << (n % 64)
    raw = b"".join(struct.pack("<Q", w) for w in words)
    reversed_bits = bytes(int(f"{b:08b}"[::-1], 2) for b in raw)
    return base64.b64encode(reversed_bits[: -(-count // 8)]).decode()


@pytest.mark.parametrize(
    ("size", "length"),
    [
        (0, 0),
        (1, 1),
        (BLOCK, 1),
        (8 * BLOCK, 1),
        (8 * BLOCK + 1, 2),
        (2 * MiB, 4),  # 4 bytes per 2 MiB
        (2 * MiB + 512, 5),
        (GiB, 2048),  # 2 KiB per GiB
        (3 * GiB + 5 * MiB, 3 * 2048 + 10),
    ],
)
def test_length_rule(size, length):
    assert bitmap_length(size) == length
    assert len(ChangedBlocks(size).bits) == length
    assert len(base64.b64decode(ChangedBlocks(size).encode())) == length


def test_bits_are_msb_first():
    changed = ChangedBlocks.from_blocks(2 * MiB, [0, 9, 31])
    assert changed.bits == bytes([0x80, 0x40, 0x00, 0x01])
    assert changed.encode() == base64.b64encode(bytes([0x80, 0x40, 0x00, 0x01])).decode()
    assert list(changed.blocks()) == [0, 9, 31]
    assert 9 in changed and 10 not in changed and -1 not in changed and 32 not in changed


@pytest.mark.parametrize("size", [BLOCK, 5 * BLOCK + 100, 2 * MiB, 2 * MiB + 3 * BLOCK, 300 * BLOCK + 1])
def test_decodes_what_sm_produces(size):
    count = -(-size // BLOCK)
    blocks = {0, count - 1} | set(range(3, count, 7))
    changed = ChangedBlocks.decode(sm_style_bitmap(size, blocks), size)
    assert set(changed.blocks()) == blocks
    assert changed.encode() == sm_style_bitmap(size, blocks)


def test_decode_rejects_what_cannot_be_trusted():
    with pytest.raises(CbtBitmapError, match="not valid base64"):
        ChangedBlocks.decode("gA=*", 2 * MiB)
    with pytest.raises(CbtBitmapError, match=r"3 bytes for a disk of 2097152 bytes; the host sends 4"):
        ChangedBlocks.decode(base64.b64encode(b"\x80\x00\x00").decode(), 2 * MiB)
    with pytest.raises(CbtBitmapError, match="the host sends 4"):
        ChangedBlocks.decode(base64.b64encode(b"\x80" * 5).decode(), 2 * MiB)


def test_decode_tolerates_line_breaks_and_ignores_bits_past_the_end():
    text = base64.b64encode(bytes([0xFF, 0xFF])).decode()
    changed = ChangedBlocks.decode(text[:2] + "\n" + text[2:], 10 * BLOCK)  # 10 blocks: 6 spare bits
    assert changed.bits == bytes([0xFF, 0xC0])
    assert changed.count() == 10
    assert ChangedBlocks.decode(b"", 0) == ChangedBlocks(0)


def test_mark_flags_every_block_a_write_touches():
    changed = ChangedBlocks(40 * BLOCK)
    changed.mark(BLOCK - 1, 2)
    assert list(changed.blocks()) == [0, 1]
    changed.mark(5 * BLOCK, 0)
    assert changed.count() == 2
    changed.mark(3 * BLOCK + 10, 30 * BLOCK)  # whole bytes in the middle, ragged edges
    assert list(changed.blocks()) == [0, 1, *range(3, 34)]
    with pytest.raises(ValueError, match="outside"):
        changed.mark(40 * BLOCK - 1, 2)


def test_or_zero_extends_the_smaller_bitmap():
    small = ChangedBlocks.from_blocks(2 * MiB, [1, 31])
    big = ChangedBlocks.from_blocks(4 * MiB, [2, 40])
    both = small | big
    assert both.size == 4 * MiB
    assert list(both.blocks()) == [1, 2, 31, 40]
    assert small | big == big | small
    small_copy = ChangedBlocks(2 * MiB, small.bits)
    small_copy |= ChangedBlocks.from_blocks(2 * MiB, [5])
    assert list(small_copy.blocks()) == [1, 5, 31]
    with pytest.raises(ValueError, match="cannot fold"):
        small_copy |= big


def test_ranges_merge_runs_and_cut_at_multiples():
    size = 10 * MiB
    blocks = [*range(6, 40), 41, 100]  # 34 blocks from 384 KiB, then two singles
    changed = ChangedBlocks.from_blocks(size, blocks)
    assert list(changed.ranges()) == [
        (6 * BLOCK, 2 * MiB - 6 * BLOCK),
        (2 * MiB, 8 * BLOCK),
        (41 * BLOCK, BLOCK),
        (100 * BLOCK, BLOCK),
    ]
    assert list(changed.ranges(max_length=64 * MiB)) == [
        (6 * BLOCK, 34 * BLOCK),
        (41 * BLOCK, BLOCK),
        (100 * BLOCK, BLOCK),
    ]
    # whole 1 MiB chunks: blocks 6..41 touch chunks 0-2, block 100 chunk 6
    assert list(changed.ranges(granularity=MiB, max_length=64 * MiB)) == [(0, 3 * MiB), (6 * MiB, MiB)]
    assert list(changed.chunks()) == [0, 1, 2, 6]


@pytest.mark.parametrize(
    ("size", "last"),
    [
        (3 * BLOCK + 1024, (3 * BLOCK, 1024)),  # not a multiple of 64 KiB
        (2 * MiB + 4 * BLOCK + 512, (2 * MiB + 4 * BLOCK, 512)),  # not a multiple of 2 MiB
        (3 * BLOCK + 100, (3 * BLOCK, 100)),  # not even whole sectors: clamped to the end
    ],
)
def test_ranges_are_clamped_to_the_disk(size, last):
    count = -(-size // BLOCK)
    changed = ChangedBlocks.from_blocks(size, [count - 1])
    assert list(changed.ranges()) == [last]
    chunk_start = (count - 1) * BLOCK // MiB * MiB
    assert list(changed.ranges(granularity=MiB)) == [(chunk_start, size - chunk_start)]
    assert list(changed.chunks()) == [(count - 1) * BLOCK // MiB]


def test_a_full_two_tebibyte_bitmap_is_one_run():
    size = 2 << 40
    changed = ChangedBlocks(size, b"\xff" * bitmap_length(size))
    assert list(changed.runs()) == [(0, size // BLOCK)]
    assert sum(length for _, length in changed.ranges(max_length=1 << 40)) == size
    assert changed.count() == size // BLOCK
    assert repr(changed) == f"ChangedBlocks(size={size}, changed={size // BLOCK} of {size // BLOCK} blocks)"


def test_argument_checks():
    with pytest.raises(ValueError):
        ChangedBlocks(-1)
    with pytest.raises(ValueError):
        list(ChangedBlocks(MiB).ranges(granularity=1000))
    with pytest.raises(ValueError):
        list(ChangedBlocks(MiB).ranges(max_length=0))
    with pytest.raises(ValueError, match="outside"):
        ChangedBlocks.from_blocks(MiB, [16])
    assert not ChangedBlocks(MiB)
    assert ChangedBlocks.from_blocks(MiB, [3])


sizes = st.integers(min_value=0, max_value=40 * MiB)


@st.composite
def bitmaps(draw):
    size = draw(sizes)
    count = -(-size // BLOCK)
    blocks = draw(st.sets(st.integers(0, count - 1), max_size=200)) if count else set()
    return size, blocks


@given(bitmaps())
def test_encode_decode_round_trip(case):
    size, blocks = case
    changed = ChangedBlocks.from_blocks(size, blocks)
    text = changed.encode()
    assert text == sm_style_bitmap(size, blocks)
    again = ChangedBlocks.decode(text, size)
    assert again == changed
    assert set(again.blocks()) == blocks
    assert again.count() == len(blocks)


@given(
    bitmaps(),
    st.sampled_from([BLOCK, 128 * KiB, MiB]),
    st.sampled_from([512, BLOCK, 192 * KiB, 2 * MiB, 64 * MiB]),
)
def test_ranges_cover_exactly_the_flagged_units(case, granularity, max_length):
    size, blocks = case
    changed = ChangedBlocks.from_blocks(size, blocks)
    ranges = list(changed.ranges(granularity=granularity, max_length=max_length))
    covered: set[int] = set()
    previous_end = -1
    for offset, length in ranges:
        assert 0 < length <= max_length
        assert offset % 512 == 0 and (length % 512 == 0 or offset + length == size)
        assert offset + length <= size
        assert offset >= previous_end
        if offset == previous_end:  # touching pieces only where a cut at a multiple split them
            assert offset % max_length == 0
        assert offset // max_length == (offset + length - 1) // max_length
        previous_end = offset + length
        covered.update(range(offset // granularity, -(-(offset + length) // granularity)))
    assert covered == {b * BLOCK // granularity for b in blocks}  # a block lies in one unit
    assert list(changed.chunks(granularity)) == sorted(covered)

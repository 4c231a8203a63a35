"""Writer → reader round trips on random disks. Profile by HYPOTHESIS_PROFILE (conftest)."""

from __future__ import annotations

import io
import random

from hypothesis import given
from hypothesis import strategies as st

from xvatool.xva.convert import repack_stream
from xvatool.xva.disk import CHUNK_SIZE, BytesSource
from xvatool.xva.reader import XvaReader
from xvatool.xva.template import DiskSpec, build_vm_metadata
from xvatool.xva.writer import write_xva

MiB = CHUNK_SIZE
SECTOR = 512
MAX_SECTORS = (3 * MiB + 2 * SECTOR) // SECTOR


# What one 1 MiB block of a disk holds: zeros, random bytes, or one non-zero byte somewhere.
BLOCK_KINDS = st.sampled_from(["zero", "zero", "random", "one-byte"])


@st.composite
def disks(draw: st.DrawFn) -> tuple[int, bytes, int]:
    """(virtual_size, image bytes, source size): images may be shorter than the disk."""
    size = draw(st.integers(min_value=1, max_value=MAX_SECTORS)) * SECTOR
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    rng = random.Random(seed)
    image = bytearray(size)
    for offset in range(0, size, MiB):
        n = min(MiB, size - offset)
        kind = draw(BLOCK_KINDS)
        if kind == "random":
            image[offset : offset + n] = rng.randbytes(n)
        elif kind == "one-byte":
            image[offset + rng.randrange(n)] = rng.randrange(1, 256)
    short = draw(st.booleans())
    source_size = draw(st.integers(min_value=0, max_value=size)) if short else size
    image[source_size:] = bytes(size - source_size)  # what the host must rebuild
    return size, bytes(image), source_size


def rebuild(blob: bytes) -> tuple[dict[str, bytes], XvaReader]:
    reader = XvaReader(io.BytesIO(blob))
    images = {d.id: bytearray(d.virtual_size) for d in reader.metadata.disks}
    for chunk in reader.chunks():
        images[chunk.disk.id][chunk.offset : chunk.offset + len(chunk.data)] = chunk.data
    return {k: bytes(v) for k, v in images.items()}, reader


@given(
    specs=st.lists(disks(), min_size=1, max_size=3),
    checksum=st.sampled_from(["sha1", "xxhash"]),
    compression=st.sampled_from(["none", "none", "zstd"]),
    recheck=st.sampled_from(["sha1", "xxhash", None]),
)
def test_write_then_read_gives_the_same_disks(specs, checksum, compression, recheck):
    metadata = build_vm_metadata(
        name="prop", disks=[DiskSpec(size, f"d{i}") for i, (size, _, _) in enumerate(specs)]
    )
    sources = {
        info.id: BytesSource(image[:source_size], size=source_size)
        for info, (_, image, source_size) in zip(metadata.disks, specs, strict=True)
    }
    out = io.BytesIO()
    stats = write_xva(out, metadata, sources, checksum=checksum, compression=compression)
    images, reader = rebuild(out.getvalue())
    assert reader.compression == compression
    assert reader.checksum_kinds <= {checksum}
    assert reader.tar_end_seen
    expected = {info.id: image for info, (_, image, _) in zip(metadata.disks, specs, strict=True)}
    assert images == expected
    assert stats.disk_bytes == sum(size for size, _, _ in specs)
    # Every disk has at least its first and last chunk; no more chunks than the disk has.
    chunk_counts = [-(-size // MiB) for size, _, _ in specs]
    assert sum(min(2, n) for n in chunk_counts) <= stats.chunks <= sum(chunk_counts)

    # Repack (maybe to another checksum kind) rebuilds the very same disks.
    again = io.BytesIO()
    repack_stream(io.BytesIO(out.getvalue()), again, checksum=recheck, compression="none")
    images2, reader2 = rebuild(again.getvalue())
    assert images2 == expected
    assert reader2.checksum_kinds <= {recheck or checksum}

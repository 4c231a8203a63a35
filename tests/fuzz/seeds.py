"""The fuzzer's seed archives: small, varied, every codec and checksum kind, each with its disks.

Most seeds use 4 KiB chunks (the reader and the host take any chunk size, and small chunks keep a
mutant's run in milliseconds); one is written by our own writer with the host's 1 MiB chunks, and
the real XenServer export is used when the shared fixtures are there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tests.builders import (
    MIB,
    SMALL_CHUNK,
    ChunkSpec,
    DiskSpec,
    XvaSpec,
    build_xva,
    pattern,
)
from xvatool.xva.disk import BytesSource
from xvatool.xva.template import DiskSpec as TemplateDisk
from xvatool.xva.template import build_vm_metadata
from xvatool.xva.writer import XvaWriter

__all__ = ["Seed", "seeds"]


@dataclass(frozen=True)
class Seed:
    """A valid archive as an uncompressed tar, the compression it is fuzzed in, and its disks."""

    name: str
    tar: bytes
    compression: str
    disks: dict[str, bytes]
    """VDI uuid -> disk image, as extract writes it."""
    weight: int = 4


def _spec_seed(name: str, compression: str, disks: list[tuple[DiskSpec, bytes]], **spec: object) -> Seed:
    built = build_xva(XvaSpec([disk for disk, _ in disks], **spec))  # type: ignore[arg-type]
    return Seed(name, built.data, compression, {disk.uuid: image for disk, image in disks})


def _small(kind: str, uuid: str) -> tuple[DiskSpec, bytes]:
    """Chunks 0 and 2 of a 3-chunk disk: a counter gap in the middle (xva-format.md §5.2)."""
    image = pattern(SMALL_CHUNK, 1) + bytes(SMALL_CHUNK) + pattern(SMALL_CHUNK, 2)
    chunks = [ChunkSpec(0, image[:SMALL_CHUNK], kind), ChunkSpec(2, image[2 * SMALL_CHUNK :], kind)]  # type: ignore[arg-type]
    return DiskSpec("Ref:2", len(image), chunks, uuid=uuid), image


def _three(kind: str, uuid: str) -> tuple[DiskSpec, bytes]:
    image = b"".join(pattern(SMALL_CHUNK, seed) for seed in (3, 4, 5))
    chunks = [ChunkSpec(i, image[i * SMALL_CHUNK : (i + 1) * SMALL_CHUNK], kind) for i in range(3)]  # type: ignore[arg-type]
    return DiskSpec("Ref:7", len(image), chunks, uuid=uuid), image


def _keepalive_pair() -> list[tuple[DiskSpec, bytes]]:
    """Ref:1 and Ref:10 (byte order puts Ref:1 first), a keep-alive chunk and mixed kinds."""
    image_a = pattern(SMALL_CHUNK, 6) + bytes(2 * SMALL_CHUNK) + pattern(SMALL_CHUNK, 7)
    chunks = [
        ChunkSpec(0, image_a[:SMALL_CHUNK], "sha1"),
        ChunkSpec(1, b"", "sha1"),  # zero-length keep-alive: uses a counter, not a byte (xva-format.md §5.2)
        ChunkSpec(4, image_a[3 * SMALL_CHUNK :], "xxhash"),
    ]
    image_b = pattern(2 * SMALL_CHUNK, 8)
    chunks_b = [ChunkSpec(i, image_b[i * SMALL_CHUNK : (i + 1) * SMALL_CHUNK], "xxhash") for i in range(2)]
    disk_b = DiskSpec("Ref:10", len(image_b), chunks_b, uuid="aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee")
    return [
        (DiskSpec("Ref:1", len(image_a), chunks, uuid="11111111-2222-4333-8444-555555555555"), image_a),
        (disk_b, image_b),
    ]


def _partial_last() -> tuple[DiskSpec, bytes]:
    image = pattern(2 * SMALL_CHUNK + 1024, 9)
    chunks = [ChunkSpec(i, image[i * SMALL_CHUNK : (i + 1) * SMALL_CHUNK], "xxhash") for i in range(3)]
    return DiskSpec("Ref:3", len(image), chunks, uuid="33333333-2222-4333-8444-555555555555"), image


def _writer_seed() -> Seed:
    """Our own writer, the host's 1 MiB chunks, two disks, a skipped zero chunk."""
    images = [pattern(MIB, 10) + bytes(MIB) + pattern(512, 11), pattern(MIB, 12)]
    metadata = build_vm_metadata(
        name="fuzz", disks=[TemplateDisk(len(i), f"d{n}") for n, i in enumerate(images)], uuid=None
    )
    sources = {disk.id: BytesSource(image) for disk, image in zip(metadata.disks, images, strict=True)}
    tar = b"".join(bytes(piece) for piece in XvaWriter(metadata, sources))
    disks = {disk.vdi_uuid: image for disk, image in zip(metadata.disks, images, strict=True)}
    return Seed("writer-1mib-zstd", tar, "zstd", disks, weight=1)


def seeds() -> list[Seed]:
    """Every seed, built fresh (deterministic but for the writer seed's random uuids)."""
    out = [
        _spec_seed("small-sha1", "none", [_small("sha1", "0d5b9d6a-3f2e-4a51-8c7b-1e2f3a4b5c61")]),
        _spec_seed("small-xxhash-gzip", "gzip", [_small("xxhash", "0d5b9d6a-3f2e-4a51-8c7b-1e2f3a4b5c62")]),
        _spec_seed("three-sha1-zstd", "zstd", [_three("sha1", "77777777-2222-4333-8444-555555555555")]),
        _spec_seed("three-xxhash", "none", [_three("xxhash", "77777777-2222-4333-8444-555555555556")]),
        _spec_seed("keepalive-two-disks", "none", _keepalive_pair()),
        _spec_seed("keepalive-two-disks-gzip", "gzip", _keepalive_pair(), mode=0),
        _spec_seed("partial-last-chunk-zstd", "zstd", [_partial_last()]),
        _writer_seed(),
    ]
    shared = os.environ.get("XVATOOL_SHARED_FIXTURES")
    real = Path(shared) / "real" / "vmexport.bin" if shared else None
    if real is not None and real.is_file():
        out.append(
            Seed("xenserver-5.6-export", real.read_bytes(), "none",
                 {"bdaca85c-b6f6-42b0-bdce-37b029e5e0e2": bytes(2 * MIB)}, weight=1)
        )  # fmt: skip
    return out

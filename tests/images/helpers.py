"""Small disks with known content, and reading images back into bytes."""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path

from xvatool.images.extents import DiskImage

MiB = 1 << 20


def image_bytes(image: DiskImage) -> bytes:
    """The whole disk an image describes (uncovered bytes are zeros); for small test disks."""
    out = bytearray(image.virtual_size)
    for offset, data in image.extents():
        out[offset : offset + len(data)] = data
    return bytes(out)


def make_disk(path: Path, size: int, pieces: Iterable[tuple[int, bytes]]) -> bytes:
    """A sparse raw file of `size` bytes with `pieces` written in; returns its content."""
    content = bytearray(size)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in pieces:
            f.seek(offset)
            f.write(data)
            content[offset : offset + len(data)] = data
    return bytes(content)


def patterned_disk(path: Path, size: int, seed: int = 1) -> bytes:
    """Random data, text, a lone sector and a last partial grain, with holes between."""
    rng = random.Random(seed)
    pieces = [
        (0, rng.randbytes(100_000)),
        (5 * MiB + 512, b"hello, world\n" * 500),
        (size // 2 - (size // 2) % 512, os.urandom(512)),
        (size - 4096, rng.randbytes(4096)),
    ]
    return make_disk(
        path, size, [(o, d) for o, d in pieces if 0 <= o and o + len(d) <= size] or [(0, b"\x01")]
    )


class Trickle:
    """A non-seekable stream that returns at most `step` bytes per read (no readinto)."""

    def __init__(self, data: bytes, step: int = 7777) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def read(self, size: int = -1) -> bytes:
        n = self._step if size < 0 else min(size, self._step)
        piece = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(piece)
        return piece


def disk_bytes(size: int, *pieces: tuple[int, bytes]) -> bytes:
    """`size` zero bytes with `pieces` written in."""
    out = bytearray(size)
    for offset, data in pieces:
        out[offset : offset + len(data)] = data
    return bytes(out)

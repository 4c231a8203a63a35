"""Builders for repository tests: archives with known disk contents, and digests to compare."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

from xvatool.xva.convert import create_archive

MIB = 1 << 20


def disk_image(path: Path, size: int, *, seed: int, blocks: tuple[int, ...] = (0, 2)) -> Path:
    """A sparse image with pseudo-random (incompressible) data in the given 1 MiB blocks."""
    with open(path, "wb") as f:
        f.truncate(size)
        for index in blocks:
            if index * MIB < size:
                f.seek(index * MIB)
                f.write(_block(seed, index, min(MIB, size - index * MIB)))
    return path


def _block(seed: int, index: int, length: int) -> bytes:
    return random.Random(f"{seed}:{index}").randbytes(length)


def archive_with(tmp: Path, name: str, images: list[Path]) -> Path:
    out = tmp / f"{name}.xva"
    create_archive(out, name=name, disks=images)
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            h.update(chunk)
    return h.hexdigest()


def random_bytes(n: int) -> bytes:
    return os.urandom(n)

"""Builders for repository tests: archives with known disk contents, and digests to compare."""

from __future__ import annotations

import hashlib
import os
import random
import time
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


CLOCK_PROBE_KEY = "clock-probe"


def pass_storage_clock(storage, *, timeout_s: float = 30.0) -> None:
    """Wait until the storage's clock has passed the mtime of every object stored so far.

    A prune leaves alone objects whose mtime is not before its own start (`gc`'s cutoff): S3's
    ``LastModified`` has one-second resolution, so objects written in the second the prune
    starts are (rightly) kept. Tests that expect a prune to collect what they just wrote wait
    here until a probe object written now has a later mtime than any of them: deterministic on
    any backend, with no guess about the clock's resolution.
    """
    newest = max((info.mtime for info in storage.list("")), default=0.0)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            storage.put(CLOCK_PROBE_KEY, b"")
            probe = storage.stat(CLOCK_PROBE_KEY)
            if probe is not None and probe.mtime > newest:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the storage clock did not pass {newest} within {timeout_s} s")
            time.sleep(0.05)
    finally:
        storage.delete(CLOCK_PROBE_KEY)

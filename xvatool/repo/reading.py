"""Reading snapshots back: as a standard XVA stream (`export_snapshot`), as sparse raw disks
(`extract_snapshot`), or as `BlockSource`s for anything else that writes disks (restore).

Chunks are fetched ahead by a few threads, in order, each authenticated and checked against its
id as it is opened (`objects.Codec.open`); all-zero chunks are never fetched (their id is
`ZERO_ID`), so a sparse disk costs only its data. Memory: at most `READ_AHEAD` chunks per worker,
each in a pair of 1 MiB buffers reused from chunk to chunk (allocating 1 MiB per chunk cost a
quarter of the reading CPU in page faults and zeroing).

Example::

    with open("web-01.xva", "wb") as out:
        export_snapshot(repo, repo.find_snapshot("latest:web-01"), out)
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from xvatool._types import ChecksumKind, Compression, Writable
from xvatool.errors import LocalIOError, ObjectCorruptError
from xvatool.repo.objects import CHUNK, MAX_STORED_CHUNK, METADATA, ZERO_ID
from xvatool.repo.repository import Repository
from xvatool.repo.snapshot import Snapshot, SnapshotDisk
from xvatool.xva.disk import CHUNK_SIZE, SparseFileSink
from xvatool.xva.ovaxml import Metadata
from xvatool.xva.writer import WriteStats, write_xva

__all__ = ["READ_AHEAD", "SnapshotDiskSource", "export_snapshot", "extract_snapshot", "snapshot_metadata"]

READ_AHEAD = 3
"""Chunks fetched ahead per worker thread."""
_SAFE_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,127}")


_Slot = tuple[bytearray, bytearray]


class SnapshotDiskSource:
    """One disk of a snapshot as a `xvatool.xva.disk.BlockSource`: only its non-zero chunks.

    Chunks are read, decrypted, decompressed and checked by `workers` threads into reused pairs
    of buffers (`Repository.load_into`), at most `workers × READ_AHEAD` ahead of the consumer;
    a block handed out stays valid until the next one is asked for, as `BlockSource` promises.
    """

    def __init__(self, repo: Repository, disk: SnapshotDisk, *, workers: int | None = None) -> None:
        self.repo = repo
        self.disk = disk
        self.size = disk.virtual_size
        self.workers = workers or repo.storage.parallelism

    def blocks(self) -> Iterator[tuple[int, memoryview]]:
        window: collections.deque[tuple[int, _Slot, Future[memoryview]]] = collections.deque()
        limit = self.workers * READ_AHEAD
        free: list[_Slot] = []
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="repo-read") as pool:
            try:
                for index, oid in enumerate(self.repo.disk_chunk_ids(self.disk)):
                    if oid == ZERO_ID:
                        continue  # zero chunks are never stored, never read
                    slot = free.pop() if free else (bytearray(MAX_STORED_CHUNK), bytearray(MAX_STORED_CHUNK))
                    window.append((index, slot, pool.submit(self.repo.load_into, CHUNK, oid, *slot)))
                    if len(window) >= limit:
                        yield self._ready(window, free)
                while window:
                    yield self._ready(window, free)
            finally:
                for _, _, future in window:
                    future.cancel()

    def _ready(
        self, window: collections.deque[tuple[int, _Slot, Future[memoryview]]], free: list[_Slot]
    ) -> tuple[int, memoryview]:
        """The oldest block; its slot is free again once the caller asks for the next one (the
        slot goes on the free list now, but it is taken only after this generator resumes).
        """
        index, slot, future = window.popleft()
        data = future.result()
        free.append(slot)
        expected = min(CHUNK_SIZE, self.size - index * CHUNK_SIZE)
        if len(data) != expected:
            raise ObjectCorruptError(
                f"chunk {index} of disk {self.disk.vdi_uuid} holds {len(data)} bytes, expected {expected}"
            )
        return index * CHUNK_SIZE, data


def snapshot_metadata(repo: Repository, snapshot: Snapshot) -> Metadata:
    """The snapshot's ova.xml, checked to describe the same disks as the manifest."""
    metadata = Metadata.from_bytes(repo.load(METADATA, bytes.fromhex(snapshot.metadata)))
    have = sorted((d.id, d.virtual_size) for d in metadata.disks)
    want = sorted((d.id, d.virtual_size) for d in snapshot.disks)
    if have != want:
        raise ObjectCorruptError(
            f"snapshot {snapshot.short_id}: ova.xml and the manifest list different disks"
        )
    return metadata


def export_snapshot(
    repo: Repository,
    snapshot: Snapshot,
    out: Writable,
    *,
    compression: Compression = "none",
    checksum: ChecksumKind = "xxhash",
    progress: Callable[[int], None] | None = None,
) -> WriteStats:
    """Write the snapshot as a standard XVA to `out` (left open); every chunk is verified."""
    metadata = snapshot_metadata(repo, snapshot)
    sources = {disk.id: SnapshotDiskSource(repo, disk) for disk in snapshot.disks}
    return write_xva(out, metadata, sources, checksum=checksum, compression=compression, progress=progress)


def extract_snapshot(
    repo: Repository,
    snapshot: Snapshot,
    out_dir: str | os.PathLike[str],
    *,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write each disk as a sparse ``OUT_DIR/<vdi-uuid>.raw``, renamed into place when complete."""
    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(folder)) from exc
    written = []
    for disk in snapshot.disks:
        if not _SAFE_NAME.fullmatch(disk.vdi_uuid):  # names come from an archive: never a path
            raise ObjectCorruptError(f"snapshot {snapshot.short_id}: unsafe disk name {disk.vdi_uuid!r}")
        with SparseFileSink(folder / f"{disk.vdi_uuid}.raw", disk.virtual_size) as sink:
            for offset, data in SnapshotDiskSource(repo, disk).blocks():
                sink.write_at(offset, data)
                if progress is not None:
                    progress(len(data))
            written.append(sink.commit())
    return written

"""Writing snapshots: chunks in, content-addressed objects and index segments out.

`SnapshotWriter` builds one snapshot; `DiskWriter` takes a disk's 1 MiB chunks in ascending
order (`put` for data read now, `reuse` for an id taken from an earlier snapshot, gaps are
zeros) and writes the disk's index one segment at a time, so memory stays at one segment
(512 KiB) per disk whatever the disk size. `ingest_reader` feeds a verified `XvaReader` into it.

The hot path per chunk: the caller's view is copied into one of a few reused 1 MiB buffers (the
reader reuses its own), compared with the zero chunk at memcmp speed (zeros are never stored:
their id is `ZERO_ID`), then a worker thread hashes it, skips it if the same id sat at the same
place in the parent snapshot or was seen recently or is already stored, and otherwise
compresses, encrypts and stores it. hashlib, zstd, AES-GCM and file or socket I/O all release
the GIL, so the workers use every core while the main thread reads the next chunks.

Safety with a concurrent prune (`gc`): every id a writer relies on without storing it — the
parent's ids, ids it saw stored — was observed after its lease was stored, so a prune that sets
such an object aside waits for this writer to end and then puts it back.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any, Self

from xvatool import __version__
from xvatool.errors import StreamStateError, UsageError
from xvatool.repo.lease import Lease, live_leases, remove_dead_leases
from xvatool.repo.objects import CHUNK, ID_SIZE, INDEX, METADATA, ZERO_ID
from xvatool.repo.repository import Repository
from xvatool.repo.snapshot import Snapshot, SnapshotDisk
from xvatool.xva.disk import CHUNK_SIZE, ZERO_CHUNK
from xvatool.xva.ovaxml import DiskInfo, Metadata
from xvatool.xva.reader import XvaReader

__all__ = ["RECENT_IDS", "ChunkStore", "DiskWriter", "SnapshotWriter", "WriterRun", "ingest_reader"]

log = logging.getLogger(__name__)

RECENT_IDS = 1 << 16
"""Ids remembered as stored during a run (about 6 MiB): repeated chunks skip the existence check."""
QUEUED_PER_WORKER = 2
"""Chunks waiting per worker beyond the one it works on: bounds memory to a few MiB per worker."""

ChunkResult = tuple[bytes, int, int]
"""(id, plaintext length, stored bytes added); stored is 0 when the chunk was already there."""


class ChunkStore:
    """The worker pool, reused buffers and recently-stored ids shared by one run's disk writers.

    `workers` defaults to what the backend can use (`Storage.parallelism`).
    """

    def __init__(self, repo: Repository, *, workers: int | None = None) -> None:
        self.repo = repo
        self.workers = workers or repo.storage.parallelism
        count = self.workers * (1 + QUEUED_PER_WORKER)
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(bytearray(CHUNK_SIZE))
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="repo-chunk")
        self._recent: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def submit(
        self, data: bytes | bytearray | memoryview, expected: bytes | None
    ) -> Future[ChunkResult] | None:
        """Start storing one chunk (≤ 1 MiB); None if it is all zeros. Blocks while all buffers
        are in use, which is what keeps a fast reader from running ahead of slow storage.
        """
        n = len(data)
        buf = self._free.get()
        buf[:n] = data
        if (buf == ZERO_CHUNK) if n == CHUNK_SIZE else (buf[:n] == ZERO_CHUNK[:n]):
            self._free.put(buf)
            return None
        try:
            return self._pool.submit(self._store, buf, n, expected)
        except BaseException:
            self._free.put(buf)
            raise

    def _store(self, buf: bytearray, n: int, expected: bytes | None) -> ChunkResult:
        try:
            view = memoryview(buf)[:n]
            repo = self.repo
            oid = repo.object_id(view)
            if oid == expected or self._seen(oid):
                return oid, n, 0
            stored = 0 if repo.has(CHUNK, oid) else repo.put(CHUNK, oid, view)
            self._remember(oid)
            return oid, n, stored
        finally:
            self._free.put(buf)

    def _seen(self, oid: bytes) -> bool:
        with self._lock:
            if oid in self._recent:
                self._recent.move_to_end(oid)
                return True
            return False

    def _remember(self, oid: bytes) -> None:
        with self._lock:
            self._recent[oid] = None
            if len(self._recent) > RECENT_IDS:
                self._recent.popitem(last=False)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class DiskWriter:
    """Builds one disk of a snapshot: chunks in strictly ascending index order, gaps are zeros.

    `parent_ids` streams the parent snapshot's ids of the matching disk (dedup hint).
    """

    def __init__(
        self,
        repo: Repository,
        store: ChunkStore,
        record: SnapshotDisk,
        parent_ids: Iterator[bytes] | None = None,
    ) -> None:
        self.repo = repo
        self.store = store
        self.record = record
        self.count = -(-record.virtual_size // CHUNK_SIZE)
        self.per_segment = repo.config.segment_chunks
        self._segment = bytearray(self.per_segment * ID_SIZE)
        self._segment_start = 0
        self._next = 0
        self._pending: collections.deque[tuple[int, Future[ChunkResult]]] = collections.deque()
        self._parent = parent_ids
        self._parent_pos = 0
        self._parent_id: bytes | None = None
        self._done = False

    def _expected(self, index: int) -> bytes | None:
        if self._parent is None:
            return None
        while self._parent_pos <= index:
            self._parent_id = next(self._parent, None)
            self._parent_pos += 1
            if self._parent_id is None:
                self._parent = None
                return None
        return self._parent_id

    def _advance(self, index: int) -> None:
        if self._done:
            raise StreamStateError("disk already finished")
        if index < self._next or index >= self.count:
            raise UsageError(f"disk {self.record.id}: chunk {index} is out of order or past the disk's end")
        while index >= self._segment_start + self.per_segment:
            self._flush_segment()
        self._next = index + 1

    def put(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Store chunk `index` (its bytes are copied before this returns)."""
        length = min(CHUNK_SIZE, self.record.virtual_size - index * CHUNK_SIZE)
        if len(data) > length:
            raise UsageError(
                f"disk {self.record.id}: chunk {index} holds {len(data)} bytes, at most {length} fit"
            )
        self._advance(index)
        future = self.store.submit(data, self._expected(index))
        if future is not None:
            self._pending.append((index, future))
        self._settle(block=False)

    def reuse(self, index: int, object_id: bytes) -> None:
        """Take chunk `index` from an earlier snapshot by id, without reading it (incremental)."""
        self._advance(index)
        if object_id != ZERO_ID:
            length = min(CHUNK_SIZE, self.record.virtual_size - index * CHUNK_SIZE)
            done: Future[ChunkResult] = Future()
            done.set_result((object_id, length, 0))
            self._pending.append((index, done))
        self._settle(block=False)

    def _settle(self, *, block: bool) -> None:
        pending = self._pending
        while pending and (block or pending[0][1].done()):
            index, future = pending.popleft()
            oid, length, stored = future.result()
            at = (index - self._segment_start) * ID_SIZE
            self._segment[at : at + ID_SIZE] = oid
            record = self.record
            record.chunks += 1
            record.data_bytes += length
            if stored:
                record.new_chunks += 1
                record.new_bytes += stored

    def _flush_segment(self) -> None:
        self._settle(block=True)
        entries = min(self.per_segment, self.count - self._segment_start)
        segment_id, added = self.repo.store(INDEX, memoryview(self._segment)[: entries * ID_SIZE])
        self.record.segments.append(segment_id.hex())
        self.record.new_bytes += added
        self._segment[:] = bytes(len(self._segment))
        self._segment_start += self.per_segment

    def finish(self) -> SnapshotDisk:
        """Wait for every chunk and store the remaining index segments."""
        if not self._done:
            while self._segment_start < self.count:
                self._flush_segment()
            self._done = True
        return self.record


class SnapshotWriter:
    """Builds one snapshot of one VM; nothing is visible until `commit`.

    `vm_uuid`/`vm_name` identify the VM across nights (a running VM is exported through a host
    snapshot whose own uuid changes every time). `parent` is the previous snapshot of the VM:
    its disks (matched by userdevice, else by position) give the ids to compare with.

    Example::

        with Lease(repo.storage, "backup") as lease, ChunkStore(repo) as store:
            writer = SnapshotWriter(repo, store, lease, metadata, vm_uuid=u, vm_name=n)
            disk = writer.disk(metadata.disks[0])
            disk.put(0, first_mib)
            snapshot = writer.commit()
    """

    def __init__(
        self,
        repo: Repository,
        store: ChunkStore,
        lease: Lease,
        metadata: Metadata,
        *,
        vm_uuid: str,
        vm_name: str,
        time: dt.datetime | None = None,
        source: dict[str, Any] | None = None,
        parent: Snapshot | None = None,
        hostname: str = "",
        tool: str = __version__,
        on_commit: Callable[[Snapshot], None] | None = None,
    ) -> None:
        self.repo = repo
        self.store = store
        self.lease = lease
        self.metadata = metadata
        self.parent = parent
        self.time = time or dt.datetime.now(dt.UTC)
        self._meta = dict(vm_uuid=vm_uuid, vm_name=vm_name, hostname=hostname, tool=tool)
        self.source = source or {}
        self._on_commit = on_commit
        self._disks: dict[str, DiskWriter] = {}

    def _parent_disk(self, disk: DiskInfo, position: int) -> SnapshotDisk | None:
        if self.parent is None:
            return None
        for candidate in self.parent.disks:
            if disk.userdevice is not None and candidate.userdevice == disk.userdevice:
                return candidate
        return self.parent.disks[position] if position < len(self.parent.disks) else None

    def disk(self, disk: DiskInfo, *, source: dict[str, Any] | None = None) -> DiskWriter:
        """The writer of one of the metadata's data-carrying disks."""
        if disk.id in self._disks:
            return self._disks[disk.id]
        ids = [d.id for d in self.metadata.disks]
        if disk.id not in ids:
            raise UsageError(f"disk {disk.id} is not a data-carrying disk of this VM")
        record = SnapshotDisk(
            id=disk.id,
            vdi_uuid=disk.vdi_uuid,
            name=disk.name_label,
            userdevice=disk.userdevice,
            virtual_size=disk.virtual_size,
            source=dict(source or {"method": "full"}),
        )
        parent = self._parent_disk(disk, ids.index(disk.id))
        parent_ids = self.repo.disk_chunk_ids(parent) if parent is not None else None
        writer = self._disks[disk.id] = DiskWriter(self.repo, self.store, record, parent_ids)
        return writer

    def commit(self) -> Snapshot:
        """Finish every disk, store ova.xml and the manifest; the snapshot exists from here on."""
        disks = [self.disk(d).finish() for d in self.metadata.disks]
        metadata_id, added = self.repo.store(METADATA, self.metadata.to_bytes())
        snapshot = Snapshot(
            time=self.time,
            vm_uuid=str(self._meta["vm_uuid"]),
            vm_name=str(self._meta["vm_name"]),
            metadata=metadata_id.hex(),
            disks=disks,
            hostname=str(self._meta["hostname"]),
            source=self.source,
            parent=self.parent.id if self.parent is not None else None,
            new_bytes=added + sum(d.new_bytes for d in disks),
            tool=str(self._meta["tool"]),
        )
        self.repo.storage.flush()  # every chunk and segment durable before the manifest names them
        self.lease.check()
        self.repo.save_snapshot(snapshot)
        if self._on_commit is not None:
            self._on_commit(snapshot)
        return snapshot


class _Reblocker:
    """Turns a disk's (offset, bytes) pieces into whole 1 MiB chunks for a `DiskWriter`.

    Archives from every known writer have 1 MiB chunks at 1 MiB offsets, which pass straight
    through; anything else is assembled in one reused buffer (gaps stay zero).
    """

    def __init__(self, writer: DiskWriter) -> None:
        self.writer = writer
        self.size = writer.record.virtual_size
        self._buf = bytearray(CHUNK_SIZE)
        self._index = -1
        self._length = 0

    def feed(self, offset: int, data: memoryview) -> None:
        pos = 0
        while pos < len(data):
            index, within = divmod(offset + pos, CHUNK_SIZE)
            length = min(CHUNK_SIZE, self.size - index * CHUNK_SIZE)
            take = min(len(data) - pos, length - within)
            if take <= 0:
                raise UsageError(f"disk {self.writer.record.id}: data past the disk's end at {offset + pos}")
            if within == 0 and take == length and index != self._index:
                self.flush()
                self.writer.put(index, data[pos : pos + take])
            else:
                if index != self._index:
                    self.flush()
                    self._index, self._length = index, length
                self._buf[within : within + take] = data[pos : pos + take]
            pos += take

    def flush(self) -> None:
        if self._index >= 0:
            self.writer.put(self._index, memoryview(self._buf)[: self._length])
            self._buf[:] = ZERO_CHUNK
            self._index = -1


def ingest_reader(
    writer: SnapshotWriter, reader: XvaReader, *, progress: Callable[[int], object] | None = None
) -> Snapshot:
    """Store every chunk of a verified XVA stream and commit the snapshot.

    The reader verifies each chunk's checksum (off-thread, a few chunks behind); it raises before
    the stream ends if any is wrong, so a snapshot is only committed for a fully verified
    archive. `progress` is called with disk bytes covered.
    """
    blocks = {disk.id: _Reblocker(writer.disk(disk)) for disk in writer.metadata.disks}
    covered = dict.fromkeys(blocks, 0)
    for chunk in reader.chunks():
        reblocker = blocks[chunk.disk.id]
        reblocker.feed(chunk.offset, chunk.data)
        if progress is not None:
            end = chunk.offset + len(chunk.data)
            progress(max(0, end - covered[chunk.disk.id]))
            covered[chunk.disk.id] = max(end, covered[chunk.disk.id])
    for reblocker in blocks.values():
        reblocker.flush()
    return writer.commit()


class WriterRun:
    """One run that writes snapshots (a backup of many VMs, `repo add` of many archives).

    Entering stores the run's lease, removes the leases of dead runs (and, when no other writer
    or prune is alive, the temporary files killed writers left), and lists the snapshots once,
    after the lease exists, to find each VM's parent. Exiting waits for the workers and drops the
    lease. Several runs, on several machines, may write one repository at once.

    Example::

        with WriterRun(repo) as run:
            writer = run.snapshot(metadata, vm_uuid=uuid, vm_name=name)
            ...
            writer.commit()
    """

    def __init__(self, repo: Repository, *, workers: int | None = None) -> None:
        self.repo = repo
        self.lease = Lease(repo.storage, "backup")
        self.store: ChunkStore | None = None
        self.workers = workers
        self._latest: dict[str, Snapshot] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        storage = self.repo.storage
        self.lease.acquire()
        try:
            now = self.lease.start
            for dead in remove_dead_leases(storage, now):
                log.info("%s: removed the lease of a dead %s run (%s)", storage.location, dead.kind, dead.key)
            if not live_leases(storage, now, exclude=self.lease.key):
                storage.remove_leftovers(now)
            for snapshot in self.repo.snapshots():
                self._latest[snapshot.vm_uuid] = snapshot  # oldest first: the newest wins
            self.store = ChunkStore(self.repo, workers=self.workers)
        except BaseException:
            self.lease.release()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.store is not None:
                self.store.close()
        finally:
            self.lease.release()

    def parent_of(self, vm_uuid: str) -> Snapshot | None:
        """The newest snapshot of the VM that existed when the run started, or that it wrote."""
        with self._lock:
            return self._latest.get(vm_uuid)

    def snapshot(
        self,
        metadata: Metadata,
        *,
        vm_uuid: str,
        vm_name: str,
        time: dt.datetime | None = None,
        source: dict[str, Any] | None = None,
    ) -> SnapshotWriter:
        """A writer for one VM's snapshot, with the VM's latest snapshot as parent."""
        if self.store is None:
            raise StreamStateError("the run has not started")
        return SnapshotWriter(
            self.repo,
            self.store,
            self.lease,
            metadata,
            vm_uuid=vm_uuid,
            vm_name=vm_name,
            time=time,
            source=source,
            parent=self.parent_of(vm_uuid),
            hostname=socket.gethostname(),
            on_commit=self.committed,
        )

    def committed(self, snapshot: Snapshot) -> None:
        """Record a snapshot this run wrote, as the parent of the VM's next one."""
        with self._lock:
            self._latest[snapshot.vm_uuid] = snapshot

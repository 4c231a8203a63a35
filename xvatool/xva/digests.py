"""Chunk verification off the main thread, in a few reused buffers, with results in archive order.

The reader reads a data member into a buffer from `DigestPipeline.acquire`, then hands it over with
`submit` together with the text of its checksum member. The digest is computed by a worker thread
(hashlib and xxhash release the GIL) while the reader goes on reading. Each worker
owns a pair of `SimpleQueue`s and works first in, first out, so the oldest pending chunk's digest is
simply the next item in its worker's outbox: no futures, no locks per chunk. (A `ThreadPoolExecutor`
costs more per 1 MiB chunk than XXH64 itself.) Results are
settled oldest first, at most `lag` (default `HASH_LAG`) chunks behind, so the first mismatch reported
is always the earliest in the archive and memory stays at `lag + 1` buffers of 1 MiB; readers that
run side by side, one per disk, pass a small `lag` (their parallelism is the disks'). Comparison is an exact
string compare, as the host does (docs/xva-format.md §5.3).
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from xvatool._types import ChecksumKind
from xvatool.errors import ChecksumError
from xvatool.xva.checksum import hexdigest
from xvatool.xva.disk import CHUNK_SIZE

__all__ = ["HASH_INLINE_BELOW", "HASH_LAG", "HASH_WORKERS", "DigestPipeline"]

HASH_LAG = 4
"""Chunks whose digest may still be computing while later chunks are read and yielded."""
HASH_WORKERS = 2
"""Hashing threads; the machines this targets have two cores."""
HASH_INLINE_BELOW = 64 * 1024
"""Bytes. Smaller chunks are hashed on the calling thread: a thread hop costs more than the hash."""


@dataclass(slots=True)
class _Pending:
    """A chunk whose digest is (being) computed, with the text its checksum member holds."""

    member: str
    offset: int
    expected: bytes
    buffer: bytearray | None
    digest: str | None = None
    worker: int | None = None


_Job = tuple[ChecksumKind, memoryview] | None


def _hash_worker(inbox: queue.SimpleQueue[_Job], outbox: queue.SimpleQueue[str | BaseException]) -> None:
    while (job := inbox.get()) is not None:
        try:
            outbox.put(hexdigest(*job))
        except BaseException as exc:  # handed to the reader's thread, which re-raises it
            outbox.put(exc)


class DigestPipeline:
    """Buffers for chunk data and the ordered, off-thread verification of their digests.

    `on_mismatch` receives each `ChecksumError` in archive order; it raises it (strict reading)
    or records it. With ``verify=False`` nothing is hashed and a buffer is reused as soon as the
    next one is acquired. Use as a context manager: leaving it stops the workers.

    Example::

        with DigestPipeline(verify=True, on_mismatch=raise_it) as pipeline:
            buffer = pipeline.acquire(size)
            ...  # read the data member into buffer[:size]
            pipeline.submit("Ref:2/00000000", 1536, memoryview(buffer)[:size], buffer, "sha1", text)
            pipeline.settle_all()
    """

    def __init__(
        self,
        *,
        verify: bool,
        on_mismatch: Callable[[ChecksumError], None],
        source: str | None = None,
        lag: int = HASH_LAG,
    ) -> None:
        self.verify = verify
        self._lag = max(1, lag)
        self._on_mismatch = on_mismatch
        self._source = source
        self._pending: collections.deque[_Pending] = collections.deque()
        self._free: list[bytearray] = []
        self._pool_size = 0
        self._lent: bytearray | None = None
        self._inboxes: list[queue.SimpleQueue[_Job]] = []
        self._outboxes: list[queue.SimpleQueue[str | BaseException]] = []
        self._threads: list[threading.Thread] = []
        self._next_worker = 0
        for _ in range(min(HASH_WORKERS, self._lag) if verify else 0):
            inbox: queue.SimpleQueue[_Job] = queue.SimpleQueue()
            outbox: queue.SimpleQueue[str | BaseException] = queue.SimpleQueue()
            thread = threading.Thread(target=_hash_worker, args=(inbox, outbox), name="xva-hash", daemon=True)
            thread.start()
            self._inboxes.append(inbox)
            self._outboxes.append(outbox)
            self._threads.append(thread)

    def acquire(self, size: int) -> bytearray:
        """A buffer of at least `size` bytes that no pending digest or earlier event still uses."""
        if self._lent is not None:
            self.release(self._lent)
            self._lent = None
        if size > CHUNK_SIZE:
            # A foreign writer's big chunk: settle everything in flight, then use a one-off buffer.
            self.settle_all()
            return bytearray(size)
        if not self._free and self._pool_size <= self._lag:
            self._pool_size += 1
            return bytearray(CHUNK_SIZE)
        while not self._free:
            self.settle_oldest()
        return self._free.pop()

    def release(self, buffer: bytearray | None) -> None:
        """Give a buffer back (one-off big buffers are simply dropped)."""
        if buffer is not None and len(buffer) == CHUNK_SIZE:
            self._free.append(buffer)

    def submit(
        self,
        member: str,
        offset: int,
        view: memoryview,
        buffer: bytearray | None,
        kind: ChecksumKind,
        expected: bytes,
    ) -> None:
        """Verify `view` (inside `buffer`, which the pipeline now owns) against `expected`."""
        if not self.verify:
            self._lent = buffer
            return
        entry = _Pending(member, offset, expected, buffer)
        if len(view) < HASH_INLINE_BELOW or not self._inboxes:
            entry.digest = hexdigest(kind, view)
        else:
            entry.worker = self._next_worker
            self._next_worker = (self._next_worker + 1) % len(self._inboxes)
            self._inboxes[entry.worker].put((kind, view))
        self._pending.append(entry)
        # A one-off big buffer is settled at once, so at most one is alive besides the consumer's.
        while len(self._pending) > (self._lag if len(view) <= CHUNK_SIZE else 0):
            self.settle_oldest()

    def settle_oldest(self) -> None:
        entry = self._pending.popleft()
        if entry.worker is not None:
            result = self._outboxes[entry.worker].get()
            if isinstance(result, BaseException):
                raise result
            digest = result
        else:
            assert entry.digest is not None
            digest = entry.digest
        self.release(entry.buffer)
        if entry.expected == digest.encode("ascii"):
            return
        expected = entry.expected.decode("ascii", "backslashreplace")
        exc = ChecksumError(entry.member, expected, digest, offset=entry.offset, file=self._source)
        if expected.strip().lower() == digest.lower():
            exc.code = "checksum-format"
            exc.message += (
                " (equal but for case or whitespace; the host compares exactly, xva-format.md §5.3)"
            )
        self._on_mismatch(exc)

    def settle_all(self) -> None:
        """Check every digest still pending, oldest first."""
        while self._pending:
            self.settle_oldest()

    def close(self) -> None:
        """Drop what is pending (without reporting it) and stop the workers."""
        self._pending.clear()
        for inbox in self._inboxes:
            inbox.put(None)
        for thread in self._threads:
            thread.join()
        self._inboxes, self._outboxes, self._threads = [], [], []

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

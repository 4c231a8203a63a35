"""Read many byte ranges of one export over several NBD connections, in order, surviving drops.

Threading model: one worker thread per connection and the caller's thread as the consumer. The
consumer cuts the ranges into READs (at most `request_size` bytes, split at multiples of it,
512-byte aligned, clamped to the export) and puts them in one shared queue ordered by sequence
number; each worker keeps up to `depth` READs in flight on its connection and hands the answers
back; the consumer yields them in sequence order. At most `window` READs exist between "queued"
and "yielded", so memory is `window` buffers of `request_size` whatever the disk size.

A dropped or stalled connection puts its unanswered READs back at the head of the queue (any
connection may take them) and reconnects under the `RetryPolicy`; answered READs are never sent
again, so a resume costs at most `depth` requests. A connection that made progress before it
dropped starts a fresh retry budget. One that gives up leaves the work to the others; the read
fails when the last one gives up, or at once on a failure reconnecting cannot cure (an error
reply, a protocol violation, a certificate that does not match).
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from xvatool._retry import RetryPolicy
from xvatool.errors import NbdError, NbdProtocolError, StreamStateError, UsageError
from xvatool.nbd.connection import DEFAULT_TIMEOUT_S, MAX_READ_LENGTH, NbdConnection, NbdTarget, tls_context
from xvatool.nbd.protocol import SECTOR_SIZE, split_range

__all__ = [
    "DEFAULT_CONNECTIONS",
    "DEFAULT_REQUEST_SIZE",
    "DEFAULT_WINDOW_BYTES",
    "NbdReader",
    "ReadStats",
]

_log = logging.getLogger(__name__)

DEFAULT_CONNECTIONS = 4
"""Connections per disk (`--nbd-connections`); xapi allows 16 per host in all."""
DEFAULT_REQUEST_SIZE = 2 << 20
"""Bytes per READ: one VHD block, the size Xen Orchestra reads."""
DEFAULT_WINDOW_BYTES = 32 << 20
"""READ data between "queued" and "yielded", over all connections of one reader."""


@dataclass
class ReadStats:
    """What a reader did, for summaries and tests; updated live."""

    requests: int = 0
    """READs answered (re-issued ones count once)."""
    bytes: int = 0
    connections: int = 0
    """Connections opened, reconnections included."""
    reissued: int = 0
    """READs sent again because their connection dropped before answering."""


@dataclass(order=True)
class _Read:
    seq: int
    offset: int = field(compare=False)
    length: int = field(compare=False)


@dataclass(eq=False)
class _Slot:
    """One worker's connection and its READs in flight (seq -> read and buffer); worker-private."""

    index: int
    conn: NbdConnection | None
    in_flight: dict[int, tuple[_Read, bytearray]] = field(default_factory=dict)
    answered: int = 0


class NbdReader:
    """Reads ranges of one export over `connections` NBD connections; a context manager.

    `targets` are the entries of `VDI.get_nbd_info` for one VDI (or one of them): connections go to
    the first that answers. The first connection opens in the constructor, so `size` is known and
    a refused export or a wrong certificate fails here. `allow_plain` permits a server without
    TLS (a pool on an ``insecure_nbd`` network). Example::

        targets = [NbdTarget.from_record(r) for r in session.xenapi.VDI.get_nbd_info(vdi)]
        with NbdReader(targets, connections=4) as reader:
            for offset, data in reader.read_ranges(changed.ranges()):
                store(offset, data)        # data is valid until the next iteration
    """

    def __init__(
        self,
        targets: NbdTarget | Sequence[NbdTarget],
        *,
        connections: int = DEFAULT_CONNECTIONS,
        allow_plain: bool = False,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        request_size: int = DEFAULT_REQUEST_SIZE,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
    ) -> None:
        self._targets = [targets] if isinstance(targets, NbdTarget) else list(targets)
        if not self._targets:
            raise UsageError("no NBD address for this disk (VDI.get_nbd_info returned none)")
        if connections < 1:
            raise ValueError("connections must be 1 or more")
        if request_size % SECTOR_SIZE or not SECTOR_SIZE <= request_size <= MAX_READ_LENGTH:
            raise ValueError(f"request_size must be a multiple of {SECTOR_SIZE} up to {MAX_READ_LENGTH}")
        self._allow_plain = allow_plain
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        policy = retry if retry is not None else RetryPolicy()
        # On the real clock, back off on the stop event so that close() never waits out a backoff.
        self._retry = policy.with_(sleep=self._stop.wait) if policy.sleep is time.sleep else policy
        self._request_size = request_size
        self._window = max(connections, window_bytes // request_size)
        self._depth = -(-self._window // connections)
        self._contexts = {t.cert: tls_context(t.cert) for t in self._targets if t.cert is not None}
        # _cond guards every field below.
        self._cond = threading.Condition()
        self._preferred = 0
        self.stats = ReadStats()
        self._queue: list[_Read] = []  # heap by seq
        self._done: dict[int, tuple[_Read, bytearray]] = {}
        self._free: list[bytearray] = []
        self._discard_below = 0  # answers for seqs below this belong to an abandoned read_ranges
        self._next_seq = 0
        self._reading = False
        self._failure: BaseException | None = None
        self._stopping = False
        self.size = -1
        first = self._retry.run(self._connect, what=f"NBD connection to {self.host}")
        self.size = first.size
        self._slots = [_Slot(i, first if i == 0 else None) for i in range(connections)]
        self._live = connections
        self._threads = [
            threading.Thread(target=self._worker, args=(slot,), name=f"nbd-read-{slot.index}", daemon=True)
            for slot in self._slots
        ]
        for thread in self._threads:
            thread.start()

    @property
    def host(self) -> str:
        """The address in use (``address:port``)."""
        return self._targets[self._preferred].host

    # -- consumer -------------------------------------------------------------------------------------

    def read_ranges(self, ranges: Iterable[tuple[int, int]]) -> Iterator[tuple[int, memoryview]]:
        """Yield ``(offset, data)`` for `ranges` of ``(offset, length)``, in the order given.

        Each range is widened to 512-byte boundaries, clamped to the export's size and cut into
        pieces of at most `request_size` bytes split at multiples of `request_size`; a piece is
        yielded as soon as it and every piece before it have arrived. `data` is a view of a
        reused buffer, valid until the next iteration. A range starting at or past the end of
        the export is a `UsageError`. Leaving the loop early is allowed: queued READs are dropped.
        """
        pieces = self._pieces(ranges)
        with self._cond:
            if self._stopping:
                raise StreamStateError("the NBD reader is closed")
            if self._reading:
                raise StreamStateError("one read_ranges at a time on an NBD reader")
            if self._failure is not None:
                raise self._failure
            self._reading = True
            issued = self._next_seq
        next_out = issued
        exhausted = False
        held: bytearray | None = None
        try:
            while True:
                with self._cond:
                    if held is not None:
                        self._free.append(held)
                        held = None
                    while not exhausted and issued - next_out < self._window:
                        piece = next(pieces, None)
                        if piece is None:
                            exhausted = True
                        else:
                            heapq.heappush(self._queue, _Read(issued, *piece))
                            issued += 1
                    if exhausted and next_out == issued:
                        return
                    self._cond.notify_all()
                    while next_out not in self._done:
                        self._raise_if_failed()
                        self._cond.wait()
                    read, held = self._done.pop(next_out)
                next_out += 1
                yield read.offset, memoryview(held)[: read.length]
        finally:
            with self._cond:
                self._reading = False
                if held is not None:
                    self._free.append(held)
                self._next_seq = self._discard_below = issued
                self._queue = [r for r in self._queue if r.seq >= issued]
                heapq.heapify(self._queue)
                for seq in [s for s in self._done if s < issued]:
                    self._free.append(self._done.pop(seq)[1])

    def _raise_if_failed(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._live == 0:
            raise StreamStateError("the NBD reader was closed while reading")

    def _pieces(self, ranges: Iterable[tuple[int, int]]) -> Iterator[tuple[int, int]]:
        size, step = self.size, self._request_size
        for offset, length in ranges:
            if offset < 0 or length < 0:
                raise ValueError(f"bad range ({offset}, {length})")
            if length == 0:
                continue
            if offset >= size:
                raise UsageError(f"range at offset {offset} starts past the end of the {size}-byte export")
            start = offset - offset % SECTOR_SIZE
            end = min(-(-(offset + length) // SECTOR_SIZE) * SECTOR_SIZE, size)
            yield from split_range(start, end, step)

    # -- workers --------------------------------------------------------------------------------------

    def _worker(self, slot: _Slot) -> None:
        error: BaseException | None = None
        try:
            while not self._retry.run(
                lambda: self._attempt(slot), what=f"NBD connection {slot.index + 1} to {self.host}"
            ):
                pass
        except BaseException as exc:
            error = exc
        finally:
            self._requeue(slot)
            if slot.conn is not None:
                slot.conn.close()
                slot.conn = None
            with self._cond:
                self._live -= 1
                if error is not None and not self._stopping:
                    curable = isinstance(error, NbdError) and error.retryable
                    if curable and self._live > 0:
                        _log.warning(
                            "%s: giving up NBD connection %d (%s); %d others carry on",
                            self.host,
                            slot.index + 1,
                            error,
                            self._live,
                        )
                    elif self._failure is None:
                        self._failure = error
                self._cond.notify_all()

    def _attempt(self, slot: _Slot) -> bool:
        """Serve READs until stopped (True), or until a drop after progress (False: reconnect now).

        A failure before any answer propagates for the retry policy to count.
        """
        if self._stop.is_set():
            return True
        if slot.conn is None:
            slot.conn = self._connect()
        slot.answered = 0
        try:
            self._pump(slot, slot.conn)
            return True
        except NbdError as exc:
            self._requeue(slot)
            slot.conn.close()
            slot.conn = None
            if self._stop.is_set():
                return True
            if exc.retryable and slot.answered:
                _log.warning(
                    "%s: NBD connection %d dropped after %d answers (%s); reconnecting",
                    self.host,
                    slot.index + 1,
                    slot.answered,
                    exc,
                )
                return False
            raise

    def _pump(self, slot: _Slot, conn: NbdConnection) -> None:
        while True:
            batch: list[tuple[_Read, bytearray]] = []
            with self._cond:
                while True:
                    if self._stopping and not slot.in_flight:
                        return
                    while (
                        len(slot.in_flight) + len(batch) < self._depth and self._queue and not self._stopping
                    ):
                        read = heapq.heappop(self._queue)
                        batch.append(
                            (read, self._free.pop() if self._free else bytearray(self._request_size))
                        )
                    if batch or slot.in_flight:
                        break
                    self._cond.wait()
            for read, buf in batch:
                slot.in_flight[read.seq] = (read, buf)
            conn.send_reads((read.seq, read.offset, read.length) for read, _ in batch)
            seq = conn.next_reply(lambda handle: memoryview(slot.in_flight[handle][1]))
            read, buf = slot.in_flight.pop(seq)
            slot.answered += 1
            with self._cond:
                self.stats.requests += 1
                self.stats.bytes += read.length
                if seq < self._discard_below:
                    self._free.append(buf)
                else:
                    self._done[seq] = (read, buf)
                    self._cond.notify_all()

    def _requeue(self, slot: _Slot) -> None:
        with self._cond:
            for read, buf in slot.in_flight.values():
                self._free.append(buf)
                if read.seq >= self._discard_below:
                    heapq.heappush(self._queue, read)
                    self.stats.reissued += 1
            slot.in_flight.clear()
            self._cond.notify_all()

    def _connect(self) -> NbdConnection:
        """Open a connection to the first target that answers, starting with the one last used."""
        count = len(self._targets)
        start = self._preferred
        failure: NbdError | None = None
        for i in range(count):
            index = (start + i) % count
            target = self._targets[index]
            try:
                conn = NbdConnection.open(
                    target,
                    allow_plain=self._allow_plain,
                    timeout_s=self._timeout_s,
                    context=self._contexts.get(target.cert) if target.cert is not None else None,
                )
            except NbdError as exc:
                if not exc.retryable:
                    raise
                failure = exc
                continue
            if self.size >= 0 and conn.size != self.size:
                conn.close()
                raise NbdProtocolError(
                    f"export size changed from {self.size} to {conn.size} bytes between connections",
                    host=target.host,
                )
            with self._cond:
                self._preferred = index
                self.stats.connections += 1
            return conn
        assert failure is not None
        raise failure

    # -- closing --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the workers: idle connections send DISC, busy ones are cut; joins the threads."""
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._stop.set()
            self._cond.notify_all()
            busy = [slot.conn for slot in self._slots if slot.in_flight and slot.conn is not None]
        for conn in busy:
            conn.abort()
        for thread in self._threads:
            thread.join(self._timeout_s + 1)

    def __enter__(self) -> NbdReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

"""The three ways an incremental backup reads one host snapshot disk into a repository disk.

Each reader fills a `DiskFeed` (the repository's `DiskWriter`, chunk indexes ascending) from
`feed.next` on, so when one way fails half-way the next carries on where it stopped:

- `read_changed_over_nbd`: the 1 MiB chunks holding a block `VDI.list_changed_blocks` flags,
  read over NBD (several connections, resumed after drops); every other chunk is the parent
  snapshot's, taken by id without reading it (docs/incremental.md §4, cbt);
- `read_vhd_delta`: ``/export_raw_vdi?format=vhd&base=…``, a differencing VHD of the blocks that
  differ from the previous snapshot; chunks it covers only in part are completed from the
  parent's chunk in the repository, the rest are the parent's (mode B);
- `read_full`: ``/export_raw_vdi?format=tar``, every chunk checked against the host's xxhash as it
  streams; chunks it leaves out are zeros (mode C).

NBD and VHD carry no checksums, so a `ChunkSample` keeps the digests of a random sample of the
chunks stored from them and reads those again over a fresh NBD connection before the snapshot is
committed (`ReadVerifyError` if any differ). `xvatool repo check --read-data` proves the rest of
the repository's side; the host's side has no more to offer.
"""

from __future__ import annotations

import hashlib
import logging
import random
import uuid as uuid_module
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

from xvatool._retry import RetryPolicy
from xvatool._streams import TeeReader
from xvatool.errors import FormatError, NbdProtocolError, ReadVerifyError
from xvatool.images import VhdReader
from xvatool.images.vhd import DISK_DIFFERENCING
from xvatool.nbd import DEFAULT_REQUEST_SIZE, ChangedBlocks, NbdReader, NbdTarget
from xvatool.ops.export import transport_errors
from xvatool.repo.ingest import DiskWriter
from xvatool.repo.objects import CHUNK, ZERO_ID
from xvatool.repo.repository import Repository
from xvatool.xapi.session import Session
from xvatool.xapi.tasks import managed_task, task_reason, wait_task
from xvatool.xapi.transfer import open_download
from xvatool.xva.disk import CHUNK_SIZE
from xvatool.xva.reader import XvaReader

__all__ = [
    "VERIFY_SAMPLE_CHUNKS",
    "VERIFY_SAMPLE_RATE",
    "ChunkSample",
    "DiskFeed",
    "read_changed_over_nbd",
    "read_full",
    "read_vhd_delta",
]

log = logging.getLogger(__name__)

VERIFY_SAMPLE_CHUNKS = 16
"""At most this many chunks of NBD or VHD data are read a second time per disk."""
VERIFY_SAMPLE_RATE = 32
"""...and about one in this many of the chunks read (at least one), so that checking costs a few
per cent of the bytes an incremental backup moves."""
Gaps = Literal["parent", "zeros"]


class DiskFeed:
    """A `DiskWriter` fed in ascending order, with what a chunk not given is: the parent's or zeros.

    `next` is the first chunk not yet decided, which is where a reader taking over starts.
    `moved` counts the bytes that came from the host, failed attempts included. `progress` gets
    the disk bytes each decided chunk covers.
    """

    def __init__(
        self,
        writer: DiskWriter,
        parent_ids: Iterator[bytes] | None,
        *,
        progress: Callable[[int], object] | None = None,
    ) -> None:
        self.writer = writer
        self.size = writer.record.virtual_size
        self.count = -(-self.size // CHUNK_SIZE)
        self.next = 0
        self.moved = 0
        self.gaps: Gaps = "zeros"
        self._parent = parent_ids
        self._parent_pos = 0
        self._parent_id = ZERO_ID
        self._progress = progress

    def length(self, index: int) -> int:
        return min(CHUNK_SIZE, self.size - index * CHUNK_SIZE)

    def parent_id(self, index: int) -> bytes:
        """The parent's chunk id at `index` (not below an index asked before); `ZERO_ID` past its end."""
        while self._parent_pos <= index:
            self._parent_id = next(self._parent, ZERO_ID) if self._parent is not None else ZERO_ID
            self._parent_pos += 1
        return self._parent_id

    def fill_to(self, end: int) -> None:
        """Decide chunks `next` .. `end - 1` by the gap rule."""
        for index in range(self.next, min(end, self.count)):
            if self.gaps == "parent":
                self.writer.reuse(index, self.parent_id(index))
            if self._progress is not None:
                self._progress(self.length(index))
        self.next = max(self.next, min(end, self.count))

    def put(self, index: int, data: bytes | bytearray | memoryview) -> None:
        """Store chunk `index` read now; the chunks before it follow the gap rule."""
        self.fill_to(index)
        self.writer.put(index, data)
        self.next = index + 1
        if self._progress is not None:
            self._progress(len(data))

    def finish(self) -> None:
        self.fill_to(self.count)


class ChunkSample:
    """A uniform random sample (reservoir) of the chunks stored from unverified data, with digests."""

    def __init__(self, size: int = VERIFY_SAMPLE_CHUNKS, *, rng: random.Random | None = None) -> None:
        self.size = size
        self._rng = rng or random.Random()
        self._seen = 0
        self.digests: dict[int, tuple[int, bytes]] = {}  # index -> (length, sha256)

    def offer(self, index: int, data: bytes | bytearray | memoryview) -> None:
        self._seen += 1
        if len(self.digests) < self.size:
            self.digests[index] = (len(data), hashlib.sha256(data).digest())
            return
        slot = self._rng.randrange(self._seen)
        if slot < self.size:
            del self.digests[self._rng.choice(list(self.digests))]
            self.digests[index] = (len(data), hashlib.sha256(data).digest())

    def verify(self, targets: list[NbdTarget], *, vdi: str, allow_plain: bool, retry: RetryPolicy) -> int:
        """Read a share of the sampled chunks again over a new NBD connection; the bytes read.

        The share is `VERIFY_SAMPLE_RATE`-th of the chunks offered (at least one), a uniform pick
        from the reservoir. Raises `ReadVerifyError` naming the first chunk that differs; NBD
        errors propagate.
        """
        if not self.digests:
            return 0
        count = min(len(self.digests), max(1, -(-self._seen // VERIFY_SAMPLE_RATE)))
        picked = sorted(self._rng.sample(sorted(self.digests), count))
        ranges = [(index * CHUNK_SIZE, self.digests[index][0]) for index in picked]
        with NbdReader(targets, connections=1, allow_plain=allow_plain, retry=retry) as reader:
            for offset, data in reader.read_ranges(ranges):
                length, digest = self.digests[offset // CHUNK_SIZE]
                if len(data) != length or hashlib.sha256(data).digest() != digest:
                    raise ReadVerifyError(
                        "the host sent other data when the chunk was read again",
                        host=reader.host,
                        vdi=vdi,
                        offset=offset,
                    )
            return reader.stats.bytes


class _Assembler:
    """Whole 1 MiB chunks from extents in ascending order, for a `DiskFeed`.

    Bytes no extent covers come from `under(index)` (the parent's chunk; None means zeros).
    Extents below `start` (chunks already decided) are dropped.
    """

    def __init__(
        self,
        feed: DiskFeed,
        *,
        start: int,
        under: Callable[[int], bytes | None] | None = None,
        sample: ChunkSample | None = None,
    ) -> None:
        self.feed = feed
        self.start = start
        self.under = under
        self.sample = sample
        self._buf = bytearray(CHUNK_SIZE)
        self._index = -1
        self._covered: list[tuple[int, int]] = []

    def add(self, offset: int, data: memoryview) -> None:
        pos = 0
        while pos < len(data):
            index, within = divmod(offset + pos, CHUNK_SIZE)
            length = self.feed.length(index)
            take = min(len(data) - pos, length - within)
            if take <= 0:
                raise FormatError(f"data past the end of the disk at {offset + pos}", code="disk-bounds")
            if index >= self.start:
                if index != self._index:
                    self.flush()
                    self._index = index
                self._buf[within : within + take] = data[pos : pos + take]
                self._covered.append((within, within + take))
            pos += take

    def flush(self) -> None:
        index = self._index
        if index < 0:
            return
        length = self.feed.length(index)
        view = memoryview(self._buf)[:length]
        holes = _holes(self._covered, length)
        if holes:
            base = self.under(index) if self.under is not None else None
            for lo, hi in holes:
                view[lo:hi] = base[lo:hi] if base is not None else bytes(hi - lo)
        self.feed.put(index, view)
        if self.sample is not None:
            self.sample.offer(index, view)
        self._index = -1
        self._covered.clear()


def _holes(covered: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """The parts of [0, length) that no (ascending) interval in `covered` covers."""
    holes, at = [], 0
    for lo, hi in sorted(covered):
        if lo > at:
            holes.append((at, lo))
        at = max(at, hi)
    if at < length:
        holes.append((at, length))
    return holes


def _from(ranges: Iterable[tuple[int, int]], low: int) -> Iterator[tuple[int, int]]:
    """The ranges clipped to start at byte `low` or later."""
    for offset, length in ranges:
        end = offset + length
        if end > low:
            start = max(offset, low)
            yield start, end - start


def read_changed_over_nbd(
    feed: DiskFeed,
    changed: ChangedBlocks,
    targets: list[NbdTarget],
    *,
    connections: int,
    allow_plain: bool,
    retry: RetryPolicy,
    sample: ChunkSample,
) -> None:
    """Mode A: the chunks with changed blocks over NBD, the others from the parent."""
    feed.gaps = "parent"
    with NbdReader(targets, connections=connections, allow_plain=allow_plain, retry=retry) as reader:
        try:
            if reader.size != feed.size:
                raise NbdProtocolError(
                    f"the NBD export has {reader.size} bytes, the VDI {feed.size}", host=reader.host
                )
            ranges = changed.ranges(granularity=CHUNK_SIZE, max_length=DEFAULT_REQUEST_SIZE)
            for offset, data in reader.read_ranges(_from(ranges, feed.next * CHUNK_SIZE)):
                for at in range(0, len(data), CHUNK_SIZE):
                    index = (offset + at) // CHUNK_SIZE
                    piece = data[at : at + CHUNK_SIZE]
                    feed.put(index, piece)
                    sample.offer(index, piece)
        finally:
            feed.moved += reader.stats.bytes
    feed.finish()


def _download(
    session: Session, params: dict[str, str], label: str, consume: Callable[[TeeReader], None], feed: DiskFeed
) -> None:
    """One ``/export_raw_vdi`` download under its own task, parsed by `consume`.

    `feed.moved` counts the bytes that came, whatever the outcome; a cut stream is a retryable
    `TransferError`, a lasting task failure its `XapiError`.
    """
    with managed_task(session, label) as task:
        with task_reason(session, task), open_download(session, "/export_raw_vdi", params, task=task) as body:
            tee = TeeReader(body)
            try:
                with transport_errors(tee):
                    consume(tee)
            finally:
                feed.moved += tee.count
        wait_task(session, task)


def read_vhd_delta(
    session: Session,
    repo: Repository,
    feed: DiskFeed,
    *,
    vdi_uuid: str,
    base_uuid: str,
    retry: RetryPolicy,
    sample: ChunkSample,
) -> None:
    """Mode B: a differencing VHD against the base snapshot; resumes where a cut stream stopped."""
    feed.gaps = "parent"
    where = f"{session.url}/export_raw_vdi?vdi={vdi_uuid}&base={base_uuid}"

    def under(index: int) -> bytes | None:
        oid = feed.parent_id(index)
        return None if oid == ZERO_ID else repo.load(CHUNK, oid)

    def consume(stream: TeeReader) -> None:
        _apply_delta(VhdReader(stream, source=where), feed, base_uuid, under, sample)

    params = {"vdi": vdi_uuid, "base": base_uuid, "format": "vhd"}
    retry.run(
        lambda: _download(session, params, f"xvatool delta {vdi_uuid}", consume, feed),
        what=f"VHD delta of VDI {vdi_uuid}",
    )


def _apply_delta(
    reader: VhdReader,
    feed: DiskFeed,
    base_uuid: str,
    under: Callable[[int], bytes | None],
    sample: ChunkSample,
) -> None:
    parent = reader.parent
    if reader.disk_type != DISK_DIFFERENCING or parent is None:
        raise FormatError("the host sent no differencing VHD", code="vhd-delta", file=reader.source)
    if parent.uuid != uuid_module.UUID(base_uuid).bytes:
        raise FormatError("the VHD delta names another parent", code="vhd-delta", file=reader.source)
    if reader.virtual_size != feed.size or not reader.ordered:
        raise FormatError("the VHD delta does not fit the disk", code="vhd-delta", file=reader.source)
    assembler = _Assembler(feed, start=feed.next, under=under, sample=sample)
    for offset, data in reader.extents():
        assembler.add(offset, data)
    assembler.flush()
    feed.finish()


def read_full(session: Session, feed: DiskFeed, *, vdi_uuid: str, retry: RetryPolicy) -> None:
    """Mode C: the whole disk as the host's checksummed ``vdi/`` tar; missing chunks are zeros.

    Retried only until the first chunk is stored: chunks are verified a few behind the stream,
    so a stream cut later cannot be resumed without storing an unverified chunk.
    """
    feed.gaps = "zeros"
    where = f"{session.url}/export_raw_vdi?vdi={vdi_uuid}"
    start = feed.next

    def consume(stream: TeeReader) -> None:
        reader = XvaReader.for_disk_stream(stream, size=feed.size, source=where)
        assembler = _Assembler(feed, start=start)
        for chunk in reader.chunks():
            assembler.add(chunk.offset, chunk.data)
        assembler.flush()
        stream.drain()

    def transient(exc: BaseException) -> bool:
        return feed.next == start and retry.transient(exc)

    params = {"vdi": vdi_uuid, "format": "tar"}
    retry.with_(transient=transient, codes=()).run(
        lambda: _download(session, params, f"xvatool read {vdi_uuid}", consume, feed),
        what=f"full read of VDI {vdi_uuid}",
    )
    feed.finish()

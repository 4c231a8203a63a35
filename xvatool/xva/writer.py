"""The streaming XVA writer: ova.xml, then every disk as 1 MiB chunks with checksum members.

The writer is an `Iterator[bytes | memoryview]` producer of the *uncompressed* tar:
the same producer feeds a file, stdout, a compressor or an HTTP request body. Every piece it yields
is valid only until the next one is requested, because chunk data lives in reused buffers;
consumers that keep data must copy it.

What goes on the wire is the host's own dialect (docs/xva-format.md §3, §5, §8): V7 headers,
mode 0400, mtime 0 on chunk members, no directory entries, data padded to 512 bytes and 1024 zero
bytes at the end; ova.xml first; disks in byte-wise id order; chunk members `<id>/%08d` each
followed by its `.xxhash` or `.checksum` member; all-zero chunks omitted except the first and the
last, so the counter of a chunk is its offset // 1 MiB.

Speed: the hash of chunk N runs in a worker thread (hashlib and xxhash release the GIL) while the
main thread hands chunk N to the consumer and reads chunk N+1 into the second of two buffers.

Example::

    with open("vm.xva", "wb") as out:
        stats = write_xva(out, metadata, {"Ref:2": RawFileSource("disk.img")},
                          checksum="xxhash", compression="zstd")
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from xvatool._types import ChecksumKind, Compression, Writable
from xvatool.errors import LocalIOError, UsageError
from xvatool.xva.checksum import SUFFIX_OF_KIND, hexdigest
from xvatool.xva.compression import CompressingWriter
from xvatool.xva.disk import CHUNK_SIZE, ZERO_CHUNK, BlockSource
from xvatool.xva.ovaxml import Metadata
from xvatool.xva.tarstream import BLOCK_SIZE, END_OF_ARCHIVE, padding, v7_header

__all__ = [
    "KEEPALIVE_S",
    "ChunkItem",
    "Piece",
    "ProgressCallback",
    "WriteStats",
    "XvaWriter",
    "archive_pieces",
    "chunk_members",
    "write_pieces",
    "write_xva",
]

Piece = bytes | memoryview
"""One piece of the tar stream; a memoryview is only valid until the next piece is requested."""
ProgressCallback = Callable[[int], None]
"""Called with a number of bytes just covered (disk bytes for the writer); feeds `tqdm.update`."""

COUNTER_LIMIT = 10**8
"""Counters are `%08d` and compared as strings by the importer (xva-format.md §5.1): ~95 TiB."""
KEEPALIVE_S = 10.0
"""Seconds without a written chunk after which the next all-zero chunk is written in full anyway.

A long run of skipped zeros sends nothing; an importing host or a proxy may take the silence for a
dead peer. Full all-zero chunks are always legal (the host's NBD strategy writes them,
xva-format.md §5.2, §8.1) and keep counters equal to offset / 1 MiB, unlike the host's zero-length
keep-alive chunks."""
HASH_AHEAD = 2
"""Chunks fetched and hashing beyond the one being written; with HASH_WORKERS both cores hash."""
HASH_WORKERS = 2
"""Hashing threads; the machines this targets have two cores."""
HASH_INLINE_BELOW = 64 * 1024
"""Chunks smaller than this (bytes) are hashed in the calling thread; a thread hop costs more."""
OVA_XML_NAME = "ova.xml"
_ZERO_VIEW = memoryview(ZERO_CHUNK)


@dataclass(slots=True)
class WriteStats:
    """What a writer produced; updated live while the producer runs."""

    disks: int = 0
    disk_bytes: int = 0
    """Sum of the `virtual_size`s of the disks written (or of the disk offsets covered, for repack)."""
    chunks: int = 0
    """Data members written (each also has a checksum member)."""
    data_bytes: int = 0
    """Bytes inside data members."""
    zero_chunks_skipped: int = 0
    tar_bytes: int = 0
    """Length of the uncompressed tar stream."""
    output_bytes: int = 0
    """Bytes written to the output (after compression); 0 when not written through `write_xva`."""


@dataclass(frozen=True, slots=True)
class ChunkItem:
    """One data member to emit: its name, its bytes and the checksum kind of its checksum member.

    `data` may be shorter than `length`: the rest is zeros (a raw image shorter than its disk).
    `data` only has to stay valid until the next item is requested from the iterator that
    produced it; the emitter copies it. `digest`, when known (zero chunks), skips the hashing;
    the data of such an item must then be immutable and `length` bytes long, and is not copied.
    """

    name: str
    data: bytes | memoryview
    kind: ChecksumKind
    length: int
    digest: str | None = None
    skip_if_zero: bool = False
    """Drop the chunk if it is all zeros (xva-format.md §5.2: allowed for every chunk but a disk's
    first and last)."""


def _checksum_tail(name: str, data_length: int, kind: ChecksumKind, digest: str, mode: int) -> bytes:
    """The data member's padding followed by the whole checksum member (header, digest, padding)."""
    body = digest.encode("ascii")
    return b"".join(
        (
            padding(data_length),
            v7_header(name + SUFFIX_OF_KIND[kind], len(body), mode=mode),
            body,
            padding(len(body)),
        )
    )


def chunk_members(
    name: str, data: bytes | bytearray | memoryview, kind: ChecksumKind, *, mode: int = 0o400
) -> list[Piece]:
    """The tar pieces of one chunk: `[header, data, tail]` (xva-format.md §3.1 `chunk`).

    `tail` holds the data's padding and the checksum member `<name>.xxhash` / `<name>.checksum`
    with its padding. Written one after the other they form the chunk exactly as the host writes
    it; `vdi/00000000` streams (xva-format.md §6) use the same encoding.

    >>> b"".join(chunk_members("vdi/00000000", b"", "xxhash"))[512 + 512 :][:16]
    b'EF46DB3751D8E999'
    """
    view = memoryview(data).cast("B")
    return [
        v7_header(name, len(view), mode=mode),
        view,
        _checksum_tail(name, len(view), kind, hexdigest(kind, view), mode),
    ]


@dataclass(slots=True)
class _Staged:
    item: ChunkItem
    data: memoryview
    future: Future[str] | None
    digest: str | None


class _ChunkEmitter:
    """Turns ChunkItems into tar pieces, hashing the next chunks while the current one goes out.

    Up to `HASH_AHEAD` items beyond the current one are fetched, copied into slots of a ring and
    handed to the hash workers, so both cores hash (hashlib and xxhash release the GIL) while the
    main thread reads and writes. Copying is what makes this safe: upstream may reuse its buffer
    as soon as the next item is requested. Slots are taken round-robin and there is one more slot
    than items in flight, so a slot is only reused once its previous chunk was hashed and the
    consumer asked for the pieces after it.
    """

    def __init__(self, mode: int, stats: WriteStats, keepalive_s: float | None) -> None:
        self._mode = mode
        self._stats = stats
        self._keepalive_s = keepalive_s
        self._last_staged = time.monotonic()
        self._slots = [bytearray(CHUNK_SIZE) for _ in range(HASH_AHEAD + 2)]
        self._next_slot = 0

    def _stage(self, upstream: Iterator[ChunkItem], pool: ThreadPoolExecutor) -> _Staged | None:
        """The next item that is not skipped, copied into a free slot (zero-filled up to
        `length`) and submitted for hashing; items with a known digest are used as they are.
        """
        for item in upstream:
            if item.digest is not None and len(item.data) == item.length:
                return _Staged(item, memoryview(item.data), None, item.digest)
            slot = self._slots[self._next_slot]
            if len(slot) < item.length:  # a foreign archive with larger chunks (repack)
                slot = bytearray(item.length)
                self._slots[self._next_slot] = slot
            n = len(item.data)
            slot[:n] = item.data
            if n < item.length:
                slot[n : item.length] = _ZERO_VIEW[: item.length - n]
            # A bytearray compare runs at memcmp speed; a memoryview compare is ~20x slower.
            # Only full chunks are skippable (a short chunk is always a disk's last).
            if item.skip_if_zero and item.length == len(slot) == CHUNK_SIZE and slot == ZERO_CHUNK:
                quiet_s = time.monotonic() - self._last_staged
                if self._keepalive_s is None or quiet_s < self._keepalive_s:
                    self._stats.zero_chunks_skipped += 1
                    continue
            self._last_staged = time.monotonic()
            self._next_slot = (self._next_slot + 1) % len(self._slots)
            data = memoryview(slot)[: item.length]
            if item.length < HASH_INLINE_BELOW:
                return _Staged(item, data, None, hexdigest(item.kind, data))
            return _Staged(item, data, pool.submit(hexdigest, item.kind, data), None)
        return None

    def pieces(self, items: Iterable[ChunkItem]) -> Iterator[Piece]:
        mode = self._mode
        stats = self._stats
        upstream = iter(items)
        ahead: collections.deque[_Staged] = collections.deque()
        with ThreadPoolExecutor(max_workers=HASH_WORKERS, thread_name_prefix="xva-hash") as pool:
            exhausted = False

            def refill() -> None:
                nonlocal exhausted
                while not exhausted and len(ahead) < HASH_AHEAD + 1:
                    staged = self._stage(upstream, pool)
                    if staged is None:
                        exhausted = True
                    else:
                        ahead.append(staged)

            refill()
            while ahead:
                current = ahead.popleft()
                item, data = current.item, current.data
                header = v7_header(item.name, len(data), mode=mode)
                yield header
                if len(data):
                    yield data
                refill()  # read and submit what follows while this chunk's hash finishes
                digest = current.future.result() if current.future is not None else current.digest
                assert digest is not None
                tail = _checksum_tail(item.name, len(data), item.kind, digest, mode)
                yield tail
                stats.chunks += 1
                stats.data_bytes += len(data)
                stats.tar_bytes += len(header) + len(data) + len(tail)


def archive_pieces(
    ova_xml: bytes,
    chunks: Iterable[ChunkItem],
    *,
    mode: int = 0o400,
    ova_mtime: int = 0,
    stats: WriteStats | None = None,
    keepalive_s: float | None = KEEPALIVE_S,
) -> Iterator[Piece]:
    """The whole tar: ova.xml, the chunk items in the order given, the end-of-archive marker.

    The low-level form for callers that choose the chunks themselves (repack re-emits an archive's
    members with their own counters); `XvaWriter` builds the chunk items from disk sources.
    """
    stats = stats if stats is not None else WriteStats()
    head = v7_header(OVA_XML_NAME, len(ova_xml), mode=mode, mtime=ova_mtime)
    tail = padding(len(ova_xml))
    yield head
    yield ova_xml
    if tail:
        yield tail
    stats.tar_bytes += len(head) + len(ova_xml) + len(tail)
    yield from _ChunkEmitter(mode, stats, keepalive_s).pieces(chunks)
    yield END_OF_ARCHIVE
    stats.tar_bytes += len(END_OF_ARCHIVE)


class XvaWriter:
    """Produces the uncompressed tar of an XVA from metadata and one block source per disk.

    `sources` maps each data-carrying disk id of `metadata.disks` (xva-format.md §4.7) to the
    source of its bytes. A source shorter than the disk's `virtual_size` is read as zero-padded;
    a longer one is an error. Iterate once; `stats` is filled in as the pieces go out.

    Example::

        writer = XvaWriter(metadata, {"Ref:2": BytesSource(image)}, checksum="sha1")
        data = b"".join(writer)
    """

    def __init__(
        self,
        metadata: Metadata,
        sources: Mapping[str, BlockSource],
        *,
        checksum: ChecksumKind = "xxhash",
        mode: int = 0o400,
        ova_mtime: int = 0,
        progress: ProgressCallback | None = None,
        keepalive_s: float | None = KEEPALIVE_S,
    ) -> None:
        if checksum not in SUFFIX_OF_KIND:
            raise UsageError(f"unknown checksum kind {checksum!r} (sha1 or xxhash)")
        disks = list(metadata.disks)
        ids = {disk.id for disk in disks}
        missing = sorted(ids - set(sources))
        extra = sorted(set(sources) - ids)
        if missing:
            raise UsageError(f"no data source for disk {missing[0]}")
        if extra:
            raise UsageError(f"data source given for {extra[0]}, which is not a data-carrying disk")
        for disk in disks:
            size = disk.virtual_size
            # xva-format.md §5.4: every chunk length must be a multiple of 512, so virtual_size must be too.
            if size < 0 or size % BLOCK_SIZE:
                raise UsageError(f"disk {disk.id}: virtual_size {size} is not a multiple of {BLOCK_SIZE}")
            if -(-size // CHUNK_SIZE) > COUNTER_LIMIT:
                raise UsageError(f"disk {disk.id}: {size} bytes need more than {COUNTER_LIMIT} chunks")
            if sources[disk.id].size > size:
                raise UsageError(
                    f"disk {disk.id}: source holds {sources[disk.id].size} bytes, "
                    f"more than its virtual_size {size}"
                )
        self.metadata = metadata
        self.sources = dict(sources)
        self.checksum: ChecksumKind = checksum
        self.mode = mode
        self.ova_mtime = ova_mtime
        self.stats = WriteStats()
        self._progress = progress
        self._keepalive_s = keepalive_s
        self._disks = sorted(disks, key=lambda d: d.id.encode("utf-8"))  # xva-format.md §4.7 byte-wise order
        self._zero_digests: dict[int, str] = {}
        # xva-format.md §5.4: the importer takes the length of the archive's *first* data member as
        # the size of every skipped chunk, in every disk. If that member is short (a first disk under 1 MiB),
        # skipped chunks would be rebuilt too short, so then nothing is skipped.
        first = next((d.virtual_size for d in self._disks if d.virtual_size), CHUNK_SIZE)
        self._skip_zero = first >= CHUNK_SIZE
        self._started = False

    def __iter__(self) -> Iterator[Piece]:
        if self._started:
            raise UsageError("an XvaWriter can be iterated only once")
        self._started = True
        return archive_pieces(
            self.metadata.to_bytes(),
            self._chunk_items(),
            mode=self.mode,
            ova_mtime=self.ova_mtime,
            stats=self.stats,
            keepalive_s=self._keepalive_s,
        )

    def _chunk_items(self) -> Iterator[ChunkItem]:
        for disk in self._disks:
            self.stats.disks += 1
            yield from self._disk_items(disk.id, disk.virtual_size, self.sources[disk.id])
            self.stats.disk_bytes += disk.virtual_size

    def _disk_items(self, disk_id: str, size: int, source: BlockSource) -> Iterator[ChunkItem]:
        """Chunk items of one disk: source blocks, zero chunks where the source has none
        (xva-format.md §5.2).
        """
        if size == 0:
            return  # the importer reads nothing while offset < 0 (xva-format.md §5.4)
        last = (size - 1) // CHUNK_SIZE
        covered = 0  # chunks before this index are written or skipped
        for offset, block in source.blocks():
            index, rest = divmod(offset, CHUNK_SIZE)
            if rest or len(block) > CHUNK_SIZE or index < covered or offset + len(block) > size:
                raise UsageError(
                    f"disk {disk_id}: source block of {len(block)} bytes at offset {offset} "
                    "is not one aligned chunk in order"
                )
            yield from self._zero_run(disk_id, size, covered, index)
            # The emitter drops the chunk if it turns out all zeros and may be skipped.
            yield self._item(disk_id, size, index, block, skippable=index not in (0, last))
            covered = index + 1
        yield from self._zero_run(disk_id, size, covered, last + 1)

    def _zero_run(self, disk_id: str, size: int, start: int, stop: int) -> Iterator[ChunkItem]:
        """Items for the all-zero chunks `start .. stop-1`: only the disk's first and last chunks,
        unless skipping is off (xva-format.md §5.2: any other all-zero chunk may be omitted).
        """
        if start >= stop:
            return
        last = (size - 1) // CHUNK_SIZE
        for index in range(start, stop) if not self._skip_zero else sorted({start, stop - 1}):
            if index in (0, last) or not self._skip_zero:
                yield self._item(disk_id, size, index, None)
            else:
                self._skipped(size, index, 1)
        if self._skip_zero and stop - start > 2:
            self._skipped(size, start + 1, stop - start - 2)

    def _skipped(self, size: int, index: int, count: int) -> None:
        self.stats.zero_chunks_skipped += count
        if self._progress is not None:
            self._progress(min(size, (index + count) * CHUNK_SIZE) - index * CHUNK_SIZE)

    @staticmethod
    def _length(size: int, index: int) -> int:
        """xva-format.md §5.2: every chunk is 1 MiB except a last one of `virtual_size mod 1 MiB` bytes."""
        return min(CHUNK_SIZE, size - index * CHUNK_SIZE)

    def _item(
        self, disk_id: str, size: int, index: int, data: memoryview | None, *, skippable: bool = False
    ) -> ChunkItem:
        length = self._length(size, index)
        name = f"{disk_id}/{index:08d}"
        if self._progress is not None:
            self._progress(length)
        if data is not None:
            return ChunkItem(name, data, self.checksum, length, skip_if_zero=skippable and self._skip_zero)
        digest = self._zero_digests.get(length)
        if digest is None:
            digest = self._zero_digests[length] = hexdigest(self.checksum, _ZERO_VIEW[:length])
        return ChunkItem(name, _ZERO_VIEW[:length], self.checksum, length, digest)


def write_xva(
    out: Writable,
    metadata: Metadata,
    sources: Mapping[str, BlockSource],
    *,
    checksum: ChecksumKind = "xxhash",
    compression: Compression = "none",
    mode: int = 0o400,
    ova_mtime: int = 0,
    progress: ProgressCallback | None = None,
) -> WriteStats:
    """Write a whole XVA to `out` (left open), compressing the tar stream if asked (xva-format.md §2.1).

    Example::

        with open("vm.xva", "wb") as f:
            stats = write_xva(f, metadata, sources, checksum="sha1", compression="gzip")
    """
    writer = XvaWriter(
        metadata, sources, checksum=checksum, mode=mode, ova_mtime=ova_mtime, progress=progress
    )
    return write_pieces(out, writer, writer.stats, compression=compression)


def write_pieces(
    out: Writable, pieces: Iterable[Piece], stats: WriteStats, *, compression: Compression
) -> WriteStats:
    """Feed tar pieces into `out` through the compressor; count the bytes that reach `out`.

    Only errors of writing become `LocalIOError` here; the producer's own errors pass through.
    """
    counted = _CountingWriter(out)
    sink = CompressingWriter(counted, compression)
    for piece in pieces:
        counted.guarded(sink.write, piece)
    counted.guarded(sink.close)
    return dataclasses.replace(stats, output_bytes=counted.count)


class _CountingWriter:
    def __init__(self, sink: Writable) -> None:
        self._sink = sink
        self.count = 0

    @staticmethod
    def guarded(call: Callable[..., object], *args: object) -> None:
        try:
            call(*args)
        except OSError as exc:
            raise LocalIOError(f"cannot write the archive: {exc.strerror or exc}") from exc

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._sink.write(data)
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        self.count += n
        return n

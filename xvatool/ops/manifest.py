"""Backup manifests: the JSON record that makes a backup archive *complete* and checkable.

A backup is `DIR/<name>-<uuid8>/<stamp>.xva` plus `<stamp>.manifest.json` beside it. The manifest
is written last and atomically, so its presence is the commit point: an archive without one is a
leftover of an interrupted run. It records where the VM came from, the archive's sha256, size,
compression and chunk checksum kind, and for every disk the sha256 of its *reconstructed* bytes
(the disk image the host would rebuild, zeros included), so that a restored or extracted disk can be
compared with `sha256sum` long after the source VM is gone.

Digests come from one verifying pass over the written file (`digest_archive`): the raw bytes feed
the archive sha256 while the streaming reader checks every chunk's checksum and feeds the per-disk
hashers. The export layer offers no per-chunk hook, and a pass over the file that was actually
written also proves what is on disk, not only what went over the wire.

Example::

    digest = digest_archive(Path("vm.xva"))
    manifest = verify_backup(Path("backups/web-6f1c4d3e/20261127T051500Z.manifest.json"))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from xvatool._files import write_bytes_atomic
from xvatool._streams import LocalStream, TeeReader, open_local
from xvatool._types import ChecksumKind, Compression
from xvatool.errors import FormatError, LocalIOError, ManifestMismatchError, UsageError, location_context
from xvatool.xva.disk import CHUNK_SIZE, ZERO_CHUNK
from xvatool.xva.ovaxml import DiskInfo, Metadata
from xvatool.xva.reader import Chunk, XvaReader

__all__ = [
    "ARCHIVE_SUFFIX",
    "MANIFEST_FORMAT",
    "MANIFEST_KIND",
    "MANIFEST_SUFFIX",
    "ArchiveDigest",
    "DiskDigest",
    "DiskDigester",
    "InFlightDigest",
    "Manifest",
    "archive_digest",
    "check_archive",
    "digest_archive",
    "load_json",
    "load_manifest",
    "manifest_path_for",
    "resolve_backup",
    "verify_backup",
    "write_manifest",
]

ARCHIVE_SUFFIX = ".xva"
_log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_KIND = "xvatool-backup"
MANIFEST_FORMAT = 1
"""Layout version of the manifest JSON; another version is refused rather than misread."""
MAX_MANIFEST_SIZE = 16 << 20
"""Bytes. A manifest lists a few fields per disk; anything larger is not ours."""


@dataclass(frozen=True)
class DiskDigest:
    """One disk of a backup: identity in the archive and the sha256 of its reconstructed bytes."""

    id: str
    vdi_uuid: str
    name_label: str
    userdevice: str | None
    virtual_size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """Everything needed to trust, find and restore one backup archive."""

    archive: str
    """File name of the archive, relative to the manifest's folder."""
    archive_size: int
    archive_sha256: str
    compression: Compression
    checksum_kind: ChecksumKind | None
    """Chunk checksum kind in the archive (None if it has no data chunks)."""
    vm_uuid: str
    vm_name: str
    source: dict[str, str]
    """`url` (never credentials), `pool_uuid`, `pool_name`, `host_name`."""
    disks: list[DiskDigest]
    started_at: str
    finished_at: str
    tool_version: str
    snapshot: bool = False
    """True when the VM was running and a temporary snapshot was exported instead."""
    extra: dict[str, Any] = field(default_factory=dict)
    snapshot_uuid: str | None = None
    """The temporary snapshot's uuid (destroyed since); the archive describes the VM itself."""

    def to_json(self) -> dict[str, Any]:
        """The manifest as written to disk (keys are stable; see MANIFEST_FORMAT)."""
        value = asdict(self)
        value["kind"] = MANIFEST_KIND
        value["format"] = MANIFEST_FORMAT
        return value

    @classmethod
    def from_json(cls, value: Any, *, path: str) -> Manifest:
        """Parse a manifest document; anything missing or of the wrong type is a `FormatError`."""
        if not isinstance(value, dict) or value.get("kind") != MANIFEST_KIND:
            raise FormatError("not an xvatool backup manifest", code="manifest", file=path)
        if value.get("format") != MANIFEST_FORMAT:
            raise FormatError(
                f"manifest format {value.get('format')!r} is not {MANIFEST_FORMAT}",
                code="manifest",
                file=path,
            )
        try:
            disks = [DiskDigest(**disk) for disk in value["disks"]]
            manifest = cls(
                **{k: value[k] for k in _REQUIRED},
                disks=disks,
                **{k: value[k] for k in ("snapshot", "extra", "snapshot_uuid") if k in value},
            )
        except (KeyError, TypeError) as exc:
            raise FormatError(
                f"manifest field missing or malformed: {exc}", code="manifest", file=path
            ) from exc
        _check_types(manifest, path)
        return manifest


_REQUIRED = (
    "archive", "archive_size", "archive_sha256", "compression", "checksum_kind", "vm_uuid", "vm_name",
    "source", "started_at", "finished_at", "tool_version",
)  # fmt: skip


def _check_types(manifest: Manifest, path: str) -> None:
    ok = (
        isinstance(manifest.archive, str)
        and manifest.archive == Path(manifest.archive).name
        and manifest.archive.endswith(ARCHIVE_SUFFIX)
        and isinstance(manifest.archive_size, int)
        and isinstance(manifest.archive_sha256, str)
        and len(manifest.archive_sha256) == 64
        and all(isinstance(d.virtual_size, int) and isinstance(d.sha256, str) for d in manifest.disks)
    )
    if not ok:
        raise FormatError("manifest names no plain .xva archive or has malformed sizes/digests",
                          code="manifest", file=path)  # fmt: skip


class DiskDigester:
    """sha256 of each disk's reconstructed image, fed from the reader's chunk events.

    The reader yields chunks at increasing offsets per disk (the host's reconstruction rule,
    xva-format.md §5.4); the gaps between them are zeros, and so is everything after the last
    chunk up to `virtual_size`. Disks may not interleave in practice, but each keeps its own
    position, so it would not matter.
    """

    def __init__(self) -> None:
        self._hashers: dict[str, Any] = {}
        self._position: dict[str, int] = {}

    def feed(self, disk_id: str, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Account for `data` at `offset` of disk `disk_id`."""
        hasher = self._hashers.get(disk_id)
        if hasher is None:
            hasher = self._hashers[disk_id] = hashlib.sha256()
            self._position[disk_id] = 0
        position = self._position[disk_id]
        if offset < position:
            raise FormatError(
                f"disk {disk_id}: chunk at offset {offset} overlaps data already seen up to {position}",
                code="chunk-order",
            )
        _hash_zeros(hasher, offset - position)
        hasher.update(data)
        self._position[disk_id] = offset + len(data)

    def digest(self, disk_id: str, virtual_size: int) -> str:
        """The finished sha256 of a disk; zeros are added up to `virtual_size`."""
        hasher = self._hashers.get(disk_id) or hashlib.sha256()
        position = self._position.get(disk_id, 0)
        if position > virtual_size:
            raise FormatError(f"disk {disk_id}: data runs to {position}, past virtual_size {virtual_size}",
                              code="chunk-beyond-size")  # fmt: skip
        _hash_zeros(hasher, virtual_size - position)
        return str(hasher.hexdigest())

    def digests(self, metadata: Metadata) -> dict[str, str]:
        """The finished digest of every disk of `metadata`, by disk id."""
        return {disk.id: self.digest(disk.id, disk.virtual_size) for disk in metadata.disks}


def _hash_zeros(hasher: Any, count: int) -> None:
    while count > 0:
        n = min(count, CHUNK_SIZE)
        hasher.update(ZERO_CHUNK if n == CHUNK_SIZE else memoryview(ZERO_CHUNK)[:n])
        count -= n


@dataclass(frozen=True)
class ArchiveDigest:
    """What one verifying pass over an archive file found."""

    sha256: str
    size: int
    compression: Compression
    checksum_kind: ChecksumKind | None
    vm_uuid: str
    vm_name: str
    disks: list[DiskDigest]


class _HashThread:
    """One thread hashing copies of what it is given, in order; errors go back to the producer.

    The copies go into `BUFFERS` reused 1 MiB buffers (a fresh 1 MiB object per piece would
    cost a page fault per 4 KiB, more than the copy), so the memory held stays fixed.
    """

    BUFFERS = 4
    BUFFER_SIZE = 1 << 20

    def __init__(self, consume: Callable[[str, int, memoryview], None], name: str) -> None:
        self._consume = consume
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(self.BUFFERS):
            self._free.put(bytearray(self.BUFFER_SIZE))
        self._queue: queue.SimpleQueue[tuple[str, int, bytearray, int] | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def put(self, key: str, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        for start in range(0, len(view), self.BUFFER_SIZE):
            piece = view[start : start + self.BUFFER_SIZE]
            if self.error is not None:
                raise self.error
            buffer = self._free.get()  # waits while every buffer is queued: bounded memory
            buffer[: len(piece)] = piece
            self._queue.put((key, offset + start, buffer, len(piece)))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            key, offset, buffer, length = item
            if self.error is None:  # after an error, keep draining so the producer never blocks
                try:
                    self._consume(key, offset, memoryview(buffer)[:length])
                except BaseException as exc:  # handed to the producer
                    self.error = exc
            self._free.put(buffer)

    def finish(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self.error is not None:
            raise self.error


class InFlightDigest:
    """A manifest's digests computed while an export streams, on threads of their own.

    `update(data)` takes the archive's bytes in order (pass the object as a `TeeReader` hasher),
    `chunk(chunk)` the reader's verified chunks. Each copies what it gets into a few reused
    buffers: one thread hashes the archive, one the disks (hashlib releases the GIL), so the work
    overlaps the transfer and each other instead of following them, and nothing is read twice.
    `result(...)` waits for the queues and builds the `ArchiveDigest`; use the object as a
    context manager so the threads always end. Example::

        with InFlightDigest() as digest:
            tee = TeeReader(body, sink, hasher=digest)
            reader = XvaReader(tee)
            for chunk in reader.chunks():
                digest.chunk(chunk)
            tee.drain()
            result = digest.result(tee.count, reader.compression, reader.metadata)
    """

    def __init__(self) -> None:
        self._archive = hashlib.sha256()
        self._disks = DiskDigester()
        self._kinds: set[str] = set()
        self._archive_thread = _HashThread(lambda _k, _o, data: self._archive.update(data), "xvatool-sha256")
        self._disk_thread = _HashThread(self._disks.feed, "xvatool-disk-sha256")

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        """Archive bytes, in order."""
        self._archive_thread.put("", 0, data)

    def chunk(self, chunk: Chunk) -> None:
        """A verified chunk: `chunk.data` at `chunk.offset` of its disk."""
        self._kinds.add(chunk.checksum_kind)
        self._disk_thread.put(chunk.disk.id, chunk.offset, chunk.data)

    def hexdigest(self) -> str:
        """The archive's SHA-256 of what was passed so far (waits for the queue; ends the thread)."""
        self._archive_thread.finish()
        return str(self._archive.hexdigest())

    def result(self, size: int, compression: Compression, metadata: Metadata) -> ArchiveDigest:
        """The digests of everything passed in; `size` is the archive's byte count."""
        sha256 = self.hexdigest()
        self._disk_thread.finish()
        return archive_digest(sha256, size, compression, metadata, self._disks.digests(metadata), self._kinds)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for thread in (self._archive_thread, self._disk_thread):
            with contextlib.suppress(Exception):  # the block's own outcome is the one to report
                thread.finish()


def digest_archive(
    path: str | os.PathLike[str], *, progress: Callable[[int], None] | None = None
) -> ArchiveDigest:
    """Verify every chunk checksum of the archive at `path` and digest the file and its disks.

    One sequential pass, bounded memory; `progress` gets the bytes of the file read. Raises
    `FormatError`/`ChecksumError` (with the file name) on any damage. Example::

        digest = digest_archive("vm.xva")
        print(digest.sha256, [d.sha256 for d in digest.disks])
    """
    path = Path(path)
    with open_local(path, "rb") as f, location_context(file=str(path)):
        hasher = hashlib.sha256()
        tee = TeeReader(LocalStream(f, str(path)), hasher=hasher, progress=progress)
        reader = XvaReader(tee, source=str(path))
        digester = DiskDigester()
        kinds: set[str] = set()
        for chunk in reader.chunks():
            digester.feed(chunk.disk.id, chunk.offset, chunk.data)
            kinds.add(chunk.checksum_kind)
        tee.drain()
        metadata = reader.metadata
        disks = digester.digests(metadata)
        return archive_digest(hasher.hexdigest(), tee.count, reader.compression, metadata, disks, kinds)


def archive_digest(
    sha256: str,
    size: int,
    compression: Compression,
    metadata: Metadata,
    disk_sha256: Mapping[str, str],
    kinds: Collection[str],
) -> ArchiveDigest:
    """The `ArchiveDigest` of an archive: its digest and size, and each disk's digest by disk id."""
    disks = [
        DiskDigest(
            id=disk.id,
            vdi_uuid=disk.vdi_uuid,
            name_label=disk.name_label,
            userdevice=disk.userdevice,
            virtual_size=disk.virtual_size,
            sha256=disk_sha256[disk.id],
        )
        for disk in sorted(metadata.disks, key=_device_order)
    ]
    kind: ChecksumKind | None = None
    if kinds:
        kind = "xxhash" if "xxhash" in kinds else "sha1"
    return ArchiveDigest(
        sha256=sha256,
        size=size,
        compression=compression,
        checksum_kind=kind,
        vm_uuid=metadata.vm.uuid,
        vm_name=metadata.vm.name_label,
        disks=disks,
    )


def _device_order(disk: DiskInfo) -> tuple[int, str]:
    # By position in the VM (userdevice "0" < "1" < "10"), the order users think in.
    device = disk.userdevice or ""
    return (len(device), device)


def manifest_path_for(archive: str | os.PathLike[str]) -> Path:
    """`DIR/<stamp>.xva` → `DIR/<stamp>.manifest.json`."""
    archive = Path(archive)
    stem = archive.name[: -len(ARCHIVE_SUFFIX)] if archive.name.endswith(ARCHIVE_SUFFIX) else archive.name
    return archive.with_name(stem + MANIFEST_SUFFIX)


def write_manifest(path: str | os.PathLike[str], manifest: Manifest) -> None:
    """Write the manifest atomically and durably (`write_bytes_atomic`): its appearance commits the backup."""
    write_bytes_atomic(path, json.dumps(manifest.to_json(), indent=2, sort_keys=True).encode() + b"\n")


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and parse a manifest; `FormatError` if it is not one, `LocalIOError` if unreadable."""
    return Manifest.from_json(load_json(path), path=str(path))


def load_json(path: str | os.PathLike[str]) -> Any:
    """A manifest file's JSON value (at most `MAX_MANIFEST_SIZE` bytes); errors name the file."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_SIZE + 1)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc
    if len(data) > MAX_MANIFEST_SIZE:
        raise FormatError(f"manifest larger than {MAX_MANIFEST_SIZE} bytes", code="manifest", file=str(path))
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"manifest is not JSON: {exc}", code="manifest", file=str(path)) from exc


def resolve_backup(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """`(archive, manifest)` for a path naming either one of a backup's two files."""
    path = Path(path)
    if path.name.endswith(MANIFEST_SUFFIX):
        manifest_path = path
        manifest = load_manifest(path)
        return path.with_name(manifest.archive), manifest_path
    if path.name.endswith(ARCHIVE_SUFFIX):
        return path, manifest_path_for(path)
    raise UsageError(
        f"{path}: expected a backup archive (*{ARCHIVE_SUFFIX}), its manifest (*{MANIFEST_SUFFIX}) "
        "or a VM's backup folder"
    )


def check_archive(
    archive: Path, manifest: Manifest, *, progress: Callable[[int], None] | None = None
) -> None:
    """The archive's size, then its SHA-256, against the manifest: `ManifestMismatchError` if not.

    `progress` gets the bytes read while hashing.
    """
    if not archive.is_file():
        raise LocalIOError("archive named by the manifest is missing", path=str(archive))
    size = archive.stat().st_size
    if size != manifest.archive_size:
        raise ManifestMismatchError(
            "size", f"{manifest.archive_size} bytes", f"{size} bytes", file=str(archive)
        )
    hasher = hashlib.sha256()
    with open_local(archive, "rb") as fh:
        TeeReader(LocalStream(fh, str(archive)), hasher=hasher, progress=progress).drain()
    digest = hasher.hexdigest()
    if digest != manifest.archive_sha256:
        raise ManifestMismatchError("sha256", manifest.archive_sha256, digest, file=str(archive))


def verify_backup(path: str | os.PathLike[str], *, force: bool = False) -> tuple[Path, Manifest]:
    """Check a backup's archive against its manifest (size, then sha256) before anyone uses it.

    Returns the archive path and the manifest. A missing manifest is a `UsageError` (the backup
    never completed, or this is not a backup); a size or digest mismatch is a
    `ManifestMismatchError` naming the archive, so a tampered, truncated or swapped archive is
    refused. With `force` a mismatch is logged as a warning instead (rescuing what a damaged
    backup still holds; the import verifies every chunk anyway).
    """
    archive, manifest_path = resolve_backup(path)
    if not manifest_path.is_file():
        raise UsageError(f"{archive}: no manifest {manifest_path.name} beside it; the backup is incomplete")
    manifest = load_manifest(manifest_path)
    if manifest.archive != archive.name:
        raise FormatError(f"manifest names {manifest.archive!r}, not {archive.name!r}",
                          code="manifest", file=str(manifest_path))  # fmt: skip
    try:
        check_archive(archive, manifest)
    except ManifestMismatchError as exc:
        if not force:
            raise
        _log.warning("%s (going on: --force)", exc)
    return archive, manifest

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

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xvatool._streams import as_readable
from xvatool._types import ChecksumKind, Compression, Readable, SupportsRead
from xvatool.errors import ChecksumError, FormatError, LocalIOError, UsageError
from xvatool.xva.disk import CHUNK_SIZE, ZERO_CHUNK

if TYPE_CHECKING:
    from xvatool.xva.ovaxml import DiskInfo

__all__ = [
    "ARCHIVE_SUFFIX",
    "MANIFEST_FORMAT",
    "MANIFEST_KIND",
    "MANIFEST_SUFFIX",
    "ArchiveDigest",
    "DiskDigest",
    "DiskDigester",
    "HashingReader",
    "Manifest",
    "digest_archive",
    "file_sha256",
    "load_manifest",
    "manifest_path_for",
    "resolve_backup",
    "stream_sha256",
    "verify_backup",
    "write_manifest",
]

ARCHIVE_SUFFIX = ".xva"
MANIFEST_SUFFIX = ".manifest.json"
MANIFEST_KIND = "xvatool-backup"
MANIFEST_FORMAT = 1
"""Layout version of the manifest JSON; another version is refused rather than misread."""
MAX_MANIFEST_SIZE = 16 << 20
"""Bytes. A manifest lists a few fields per disk; anything larger is not ours."""
READ_SIZE = 1 << 20
"""Bytes per read when hashing whole files."""


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
                **{k: value[k] for k in ("snapshot", "extra") if k in value},
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


class HashingReader:
    """A tee: passes reads through and hashes every byte that went by (style.md 7)."""

    def __init__(self, stream: Readable | SupportsRead) -> None:
        self._stream = as_readable(stream)
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size)
        self.hash.update(data)
        self.count += len(data)
        return data

    def readinto(self, buf: bytearray | memoryview, /) -> int:
        n = self._stream.readinto(buf)
        view = memoryview(buf)[:n]
        self.hash.update(view)
        self.count += n
        return n

    def drain(self) -> None:
        """Read (and hash) whatever the consumer left unread, e.g. padding after the tar end."""
        while self.read(READ_SIZE):
            pass


class DiskDigester:
    """sha256 of each disk's reconstructed image, fed from the reader's chunk events.

    The reader yields chunks at increasing offsets per disk (the host's reconstruction rule,
    xva-format.md §3.4); the gaps between them are zeros, and so is everything after the last
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


def digest_archive(path: Path) -> ArchiveDigest:
    """Verify every chunk checksum of the archive at `path` and digest the file and its disks.

    One sequential pass, bounded memory. Raises `FormatError`/`ChecksumError` (with the file name)
    on any damage.
    """
    from xvatool.errors import location_context
    from xvatool.xva.reader import XvaReader

    try:
        f = open(path, "rb")
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc
    try:
        with location_context(file=str(path)):
            tee = HashingReader(f)
            reader = XvaReader(tee, source=str(path))
            digester = DiskDigester()
            kinds: set[str] = set()
            for chunk in reader.chunks():
                digester.feed(chunk.disk.id, chunk.offset, chunk.data)
                kinds.add(chunk.checksum_kind)
            tee.drain()
            metadata = reader.metadata
            disks = [
                DiskDigest(
                    id=disk.id,
                    vdi_uuid=disk.vdi_uuid,
                    name_label=disk.name_label,
                    userdevice=disk.userdevice,
                    virtual_size=disk.virtual_size,
                    sha256=digester.digest(disk.id, disk.virtual_size),
                )
                for disk in sorted(metadata.disks, key=_device_order)
            ]
            kind: ChecksumKind | None = None
            if kinds:
                kind = "xxhash" if "xxhash" in kinds else "sha1"
            return ArchiveDigest(
                sha256=tee.hash.hexdigest(),
                size=tee.count,
                compression=reader.compression,
                checksum_kind=kind,
                vm_uuid=metadata.vm.uuid,
                vm_name=metadata.vm.name_label,
                disks=disks,
            )
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc
    finally:
        f.close()


def _device_order(disk: DiskInfo) -> tuple[int, str]:
    # By position in the VM (userdevice "0" < "1" < "10"), the order users think in.
    device = disk.userdevice or ""
    return (len(device), device)


def file_sha256(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, read in 1 MiB pieces."""
    try:
        with open(path, "rb", buffering=0) as f:
            return stream_sha256(f)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc


def stream_sha256(stream: Readable) -> tuple[str, int]:
    """sha256 and length of the rest of `stream`, read in 1 MiB pieces (bounded memory)."""
    reader = HashingReader(stream)
    buf = bytearray(READ_SIZE)
    while reader.readinto(buf):
        pass
    return reader.hash.hexdigest(), reader.count


def manifest_path_for(archive: Path) -> Path:
    """`DIR/<stamp>.xva` → `DIR/<stamp>.manifest.json`."""
    stem = archive.name[: -len(ARCHIVE_SUFFIX)] if archive.name.endswith(ARCHIVE_SUFFIX) else archive.name
    return archive.with_name(stem + MANIFEST_SUFFIX)


def write_manifest(path: Path, manifest: Manifest) -> None:
    """Write the manifest atomically (`.part`, fsync, rename): its appearance commits the backup."""
    from xvatool._files import atomic_output

    data = json.dumps(manifest.to_json(), indent=2, sort_keys=True).encode() + b"\n"
    with atomic_output(path) as f:
        f.write(data)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; not every platform can open a directory, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_manifest(path: Path) -> Manifest:
    """Read and parse a manifest; `FormatError` if it is not one, `LocalIOError` if unreadable."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_SIZE + 1)
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(path)) from exc
    if len(data) > MAX_MANIFEST_SIZE:
        raise FormatError(f"manifest larger than {MAX_MANIFEST_SIZE} bytes", code="manifest", file=str(path))
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"manifest is not JSON: {exc}", code="manifest", file=str(path)) from exc
    return Manifest.from_json(value, path=str(path))


def resolve_backup(path: Path) -> tuple[Path, Path]:
    """`(archive, manifest)` for a path naming either one of a backup's two files."""
    if path.name.endswith(MANIFEST_SUFFIX):
        manifest_path = path
        manifest = load_manifest(path)
        return path.with_name(manifest.archive), manifest_path
    if path.name.endswith(ARCHIVE_SUFFIX):
        return path, manifest_path_for(path)
    raise UsageError(
        f"{path}: expected a backup archive (*{ARCHIVE_SUFFIX}) or its manifest (*{MANIFEST_SUFFIX})"
    )


def verify_backup(path: Path) -> tuple[Path, Manifest]:
    """Check a backup's archive against its manifest (size, then sha256) before anyone uses it.

    Returns the archive path and the manifest. A missing manifest is a `UsageError` (the backup
    never completed, or this is not a backup); a size or digest mismatch is a `ChecksumError`
    naming the archive, so a tampered or truncated archive is refused.
    """
    archive, manifest_path = resolve_backup(path)
    if not manifest_path.is_file():
        raise UsageError(f"{archive}: no manifest {manifest_path.name} beside it; the backup is incomplete")
    manifest = load_manifest(manifest_path)
    if manifest.archive != archive.name:
        raise FormatError(f"manifest names {manifest.archive!r}, not {archive.name!r}",
                          code="manifest", file=str(manifest_path))  # fmt: skip
    if not archive.is_file():
        raise LocalIOError("archive named by the manifest is missing", path=str(archive))
    size = archive.stat().st_size
    if size != manifest.archive_size:
        raise ChecksumError(
            "(whole archive)", f"{manifest.archive_size} bytes", f"{size} bytes", file=str(archive)
        )
    digest, _ = file_sha256(archive)
    if digest != manifest.archive_sha256:
        raise ChecksumError("(whole archive sha256)", manifest.archive_sha256, digest, file=str(archive))
    return archive, manifest

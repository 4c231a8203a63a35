"""`Repository`: a storage backend plus the keys and rules to read and write its objects.

This is the object every repository operation starts from::

    repo = Repository.open(open_storage("/backups/repo"), passphrase=None)
    for snapshot in repo.snapshots():
        print(snapshot.short_id, snapshot.vm_name)

On remote storage (S3), manifests are kept in the local cache folder (`cache.ObjectCache`), so
listing snapshots costs one LIST and a GET per snapshot not seen before. Each snapshot carries the
verdict of the last data check (`verification`), from one more LIST.

Reads fall back to ``fossils/`` when an object is not in its place: the garbage collector parks
unreferenced objects there before deleting them, and puts back any that a backup running at the
same time turned out to need (`gc`), so a snapshot is readable at every moment in between.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

from xvatool.errors import (
    ObjectCorruptError,
    ObjectMissingError,
    RepositoryError,
    RepositoryPasswordError,
    UsageError,
)
from xvatool.repo.backend import Storage
from xvatool.repo.cache import ObjectCache
from xvatool.repo.config import RepoConfig
from xvatool.repo.keys import DEFAULT_KDF, KdfParams, MasterKey, new_key_block, open_key_block
from xvatool.repo.layout import (
    CONFIG_KEY,
    DATA_PREFIX,
    INDEX_PREFIX,
    SNAPSHOT_PREFIX,
    fossil_key,
    object_key,
    snapshot_key,
)
from xvatool.repo.objects import CHUNK, ID_SIZE, INDEX, SNAPSHOT, Codec
from xvatool.repo.snapshot import Snapshot, SnapshotDisk
from xvatool.repo.storage import open_storage
from xvatool.repo.verification import latest_verifications

__all__ = ["LATEST_PREFIX", "PASSWORD_HINT", "Repository", "init_repository", "open_repository"]

T = TypeVar("T")
LATEST_PREFIX = "latest:"
PASSWORD_HINT = "give its passphrase with XVATOOL_REPO_PASSWORD or --repo-password-file"
LOAD_THREADS = 8
"""Manifests fetched at once when listing snapshots (S3 latency dominates)."""
_HEX_PREFIX = re.compile(r"[0-9a-f]{1,64}")


class Repository:
    """An opened repository. Thread-safe: backends and the codec are."""

    def __init__(self, storage: Storage, config: RepoConfig, key: MasterKey | None) -> None:
        self.storage = storage
        self.config = config
        self.codec = Codec(key, level=config.compression_level)
        self._manifests = ObjectCache(config.id, "snapshots") if storage.remote else None

    @property
    def location(self) -> str:
        return self.storage.location

    # -- opening ----------------------------------------------------------------------------

    @classmethod
    def create(
        cls, storage: Storage, *, passphrase: str | None = None, kdf: KdfParams = DEFAULT_KDF
    ) -> Repository:
        """Initialise an empty location; with `passphrase` the repository is encrypted."""
        if storage.stat(CONFIG_KEY) is not None:
            raise UsageError(f"{storage.location}: a repository already exists here")
        config = RepoConfig.new()
        key = None
        if passphrase is not None:
            block, key = new_key_block(passphrase, config.id, kdf)
            config = RepoConfig.new(block, repo_id=config.id)
        storage.put(CONFIG_KEY, config.to_bytes())
        return cls(storage, config, key)

    @classmethod
    def open(cls, storage: Storage, *, passphrase: str | None = None) -> Repository:
        """Open an existing repository; the passphrase is needed only when it is encrypted."""
        try:
            raw = storage.get(CONFIG_KEY)
        except ObjectMissingError as exc:
            raise RepositoryError(
                "no repository here (create one with `xvatool repo init`)", location=storage.location
            ) from exc
        config = RepoConfig.from_bytes(raw, location=storage.location)
        key = None
        if config.encryption is not None:
            if passphrase is None:
                raise RepositoryPasswordError(
                    f"the repository is encrypted: {PASSWORD_HINT}", location=storage.location
                )
            key = open_key_block(config.encryption, passphrase, config.id, location=storage.location)
        return cls(storage, config, key)

    def close(self) -> None:
        self.storage.close()

    # -- objects ----------------------------------------------------------------------------

    @staticmethod
    def key_of(kind: bytes, object_id: bytes) -> str:
        """The storage key of an object of `kind` (chunks in ``data/``, the rest in ``index/``)."""
        if kind == SNAPSHOT:
            return snapshot_key(object_id.hex())
        return object_key(DATA_PREFIX if kind == CHUNK else INDEX_PREFIX, object_id)

    def object_id(self, data: bytes | bytearray | memoryview) -> bytes:
        return self.codec.object_id(data)

    def put(self, kind: bytes, object_id: bytes, data: bytes | bytearray | memoryview) -> int:
        """Seal and store one object; returns the stored size.

        Only manifests are durable at once: chunks, segments and ova.xml become durable with the
        `Storage.flush` that precedes the commit of the snapshot referencing them.
        """
        blob = self.codec.seal(kind, object_id, data)
        self.storage.put(self.key_of(kind, object_id), blob, durable=kind == SNAPSHOT)
        return len(blob)

    def store(self, kind: bytes, data: bytes | bytearray | memoryview) -> tuple[bytes, int]:
        """Store `data` under its own id unless it is there already: (id, stored bytes added)."""
        object_id = self.object_id(data)
        if self.has(kind, object_id):
            return object_id, 0
        return object_id, self.put(kind, object_id, data)

    def has(self, kind: bytes, object_id: bytes) -> bool:
        """Whether the object is stored (in place; a fossil does not count: it may be deleted)."""
        return self.storage.stat(self.key_of(kind, object_id)) is not None

    def load(self, kind: bytes, object_id: bytes) -> bytes:
        """The verified plaintext of an object, from its place or else from ``fossils/``."""
        key = self.key_of(kind, object_id)
        return self.unseal(kind, object_id, self.fetch(key), key)

    def fetch(self, key: str) -> bytes:
        """The stored bytes of an object, from its place or else from ``fossils/``."""
        return self._placed(key, self.storage.get)

    def _placed(self, key: str, read: Callable[[str], T]) -> T:
        """`read` of the object in its place, or else of its fossil."""
        try:
            return read(key)
        except ObjectMissingError:
            try:
                return read(fossil_key(key))
            except ObjectMissingError:
                raise ObjectMissingError("object is missing", location=self.location, key=key) from None

    def load_into(self, kind: bytes, object_id: bytes, first: bytearray, second: bytearray) -> memoryview:
        """`load` into two reused buffers (`Codec.open_into`): the verified plaintext as a view
        of one of them, valid until either is reused.
        """
        key = self.key_of(kind, object_id)
        length = self._placed(key, lambda name: self.storage.get_into(name, first))
        if length > len(first):
            raise ObjectCorruptError(
                f"object of {length} bytes is larger than any of its kind", location=self.location, key=key
            )
        with self._located():
            return self.codec.open_into(kind, object_id, first, length, second, key=key)

    def unseal(self, kind: bytes, object_id: bytes, blob: bytes, key: str) -> bytes:
        """The verified plaintext of stored bytes (`Codec.open`), errors naming the repository."""
        with self._located():
            return self.codec.open(kind, object_id, blob, key=key)

    @contextmanager
    def _located(self) -> Iterator[None]:
        """Errors of the codec name this repository."""
        try:
            yield
        except RepositoryError as exc:
            exc.location = exc.location or self.location
            raise

    # -- snapshots --------------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> Snapshot:
        """Store a manifest (the commit point of a backup); sets and returns with its id."""
        data = snapshot.to_bytes()
        object_id = self.object_id(data)
        self.put(SNAPSHOT, object_id, data)
        snapshot.id = object_id.hex()
        return snapshot

    def snapshot_ids(self) -> list[str]:
        return sorted(info.key[len(SNAPSHOT_PREFIX) :] for info in self.storage.list(SNAPSHOT_PREFIX))

    def load_snapshot(self, snapshot_id: str) -> Snapshot:
        """A manifest by id, from the local cache when the storage is remote and it was seen."""
        object_id = bytes.fromhex(snapshot_id)
        key = snapshot_key(snapshot_id)
        cache = self._manifests
        if cache is not None:
            blob = cache.get(snapshot_id)
            if blob is not None:
                try:
                    return Snapshot.from_bytes(self.unseal(SNAPSHOT, object_id, blob, key), snapshot_id)
                except ObjectCorruptError:
                    cache.drop(snapshot_id)  # a damaged copy: fetch it again
        blob = self.fetch(key)
        snapshot = Snapshot.from_bytes(self.unseal(SNAPSHOT, object_id, blob, key), snapshot_id)
        if cache is not None:
            cache.put(snapshot_id, blob)
        return snapshot

    def snapshots(self, *, vm: str | None = None) -> list[Snapshot]:
        """Every snapshot, oldest first, with its last verification; `vm` keeps those of one VM
        (uuid or name).

        Only manifests are read (never chunk data), several at a time, from the local cache
        when the storage is remote and a manifest was seen before.
        """
        ids = self.snapshot_ids()
        if self._manifests is not None:
            self._manifests.retain(ids)
        with ThreadPoolExecutor(max_workers=LOAD_THREADS, thread_name_prefix="repo-list") as pool:
            found = list(pool.map(self._load_if_present, ids))
        verdicts = latest_verifications(self.storage)
        result = [s for s in found if s is not None and (vm is None or vm in (s.vm_uuid, s.vm_name))]
        for snapshot in result:
            snapshot.verification = verdicts.get(snapshot.id)
        return sorted(result, key=lambda s: (s.time, s.id))

    def _load_if_present(self, snapshot_id: str) -> Snapshot | None:
        try:
            return self.load_snapshot(snapshot_id)
        except ObjectMissingError:  # forgotten while we listed
            return None

    def find_snapshot(self, spec: str) -> Snapshot:
        """A snapshot by unique id prefix, or ``latest:VM`` (newest of a VM by uuid or name)."""
        if spec.startswith(LATEST_PREFIX):
            vm = spec[len(LATEST_PREFIX) :]
            candidates = self.snapshots(vm=vm)
            if not candidates:
                raise UsageError(f"{self.location}: no snapshot of VM {vm!r}")
            uuids = {s.vm_uuid for s in candidates}
            if len(uuids) > 1:
                raise UsageError(
                    f"{len(uuids)} VMs are named {vm!r}; give its uuid: {', '.join(sorted(uuids))}"
                )
            return candidates[-1]
        prefix = spec.lower()
        if not _HEX_PREFIX.fullmatch(prefix):
            raise UsageError(f"{spec!r} is neither a snapshot id (prefix) nor latest:VM")
        matches = [i for i in self.snapshot_ids() if i.startswith(prefix)]
        if not matches:
            raise UsageError(f"{self.location}: no snapshot {spec!r}")
        if len(matches) > 1:
            raise UsageError(
                f"snapshot id prefix {spec!r} is ambiguous ({len(matches)} snapshots); give more digits"
            )
        return self.load_snapshot(matches[0])

    # -- disk indexes -----------------------------------------------------------------------

    def disk_chunk_ids(self, disk: SnapshotDisk) -> Iterator[bytes]:
        """The chunk ids of a disk in order, one per 1 MiB (`objects.ZERO_ID` for zeros); streams
        one index segment at a time.
        """
        for segment in disk.segments:
            data = self.load(INDEX, bytes.fromhex(segment))
            view = memoryview(data)
            for start in range(0, len(data), ID_SIZE):
                yield bytes(view[start : start + ID_SIZE])


def open_repository(
    location: str | os.PathLike[str], *, passphrase: str | None = None, s3_endpoint: str | None = None
) -> Repository:
    """Open the repository at a folder or ``s3://BUCKET/PREFIX``.

    Example::

        repo = open_repository("s3://backups/xen", passphrase=secret, s3_endpoint="https://minio:9000")
    """
    storage = open_storage(location, s3_endpoint=s3_endpoint)
    try:
        return Repository.open(storage, passphrase=passphrase)
    except BaseException:
        storage.close()
        raise


def init_repository(
    location: str | os.PathLike[str],
    *,
    passphrase: str | None = None,
    s3_endpoint: str | None = None,
    kdf: KdfParams = DEFAULT_KDF,
) -> Repository:
    """Create a repository (encrypted when `passphrase` is given) at an empty location."""
    storage = open_storage(location, s3_endpoint=s3_endpoint)
    try:
        return Repository.create(storage, passphrase=passphrase, kdf=kdf)
    except BaseException:
        storage.close()
        raise

"""The one small interface every repository backend offers (`Storage`), and what it lists.

A repository is a flat namespace of immutable objects named by ``/``-separated keys (`layout`).
Backends only store bytes: they know nothing of chunks, encryption or snapshots. What the rest
of `xvatool.repo` relies on, and every backend guarantees:

- `put` is atomic and durable: a reader sees the whole new object or the old state, never a
  part, and the object survives a crash once `put` returned (local: temporary name, rename,
  and fsync or the `flush` before a commit; S3: an object appears only when its upload completes).
- listings and reads are strongly consistent with earlier writes (true of local file systems,
  AWS S3 since December 2020, MinIO and Ceph RGW).
- `mtime` is the *storage's* clock (file system or S3 ``LastModified``), never the caller's, so
  that leases and the garbage collector of several machines compare times from one clock.

Backends live in `local` and `s3`; `storage.open_storage` picks one by location.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ObjectInfo", "Storage"]


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One stored object: its key (relative to the repository), size in bytes and storage mtime."""

    key: str
    size: int
    mtime: float
    """Seconds since the epoch on the storage's clock."""


class Storage(Protocol):
    """What a backend offers; see the module docstring for the guarantees."""

    location: str
    """The repository location as the user wrote it, for messages."""
    parallelism: int
    """Objects worth moving at once: the CPU bounds a local disk, latency bounds S3."""
    remote: bool
    """Whether a read costs a network round trip: then immutable objects are worth caching
    locally (`cache.ObjectCache`)."""

    def get(self, key: str) -> bytes:
        """The object's bytes; `ObjectMissingError` if it does not exist."""
        ...

    def get_into(self, key: str, buffer: bytearray) -> int:
        """Read the object into the start of `buffer` and return its length (reads of chunks
        reuse their buffers); an object longer than `buffer` is not read and its length returned.
        `ObjectMissingError` if it does not exist.
        """
        ...

    def put(self, key: str, data: bytes | bytearray | memoryview, *, durable: bool = True) -> None:
        """Store `data` under `key`, atomically, replacing any older object; durably unless
        ``durable=False``, which defers durability to the next `flush`.
        """
        ...

    def flush(self) -> None:
        """Make every earlier `put` durable (one file system sync; nothing to do on S3)."""
        ...

    def stat(self, key: str) -> ObjectInfo | None:
        """Size and mtime of the object, or None if it does not exist."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; an object already gone is fine."""
        ...

    def move(self, src: str, dst: str, *, durable: bool = True) -> None:
        """Rename an object (local: atomic; S3: server-side copy, then delete of `src`);
        ``durable=False`` leaves the durability of the rename to the next `flush`.
        """
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object whose key starts with `prefix` (a folder such as ``data/``), any order."""
        ...

    def remove_leftovers(self, before: float) -> int:
        """Remove what killed writers left behind before storage time `before` (temporary files,
        unfinished multipart uploads); returns how many were removed.
        """
        ...

    def close(self) -> None:
        """Release connections."""
        ...

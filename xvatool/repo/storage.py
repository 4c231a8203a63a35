"""The one small interface every repository backend offers, and opening a backend by location.

A repository is a flat namespace of immutable objects named by ``/``-separated keys (`layout`).
Backends only store bytes: they know nothing of chunks, encryption or snapshots. What the rest
of `xvatool.repo` relies on, and every backend guarantees:

- `put` is atomic and durable: a reader sees the whole new object or the old state, never a
  part, and the object survives a crash once `put` returned (local: temporary name, fsync,
  rename, fsync of the folder; S3: an object appears only when its upload completes).
- listings and reads are strongly consistent with earlier writes (true of local file systems,
  AWS S3 since December 2020, MinIO and Ceph RGW).
- `mtime` is the *storage's* clock (file system or S3 ``LastModified``), never the caller's, so
  that leases and the garbage collector of several machines compare times from one clock.

Example::

    storage = open_storage("s3://backups/xen", s3_endpoint="https://minio:9000")
    storage.put("config", data)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from xvatool.errors import UsageError

__all__ = ["S3_SCHEME", "ObjectInfo", "Storage", "open_storage", "parse_s3_location"]

S3_SCHEME = "s3://"


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

    def get(self, key: str) -> bytes:
        """The object's bytes; `ObjectMissingError` if it does not exist."""
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

    def move(self, src: str, dst: str) -> None:
        """Rename an object (local: atomic; S3: server-side copy, then delete of `src`)."""
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


def parse_s3_location(location: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → (``bucket``, ``some/prefix/``); the prefix may be empty."""
    rest = location[len(S3_SCHEME) :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise UsageError(f"{location}: no bucket name (expected s3://BUCKET/PREFIX)")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def open_storage(location: str | os.PathLike[str], *, s3_endpoint: str | None = None) -> Storage:
    """The backend for a location: ``s3://BUCKET/PREFIX`` or a local folder.

    `s3_endpoint` (``--s3-endpoint`` / ``XVATOOL_S3_ENDPOINT``) points S3 at MinIO, Ceph RGW or
    any S3-compatible service; credentials come from the standard AWS chain (environment, shared
    config and credentials files, instance metadata). The S3 client library is imported only
    here, so commands that never touch S3 start fast.
    """
    text = os.fspath(location)
    if text.startswith(S3_SCHEME):
        from xvatool.repo.s3 import S3Storage

        bucket, prefix = parse_s3_location(text)
        return S3Storage(text, bucket, prefix, endpoint=s3_endpoint)
    if "://" in text:
        raise UsageError(f"{text}: unknown repository scheme (use a folder or s3://BUCKET/PREFIX)")
    from xvatool.repo.local import LocalStorage

    return LocalStorage(text)

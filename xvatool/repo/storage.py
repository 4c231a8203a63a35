"""Opening a repository backend by location: a local folder or ``s3://BUCKET/PREFIX``.

The interface the backends share, and its guarantees, is `backend.Storage`.

Example::

    storage = open_storage("s3://backups/xen", s3_endpoint="https://minio:9000")
    storage.put("config", data)
"""

from __future__ import annotations

import os

from xvatool.errors import UsageError
from xvatool.repo.backend import Storage
from xvatool.repo.local import LocalStorage

__all__ = ["S3_SCHEME", "open_storage", "parse_s3_location"]

S3_SCHEME = "s3://"


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
    config and credentials files, instance metadata).
    """
    text = os.fspath(location)
    if text.startswith(S3_SCHEME):
        # Lazy on purpose: boto3 costs ~0.2 s to import, which commands on a local folder skip.
        from xvatool.repo.s3 import S3Storage

        bucket, prefix = parse_s3_location(text)
        return S3Storage(text, bucket, prefix, endpoint=s3_endpoint)
    if "://" in text:
        raise UsageError(f"{text}: unknown repository scheme (use a folder or s3://BUCKET/PREFIX)")
    return LocalStorage(text)

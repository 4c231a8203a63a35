"""Where each kind of object lives in a repository: the key names, the same on disk and on S3.

::

    config                         plaintext JSON: format, repository id, key material (`config`)
    data/<id[:2]>/<id>             disk chunks, one object per 1 MiB chunk
    index/<id[:2]>/<id>            disk index segments and ova.xml blobs
    snapshots/<id>                 snapshot manifests
    trash/<id>                     manifests forgotten while a backup may still rely on them
    verify/<id>.<state>.<time>     the verdict of the last data check of snapshot <id> (`verification`)
    locks/backup-<rand>            leases of running backups (`lease`)
    locks/prune-<rand>             the lease of a running prune
    locks/collection               the pending fossil collection of the garbage collector (`gc`)
    fossils/data/…, fossils/index/…  objects the garbage collector set aside, not yet deleted

Ids are 64 lower-case hex digits (SHA-256, or HMAC-SHA256 when encrypted). Two hex digits of
fan-out keep folders small on local disks and spread S3 keys over partitions.
"""

from __future__ import annotations

from xvatool.errors import ObjectCorruptError

__all__ = [
    "COLLECTION_KEY",
    "CONFIG_KEY",
    "DATA_PREFIX",
    "FOSSIL_PREFIX",
    "ID_HEX_LENGTH",
    "INDEX_PREFIX",
    "LOCK_PREFIX",
    "SNAPSHOT_PREFIX",
    "TRASH_PREFIX",
    "VERIFY_PREFIX",
    "fossil_key",
    "id_of_key",
    "object_key",
    "snapshot_key",
    "trash_key",
    "unfossil_key",
]

CONFIG_KEY = "config"
DATA_PREFIX = "data/"
INDEX_PREFIX = "index/"
SNAPSHOT_PREFIX = "snapshots/"
TRASH_PREFIX = "trash/"
VERIFY_PREFIX = "verify/"
LOCK_PREFIX = "locks/"
COLLECTION_KEY = "locks/collection"
FOSSIL_PREFIX = "fossils/"
ID_HEX_LENGTH = 64
_HEX = frozenset("0123456789abcdef")


def object_key(prefix: str, object_id: bytes) -> str:
    """``data/ab/ab12…`` for a chunk id under `DATA_PREFIX`, likewise for `INDEX_PREFIX`."""
    hexid = object_id.hex()
    return f"{prefix}{hexid[:2]}/{hexid}"


def snapshot_key(snapshot_id: str) -> str:
    return SNAPSHOT_PREFIX + snapshot_id


def trash_key(snapshot_id: str) -> str:
    return TRASH_PREFIX + snapshot_id


def fossil_key(key: str) -> str:
    """Where the garbage collector parks `key` (``data/ab/…`` → ``fossils/data/ab/…``)."""
    return FOSSIL_PREFIX + key


def unfossil_key(key: str) -> str:
    """The original key of a fossil."""
    return key[len(FOSSIL_PREFIX) :]


def id_of_key(key: str) -> bytes:
    """The 32-byte id a ``…/<64 hex>`` key names; `ObjectCorruptError` for a foreign name."""
    name = key.rpartition("/")[2]
    if len(name) != ID_HEX_LENGTH or not set(name) <= _HEX:
        raise ObjectCorruptError("not an object name of this repository", key=key)
    return bytes.fromhex(name)

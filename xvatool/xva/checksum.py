"""Chunk digests in the exact form the host compares them (docs/xva-format.md §5.3).

xapi compares the checksum member's text with its own digest as plain strings, so case matters:
SHA-1 is lower-case hex, XXH64 (seed 0, classic, not XXH3) upper-case hex of the big-endian value.
No newline, no whitespace.
"""

from __future__ import annotations

import hashlib

import xxhash

from xvatool._types import ChecksumKind, Hasher

__all__ = [
    "CHECKSUM_KINDS",
    "DIGEST_LENGTH",
    "SUFFIX_OF_KIND",
    "format_digest",
    "hexdigest",
    "kind_of_suffix",
    "new_hasher",
    "split_checksum_name",
]

SUFFIX_OF_KIND: dict[ChecksumKind, str] = {"sha1": ".checksum", "xxhash": ".xxhash"}
_KIND_OF_SUFFIX: dict[str, ChecksumKind] = {v: k for k, v in SUFFIX_OF_KIND.items()}
CHECKSUM_KINDS: tuple[ChecksumKind, ...] = ("sha1", "xxhash")
DIGEST_LENGTH: dict[ChecksumKind, int] = {"sha1": 40, "xxhash": 16}


def new_hasher(kind: ChecksumKind) -> Hasher:
    """A fresh incremental hasher for `kind`; finish it with `format_digest`."""
    if kind == "sha1":
        return hashlib.sha1(usedforsecurity=False)
    return xxhash.xxh64(seed=0)


def format_digest(kind: ChecksumKind, hasher: Hasher) -> str:
    """The digest text exactly as a host writes it in the checksum member."""
    digest = hasher.hexdigest()
    return digest.upper() if kind == "xxhash" else digest.lower()


def hexdigest(kind: ChecksumKind, data: bytes | bytearray | memoryview) -> str:
    """Digest of one chunk as the host writes it.

    >>> hexdigest("xxhash", b"")
    'EF46DB3751D8E999'
    >>> hexdigest("sha1", b"")
    'da39a3ee5e6b4b0d3255bfef95601890afd80709'
    """
    if kind == "sha1":
        return hashlib.sha1(data, usedforsecurity=False).hexdigest()
    return xxhash.xxh64_hexdigest(data, seed=0).upper()


def kind_of_suffix(suffix: str) -> ChecksumKind | None:
    """`.checksum` → sha1, `.xxhash` → xxhash, anything else → None (the host rejects it)."""
    return _KIND_OF_SUFFIX.get(suffix)


def split_checksum_name(name: str) -> tuple[str, ChecksumKind] | None:
    """Split `Ref:2/00000000.xxhash` into (`Ref:2/00000000`, "xxhash"); None if not a checksum name."""
    for suffix, kind in _KIND_OF_SUFFIX.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], kind
    return None

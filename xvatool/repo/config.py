"""The ``config`` object: what a repository is, readable without any key.

Plain JSON, written once by `repo init` (never changed afterwards, so several machines can cache
it)::

    {"format": "xvatool-repository", "version": 1, "id": "<32 hex>",
     "created": "2026-11-27T05:15:00.000000Z", "chunk_size": 1048576, "segment_chunks": 16384,
     "compression": {"codec": "zstd", "level": 1}, "ids": "sha256" | "hmac-sha256",
     "encryption": null | <key block, see `keys`>}
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from typing import Any

from xvatool.errors import ObjectCorruptError
from xvatool.repo.objects import COMPRESSION_LEVEL
from xvatool.repo.snapshot import format_time
from xvatool.xva.disk import CHUNK_SIZE

__all__ = ["FORMAT_NAME", "MAX_CONFIG_SIZE", "SEGMENT_CHUNKS", "RepoConfig"]

FORMAT_NAME = "xvatool-repository"
FORMAT_VERSION = 1
SEGMENT_CHUNKS = 16384
"""Chunk ids per index segment: 16 GiB of disk, 512 KiB of ids."""
MAX_CONFIG_SIZE = 64 << 10


@dataclass(frozen=True)
class RepoConfig:
    """The parsed ``config``."""

    id: str
    created: str
    encryption: dict[str, Any] | None
    chunk_size: int = CHUNK_SIZE
    segment_chunks: int = SEGMENT_CHUNKS
    compression_level: int = COMPRESSION_LEVEL

    @classmethod
    def new(cls, encryption: dict[str, Any] | None = None, *, repo_id: str | None = None) -> RepoConfig:
        return cls(
            id=repo_id or os.urandom(16).hex(),
            created=format_time(dt.datetime.now(dt.UTC)),
            encryption=encryption,
        )

    @property
    def encrypted(self) -> bool:
        return self.encryption is not None

    def to_bytes(self) -> bytes:
        document = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "id": self.id,
            "created": self.created,
            "chunk_size": self.chunk_size,
            "segment_chunks": self.segment_chunks,
            "compression": {"codec": "zstd", "level": self.compression_level},
            "ids": "hmac-sha256" if self.encrypted else "sha256",
            "encryption": self.encryption,
        }
        return json.dumps(document, indent=2, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def from_bytes(cls, data: bytes, *, location: str | None = None) -> RepoConfig:
        """Parse ``config``; anything unexpected is an `ObjectCorruptError` naming it."""
        try:
            if len(data) > MAX_CONFIG_SIZE:
                raise ValueError("config is too large")
            doc = json.loads(data)
            if doc.get("format") != FORMAT_NAME:
                raise ValueError("not an xvatool repository")
            if doc.get("version") != FORMAT_VERSION:
                raise ValueError(f"repository format version {doc.get('version')!r} is not supported")
            config = cls(
                id=str(doc["id"]),
                created=str(doc["created"]),
                encryption=doc.get("encryption"),
                chunk_size=int(doc["chunk_size"]),
                segment_chunks=int(doc["segment_chunks"]),
                compression_level=int(doc["compression"]["level"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ObjectCorruptError(f"bad config: {exc}", location=location, key="config") from exc
        if config.chunk_size != CHUNK_SIZE or not 0 < config.segment_chunks <= 1 << 17:
            raise ObjectCorruptError("unsupported chunk or segment size", location=location, key="config")
        return config

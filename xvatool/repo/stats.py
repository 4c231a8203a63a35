"""`stats`: how much the repository holds, and how much deduplication and compression save.

Reads the manifests and lists the objects; never reads chunk data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from xvatool.repo.layout import DATA_PREFIX
from xvatool.repo.repository import Repository

__all__ = ["RepoStats", "repo_stats"]


@dataclass(frozen=True)
class RepoStats:
    snapshots: int
    chunks: int
    """Chunk objects stored (each distinct 1 MiB of data once)."""
    logical_bytes: int
    """The disks' virtual sizes over every snapshot: what restoring them all would write."""
    data_bytes: int
    """Non-zero chunk bytes over every snapshot, before deduplication."""
    stored_bytes: int
    """Everything the repository occupies on its storage."""
    chunk_bytes: int
    """The part of `stored_bytes` taken by chunks."""

    def to_json(self) -> dict[str, Any]:
        ratio = self.data_bytes / self.stored_bytes if self.stored_bytes else 0.0
        return {
            "snapshots": self.snapshots,
            "chunks": self.chunks,
            "logical_bytes": self.logical_bytes,
            "data_bytes": self.data_bytes,
            "stored_bytes": self.stored_bytes,
            "chunk_bytes": self.chunk_bytes,
            "saving_ratio": round(ratio, 3),
        }


def repo_stats(repo: Repository) -> RepoStats:
    """Count snapshots, chunks and bytes."""
    snapshots = repo.snapshots()
    chunks = chunk_bytes = stored = 0
    for info in repo.storage.list(""):
        stored += info.size
        if info.key.startswith(DATA_PREFIX):
            chunks += 1
            chunk_bytes += info.size
    return RepoStats(
        snapshots=len(snapshots),
        chunks=chunks,
        logical_bytes=sum(s.logical_bytes for s in snapshots),
        data_bytes=sum(s.data_bytes for s in snapshots),
        stored_bytes=stored,
        chunk_bytes=chunk_bytes,
    )

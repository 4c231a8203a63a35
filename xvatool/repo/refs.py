"""What snapshots reference: marking their objects into `IdTables` (for `check` and `prune`).

A snapshot references its ova.xml (``index/``), its index segments (``index/``) and, through
them, its chunks (``data/``). Segments shared by several snapshots (an unchanged disk shares all
of them with its previous snapshot) are read once per run.
"""

from __future__ import annotations

from collections.abc import Iterator

from xvatool.errors import RepositoryError
from xvatool.repo.idtable import IdTables
from xvatool.repo.layout import SNAPSHOT_PREFIX, TRASH_PREFIX
from xvatool.repo.objects import ID_SIZE, INDEX, SNAPSHOT, ZERO_ID
from xvatool.repo.repository import Repository
from xvatool.repo.snapshot import Snapshot

__all__ = ["DATA_REFS", "INDEX_REFS", "load_manifest", "manifests", "mark_snapshot", "segment_chunk_ids"]

DATA_REFS = "data_refs"
INDEX_REFS = "index_refs"


def segment_chunk_ids(segment: bytes) -> Iterator[bytes]:
    """The non-zero chunk ids of an index segment."""
    view = memoryview(segment)
    for start in range(0, len(segment), ID_SIZE):
        oid = bytes(view[start : start + ID_SIZE])
        if oid != ZERO_ID:
            yield oid


def load_manifest(repo: Repository, key: str) -> Snapshot:
    """A manifest from ``snapshots/<id>`` or ``trash/<id>``, verified against its id."""
    snapshot_id = key.rpartition("/")[2]
    blob = repo.storage.get(key)
    data = repo.codec.open(SNAPSHOT, bytes.fromhex(snapshot_id), blob, key=key)
    return Snapshot.from_bytes(data, snapshot_id)


def manifests(repo: Repository, *, trash: bool) -> list[str]:
    """Keys of every manifest (and of the trash, when asked)."""
    keys = [info.key for info in repo.storage.list(SNAPSHOT_PREFIX)]
    if trash:
        keys += [info.key for info in repo.storage.list(TRASH_PREFIX)]
    return sorted(keys)


def mark_snapshot(
    repo: Repository,
    snapshot: Snapshot,
    tables: IdTables,
    *,
    failed: dict[bytes, RepositoryError] | None = None,
) -> list[RepositoryError]:
    """Add everything `snapshot` references to the ``data_refs`` and ``index_refs`` tables.

    Without `failed`, an unreadable segment raises (a prune must not guess what it held). With
    it, the error is recorded there by object id and returned, and marking goes on (`check`).
    """
    errors: list[RepositoryError] = []
    tables.add(INDEX_REFS, bytes.fromhex(snapshot.metadata))
    for segment in (bytes.fromhex(s) for disk in snapshot.disks for s in disk.segments):
        if failed is not None and segment in failed:
            errors.append(failed[segment])
            continue
        if not tables.add(INDEX_REFS, segment):
            continue
        try:
            data = repo.load(INDEX, segment)
        except RepositoryError as exc:
            if failed is None:
                raise
            failed[segment] = exc
            errors.append(exc)
            continue
        tables.add_many(DATA_REFS, segment_chunk_ids(data))
    return errors

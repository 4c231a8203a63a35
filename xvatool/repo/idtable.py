"""Sets of object ids on disk (SQLite), so that `check` and `prune` run in bounded memory.

restic's prune holds the index of the whole repository in memory; a repository of many 2 TiB
disks has millions of chunks, so here every set of ids (referenced, stored, fossils, damaged)
is a ``WITHOUT ROWID`` table of 32-byte keys in a scratch file of the cache folder, and set
differences are SQL joins. SQLite's page cache is capped at `CACHE_KIB`.

Example::

    with scratch_dir() as folder, IdTables(folder / "ids.sqlite") as tables:
        tables.add_many("refs", ids)
        for oid, size in tables.difference("present", "refs"):
            ...
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["CACHE_KIB", "IdTables"]

CACHE_KIB = 16 << 10
"""SQLite page cache per database: 16 MiB."""
_NAME = re.compile(r"[a-z_]{1,32}")
_BATCH = 4096


class IdTables:
    """Named tables of (id BLOB PRIMARY KEY, size INTEGER, mtime REAL) in one scratch database.

    Not thread-safe: use it from one thread.
    """

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._tables: set[str] = set()

    def _table(self, name: str) -> str:
        if name not in self._tables:
            if not _NAME.fullmatch(name):
                raise ValueError(f"bad table name {name!r}")
            columns = "id BLOB PRIMARY KEY, size INTEGER, mtime REAL"
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns}) WITHOUT ROWID")
            self._tables.add(name)
        return name

    def add(self, table: str, oid: bytes, size: int = 0, mtime: float = 0.0) -> bool:
        """Add one id; True if it was not there yet."""
        cursor = self._db.execute(
            f"INSERT OR IGNORE INTO {self._table(table)} VALUES (?, ?, ?)", (oid, size, mtime)
        )
        return cursor.rowcount == 1

    def add_many(self, table: str, rows: Iterable[bytes | tuple[bytes, int, float]]) -> None:
        """Add ids (or (id, size, mtime) rows) in batched transactions."""
        sql = f"INSERT OR IGNORE INTO {self._table(table)} VALUES (?, ?, ?)"
        batch: list[tuple[bytes, int, float]] = []
        for row in rows:
            batch.append((row, 0, 0.0) if isinstance(row, bytes) else row)
            if len(batch) >= _BATCH:
                self._flush(sql, batch)
        self._flush(sql, batch)

    def _flush(self, sql: str, batch: list[tuple[bytes, int, float]]) -> None:
        if batch:
            self._db.execute("BEGIN")
            self._db.executemany(sql, batch)
            self._db.execute("COMMIT")
            batch.clear()

    def __contains__(self, item: tuple[str, bytes]) -> bool:
        table, oid = item
        return (
            self._db.execute(f"SELECT 1 FROM {self._table(table)} WHERE id = ?", (oid,)).fetchone()
            is not None
        )

    def count(self, table: str) -> tuple[int, int]:
        """(rows, total size) of a table."""
        rows, size = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM {self._table(table)}"
        ).fetchone()
        return int(rows), int(size)

    def rows(self, table: str) -> Iterator[tuple[bytes, int, float]]:
        """Every row, in id order."""
        yield from self._db.execute(f"SELECT id, size, mtime FROM {self._table(table)} ORDER BY id")

    def difference(self, table: str, *minus: str) -> Iterator[tuple[bytes, int, float]]:
        """Rows of `table` whose id is in none of the `minus` tables, in id order."""
        source = self._table(table)
        where = " AND ".join(f"id NOT IN (SELECT id FROM {self._table(m)})" for m in minus) or "1"
        yield from self._db.execute(f"SELECT id, size, mtime FROM {source} WHERE {where} ORDER BY id")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

"""`check`: prove that every snapshot can be restored, and name those that cannot.

Without `read_data`: every manifest, ova.xml and index segment is read and authenticated, and
every chunk they reference must be stored (listings only, no chunk data). With `read_data`:
every referenced chunk is also read, authenticated and hashed against its id, several at a time,
and each snapshot's verdict (ok, or damaged when a problem names it) is recorded with the time
(`verification`), so `repo snapshots` shows when each was last proven restorable.
Sets of ids live in a scratch SQLite file (`idtable`), so memory does not grow with the
repository. Leftovers of killed runs (unreferenced objects, stale leases, a pending collection,
temporary files) are reported as notes, not problems: the next prune cleans them up.

Example::

    report = check(repo, read_data=True)
    for problem in report.problems:
        print(problem)          # "chunk-missing data/ab/ab12…: … (snapshots 1a2b3c4d)"
"""

from __future__ import annotations

import collections
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from xvatool.errors import ObjectMissingError, RepositoryError
from xvatool.repo.cache import scratch_dir
from xvatool.repo.idtable import IdTables
from xvatool.repo.layout import (
    COLLECTION_KEY,
    DATA_PREFIX,
    FOSSIL_PREFIX,
    SNAPSHOT_PREFIX,
    TRASH_PREFIX,
    id_of_key,
    object_key,
)
from xvatool.repo.lease import read_leases
from xvatool.repo.objects import CHUNK, INDEX, MAX_STORED_CHUNK
from xvatool.repo.reading import snapshot_metadata
from xvatool.repo.refs import DATA_REFS, load_manifest, mark_snapshot, segment_chunk_ids
from xvatool.repo.repository import Repository
from xvatool.repo.snapshot import Snapshot, Verification
from xvatool.repo.verification import DAMAGED, OK, record_verifications

__all__ = ["CheckProblem", "CheckReport", "check"]

READ_AHEAD = 4
"""Chunks read ahead per worker with `read_data`."""
_DATA_FOSSILS = FOSSIL_PREFIX + DATA_PREFIX


@dataclass
class CheckProblem:
    """One damaged object and the snapshots it damages."""

    code: str
    key: str
    message: str
    snapshots: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        named = f" (snapshots {', '.join(s[:8] for s in self.snapshots)})" if self.snapshots else ""
        return f"{self.code} {self.key}: {self.message}{named}"

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "key": self.key, "message": self.message, "snapshots": self.snapshots}


@dataclass
class CheckReport:
    """The verdict: `ok` when no snapshot is damaged."""

    location: str
    read_data: bool
    snapshots: int = 0
    chunks: int = 0
    chunks_read: int = 0
    problems: list[CheckProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verified: int = 0
    """Snapshots whose verdict this check recorded (with `read_data` only)."""
    snapshot_ids: list[str] = field(default_factory=list, repr=False)
    """Every snapshot the check looked at."""

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def damaged_snapshots(self) -> list[str]:
        """Ids of every snapshot some problem names."""
        return sorted({s for p in self.problems for s in p.snapshots})

    def to_json(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "ok": self.ok,
            "read_data": self.read_data,
            "snapshots": self.snapshots,
            "chunks": self.chunks,
            "chunks_read": self.chunks_read,
            "damaged_snapshots": self.damaged_snapshots,
            "problems": [p.to_json() for p in self.problems],
            "notes": self.notes,
            "verified": self.verified,
        }


def _code(exc: RepositoryError) -> str:
    return "missing" if isinstance(exc, ObjectMissingError) else "corrupt"


class _Check:
    def __init__(self, repo: Repository, report: CheckReport, tables: IdTables) -> None:
        self.repo = repo
        self.report = report
        self.tables = tables
        self.by_key: dict[str, CheckProblem] = {}
        self._local = threading.local()  # each reading thread's two reused chunk buffers

    def problem(self, code: str, key: str, message: str, snapshot: str | None) -> None:
        found = self.by_key.get(key)
        if found is None:
            found = self.by_key[key] = CheckProblem(code, key, message)
            self.report.problems.append(found)
        if snapshot is not None and snapshot not in found.snapshots:
            found.snapshots.append(snapshot)

    def snapshots(self) -> list[Snapshot]:
        readable = []
        failed: dict[bytes, RepositoryError] = {}
        for info in self.repo.storage.list(SNAPSHOT_PREFIX):
            snapshot_id = info.key[len(SNAPSHOT_PREFIX) :]
            self.report.snapshots += 1
            try:
                snapshot = load_manifest(self.repo, info.key)
                snapshot_metadata(self.repo, snapshot)
            except ObjectMissingError as exc:
                if exc.key == info.key:
                    self.report.snapshots -= 1
                    continue  # forgotten while we listed
                self.problem("metadata-missing", exc.key or info.key, exc.message, snapshot_id)
                self.report.snapshot_ids.append(snapshot_id)
                continue
            except RepositoryError as exc:
                key = exc.key or info.key
                code = "snapshot-corrupt" if key == info.key else "metadata-corrupt"
                self.problem(code, key, exc.message, snapshot_id)
                self.report.snapshot_ids.append(snapshot_id)
                continue
            self.report.snapshot_ids.append(snapshot_id)
            for error in mark_snapshot(self.repo, snapshot, self.tables, failed=failed):
                self.problem(f"index-{_code(error)}", error.key or "?", error.message, snapshot_id)
            readable.append(snapshot)
        return readable

    def chunks(self, read_data: bool) -> None:
        tables = self.tables
        storage = self.repo.storage
        tables.add_many("present", ((id_of_key(i.key), i.size, i.mtime) for i in storage.list(DATA_PREFIX)))
        tables.add_many("fossil", ((id_of_key(i.key), i.size, i.mtime) for i in storage.list(_DATA_FOSSILS)))
        self.report.chunks = tables.count(DATA_REFS)[0]
        for oid, _, _ in tables.difference(DATA_REFS, "present", "fossil"):
            tables.add("bad", oid)
            self.problem("chunk-missing", object_key(DATA_PREFIX, oid), "chunk is missing", None)
        waiting = tables.count("fossil")[0] - len(list(tables.difference("fossil", DATA_REFS)))
        if waiting:
            self.report.notes.append(
                f"{waiting} referenced chunks wait in fossils/; the next prune puts them back"
            )
        unreferenced, size = 0, 0
        for _, object_size, _ in tables.difference("present", DATA_REFS):
            unreferenced += 1
            size += object_size
        if unreferenced:
            self.report.notes.append(
                f"{unreferenced} unreferenced chunks ({size} bytes); prune reclaims them"
            )
        if read_data:
            self.read_all()

    def read_all(self) -> None:
        workers = self.repo.storage.parallelism
        ids = (oid for oid, _, _ in self.tables.difference(DATA_REFS, "bad"))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="repo-check") as pool:
            for oid, error in _bounded(pool, self._read_one, ids, workers * READ_AHEAD):
                self.report.chunks_read += 1
                if error is not None:
                    self.tables.add("corrupt", oid)  # not "bad": the query above reads it
                    self.problem(f"chunk-{_code(error)}", object_key(DATA_PREFIX, oid), error.message, None)
        self.tables.add_many("bad", self.tables.rows("corrupt"))

    def _read_one(self, oid: bytes) -> RepositoryError | None:
        buffers: tuple[bytearray, bytearray] | None = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = (bytearray(MAX_STORED_CHUNK), bytearray(MAX_STORED_CHUNK))
        try:
            self.repo.load_into(CHUNK, oid, *buffers)
        except RepositoryError as exc:
            return exc
        return None

    def name_snapshots(self, snapshots: list[Snapshot]) -> None:
        """Attribute every bad chunk to the snapshots that reference it."""
        if not self.tables.count("bad")[0]:
            return
        for snapshot in snapshots:
            for disk in snapshot.disks:
                for segment in disk.segments:
                    try:
                        data = self.repo.load(INDEX, bytes.fromhex(segment))
                    except RepositoryError:
                        continue  # already reported against this snapshot
                    for oid in segment_chunk_ids(data):
                        found = self.by_key.get(object_key(DATA_PREFIX, oid))
                        if found is not None and snapshot.id not in found.snapshots:
                            found.snapshots.append(snapshot.id)

    def notes(self) -> None:
        storage = self.repo.storage
        leases = read_leases(storage)
        if leases:
            self.report.notes.append(
                f"{len(leases)} leases of running or killed runs (stale ones are removed by the next run)"
            )
        if storage.stat(COLLECTION_KEY) is not None:
            self.report.notes.append("a garbage collection is pending; the next prune finishes it")
        trash = sum(1 for _ in storage.list(TRASH_PREFIX))
        if trash:
            self.report.notes.append(f"{trash} forgotten snapshots wait in trash/ for prune")

    def record(self) -> None:
        """Store every snapshot's verdict: damaged if a problem names it, else ok."""
        now = dt.datetime.now(dt.UTC)
        damaged: dict[str, list[str]] = {}
        for problem in self.report.problems:
            for snapshot_id in problem.snapshots:
                damaged.setdefault(snapshot_id, []).append(problem.key)
        verdicts = {
            sid: Verification(DAMAGED if sid in damaged else OK, now) for sid in self.report.snapshot_ids
        }
        details: dict[str, dict[str, object]] = {
            sid: {"chunks_read": self.report.chunks_read, "damaged_keys": damaged.get(sid, [])}
            for sid in verdicts
        }
        try:
            self.report.verified = record_verifications(self.repo.storage, verdicts, details=details)
        except RepositoryError as exc:  # read-only credentials: the verdict above still stands
            self.report.notes.append(f"the verdicts could not be recorded: {exc}")


def _bounded(
    pool: ThreadPoolExecutor,
    func: Callable[[bytes], RepositoryError | None],
    items: Iterator[bytes],
    limit: int,
) -> Iterator[tuple[bytes, RepositoryError | None]]:
    """`pool.map` with at most `limit` items in flight (ids come from a database cursor)."""
    window: collections.deque[tuple[bytes, Future[RepositoryError | None]]] = collections.deque()
    for item in items:
        window.append((item, pool.submit(func, item)))
        if len(window) >= limit:
            oid, future = window.popleft()
            yield oid, future.result()
    while window:
        oid, future = window.popleft()
        yield oid, future.result()


def check(repo: Repository, *, read_data: bool = False, record: bool = True) -> CheckReport:
    """Check the repository; see the module docstring. Never raises for damage it finds.

    With `read_data` and `record`, each snapshot's verdict is stored (`verification`).
    """
    report = CheckReport(repo.location, read_data)
    with scratch_dir() as folder, IdTables(folder / "ids.sqlite") as tables:
        job = _Check(repo, report, tables)
        snapshots = job.snapshots()
        job.chunks(read_data)
        job.name_snapshots(snapshots)
        job.notes()
        if read_data and record:
            job.record()
    return report

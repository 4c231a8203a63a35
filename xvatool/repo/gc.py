"""`prune`: delete what no snapshot references, while backups keep running.

The idea is Proxmox Backup Server's: mark every object the snapshots reference, sweep the rest,
and never lock backups out; objects written after the oldest running backup started are left
alone, as PBS keeps chunks newer than its oldest writer. PBS learns about a chunk a running
backup merely *reuses* by that backup touching the chunk's atime. S3 has no atime, and making a
backup copy every reused chunk onto itself would cost one request per chunk every night, so the
sweep is split in two steps instead (Duplicacy's "fossil collection"), which needs nothing of
the storage but atomic puts, strongly consistent listings and the storage's own clock:

1. *Collect* (phase 1): record ``locks/collection`` (state "open"); mark the objects referenced
   by ``snapshots/`` and ``trash/``; move every other object older than the cutoff (the prune's
   start, or the start of the oldest live writer lease, whichever is earlier) to ``fossils/``;
   close the record with the storage time.
2. *Delete* (phase 2), in the same run or a later one, only once every writer whose lease is
   alive started after the collection closed: mark again, put back every fossil a snapshot
   references now, delete the others.

Why no referenced object is ever lost: a writer relies only on objects it observed after its
lease was stored (it wrote them, saw them stored, or read their ids in a snapshot it listed).
An object observed in place and set aside later was set aside while that writer lived, so
phase 2 waits until the writer has committed (then its snapshot references the fossil, which is
put back) or died. An object reached through a snapshot's index is referenced by that snapshot,
which is a root as long as it exists; `forget` only moves manifests to ``trash/``, and trash
entries stay roots while any writer that started before they were trashed is alive. Fossils are
never written by writers and deleted only by phase 2, so a writer's fresh copy of a fossilised
chunk is never hit by a delete; on S3 a "move" is copy-then-delete, and a writer's put that lands
between the two is lost from ``data/`` but not from ``fossils/``: the bytes are the same chunk.
Readers look in ``fossils/`` when an object is not in place, so a snapshot stays readable in the
window before phase 2 puts an object back. Two prunes never run at once: each stores its lease,
then backs off if an older live prune lease exists.

Moves are made durable together, by one `Storage.flush` (``syncfs``) before the collection
record changes, not by two folder fsyncs per object: a crash can only undo renames that no
record relies on yet (an object back in place is simply collected again; a fossil not yet put
back is still read through ``fossils/`` and put back by the next phase 2).

The cutoff and the clock's resolution: an object is set aside only if its mtime is strictly
before the cutoff (``mtime < cutoff``). Both times come from the storage's clock at the
storage's resolution: S3 ``LastModified`` is truncated to the second (HEAD and LIST alike), a
local file system to its timestamp granularity. Truncation never orders two events the wrong
way round, it only makes them equal, so ``mtime < cutoff`` proves the object is older than the
prune's start, and an object of the same second is left for the next prune. That is the safe
side and costs nothing but a second's delay; rounding times up or trusting the caller's clock
would not be safe. (Fossilizing is reversible anyway, phase 2 puts back whatever a writer
turned out to need; the cutoff only keeps the prune from churning objects of running writers.)
Tests that expect a prune to collect what they have just written therefore wait until the
storage clock has passed those objects (``tests/repo/helpers.pass_storage_clock``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xvatool.errors import ObjectMissingError, RepositoryBusyError
from xvatool.repo.cache import scratch_dir
from xvatool.repo.idtable import IdTables
from xvatool.repo.layout import (
    COLLECTION_KEY,
    DATA_PREFIX,
    FOSSIL_PREFIX,
    INDEX_PREFIX,
    SNAPSHOT_PREFIX,
    TRASH_PREFIX,
    fossil_key,
    id_of_key,
    object_key,
    unfossil_key,
)
from xvatool.repo.lease import Lease, LeaseInfo, live_leases, remove_dead_leases
from xvatool.repo.refs import DATA_REFS, INDEX_REFS, load_manifest, manifests, mark_snapshot
from xvatool.repo.repository import Repository
from xvatool.repo.verification import stale_records

__all__ = ["CLOCK_MARGIN_S", "PruneReport", "prune"]

log = logging.getLogger(__name__)

CLOCK_MARGIN_S = 60.0
"""Seconds of slack between two times of the storage's clock (S3 ``LastModified`` has one-second
resolution; a cluster's nodes may differ a little)."""
_NAMESPACES = {DATA_PREFIX: (DATA_REFS, "present_data"), INDEX_PREFIX: (INDEX_REFS, "present_index")}


@dataclass
class PruneReport:
    """What a prune did (or, with `dry_run`, would do)."""

    dry_run: bool = False
    trash_removed: int = 0
    fossilized: int = 0
    fossilized_bytes: int = 0
    deleted: int = 0
    deleted_bytes: int = 0
    restored: int = 0
    leftovers_removed: int = 0
    verifications_removed: int = 0
    """Verification records of snapshots that no longer exist, or superseded ones."""
    waiting_for: list[str] = field(default_factory=list)
    """Live writer leases the pending collection waits for (its objects are deleted later)."""

    @property
    def reclaimed_bytes(self) -> int:
        return self.deleted_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "trash_removed": self.trash_removed,
            "fossilized": self.fossilized,
            "fossilized_bytes": self.fossilized_bytes,
            "deleted": self.deleted,
            "deleted_bytes": self.deleted_bytes,
            "restored": self.restored,
            "leftovers_removed": self.leftovers_removed,
            "verifications_removed": self.verifications_removed,
            "waiting_for": self.waiting_for,
        }


def _read_record(repo: Repository) -> dict[str, Any] | None:
    try:
        record = json.loads(repo.storage.get(COLLECTION_KEY))
    except ObjectMissingError:
        return None
    except ValueError:
        return {"state": "open"}  # a damaged record: treat it as the most careful case
    return record if isinstance(record, dict) else {"state": "open"}


def _write_record(repo: Repository, record: dict[str, Any]) -> None:
    repo.storage.put(COLLECTION_KEY, json.dumps(record, sort_keys=True).encode())


class _Prune:
    def __init__(
        self, repo: Repository, lease: Lease, report: PruneReport, say: Callable[[str], None]
    ) -> None:
        self.repo = repo
        self.storage = repo.storage
        self.lease = lease
        self.report = report
        self.say = say

    def writers(self, now: float) -> list[LeaseInfo]:
        leases = live_leases(self.storage, now, exclude=self.lease.key)
        older = [
            lease
            for lease in leases
            if lease.kind == "prune" and (lease.start, lease.key) < (self.lease.start, self.lease.key)
        ]
        if older:
            raise RepositoryBusyError(
                f"another prune is running (host {older[0].hostname}, pid {older[0].pid})",
                location=self.storage.location,
            )
        return [lease for lease in leases if lease.kind != "prune"]

    def purge_trash(self, oldest_writer: float | None) -> None:
        """Trash entries no live writer can rely on any more are deleted for good."""
        for info in list(self.storage.list(TRASH_PREFIX)):
            if oldest_writer is None or info.mtime < oldest_writer - CLOCK_MARGIN_S:
                if not self.report.dry_run:
                    self.storage.delete(info.key)
                self.report.trash_removed += 1

    def purge_verifications(self) -> None:
        """Verification records of snapshots gone for good (or superseded) are deleted."""
        existing = [
            info.key.rpartition("/")[2]
            for prefix in (SNAPSHOT_PREFIX, TRASH_PREFIX)
            for info in self.storage.list(prefix)
        ]
        for key in stale_records(self.storage, existing):
            if not self.report.dry_run:
                self.storage.delete(key)
            self.report.verifications_removed += 1

    def mark(self, tables: IdTables) -> None:
        for key in manifests(self.repo, trash=True):
            try:
                snapshot = load_manifest(self.repo, key)
            except ObjectMissingError:
                continue  # forgotten or purged while we listed: no longer a root
            mark_snapshot(self.repo, snapshot, tables)

    def collect(self, cutoff: float) -> None:
        """Phase 1: set unreferenced objects older than `cutoff` aside in ``fossils/``."""
        if not self.report.dry_run:
            _write_record(self.repo, {"state": "open", "prune": self.lease.key, "started": self.lease.start})
        with scratch_dir() as folder, IdTables(folder / "ids.sqlite") as tables:
            self.mark(tables)
            for prefix, (refs, present) in _NAMESPACES.items():
                tables.add_many(
                    present, ((id_of_key(i.key), i.size, i.mtime) for i in self.storage.list(prefix))
                )
                for oid, size, mtime in tables.difference(present, refs):
                    if mtime >= cutoff:
                        continue
                    key = object_key(prefix, oid)
                    if not self.report.dry_run:
                        try:
                            self.storage.move(key, fossil_key(key), durable=False)
                        except ObjectMissingError:
                            continue
                    self.report.fossilized += 1
                    self.report.fossilized_bytes += size
        if not self.report.dry_run:
            self.storage.flush()  # every move durable before the record says the collection closed
            closed = self.lease.now()
            _write_record(
                self.repo,
                {"state": "closed", "prune": self.lease.key, "started": self.lease.start, "closed": closed},
            )
        self.say(
            f"set aside {self.report.fossilized} unreferenced objects ({self.report.fossilized_bytes} bytes)"
        )

    def ready(self, record: dict[str, Any], writers: list[LeaseInfo]) -> bool:
        """Whether phase 2 may run: no live writer can have seen the fossils in place."""
        if record.get("state") != "closed":
            blocking = writers  # an interrupted collection: wait until no writer is alive
        else:
            closed = float(record.get("closed", 0))
            blocking = [w for w in writers if w.start <= closed + CLOCK_MARGIN_S]
        self.report.waiting_for = [f"{w.kind} on {w.hostname} pid {w.pid}" for w in blocking]
        return not blocking

    def delete(self) -> None:
        """Phase 2: put referenced fossils back, delete the rest, drop the record."""
        with scratch_dir() as folder, IdTables(folder / "ids.sqlite") as tables:
            self.mark(tables)
            for info in list(self.storage.list(FOSSIL_PREFIX)):
                original = unfossil_key(info.key)
                namespace = DATA_PREFIX if original.startswith(DATA_PREFIX) else INDEX_PREFIX
                refs = _NAMESPACES[namespace][0]
                if (refs, id_of_key(original)) in tables:
                    if not self.report.dry_run:
                        if self.storage.stat(original) is None:
                            self.storage.move(info.key, original, durable=False)
                        else:
                            self.storage.delete(info.key)
                    self.report.restored += 1
                    continue
                if not self.report.dry_run:
                    self.storage.delete(info.key)
                self.report.deleted += 1
                self.report.deleted_bytes += info.size
        if not self.report.dry_run:
            self.storage.flush()  # every object put back durable before the record goes
            self.storage.delete(COLLECTION_KEY)
        self.say(
            f"deleted {self.report.deleted} objects ({self.report.deleted_bytes} bytes), "
            f"put back {self.report.restored}"
        )


def prune(
    repo: Repository, *, dry_run: bool = False, say: Callable[[str], None] | None = None
) -> PruneReport:
    """Reclaim the space of objects no snapshot references; safe beside running backups.

    Returns what was done. Objects set aside while a backup runs are deleted by a later prune,
    once every backup that could rely on them has ended (`PruneReport.waiting_for`).

    Example::

        report = prune(repo)
        print(report.deleted_bytes)
    """
    report = PruneReport(dry_run=dry_run)
    speak = say or log.info
    with Lease(repo.storage, "prune") as lease:
        job = _Prune(repo, lease, report, speak)
        now = lease.start
        job.writers(now)  # refuse early when another prune runs
        if not dry_run:
            for dead in remove_dead_leases(repo.storage, now):
                speak(f"removed the lease of a dead {dead.kind} run on {dead.hostname}")
        writers = job.writers(now)
        oldest = min((w.start for w in writers), default=None)
        job.purge_trash(oldest)
        job.purge_verifications()
        record = _read_record(repo)
        if record is not None:
            if not job.ready(record, writers):
                speak(
                    f"a collection waits for {len(report.waiting_for)} running backup(s); prune again later"
                )
                return report
            job.delete()
        cutoff = now if oldest is None else min(now, oldest - CLOCK_MARGIN_S)
        job.collect(cutoff)
        if report.fossilized and not dry_run:
            closed = _read_record(repo) or {}
            if job.ready(closed, job.writers(lease.now())):
                job.delete()
        elif not dry_run:
            repo.storage.delete(COLLECTION_KEY)
        if not dry_run:
            report.leftovers_removed = repo.storage.remove_leftovers(cutoff)
    return report

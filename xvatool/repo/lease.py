"""Leases: how running backups and prunes make themselves known to each other.

A writer (a backup run, `repo add`) or a prune stores ``locks/<kind>-<random>`` when it starts
and rewrites it every `REFRESH_S` seconds from a background thread. Times come from the storage's
clock (the object's mtime, `storage`), so machines with skewed clocks agree. A lease whose
object was not rewritten for `STALE_S` belongs to a dead process: prunes stop waiting for it,
and any later run removes it (at once when it is of this machine and its process is gone).

A lease does not exclude anyone; it only tells the garbage collector what may still be in
flight (`gc`). A writer must not commit a snapshot after its lease could have been taken for
dead: `Lease.check` raises `RepositoryBusyError` once a refresh failed for longer than
`STALE_S - SAFETY_S`, or if a prune removed the lease.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from xvatool.errors import ObjectMissingError, RepositoryBusyError, RepositoryError
from xvatool.repo.backend import Storage
from xvatool.repo.layout import COLLECTION_KEY, LOCK_PREFIX

__all__ = [
    "REFRESH_S",
    "STALE_S",
    "Lease",
    "LeaseInfo",
    "live_leases",
    "machine_id",
    "read_leases",
    "remove_dead_leases",
]

log = logging.getLogger(__name__)

REFRESH_S = 60.0
"""Seconds between two rewrites of a lease."""
STALE_S = 15 * 60.0
"""Seconds without a rewrite after which a lease is taken for dead (restic: 30 min, refresh 5)."""
SAFETY_S = 5 * 60.0
"""A writer stops committing this long before its lease could be taken for dead."""
MAX_LEASE_SIZE = 4096


def machine_id() -> str:
    """The id of this machine: /etc/machine-id when readable (containers share host names), else the name."""
    try:
        with open("/etc/machine-id", encoding="ascii") as f:
            value = f.read(64).strip()
            if value:
                return value
    except OSError:
        pass
    return socket.gethostname()


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as stored: who holds it and, on the storage's clock, since when."""

    key: str
    kind: str
    hostname: str
    machine: str
    pid: int
    start: float
    refreshed: float

    def stale(self, now: float) -> bool:
        return now - self.refreshed > STALE_S

    def dead_here(self) -> bool:
        """True if the holder ran on this machine and its process is gone."""
        if self.machine != machine_id():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def read_leases(storage: Storage) -> list[LeaseInfo]:
    """Every lease in the repository (stale ones included); unreadable ones count as fresh."""
    leases = []
    for info in storage.list(LOCK_PREFIX):
        if info.key == COLLECTION_KEY:
            continue
        try:
            body = json.loads(storage.get(info.key)[:MAX_LEASE_SIZE])
            leases.append(
                LeaseInfo(
                    info.key,
                    str(body["kind"]),
                    str(body["hostname"]),
                    str(body.get("machine", "")),
                    int(body["pid"]),
                    float(body.get("start") or info.mtime),
                    info.mtime,
                )
            )
        except ObjectMissingError:
            continue  # released while we listed
        except (ValueError, KeyError, TypeError) as exc:
            # someone else's object: keep being careful about it, as if it were a fresh writer
            log.warning("%s: unreadable lease %s (%s)", storage.location, info.key, exc)
            leases.append(LeaseInfo(info.key, "unknown", "", "", 0, info.mtime, info.mtime))
    return leases


def live_leases(storage: Storage, now: float, *, exclude: str | None = None) -> list[LeaseInfo]:
    """The leases that are not stale at storage time `now`."""
    return [lease for lease in read_leases(storage) if not lease.stale(now) and lease.key != exclude]


def remove_dead_leases(storage: Storage, now: float) -> list[LeaseInfo]:
    """Delete stale leases and those of dead processes of this machine; returns them."""
    removed = []
    for lease in read_leases(storage):
        if lease.kind != "unknown" and (lease.stale(now) or lease.dead_here()):
            storage.delete(lease.key)
            removed.append(lease)
    return removed


class Lease:
    """A held lease: a context manager that refreshes it in the background and removes it at exit.

    Example::

        with Lease(storage, "backup") as lease:
            ...
            lease.check()           # before committing
            repo.save_snapshot(s)
    """

    def __init__(self, storage: Storage, kind: str, *, refresh_s: float = REFRESH_S) -> None:
        self.storage = storage
        self.kind = kind
        self.key = f"{LOCK_PREFIX}{kind}-{os.urandom(16).hex()}"
        self.refresh_s = refresh_s
        self.start = 0.0
        """When the lease was first stored, on the storage's clock."""
        self._last_ok = 0.0
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        body = {
            "kind": self.kind,
            "hostname": socket.gethostname(),
            "machine": machine_id(),
            "pid": os.getpid(),
            "start": self.start or None,
        }
        return json.dumps(body, sort_keys=True).encode()

    def acquire(self) -> Self:
        self.storage.put(self.key, self._body())
        info = self.storage.stat(self.key)
        if info is None:
            raise RepositoryError(
                "a lease vanished right after it was written", location=self.storage.location
            )
        self.start = info.mtime
        self.storage.put(self.key, self._body())
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(
            target=self._refresh_loop, name=f"repo-lease-{self.kind}", daemon=True
        )
        self._thread.start()
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.refresh_s):
            self.refresh()

    def refresh(self) -> float | None:
        """Rewrite the lease now; returns its new storage time, None if that failed."""
        try:
            if self.storage.stat(self.key) is None:
                self._lost = "a prune took this run's lease for dead and removed it"
                return None
            self.storage.put(self.key, self._body())
            info = self.storage.stat(self.key)
        except RepositoryError as exc:
            log.warning("%s: cannot refresh lease %s: %s", self.storage.location, self.key, exc)
            return None
        self._last_ok = time.monotonic()
        return info.mtime if info is not None else None

    def now(self) -> float:
        """The storage's current time (rewrites the lease to read it)."""
        moment = self.refresh()
        if moment is None:
            self.check()
            raise RepositoryError("cannot read the storage's clock", location=self.storage.location)
        return moment

    def check(self) -> None:
        """Raise `RepositoryBusyError` if others may already take this lease for dead."""
        if self._lost is not None:
            raise RepositoryBusyError(self._lost, location=self.storage.location, key=self.key)
        if time.monotonic() - self._last_ok > STALE_S - SAFETY_S:
            raise RepositoryBusyError(
                "the lease could not be refreshed for too long; a prune may have run meanwhile",
                location=self.storage.location,
                key=self.key,
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.storage.delete(self.key)
        except RepositoryError as exc:
            log.warning(
                "%s: cannot remove lease %s: %s (it goes stale by itself)",
                self.storage.location,
                self.key,
                exc,
            )

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

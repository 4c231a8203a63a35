"""The simulated host's database: objects by class and ref, disk files, persistence and events.

One `SimState` per data directory. Layout of the directory::

    DIR/state.json       every persistent object (pool, host, SR, PBD, network, VM, VBD, VIF, VDI)
    DIR/disks/<uuid>.img one sparse file per VDI, exactly `virtual_size` bytes
    DIR/.lock            flock'ed while a server owns the directory

Sessions and tasks live in memory only: a restarted xapi forgets sessions too (clients see
`SESSION_INVALID`, docs/host-protocol.md §2.6).

A transaction that ends with an exception is rolled back: every record it added, changed or
removed is restored and nothing is written, so a failed call leaves no half-made object behind
(e.g. a VDI record whose disk file could not be created).

Concurrency: `lock` (an RLock) guards `_objects`, `_stamps`, `_deleted` and `generation`; every
read or write of a record goes through it. Disk files are not guarded by it: each transfer opens
its own file descriptor and uses positioned I/O. `changed` (a Condition on `lock`) wakes
`event.from` waiters after each commit.

Events (host-protocol.md §3.5): every change bumps `generation`; each object remembers the
generation that created it and the one that last modified it, deletions are kept in a bounded
log. `event.from` compares those with the client's token instead of keeping every event.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from xvatool._files import write_bytes_atomic
from xvatool.errors import LocalIOError, UsageError
from xvatool.sim.classes import ALL_CLASSES, PERSISTENT_CLASSES
from xvatool.sim.values import ApiFailure, DateTime, Record, new_ref

__all__ = ["MAX_DELETED_EVENTS", "Change", "SimState"]

MAX_DELETED_EVENTS = 10_000
"""Deletions remembered for event.from; an older token gets `EVENTS_LOST`."""
STATE_FILE = "state.json"
_DT_TAG = "__datetime__"


@dataclass(slots=True)
class _Undo:
    """What rolling back the outermost transaction restores."""

    generation: int
    oldest_known: int
    before: dict[tuple[str, str], tuple[Record | None, tuple[int, int] | None]] = field(default_factory=dict)
    deletions: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """One object that changed after a token: what event.from reports."""

    generation: int
    cls: str
    ref: str
    operation: str  # add | mod | del
    snapshot: Record | None


def _encode(value: Any) -> Any:
    if isinstance(value, DateTime):
        return {_DT_TAG: str(value)}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _DT_TAG in value:
            return DateTime(value[_DT_TAG])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class SimState:
    """All objects of one simulated pool, persisted in `data_dir`.

    Example::

        state = SimState(Path("/tmp/sim"))
        with state.transaction():
            ref = state.add("network", network_record(name_label="net0"))
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.disk_dir = self.data_dir / "disks"
        try:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalIOError(f"cannot create data directory: {exc.strerror}", path=str(data_dir)) from exc
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.generation = 0
        self._objects: dict[str, dict[str, Record]] = {cls: {} for cls in ALL_CLASSES}
        self._stamps: dict[str, tuple[int, int]] = {}
        self._deleted: deque[tuple[int, str, str, int]] = deque(maxlen=MAX_DELETED_EVENTS)
        self._oldest_known = 0
        self._depth = 0
        self._dirty = False
        self._undo: _Undo | None = None  # the outermost transaction's journal
        self._lock_file: IO[bytes] | None = None
        self._load()

    # -- ownership of the directory -------------------------------------------------------------

    def acquire_directory(self) -> None:
        """Take the directory's lock so that two servers never share (and corrupt) one state."""
        handle = open(self.data_dir / ".lock", "ab")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            raise UsageError(f"{self.data_dir}: data directory is in use by another server") from exc
        self._lock_file = handle

    def release_directory(self) -> None:
        """Release the directory lock taken by `acquire_directory`."""
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # -- persistence ----------------------------------------------------------------------------

    def _load(self) -> None:
        path = self.data_dir / STATE_FILE
        if not path.exists():
            return
        try:
            doc = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise LocalIOError(f"cannot read simulator state: {exc}", path=str(path)) from exc
        for cls in PERSISTENT_CLASSES:
            for ref, record in doc.get("objects", {}).get(cls, {}).items():
                if "current_operations" in record:
                    record["current_operations"] = {}  # the tasks behind them died with the old server
                self._objects[cls][ref] = _decode(record)
                self._stamps[ref] = (0, 0)

    def _save(self) -> None:
        """Write every persistent object atomically and durably (temporary name, fsync, rename)."""
        doc = {"objects": {cls: _encode(self._objects[cls]) for cls in PERSISTENT_CLASSES}}
        write_bytes_atomic(self.data_dir / STATE_FILE, json.dumps(doc, sort_keys=True).encode("utf-8"))

    @property
    def is_empty(self) -> bool:
        """True when no pool exists yet (a fresh directory the demo seed may fill)."""
        with self.lock:
            return not self._objects["pool"]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Group changes: the state file is written once, and waiters woken, at the outermost exit.

        An exception leaving the outermost transaction undoes all of its changes instead.
        """
        with self.lock:
            if self._depth == 0:
                self._undo = _Undo(self.generation, self._oldest_known)
            self._depth += 1
            try:
                yield
            except BaseException:
                if self._depth == 1:
                    self._roll_back()
                raise
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._undo = None
                    if self._dirty:
                        self._dirty = False
                        self._save()
                    self.changed.notify_all()

    def _journal(self, cls: str, ref: str) -> None:
        """Remember how `ref` looked before the transaction first touched it."""
        undo = self._undo
        if undo is not None and (cls, ref) not in undo.before:
            record = self._objects[cls].get(ref)
            undo.before[(cls, ref)] = (copy.deepcopy(record), self._stamps.get(ref))

    def _roll_back(self) -> None:
        undo = self._undo
        if undo is None:
            return
        for (cls, ref), (record, stamp) in undo.before.items():
            if record is None:
                self._objects[cls].pop(ref, None)
            else:
                self._objects[cls][ref] = record
            if stamp is None:
                self._stamps.pop(ref, None)
            else:
                self._stamps[ref] = stamp
        for _ in range(min(undo.deletions, len(self._deleted))):
            self._deleted.pop()
        self.generation, self._oldest_known = undo.generation, undo.oldest_known
        self._dirty = False

    def _touch(self, cls: str, ref: str, *, created: bool = False) -> None:
        self.generation += 1
        if created:
            self._stamps[ref] = (self.generation, self.generation)
        else:
            first, _ = self._stamps.get(ref, (0, 0))
            self._stamps[ref] = (first, self.generation)
        if cls in PERSISTENT_CLASSES:
            self._dirty = True

    # -- records --------------------------------------------------------------------------------

    def add(self, cls: str, record: Record, ref: str | None = None) -> str:
        """Store a new object and return its ref."""
        ref = ref or new_ref()
        with self.transaction():
            self._journal(cls, ref)
            self._objects[cls][ref] = record
            self._touch(cls, ref, created=True)
        return ref

    def exists(self, cls: str, ref: str) -> bool:
        """Whether `ref` names a live object of `cls`."""
        with self.lock:
            return ref in self._objects[cls]

    def get(self, cls: str, ref: str) -> Record:
        """A deep copy of one record; `HANDLE_INVALID [cls, ref]` if there is none."""
        with self.lock:
            record = self._objects[cls].get(ref)
            if record is None:
                raise ApiFailure("HANDLE_INVALID", [cls, ref])
            return copy.deepcopy(record)

    def field(self, cls: str, ref: str, name: str) -> Any:
        """One field's value (copied)."""
        with self.lock:
            record = self._objects[cls].get(ref)
            if record is None:
                raise ApiFailure("HANDLE_INVALID", [cls, ref])
            return copy.deepcopy(record[name])

    def update(self, cls: str, ref: str, **fields: Any) -> None:
        """Set fields of an existing object."""
        with self.transaction():
            record = self._objects[cls].get(ref)
            if record is None:
                raise ApiFailure("HANDLE_INVALID", [cls, ref])
            self._journal(cls, ref)
            record.update(fields)
            self._touch(cls, ref)

    def mutate(self, cls: str, ref: str, change: Callable[[Record], None]) -> None:
        """Apply `change` to the stored record in place (for map/set edits)."""
        with self.transaction():
            record = self._objects[cls].get(ref)
            if record is None:
                raise ApiFailure("HANDLE_INVALID", [cls, ref])
            self._journal(cls, ref)
            change(record)
            self._touch(cls, ref)

    def remove(self, cls: str, ref: str) -> None:
        """Delete an object; a missing one is ignored (cleanup paths call this freely)."""
        with self.transaction():
            if ref not in self._objects[cls]:
                return
            self._journal(cls, ref)
            del self._objects[cls][ref]
            created, _ = self._stamps.pop(ref, (0, 0))
            self.generation += 1
            if len(self._deleted) == self._deleted.maxlen:
                self._oldest_known = self._deleted[0][0]
            self._deleted.append((self.generation, cls, ref, created))
            if self._undo is not None:
                self._undo.deletions += 1
            if cls in PERSISTENT_CLASSES:
                self._dirty = True

    def refs(self, cls: str) -> list[str]:
        """All refs of a class."""
        with self.lock:
            return list(self._objects[cls])

    def records(self, cls: str) -> dict[str, Record]:
        """All records of a class (copies)."""
        with self.lock:
            return copy.deepcopy(self._objects[cls])

    def find(self, cls: str, **match: Any) -> list[str]:
        """Refs of the objects whose fields equal `match`."""
        with self.lock:
            return [
                ref
                for ref, record in self._objects[cls].items()
                if all(record.get(k) == v for k, v in match.items())
            ]

    # -- disks ----------------------------------------------------------------------------------

    def disk_path(self, vdi_ref: str) -> Path:
        """The sparse file backing a VDI."""
        location = self.field("VDI", vdi_ref, "location")
        return self.disk_dir / f"{location}.img"

    # -- events ---------------------------------------------------------------------------------

    def changes_since(self, since: int, wanted: Callable[[str, str], bool]) -> list[Change]:
        """Objects changed after generation `since` (all live objects when `since` < 0).

        Raises `EVENTS_LOST` when deletions older than the bounded log were asked for.
        """
        with self.lock:
            if since >= 0 and since < self._oldest_known:
                raise ApiFailure("EVENTS_LOST")
            out: list[Change] = []
            for cls, objects in self._objects.items():
                for ref, record in objects.items():
                    if not wanted(cls, ref):
                        continue
                    created, modified = self._stamps.get(ref, (0, 0))
                    if since < 0 or modified > since:
                        op = "add" if since < 0 or created > since else "mod"
                        out.append(Change(modified, cls, ref, op, copy.deepcopy(record)))
            if since >= 0:
                for gen, cls, ref, created in self._deleted:
                    if gen > since and created <= since and wanted(cls, ref):
                        out.append(Change(gen, cls, ref, "del", None))
            out.sort(key=lambda change: change.generation)
            return out

    def forget_history(self) -> None:
        """Make every token issued so far too old (`EVENTS_LOST`), as after an event queue overflow."""
        with self.transaction():
            self.generation += 1
            self._oldest_known = self.generation

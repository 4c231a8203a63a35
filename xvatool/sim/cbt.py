"""Changed block tracking on the simulated SR: one change log per tracked VDI, linked in chains.

This is SM's model (docs/incremental.md §1.3, sm `VDI.py`, blktap `cbt-util.h`), kept literally:

- every tracked VDI has a log {parent uuid, child uuid, size, bitmap of 64 KiB blocks}; a write
  sets the bits of the blocks it touches (`TrackedWrites`), as tapdisk does;
- `enable` creates a zeroed log for a leaf; `disable` deletes it and clears the parent's child
  pointer, so older snapshots can no longer reach anything newer ("unrelated");
- `rotate` (a snapshot) hands the leaf's log to the snapshot and starts a fresh leaf log whose
  parent is the snapshot, so a snapshot's bitmap holds exactly the writes between the previous
  snapshot and itself;
- `drop` (destroying a tracked VDI) ORs its bitmap into its child's and relinks the neighbours,
  so comparisons across the gap keep working;
- `changed(from, to)` ORs the bitmaps after `from` along child pointers up to `to`, or fails
  with SM's `SR_BACKEND_FAILURE_460` ("same", "unrelated") or `_459` (a chain that shrank).

Logs live in ``DIR/cbt/<vdi uuid>.cbtlog``: a 48-byte header (magic, consistent flag, parent and
child uuids, size) and the bitmap (MSB first, as `ChangedBlocks` holds it). Bits are kept in
memory and written when a transfer ends; while one runs the file says "inconsistent", and a log
found inconsistent at start-up (the server died mid-write) is dropped and CBT switched off on its
VDI, as SM does with a log tapdisk left open, so a lost bit can never make a wrong incremental.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import uuid as uuid_module
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from xvatool._files import remove_quietly, write_bytes_atomic
from xvatool.errors import CbtBitmapError
from xvatool.nbd.changed_blocks import ChangedBlocks
from xvatool.sim.disks import backend_failure, overwrite, unshare
from xvatool.sim.state import SimState
from xvatool.sim.values import ApiFailure
from xvatool.xva.disk import data_ranges

__all__ = [
    "CBT_SR_TYPES",
    "DATA_DESTROY_WAIT_S",
    "CbtLog",
    "CbtStore",
    "TrackedWrites",
    "sm_failure",
]

CBT_SR_TYPES = frozenset({"ext", "nfs", "file", "smb", "lvm", "lvmoiscsi", "lvmohba"})
"""SR types whose SM driver has `VDI_CONFIG_CBT` (FileSR and LVHDSR based); ISO and udev lack it."""
DATA_DESTROY_WAIT_S = 4.0
"""xapi's fixed wait for a snapshot's VBDs to disappear before `VDI.data_destroy` gives up."""
_MAGIC = b"XVCBTLOG"
_HEADER = struct.Struct(">8sB7x16s16sQ")
_NULL_UUID = bytes(16)
_SM_MESSAGES = {
    459: "Changed block tracking log is in an inconsistent state.",
    460: "Failed to calculate changed blocks for given VDIs.",
}


def sm_failure(errno: int, detail: str) -> ApiFailure:
    """An SM error as xapi passes it on: `SR_BACKEND_FAILURE_<n> ["", "<text> [opterr=…]", ""]`."""
    return ApiFailure(f"SR_BACKEND_FAILURE_{errno}", ["", f"{_SM_MESSAGES[errno]} [opterr={detail}]", ""])


@dataclass
class CbtLog:
    """One VDI's change log: its neighbours in the chain (VDI uuids) and its bitmap."""

    parent: str | None
    child: str | None
    bits: ChangedBlocks

    def pack(self, *, consistent: bool) -> bytes:
        head = _HEADER.pack(
            _MAGIC, int(consistent), _uuid_bytes(self.parent), _uuid_bytes(self.child), self.bits.size
        )
        return head + self.bits.bits

    @classmethod
    def unpack(cls, raw: bytes) -> tuple[CbtLog, bool]:
        """The log and its consistent flag; `ValueError` for anything that is not a log."""
        if len(raw) < _HEADER.size:
            raise ValueError("short change log")
        magic, consistent, parent, child, size = _HEADER.unpack_from(raw)
        if magic != _MAGIC:
            raise ValueError("not a change log")
        try:
            bits = ChangedBlocks(size, raw[_HEADER.size :])
        except CbtBitmapError as exc:
            raise ValueError(str(exc)) from None
        return cls(_uuid_text(parent), _uuid_text(child), bits), bool(consistent)


def _uuid_bytes(text: str | None) -> bytes:
    return _NULL_UUID if text is None else uuid_module.UUID(text).bytes


def _uuid_text(raw: bytes) -> str | None:
    return None if raw == _NULL_UUID else str(uuid_module.UUID(bytes=raw))


class CbtStore:
    """Every change log of one simulated host, in memory and in ``DIR/cbt/``.

    Thread-safe. `lock_for(uuid)` serialises a disk's writes with its snapshot, so a write
    lands either before the copy (and in the snapshot's bitmap) or after it (in the new leaf's).
    """

    def __init__(self, state: SimState) -> None:
        self.state = state
        self.folder = state.data_dir / "cbt"
        self.data_destroy_wait_s = DATA_DESTROY_WAIT_S
        self._lock = threading.RLock()
        self._logs: dict[str, CbtLog] = {}
        self._writers: dict[str, int] = {}  # uuid -> transfers writing now
        self._disk_locks: dict[str, threading.Lock] = {}
        self._load()

    # -- persistence ------------------------------------------------------------------------------

    def _path(self, uuid: str) -> Path:
        return self.folder / f"{uuid}.cbtlog"

    def _load(self) -> None:
        if not self.folder.is_dir():
            return
        broken: list[str] = []
        for path in self.folder.glob("*.cbtlog"):
            uuid = path.name.removesuffix(".cbtlog")
            try:
                log, consistent = CbtLog.unpack(path.read_bytes())
            except (OSError, ValueError):
                consistent, log = False, None
            if log is not None:
                self._logs[uuid] = log
            if not consistent:
                broken.append(uuid)
        for uuid in broken:  # SM `_disable_cbt_on_error`: the log cannot be trusted
            self._untrust(uuid)
            for ref in self.state.find("VDI", uuid=uuid):
                self.state.update("VDI", ref, cbt_enabled=False)

    def _untrust(self, uuid: str) -> None:
        """Drop a log whose bits may be incomplete; the chain is cut on both sides of it."""
        log = self._logs.pop(uuid, None)
        if log is not None:
            for neighbour in (log.parent, log.child):
                other = self._logs.get(neighbour or "")
                if other is not None:
                    other.parent = None if other.parent == uuid else other.parent
                    other.child = None if other.child == uuid else other.child
            self._save(log.parent, log.child)
        remove_quietly(self._path(uuid))

    def _save(self, *uuids: str | None) -> None:
        for uuid in uuids:
            if uuid is None:
                continue
            log = self._logs.get(uuid)
            try:
                if log is None:
                    remove_quietly(self._path(uuid))
                    continue
                self.folder.mkdir(exist_ok=True)
                write_bytes_atomic(self._path(uuid), log.pack(consistent=not self._writers.get(uuid)))
            except OSError as exc:
                raise backend_failure("write the change log", exc) from None

    # -- the chain --------------------------------------------------------------------------------

    def has(self, uuid: str) -> bool:
        with self._lock:
            return uuid in self._logs

    def log(self, uuid: str) -> CbtLog | None:
        """The log of `uuid` (for tests: its pointers and bits), or None."""
        with self._lock:
            return self._logs.get(uuid)

    def enable(self, uuid: str, size: int) -> None:
        """Start tracking a leaf: a zeroed log with no neighbours; nothing if it has one."""
        with self._lock:
            if uuid not in self._logs:
                self._logs[uuid] = CbtLog(None, None, ChangedBlocks(size))
                self._save(uuid)

    def disable(self, uuid: str) -> None:
        """Stop tracking a leaf: its log goes and its parent no longer has a child."""
        with self._lock:
            log = self._logs.pop(uuid, None)
            if log is None:
                return
            parent = self._logs.get(log.parent or "")
            if parent is not None and parent.child == uuid:
                parent.child = None
            self._save(uuid, log.parent)

    def rotate(self, leaf: str, snapshot: str) -> bool:
        """A snapshot of `leaf` was taken as `snapshot`; False when the leaf is not tracked."""
        with self._lock:
            log = self._logs.pop(leaf, None)
            if log is None:
                return False
            self._logs[snapshot] = log
            parent = self._logs.get(log.parent or "")
            if parent is not None:
                parent.child = snapshot
            self._logs[leaf] = CbtLog(snapshot, log.child, ChangedBlocks(log.bits.size))
            log.child = leaf
            self._save(snapshot, leaf, log.parent)
            return True

    def drop(self, uuid: str) -> None:
        """A tracked VDI is destroyed: its bits go to its child, its neighbours are relinked."""
        with self._lock:
            log = self._logs.pop(uuid, None)
            if log is None:
                return
            child = self._logs.get(log.child or "")
            parent = self._logs.get(log.parent or "")
            if child is not None:
                if log.bits.size <= child.bits.size:
                    child.bits |= log.bits
                else:  # cannot happen without a shrink; flag everything rather than lose a change
                    child.bits = ChangedBlocks.from_blocks(child.bits.size, range(child.bits.block_count))
                child.parent = log.parent if parent is not None else None
            if parent is not None:
                parent.child = log.child if child is not None else None
            self._save(uuid, log.child, log.parent)

    def resize(self, uuid: str, size: int) -> None:
        """The leaf grew: its bitmap is zero-extended (the new space holds no writes yet)."""
        with self._lock:
            log = self._logs.get(uuid)
            if log is not None and size != log.bits.size:
                log.bits = ChangedBlocks(size) | log.bits
                self._save(uuid)

    def changed(self, vdi_from: str, vdi_to: str) -> ChangedBlocks:
        """The blocks written after `vdi_from` up to `vdi_to` (SM `list_changed_blocks`)."""
        if vdi_from == vdi_to:
            raise sm_failure(460, "Source and target VDI are same")
        with self._lock:
            if vdi_from in self._logs and vdi_to in self._logs:
                merged: ChangedBlocks | None = None
                current = vdi_from
                for _ in range(len(self._logs)):
                    following = self._logs[current].child
                    if following is None or following not in self._logs:
                        break
                    current = following
                    bits = self._logs[current].bits
                    if merged is not None and bits.size < merged.size:
                        raise sm_failure(459, "Inconsistent bitmaps")
                    merged = bits | (merged if merged is not None else ChangedBlocks(bits.size))
                    if current == vdi_to:
                        return merged
        raise sm_failure(460, "Source and target VDI are unrelated")

    # -- writes -----------------------------------------------------------------------------------

    def lock_for(self, uuid: str) -> threading.Lock:
        """The lock that orders writes to one disk against its snapshots."""
        with self._lock:
            return self._disk_locks.setdefault(uuid, threading.Lock())

    def mark(self, uuid: str, offset: int, length: int) -> None:
        """Flag the blocks a write touched (in memory until the transfer ends)."""
        with self._lock:
            log = self._logs.get(uuid)
            if log is not None and length > 0:
                end = min(offset + length, log.bits.size)
                if end > offset:
                    log.bits.mark(offset, end - offset)

    def mark_allocated(self, uuid: str, *paths: Path) -> None:
        """Flag every block where one of the files holds data: what a whole-disk copy may change."""
        if not self.has(uuid):
            return
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                for start, end in data_ranges(fd, os.fstat(fd).st_size):
                    self.mark(uuid, start, end - start)
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def tracking(self, uuid: str) -> Iterator[None]:
        """One transfer writing into `uuid`: its log says "inconsistent" until the transfer ends."""
        with self._lock:
            self._writers[uuid] = self._writers.get(uuid, 0) + 1
            if self._writers[uuid] == 1 and uuid in self._logs:
                self._save(uuid)
        try:
            yield
        finally:
            with self._lock:
                self._writers[uuid] -= 1
                if not self._writers[uuid]:
                    del self._writers[uuid]
                if uuid in self._logs:
                    self._save(uuid)


class TrackedWrites:
    """Writes into one VDI's disk file, each one marked in the VDI's change log; a context manager.

    A file shared with a snapshot (`disks.share`) is copied before the first write lands in it,
    under the disk's lock, so a snapshot never sees a later write. Example::

        with store.tracking(uuid), TrackedWrites(store, uuid, path) as write:
            write(offset, data)
    """

    def __init__(self, store: CbtStore, uuid: str, path: Path) -> None:
        self._store = store
        self._uuid = uuid
        self._path = path
        self._lock = store.lock_for(uuid)
        self._fd = os.open(path, os.O_WRONLY)

    def __call__(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            if os.fstat(self._fd).st_nlink > 1:
                unshare(self._path)
                os.close(self._fd)
                self._fd = os.open(self._path, os.O_WRONLY)
            overwrite(self._fd, offset, data)
            self._store.mark(self._uuid, offset, len(data))

    def sync(self) -> None:
        """Make the written data durable (before the task reports success)."""
        os.fsync(self._fd)

    def __enter__(self) -> TrackedWrites:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)

"""Temporary host snapshots this machine is holding, so that one a killed run left is destroyed later.

A running VM is exported through a temporary snapshot (`vms.export_source`), destroyed on every
exit path a Python process has, but not after ``kill -9``, a power cut or a lost connection: it
would stay on the host for good, named like the VM, indistinguishable from the user's own.
Marking it on the host is no answer: the mark would travel in the exported ova.xml. So each one is
written down in the state folder (``STATE/snapshots/<host>-<random>.json``, fsynced) before
`VM.snapshot` is called, with its uuid once known, and the process holds an exclusive `flock`
on that entry while the snapshot lives. The kernel drops the lock when the process dies, however
it dies.

`sweep_left_over` runs before the next temporary snapshot on the same host (any VM): an entry
whose lock it gets belongs to a run that is gone. The snapshot it names is destroyed if it is
still a snapshot of the VM recorded (`VM.snapshot_of`), and the entry is removed. An entry that
has no uuid (the run died inside `VM.snapshot`) cannot be matched safely: it becomes a warning
naming the VM and the time, and is removed.

Example::

    sweep_left_over(session, destroy=lambda ref: destroy_vm_with_disks(session, ref))
    with ledger_entry(session, vm.uuid, vm.name_label) as entry:
        snap_ref = session.call("VM.snapshot", vm.ref, vm.name_label)
        entry.record(session.call("VM.get_uuid", snap_ref))
        ...
        if destroyed:
            entry.release()
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from xvatool._files import fsync_dir
from xvatool._human import NOTE
from xvatool.errors import LocalIOError, XapiError, XvatoolError
from xvatool.xapi.journal import StatePath, host_tag, private_folder, state_dir
from xvatool.xapi.session import Session

__all__ = ["LEDGER_FOLDER", "LedgerEntry", "ledger_entry", "sweep_left_over"]

_log = logging.getLogger(__name__)

LEDGER_FOLDER = "snapshots"
"""Below the state folder."""
MAX_ENTRY_SIZE = 4096
"""Bytes; an entry is a few hundred."""


class LedgerEntry:
    """One temporary snapshot's entry, locked by this process until `release` or `close`.

    An entry without a `path` stands for one the state folder could not take: it does nothing.
    """

    def __init__(self, path: Path | None, fd: int, doc: dict[str, Any]) -> None:
        self.path = path
        self._fd = fd
        self._doc = doc

    def record(self, snapshot_uuid: str) -> None:
        """The snapshot now exists: write its uuid down (before anything can fail with it)."""
        self._doc["snapshot_uuid"] = snapshot_uuid
        if self.path is not None:
            try:
                _write(self._fd, self._doc, self.path)
            except LocalIOError as exc:
                _log.warning("%s; a killed run would leave snapshot %s on the host", exc, snapshot_uuid)

    def release(self) -> None:
        """The snapshot is gone: remove the entry."""
        if self.path is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            _log.warning("could not remove %s: %s", self.path, exc.strerror)
        self.close()

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        """Unlock and keep the entry (the snapshot may still exist): the next sweep takes it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _write(fd: int, doc: dict[str, Any], path: Path) -> None:
    data = json.dumps(doc, sort_keys=True).encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    except OSError as exc:
        raise LocalIOError(f"cannot write: {exc.strerror}", path=str(path)) from exc


@contextmanager
def ledger_entry(
    session: Session, vm_uuid: str, vm_name: str, *, state: StatePath = None
) -> Iterator[LedgerEntry]:
    """A new locked entry for a snapshot of `vm_uuid` about to be taken on `session`'s host.

    Leaving the block closes the entry without removing it; `LedgerEntry.release` removes it. A
    state folder that cannot take the entry is a warning, not a failed export.
    """
    doc: dict[str, Any] = {
        "host": session.url,
        "vm_uuid": vm_uuid,
        "vm_name": vm_name,
        "taken_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "snapshot_uuid": None,
    }  # fmt: skip
    try:
        entry = _create(session.url, doc, state)
    except LocalIOError as exc:
        _log.warning("%s; a killed run would leave its snapshot of %s on the host", exc, vm_name)
        entry = LedgerEntry(None, -1, doc)
    try:
        yield entry
    finally:
        entry.close()


def _create(host: str, doc: dict[str, Any], state: StatePath) -> LedgerEntry:
    """Written and locked under a hidden name, then renamed into place (the lock goes along), so a
    sweep never finds an entry whose owner has not locked it yet.
    """
    folder = state_dir(state) / LEDGER_FOLDER
    private_folder(folder)
    name = f"{host_tag(host)}-{uuid.uuid4().hex}.json"
    making = folder / f".{name}.new"
    try:
        fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LocalIOError(f"cannot create: {exc.strerror}", path=str(making)) from exc
    entry = LedgerEntry(making, fd, doc)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _write(fd, doc, making)
        os.rename(making, folder / name)
        entry.path = folder / name
        fsync_dir(folder)
    except OSError as exc:  # flock on a file system without locks, a folder gone
        entry.release()
        raise LocalIOError(f"cannot write the entry: {exc.strerror}", path=str(making)) from exc
    except BaseException:
        entry.release()
        raise
    return entry


def sweep_left_over(
    session: Session, *, destroy: Callable[[str], bool], state: StatePath = None
) -> list[str]:
    """Destroy the temporary snapshots that gone runs on this machine left on `session`'s host.

    `destroy(ref)` destroys a snapshot VM with its disks and says whether it is gone. Returns the
    uuids destroyed. Never raises: a sweep that fails is a warning, and the entries stay.
    """
    folder = state_dir(state) / LEDGER_FOLDER
    prefix = f"{host_tag(session.url)}-"
    try:
        names = sorted(p.name for p in folder.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:
        _log.warning("cannot list %s: %s", folder, exc.strerror)
        return []
    for name in names:
        if name.startswith(f".{prefix}") and name.endswith(".new"):  # a run killed while writing one
            orphan = _take(folder / name)
            if orphan is not None:
                orphan.release()
    destroyed = []
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".json")):
            continue
        path = folder / name
        entry = _take(path)
        if entry is None:
            continue
        fd = entry.fileno()
        try:
            settled, gone = _settle(session, path, os.pread(fd, MAX_ENTRY_SIZE, 0), destroy)
        except XvatoolError as exc:
            _log.warning("could not clean up the snapshot %s names: %s", path, exc)
            settled, gone = False, None
        if gone is not None:
            destroyed.append(gone)
        if settled:
            entry.release()
        else:
            entry.close()  # the next sweep tries again
    return destroyed


def _take(path: Path) -> LedgerEntry | None:
    """The entry at `path`, locked, if no living process holds it (None: held, or already gone)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None  # another sweep removed it
    entry = LedgerEntry(path, fd, {})
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        entry.close()  # a run that is still going holds it
        return None
    return entry


def _settle(
    session: Session, path: Path, raw: bytes, destroy: Callable[[str], bool]
) -> tuple[bool, str | None]:
    """Deal with one orphaned entry: (whether the entry is done with, the snapshot uuid destroyed).

    A host error asking about the snapshot raises (`XapiError`, `TransferError`…).
    """
    try:
        doc = json.loads(raw)
        host, vm_uuid, vm_name = doc["host"], doc["vm_uuid"], doc["vm_name"]
        snap_uuid, taken_at = doc.get("snapshot_uuid"), doc.get("taken_at")
    except (ValueError, KeyError, TypeError):
        _log.warning("%s: not a snapshot ledger entry; removed", path)
        return True, None
    if host != session.url:
        return False, None  # another URL of the same name hash: not ours to judge
    if not snap_uuid:
        _log.warning(
            "a run that was killed while snapshotting VM %s (%s) at %s may have left a snapshot on %s; "
            "look for a snapshot of that name", vm_name, vm_uuid, taken_at, host,
        )  # fmt: skip
        return True, None
    try:
        ref = str(session.call("VM.get_by_uuid", snap_uuid))
        record = session.call("VM.get_record", ref)
    except XapiError as exc:
        if exc.code == "UUID_INVALID":
            return True, None  # gone already
        raise
    origin = record.get("snapshot_of")
    origin_uuid = str(session.call("VM.get_uuid", origin)) if record.get("is_a_snapshot") and origin else ""
    if origin_uuid != vm_uuid:
        _log.warning("%s: %s is no longer a snapshot of VM %s; left alone", path, snap_uuid, vm_uuid)
        return True, None
    _log.log(NOTE, "destroying snapshot %s of %s, left on the host by a run killed at %s",
             snap_uuid, vm_name, taken_at)  # fmt: skip
    if not destroy(ref):
        return False, None  # destroy() said why; the entry stays for the next sweep
    return True, str(snap_uuid)

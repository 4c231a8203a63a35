"""Resume journals: what part of a transfer is known to be done, and how to prove it again.

The host offers no ranges (docs/host-protocol.md §5): an export can only be resumed per disk, and an
import per segment, because `PUT /import_raw_vdi?chunked=true` writes only the frames it receives
and re-sending a range is idempotent (host-protocol.md §4.12, §5). A journal is a small JSON file
that records, per disk, what was completed and a digest of it. Journals live in the state folder
(`state_dir`: ``--state-dir``, ``XVATOOL_STATE_DIR``, else ``$XDG_STATE_HOME/xvatool``, else
``~/.local/state/xvatool``), never beside the input: an archive may sit in a read-only folder, and a
journal beside a backup would block the next restore of it. The name says which transfer it belongs
to (the file's absolute path, hashed, and for imports the host). It is rewritten atomically
(`xvatool._files.write_bytes_atomic`) after every step, so a crash or Ctrl-C leaves either the old
or the new state, never a torn file; it is not fsynced (a journal behind reality only means a
re-send, and what it claims is re-checked anyway). A retry (`xvatool._retry.RetryPolicy`) resumes
from the journal rather than restarting.

A journal is bound to what it describes by its `key` (host URL, VM or archive digest, mode,
segment size…). `Journal.open_for_resume` refuses a journal whose key differs, which is the "never
silently ignored" rule: resuming onto the wrong archive or host would write garbage.

Example::

    journal = Journal.create(path, kind="import", key={"host": url, "archive_sha256": digest})
    journal.set_disk("Ref:3", size=1 << 30, target_vdi=vdi_uuid)
    journal.mark_segment("Ref:3", 0, "0123ABCD…")
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xvatool._files import remove_quietly, write_bytes_atomic
from xvatool.errors import LocalIOError, ResumeError

__all__ = [
    "JOURNAL_FORMAT",
    "STATE_DIR_ENV",
    "DiskRecord",
    "Journal",
    "JournalKind",
    "export_journal_path",
    "host_tag",
    "import_journal_path",
    "private_folder",
    "spool_folder",
    "state_dir",
]

JOURNAL_FORMAT = 1
"""Version of the JSON layout; a journal written by another layout version is refused."""
MAX_JOURNAL_SIZE = 64 << 20
"""Bytes. Even a 100 TiB import at 32 MiB segments stays far below this."""

STATE_DIR_ENV = "XVATOOL_STATE_DIR"
"""Overrides the state folder (journals of interrupted transfers, import spools)."""
JOURNALS = "journals"
"""Subfolder of the state folder holding the journals."""

JournalKind = Literal["export", "import"]
StatePath = str | os.PathLike[str] | None


@dataclass
class DiskRecord:
    """One disk's state. `digest` is set when the whole disk is done (exports).

    `segments` maps a segment index to the digest of what was sent for it (imports); `target_vdi`
    is the VDI created on the host for an import.
    """

    size: int
    done: bool = False
    digest: str | None = None
    target_vdi: str | None = None
    segments: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "done": self.done,
            "digest": self.digest,
            "target_vdi": self.target_vdi,
            "segments": {str(k): v for k, v in sorted(self.segments.items())},
        }

    @classmethod
    def from_json(cls, value: Any) -> DiskRecord:
        if not isinstance(value, dict):
            raise ValueError("disk record is not an object")
        size = value["size"]
        done = value.get("done", False)
        digest = value.get("digest")
        target = value.get("target_vdi")
        segments = value.get("segments", {})
        if not isinstance(size, int) or size < 0 or not isinstance(done, bool):
            raise ValueError("bad size or done flag")
        if digest is not None and not isinstance(digest, str):
            raise ValueError("bad digest")
        if target is not None and not isinstance(target, str):
            raise ValueError("bad target_vdi")
        if not isinstance(segments, dict) or not all(isinstance(v, str) for v in segments.values()):
            raise ValueError("bad segments")
        return cls(
            size=size,
            done=done,
            digest=digest,
            target_vdi=target,
            segments={int(k): v for k, v in segments.items()},
        )


class Journal:
    """A resume journal on disk. All mutators save at once and are safe to call from threads."""

    def __init__(self, path: str | os.PathLike[str], kind: JournalKind, key: Mapping[str, str]) -> None:
        self.path = Path(path)
        self.kind: JournalKind = kind
        self.key: dict[str, str] = dict(key)
        self.disks: dict[str, DiskRecord] = {}
        self._lock = threading.Lock()  # guards `disks` and the file

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, kind: JournalKind, key: Mapping[str, str]) -> Journal:
        """A fresh journal, written at once so that even an early failure leaves a trace."""
        journal = cls(path, kind, key)
        journal.save()
        return journal

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Journal:
        """Read a journal; a corrupt or foreign file is a `ResumeError` naming it."""
        path = Path(path)
        try:
            with path.open("rb") as fh:
                raw = fh.read(MAX_JOURNAL_SIZE + 1)
        except FileNotFoundError as exc:
            raise ResumeError("no journal to resume from", journal=str(path)) from exc
        except OSError as exc:
            raise LocalIOError(f"cannot read journal: {exc.strerror}", path=str(path)) from exc
        if len(raw) > MAX_JOURNAL_SIZE:
            raise ResumeError("journal is implausibly large; refusing it", journal=str(path))
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("tool") != "xvatool":
                raise ValueError("not an xvatool journal")
            if doc.get("format") != JOURNAL_FORMAT:
                raise ValueError(f"journal format {doc.get('format')!r}, expected {JOURNAL_FORMAT}")
            kind = doc["kind"]
            if kind not in ("export", "import"):
                raise ValueError(f"unknown journal kind {kind!r}")
            key = doc["key"]
            if not isinstance(key, dict) or not all(isinstance(v, str) for v in key.values()):
                raise ValueError("bad key")
            journal = cls(path, kind, key)
            disks = doc["disks"]
            if not isinstance(disks, dict):
                raise ValueError("bad disks")
            journal.disks = {str(k): DiskRecord.from_json(v) for k, v in disks.items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise ResumeError(
                f"journal is corrupt ({exc}); remove it to start over", journal=str(path)
            ) from exc
        return journal

    @classmethod
    def open_for_resume(
        cls, path: str | os.PathLike[str], *, kind: JournalKind, key: Mapping[str, str]
    ) -> Journal:
        """Load a journal and refuse it unless it describes exactly this transfer.

        Every key field is compared and each difference is named, so the user learns *why*
        (another host, another archive, another mode) instead of getting a silent restart.
        """
        journal = cls.load(path)
        if journal.kind != kind:
            raise ResumeError(f"journal is for an {journal.kind}, not an {kind}", journal=str(path))
        diffs = [
            f"{name} is {journal.key.get(name)!r} in the journal but {value!r} now"
            for name, value in sorted(key.items())
            if journal.key.get(name) != value
        ]
        extra = sorted(set(journal.key) - set(key))
        diffs += [f"journal has unexpected field {name!r}" for name in extra]
        if diffs:
            raise ResumeError(
                "journal does not match this transfer: " + "; ".join(diffs) + " (remove it to start over)",
                journal=str(path),
            )
        return journal

    # -- state -------------------------------------------------------------------------------

    def disk(self, disk_id: str) -> DiskRecord | None:
        with self._lock:
            return self.disks.get(disk_id)

    def set_disk(self, disk_id: str, *, size: int, target_vdi: str | None = None) -> DiskRecord:
        """Register a disk (or return it unchanged if already registered with the same size)."""
        with self._lock:
            record = self.disks.get(disk_id)
            if record is None or record.size != size:
                record = DiskRecord(size=size, target_vdi=target_vdi)
                self.disks[disk_id] = record
            elif target_vdi is not None:
                record.target_vdi = target_vdi
            self._save_locked()
            return record

    def reset_disks(self, sizes: Mapping[str, int]) -> None:
        """Register disks of these sizes with nothing done, in one save (a fresh or re-fetched start)."""
        with self._lock:
            for disk_id, size in sizes.items():
                self.disks[disk_id] = DiskRecord(size=size)
            self._save_locked()

    def reset_disk(self, disk_id: str) -> None:
        """Forget what was done for a disk (its data failed the re-check)."""
        with self._lock:
            record = self.disks.get(disk_id)
            if record is not None:
                record.done = False
                record.digest = None
                record.segments.clear()
                self._save_locked()

    def mark_disk_done(self, disk_id: str, digest: str | None = None) -> None:
        with self._lock:
            record = self.disks[disk_id]
            record.done = True
            record.digest = digest
            self._save_locked()

    def mark_segment(self, disk_id: str, index: int, digest: str) -> None:
        with self._lock:
            self.disks[disk_id].segments[index] = digest
            self._save_locked()

    def target_vdis(self) -> list[str]:
        """Host VDIs this journal created (for listing on failure, or for `--discard`)."""
        with self._lock:
            return [r.target_vdi for r in self.disks.values() if r.target_vdi]

    # -- file --------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return {
            "tool": "xvatool",
            "format": JOURNAL_FORMAT,
            "kind": self.kind,
            "key": dict(sorted(self.key.items())),
            "disks": {k: v.to_json() for k, v in sorted(self.disks.items())},
        }

    def save(self) -> None:
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        # Atomic but not fsynced: it is saved after every step, and a journal that a crash left
        # behind reality (or unreadable) only costs a re-send; everything it claims is re-checked.
        private_folder(self.path.parent)
        data = json.dumps(self.to_json(), indent=1, sort_keys=True).encode()
        write_bytes_atomic(self.path, data, durable=False)

    def remove(self) -> None:
        """Delete the journal (the transfer completed or was discarded)."""
        with self._lock:
            remove_quietly(self.path)


def state_dir(override: StatePath = None) -> Path:
    """The state folder: `override`, else ``$XVATOOL_STATE_DIR``, else ``$XDG_STATE_HOME/xvatool``,
    else ``~/.local/state/xvatool`` (the XDG base directory rule for state that survives a restart
    but is not worth backing up). Not created here.
    """
    if override is not None and str(override):
        return Path(override)
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "xvatool"


def private_folder(folder: Path) -> None:
    """Create `folder` (and its parents) readable by this user only, as everything in the state folder."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalIOError(f"cannot create the state folder: {exc.strerror}", path=str(folder)) from exc


def host_tag(url: str) -> str:
    """A host's URL as a short file-name part: state files are named by host, and a URL is no name."""
    return _tag(url.rstrip("/"), 12)


def _tag(text: str, length: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _readable(name: str) -> str:
    """A file name made safe for a journal name (the hash, not this, makes it unique)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:64] or "file"


def export_journal_path(out_path: str | os.PathLike[str], *, state: StatePath = None) -> Path:
    """``STATE/journals/export-<name>-<hash of OUT's absolute path>.json``: one per output file."""
    out = Path(os.path.abspath(out_path))
    return state_dir(state) / JOURNALS / f"export-{_readable(out.name)}-{_tag(str(out))}.json"


def import_journal_path(
    archive_path: str | os.PathLike[str], host_url: str, *, state: StatePath = None
) -> Path:
    """``STATE/journals/import-<name>-<hash of the file>-<hash of the host>.json``.

    One journal per (file, host) pair, so importing the same archive into two hosts keeps two
    independent journals; the host is hashed because a URL is not a file name.
    """
    archive = Path(os.path.abspath(archive_path))
    host = host_tag(host_url)
    return state_dir(state) / JOURNALS / f"import-{_readable(archive.name)}-{_tag(str(archive))}-{host}.json"


def spool_folder(state: StatePath = None) -> Path:
    """A new private folder under ``STATE/spool`` for scratch data of one transfer; the caller removes it."""
    parent = state_dir(state) / "spool"
    private_folder(parent)
    try:
        return Path(tempfile.mkdtemp(prefix="import-", dir=parent))
    except OSError as exc:
        raise LocalIOError(f"cannot create a spool folder: {exc.strerror}", path=str(parent)) from exc

"""What a parallel export keeps between runs: a spool per disk beside OUT, and its journal.

A parallel export fetches every disk into ``OUT.part.d/<vdi uuid>.tar`` (beside OUT: the same
file system, so the assembly never copies across devices) and journals each finished disk in
the state folder (`xapi.journal.export_journal_path`), so that ``--resume`` fetches only the
rest. `PartialExport` names both once, so that the refusal of a second run, the "kept" message
after a failure, ``--discard`` and the cleanup of a failed backup agree on what the state is.

Example::

    partial = PartialExport(Path("web-01.xva"))
    if partial.exists():
        print(partial.describe())     # "web-01.xva.part.d/ (1 of 2 disks done) and the journal …"
        partial.remove()
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NoReturn

from xvatool._files import remove_quietly, remove_tree
from xvatool._human import plural
from xvatool.errors import Interrupted, XvatoolError
from xvatool.xapi.journal import Journal, StatePath, export_journal_path
from xvatool.xva.ovaxml import DiskInfo, Metadata

__all__ = ["SPOOL_SUFFIX", "PartialExport", "disks_key", "spool_name"]

SPOOL_SUFFIX = ".part.d"
"""``OUT.part.d/``: the per-disk spools of a parallel export."""


class PartialExport:
    """What an interrupted or failed parallel export of OUT leaves: its journal and ``OUT.part.d/``.

    Both are named here once, so that the refusal, the "kept" message, ``--discard`` and the
    backup's cleanup agree on what the state is.
    """

    def __init__(self, out: Path, state_dir: StatePath = None) -> None:
        self.out = out
        self.journal = export_journal_path(out, state=state_dir)
        self.spool_dir = out.with_name(out.name + SPOOL_SUFFIX)

    def exists(self) -> bool:
        return self.journal.exists() or self.spool_dir.exists()

    def describe(self) -> str:
        """``vm.xva.part.d/ (1 of 2 disks) and its journal``, for messages."""
        spools = len(list(self.spool_dir.glob("*.tar"))) if self.spool_dir.is_dir() else 0
        done = sum(1 for record in self._records() if record.get("done"))
        total = len(self._records())
        parts = []
        if self.spool_dir.exists():
            count = f" ({done} of {plural(total, 'disk')} done)" if total else f" ({plural(spools, 'disk')})"
            parts.append(f"{self.spool_dir.name}/{count}")
        if self.journal.exists():
            parts.append(f"the journal {self.journal}")
        return " and ".join(parts) or "nothing"

    def _records(self) -> list[dict[str, object]]:
        try:
            return list(Journal.load(self.journal).to_json()["disks"].values())
        except XvatoolError:
            return []

    def kept_message(self) -> str:
        return f"kept {self.describe()}; continue with --resume, or remove it with --discard"

    def remove(self) -> None:
        remove_tree(self.spool_dir)
        remove_quietly(self.journal)

    def fail(self, exc: BaseException, *, discard: bool) -> NoReturn:
        """Say what a failed parallel export left (or remove it with `discard`), then re-raise.

        Ctrl-C always keeps the state and becomes `Interrupted` saying so; an export that kept
        nothing re-raises as it was.
        """
        if not self.exists():
            raise exc
        if discard and not isinstance(exc, KeyboardInterrupt | Interrupted):
            self.remove()
            note = "removed the partial state (--discard)"
        else:
            note = self.kept_message()
        if isinstance(exc, KeyboardInterrupt | Interrupted):
            raise Interrupted(f"interrupted; {note}") from exc
        if isinstance(exc, XvatoolError):
            exc.message += f"; {note}"
        raise exc


def spool_name(disk: DiskInfo) -> str:
    """A file name for a disk's spool: its VDI uuid, with anything but letters, digits, - replaced.

    Not the disk id: `Ref:n` ids are made up afresh by every metadata export (§3.7).
    """
    return re.sub(r"[^A-Za-z0-9-]", "_", disk.vdi_uuid) + ".tar"


def disks_key(metadata: Metadata) -> str:
    """The disks of a metadata document as a journal key field: `vdi-uuid:size,…`, sorted.

    Journal records are keyed by VDI uuid too: the `Ref:n` ids change from one metadata export
    to the next, the VDIs do not.
    """
    return ",".join(sorted(f"{d.vdi_uuid}:{d.virtual_size}" for d in metadata.disks))

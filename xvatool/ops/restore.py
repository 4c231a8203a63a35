"""`restore`: bring a backup back onto a host, after proving the archive is the one backed up.

A backup is named by its archive, its manifest, or its VM's folder (the newest complete backup
in it), so ``restore /backups/web-01-6f1c4d3e`` needs no time stamp.

The archive is checked against its manifest first (size and whole-file sha256,
`manifest.verify_backup`), so a truncated, tampered or swapped archive is refused before the host
sees a byte of it. The import itself verifies every chunk checksum again in flight (stream mode)
or per disk (parallel mode); the host's importer destroys what it created if the import fails
(docs/xva-format.md §7.1, unless force).

Example::

    with connect(url, "root", password) as host:
        result = restore(host, Path("backups/web-01-6f1c4d3e/20261127T051500Z.xva"))
        print(result.vm_uuid)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xvatool._progress import Progress
from xvatool._retry import DEFAULT_RETRY, RetryPolicy
from xvatool.errors import UsageError
from xvatool.ops.documents import file_doc, vm_doc
from xvatool.ops.export import TransferMode
from xvatool.ops.import_ import ImportResult, import_vm
from xvatool.ops.manifest import Manifest, manifest_path_for, verify_backup
from xvatool.ops.retention import scan_folder
from xvatool.xapi.journal import StatePath
from xvatool.xapi.session import Session

__all__ = ["RestoreResult", "newest_backup", "restore"]


@dataclass(frozen=True)
class RestoreResult:
    """The new VM and the backup it came from."""

    vm_uuid: str
    vm_ref: str
    archive: Path
    manifest: Manifest
    imported: ImportResult | None = None

    def to_json(self) -> dict[str, Any]:
        """The `restore --json` document (docs/json.md)."""
        disks = [d.to_json() for d in self.imported.disks] if self.imported else []
        return {
            "vm": vm_doc(self.vm_uuid, self.manifest.vm_name),
            "mode": self.imported.mode if self.imported else "stream",
            "source": file_doc(
                self.archive,
                self.manifest.archive_size,
                sha256=self.manifest.archive_sha256,
                manifest=file_doc(manifest_path_for(self.archive)),
                vm=vm_doc(self.manifest.vm_uuid, self.manifest.vm_name),
                time=self.manifest.started_at,
            ),
            "disks": disks,
        }


def newest_backup(folder: str | os.PathLike[str]) -> Path:
    """The manifest of the newest complete backup in a VM's backup folder (``DEST/<name>-<uuid8>``).

    A folder holding VM folders (the backup root) is refused naming them: which VM is meant is
    for the user to say.
    """
    folder = Path(folder)
    complete = scan_folder(folder).complete
    if complete:
        return complete[-1].manifest_path
    vms = sorted(p.name for p in folder.iterdir() if p.is_dir() and scan_folder(p).complete)
    if vms:
        names = ", ".join(vms[:5]) + (", …" if len(vms) > 5 else "")
        raise UsageError(
            f"{folder} holds the backups of {len(vms)} VMs; name one: {folder}/<vm-folder> ({names})"
        )
    raise UsageError(f"{folder}: no complete backup in this folder")


def restore(
    session: Session,
    backup_path: str | os.PathLike[str],
    *,
    sr: str | None = None,
    restore_identity: bool = False,
    mode: TransferMode = "stream",
    retry: RetryPolicy = DEFAULT_RETRY,
    resume: bool = False,
    discard: bool = False,
    force: bool = False,
    state_dir: StatePath = None,
    progress: Progress | None = None,
) -> RestoreResult:
    """Check a backup against its manifest, then import it.

    `backup_path` is an `.xva`, its manifest, or a VM's backup folder (its newest complete
    backup). `sr` is an SR uuid or unique name (the pool's default SR when None);
    `restore_identity` keeps the VM's identity (uuid, MACs) as backed up (xva-format.md §7.3). A
    parallel restore resumes (`resume`) or starts over (`discard`) like `import_vm`, with its
    journal in `state_dir`. Raises `ManifestMismatchError` if the archive differs from what the
    manifest records, unless `force`, which also lets the host ignore checksum errors (rescuing
    a damaged backup); `UsageError` when the manifest is missing (an incomplete backup).
    """
    path = Path(backup_path)
    if path.is_dir():
        path = newest_backup(path)
    archive, manifest = verify_backup(path, force=force)
    result = import_vm(session, archive, sr=sr, restore=restore_identity, force=force, mode=mode, retry=retry,
                       resume=resume, discard=discard, state_dir=state_dir, progress=progress)  # fmt: skip
    return RestoreResult(result.vm_uuid, result.vm_ref, archive, manifest, result)

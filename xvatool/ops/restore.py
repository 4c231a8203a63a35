"""`restore`: bring a backup back onto a host, after proving the archive is the one backed up.

The archive is checked against its manifest first (size and whole-file sha256,
`manifest.verify_backup`), so a truncated, tampered or swapped archive is refused before the host
sees a byte of it. The import itself verifies every chunk checksum again in flight (stream mode)
or per disk (parallel mode); the host's importer destroys what it created if the import fails
(xapi-protocol.md §3.3, unless force).

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
from xvatool.ops.export import TransferMode
from xvatool.ops.import_ import import_vm
from xvatool.ops.manifest import Manifest, verify_backup
from xvatool.xapi.session import Session

__all__ = ["RestoreResult", "restore"]


@dataclass(frozen=True)
class RestoreResult:
    """The new VM and the backup it came from."""

    vm_uuid: str
    vm_ref: str
    archive: Path
    manifest: Manifest

    def to_json(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        return {
            "vm_uuid": self.vm_uuid,
            "archive": str(self.archive),
            "source_vm_uuid": self.manifest.vm_uuid,
            "source_vm_name": self.manifest.vm_name,
            "archive_sha256": self.manifest.archive_sha256,
        }


def restore(
    session: Session,
    backup_path: str | os.PathLike[str],
    *,
    sr: str | None = None,
    restore_identity: bool = False,
    mode: TransferMode = "stream",
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
) -> RestoreResult:
    """Check a backup (an `.xva` or its manifest) against its manifest, then import it.

    `sr` is an SR uuid or unique name (the pool's default SR when None); `restore_identity`
    keeps the VM's identity (MACs and such) as exported instead of a new one (§3.3 `restore`).
    Raises `ChecksumError` if the archive differs from what the manifest records, `UsageError`
    when the manifest is missing (an incomplete backup).
    """
    archive, manifest = verify_backup(backup_path)
    result = import_vm(session, archive, sr=sr, restore=restore_identity, mode=mode, retry=retry,
                       progress=progress)  # fmt: skip
    return RestoreResult(vm_uuid=result.vm_uuid, vm_ref=result.vm_ref, archive=archive, manifest=manifest)

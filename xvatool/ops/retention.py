"""Retention of backups in one VM's backup folder: keep the N newest complete ones, clean the rest.

A backup is *complete* when its manifest exists, parses, names an archive in the same folder
whose size matches, and that archive is there (see `manifest.py`). Re-hashing every kept archive
at every run would read the whole backup history each night, so retention trusts the size and
leaves full sha256 checks to `verify_backup` (restore does it before importing).

Everything else in the folder that looks like ours is an incomplete leftover and is removed:
`*.part` files (temporary outputs of an interrupted export or manifest write, `xvatool._files`),
`*.part.d` spool folders and `*.xvatool-journal.json` export journals (an interrupted parallel
export; backups never resume, each run has a new name), archives without a manifest, and
manifests whose archive is missing or has the wrong size. Incomplete backups never count towards
`keep`. Other files are left alone: the folder may hold the user's notes, and import journals
(`*.xvatool-import-*.json`) belong to a parallel restore that may be resumed.

A complete backup is removed manifest first, then archive, so a crash in between leaves an
orphan archive (cleaned next time) and never a manifest that vouches for nothing.

Example::

    result = apply_retention(Path("backups/web-6f1c4d3e"), keep=7)
    print(result.removed)
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from xvatool._files import temp_files_of
from xvatool.errors import LocalIOError, UsageError, XvatoolError
from xvatool.ops.manifest import ARCHIVE_SUFFIX, MANIFEST_SUFFIX, Manifest, load_manifest, manifest_path_for

__all__ = [
    "EXPORT_JOURNAL_SUFFIX",
    "SPOOL_SUFFIX",
    "BackupEntry",
    "RetentionResult",
    "apply_retention",
    "incomplete_files",
    "list_backups",
]

PART_SUFFIX = ".part"
SPOOL_SUFFIX = ".part.d"
"""Per-disk spool folder of a parallel export (`ops/export.py`)."""
EXPORT_JOURNAL_SUFFIX = ".xvatool-journal.json"
"""Resume journal of an export (`xapi/journal.export_journal_path`)."""


@dataclass(frozen=True)
class BackupEntry:
    """One complete backup in a VM folder."""

    archive: Path
    manifest_path: Path
    manifest: Manifest

    @property
    def sort_key(self) -> tuple[str, str]:
        """Newest last: by start time (UTC ISO text sorts), then by name for equal times."""
        return (self.manifest.started_at, self.archive.name)


@dataclass
class RetentionResult:
    """What `apply_retention` kept and removed (paths of archives and manifests)."""

    kept: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    """Complete backups beyond `keep` (archives)."""
    cleaned: list[Path] = field(default_factory=list)
    """Incomplete leftovers removed (any file kind)."""


def list_backups(folder: str | os.PathLike[str]) -> tuple[list[BackupEntry], list[Path]]:
    """Complete backups (oldest first) and incomplete leftovers in `folder`."""
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir())
        names = [p for p in entries if p.is_file()]
    except FileNotFoundError:
        return [], []
    except OSError as exc:
        raise LocalIOError(exc.strerror or str(exc), path=str(folder)) from exc
    complete: list[BackupEntry] = []
    leftovers: list[Path] = [p for p in entries if p.is_dir() and p.name.endswith(SPOOL_SUFFIX)]
    vouched: set[str] = set()
    for path in names:
        if path.name.endswith((PART_SUFFIX, EXPORT_JOURNAL_SUFFIX)):
            leftovers.append(path)
        elif path.name.endswith(MANIFEST_SUFFIX):
            entry = _entry(path)
            if entry is None:
                leftovers.append(path)
            else:
                complete.append(entry)
                vouched.add(entry.archive.name)
    for path in names:
        if path.name.endswith(ARCHIVE_SUFFIX) and path.name not in vouched:
            leftovers.append(path)
    complete.sort(key=lambda e: e.sort_key)
    return complete, leftovers


def _entry(manifest_path: Path) -> BackupEntry | None:
    try:
        manifest = load_manifest(manifest_path)
    except XvatoolError:
        return None
    archive = manifest_path.with_name(manifest.archive)
    # The manifest must be the one that belongs to this archive name, not a copy elsewhere.
    if manifest_path_for(archive) != manifest_path:
        return None
    try:
        if archive.stat().st_size != manifest.archive_size:
            return None
    except OSError:
        return None
    return BackupEntry(archive, manifest_path, manifest)


def incomplete_files(archive: str | os.PathLike[str]) -> list[Path]:
    """What an interrupted export to `archive` may leave: temporary files, spool folder, journal."""
    archive = Path(archive)
    temporary = [p for p in temp_files_of(archive.parent) if p.name.startswith(f".{archive.name}.")]
    return [*temporary, *(archive.with_name(archive.name + s) for s in (SPOOL_SUFFIX, EXPORT_JOURNAL_SUFFIX))]


def apply_retention(folder: str | os.PathLike[str], *, keep: int | None) -> RetentionResult:
    """Remove incomplete leftovers, then all but the `keep` newest complete backups.

    `keep=None` only cleans leftovers. `keep` must be at least 1: a retention that deletes the
    backup just made is a typo, not a policy.
    """
    if keep is not None and keep < 1:
        raise UsageError(f"--keep must be at least 1, not {keep}")
    complete, leftovers = list_backups(folder)
    result = RetentionResult()
    for path in leftovers:
        _unlink(path)
        result.cleaned.append(path)
    cut = 0 if keep is None else max(0, len(complete) - keep)
    for entry in complete[:cut]:
        _unlink(entry.manifest_path)
        _unlink(entry.archive)
        result.removed.append(entry.archive)
    result.kept = [entry.archive for entry in complete[cut:]]
    return result


def _unlink(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise LocalIOError(f"cannot remove: {exc.strerror or exc}", path=str(path)) from exc
